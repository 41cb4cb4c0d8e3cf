r"""Landmarks on whole photos: crop each face box as training does, run the model on the crops
in batches, map the landmarks back to image pixels.

A face's crop is :func:`~landmark_graph.data.crop_matrix`'s affine map :math:`A` (the box's
longer side times ``margin`` to :math:`S` pixels, centres matched), so a point predicted at
:math:`p` in the crop lies at :math:`A^{-1} p` in the image.

Boxes are *landmark boxes* unless said otherwise: the extent of the face's landmarks (brows to
chin, ear to ear for 68 or 98 points), the box 300W and the synthetic faces are cropped around.
A detector's boxes are turned into landmark boxes by its :class:`~landmark_graph.engine.detectors.BoxMap`.
A model trained on WFLW or COFW was cropped around those sets' annotated boxes instead: give it
boxes of that kind, or fit a :class:`~landmark_graph.engine.detectors.BoxMap` from the detector's boxes
to them on training images (:meth:`~landmark_graph.engine.detectors.BoxMap.fit`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_boxes
from ..data.readers import AnnotationError
from ..data.transforms import crop_matrix, to_image_tensor, warp_image
from ..schemes import LandmarkScheme, get_scheme
from .detectors import BoxMap, Detector, get_detector

__all__ = [
    "Face",
    "LandmarkPredictor",
    "boxes_for",
    "crop_faces",
    "image_box",
    "list_images",
    "read_boxes",
    "synthetic_box_map",
    "uncrop_points",
]


def image_box(height: int, width: int) -> np.ndarray:
    """``ndarray[4]``: the box of the whole image, ``(-0.5, -0.5, W - 0.5, H - 0.5)``."""
    return np.array([-0.5, -0.5, width - 0.5, height - 0.5])


def crop_faces(
    image: np.ndarray | Tensor, boxes: np.ndarray, size: int, margin: float = 1.25
) -> tuple[Tensor, Tensor]:
    """Cut one ``size`` square crop per box, exactly as the test transform of training does.

    Args:
        image: ``ndarray[H, W(, C)]`` (uint8 or float in ``[0, 1]``) or ``Tensor[C, H, W]``.
        boxes: ``ndarray[F, 4]`` ``(x_min, y_min, x_max, y_max)``.
        size: crop side ``S``.
        margin: crop side over the longer box side.

    Returns:
        ``Tensor[F, 3, S, S]`` float32 crops in ``[0, 1]`` and ``Tensor[F, 3, 3]`` float64 maps
        from image pixels to crop pixels.

    Example:
        >>> crops, maps = crop_faces(np.zeros((60, 80, 3), np.uint8), np.array([[10, 10, 30, 40]]), 16)
        >>> crops.shape, maps.shape
        (torch.Size([1, 3, 16, 16]), torch.Size([1, 3, 3]))
    """
    boxes = check_boxes("boxes", boxes)
    pixels = to_image_tensor(image)
    maps = [crop_matrix(box, size, margin) for box in boxes]
    if not maps:
        return torch.zeros(0, 3, size, size), torch.zeros(0, 3, 3, dtype=torch.float64)
    return torch.stack([warp_image(pixels, m, size) for m in maps]), torch.stack(maps)


def uncrop_points(points: Tensor, maps: Tensor) -> Tensor:
    """``Tensor[F, N, 2]`` crop pixels to image pixels through the inverses of ``Tensor[F, 3, 3]`` maps
    (float64 out).

    Example:
        >>> m = crop_matrix(torch.tensor([0.0, 0.0, 40.0, 40.0]), size=20, margin=1.0)[None]
        >>> uncrop_points(torch.tensor([[[9.5, 9.5]]]), m).tolist()  # the crop centre: the box centre
        [[[20.0, 20.0]]]
    """
    inverse = torch.linalg.inv(maps.to(torch.float64))
    return points.to(torch.float64) @ inverse[:, :2, :2].transpose(1, 2) + inverse[:, None, :2, 2]


@dataclass
class Face:
    """One face found in an image.

    Attributes:
        landmarks: ``ndarray[N, 2]`` float64, image pixels.
        box: ``ndarray[4]`` the box as given or as the detector returned it, or ``None`` when
            the whole image was the crop.
        score: the detector's score, or ``None``.
        visibility: ``ndarray[N]``, each landmark's probability of being visible, from a head
            with ``visibility=True``; else ``None``.
        scale: ``ndarray[N, 2]``, the Laplace scale ``(b_x, b_y)`` of each landmark in image
            pixels, from a head with ``uncertainty=True``; else ``None``.
    """

    landmarks: np.ndarray
    box: np.ndarray | None = None
    score: float | None = None
    visibility: np.ndarray | None = None
    scale: np.ndarray | None = None

    def to_dict(self, decimals: int = 2) -> dict:
        """``{"box": [x0, y0, x1, y1] | None, "score": float | None, "landmarks": [[x, y], ...]}``,
        plus ``"visibility": [p, ...]`` and ``"scale": [[b_x, b_y], ...]`` where the head gives them."""
        out = {
            "box": None if self.box is None else np.round(self.box, decimals).tolist(),
            "score": None if self.score is None else round(float(self.score), 4),
            "landmarks": np.round(self.landmarks, decimals).tolist(),
        }
        if self.visibility is not None:
            out["visibility"] = np.round(self.visibility, 4).tolist()
        if self.scale is not None:
            out["scale"] = np.round(self.scale, decimals + 1).tolist()
        return out


def synthetic_box_map(scheme: LandmarkScheme | str, image_size: int, margin: float = 1.25,
                      count: int = 512) -> BoxMap:
    """From landmark boxes to the boxes a model trained on synthetic faces was cropped around.

    A synthetic image is its own crop, so its box is the centred square of side ``S / margin``;
    the map is fitted (:meth:`BoxMap.fit`) on the landmarks of ``count`` generated faces (about
    ``scale=1.22``: the synthetic faces leave more room around the landmarks than a
    ``margin``-1.25 crop).
    """
    from ..data.synthetic import SyntheticFaces

    shapes = SyntheticFaces(scheme, count, image_size, seed=0).landmarks().numpy().astype(np.float64)
    landmark_boxes = np.concatenate([shapes.min(1), shapes.max(1)], axis=1)
    centre, half = (image_size - 1) / 2, image_size / margin / 2
    crop_boxes = np.tile([centre - half, centre - half, centre + half, centre + half], (count, 1))
    return BoxMap.fit(landmark_boxes, crop_boxes)


class LandmarkPredictor:
    """Landmarks in image pixels for the faces of whole images.

    Each face box (given, or found by ``detector``) is mapped by ``box_map`` to the box
    convention of the training crops and cropped like the test transform of training
    (:func:`crop_faces`); the crops go through the model ``batch_size`` at a time, across
    images; the landmarks come back in image pixels (:func:`uncrop_points`).

    Args:
        model: ``Tensor[B, 3, S, S]`` crops in ``[0, 1]`` -> ``Tensor[B, N, 2]`` crop pixels.
        scheme: the landmark scheme of the model's output.
        image_size: the crop side ``S`` the model takes.
        margin: crop side over the longer box side (training uses 1.25).
        box_map: from the boxes given (landmark boxes) to the training boxes; default the
            identity (a model trained on 300W); :func:`synthetic_box_map` for synthetic faces.
        detector: a registered detector's name or a :class:`~landmark_graph.engine.detectors.Detector`,
            used for images given without boxes; without one such an image is its own crop.
        min_score: drop detections scoring lower.
        batch_size: crops per forward pass.
        device: where the model runs.

    Example:
        >>> from landmark_graph.engine.training import TrainConfig, build_model
        >>> config = TrainConfig(scheme="cofw29", image_size=32, backbone_width=8, hidden_features=16,
        ...                      num_blocks=1, head_channels=16)
        >>> predictor = LandmarkPredictor(build_model(config).eval(), "cofw29", 32)
        >>> boxes = [[20, 30, 60, 80], [90, 30, 130, 80]]
        >>> faces = predictor.predict(np.zeros((120, 160, 3), np.uint8), boxes)
        >>> len(faces), faces[0].landmarks.shape
        (2, (29, 2))
    """

    def __init__(
        self,
        model: nn.Module,
        scheme: LandmarkScheme | str,
        image_size: int,
        *,
        margin: float = 1.25,
        box_map: BoxMap | None = None,
        detector: str | Detector | None = None,
        min_score: float | None = None,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        details: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
            raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.scheme = get_scheme(scheme)
        self.image_size = image_size
        self.margin = float(margin)
        self.box_map = box_map or BoxMap()
        self.detector = get_detector(detector) if isinstance(detector, str) else detector
        self.min_score = min_score
        self.batch_size = batch_size
        self.details = details
        parameter = next(model.parameters(), None)
        floating = parameter is not None and parameter.is_floating_point()
        self.dtype = parameter.dtype if floating else torch.float32

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        **kwargs) -> LandmarkPredictor:
        """The model of a ``landmark-graph train`` checkpoint, with its scheme, crop size and box
        convention (:func:`synthetic_box_map` for a synthetic training set); ``kwargs`` as in
        the constructor."""
        from .training import model_from_checkpoint

        model, config = model_from_checkpoint(path, device)
        if config.dataset == "synthetic" and "box_map" not in kwargs:
            kwargs["box_map"] = synthetic_box_map(config.scheme_name, config.image_size)
        kwargs.setdefault("details", config.details)
        return cls(model, config.scheme_name, config.image_size, device=device, **kwargs)

    def _faces_to_crop(self, image: np.ndarray, boxes) -> tuple[list[Face], np.ndarray, float]:
        """The faces (landmarks still empty), the boxes to crop around and the margin."""
        height, width = image.shape[:2]
        if boxes is None and self.detector is None:  # the image is its own crop
            return [Face(np.zeros((0, 2)))], image_box(height, width)[None], 1.0
        if boxes is None:
            found, scores = self.detector(image)
            if self.min_score is not None:
                found, scores = found[scores >= self.min_score], scores[scores >= self.min_score]
            faces = [Face(np.zeros((0, 2)), box, float(s)) for box, s in zip(found, scores, strict=True)]
            return faces, self.box_map(self.detector.box_map(found)), self.margin
        given = check_boxes("boxes", boxes)
        return [Face(np.zeros((0, 2)), box) for box in given], self.box_map(given), self.margin

    @torch.inference_mode()
    def _run(self, crops: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Crop-pixel landmarks ``Tensor[F, N, 2]``, visibility probabilities ``Tensor[F, N]`` and
        Laplace scales ``Tensor[F, N, 2]`` (``None`` where the model gives none)."""
        points, visible, scales = [], [], []
        for chunk in crops.split(self.batch_size):
            chunk = chunk.to(self.device, self.dtype)
            out = self.model(chunk, return_details=True) if self.details else self.model(chunk)
            landmarks = out.landmarks if self.details else out
            expected = (len(chunk), self.scheme.num_points, 2)
            if not (isinstance(landmarks, Tensor) and landmarks.shape == expected):
                got = getattr(landmarks, "shape", type(landmarks).__name__)
                raise ValueError(f"the model must return Tensor[B, {self.scheme.num_points}, 2] landmarks of "
                                 f"scheme {self.scheme.name!r}, got {got}")
            points.append(landmarks.to("cpu", torch.float64))
            if self.details and out.visibility_logits is not None:
                visible.append(torch.sigmoid(out.visibility_logits.to("cpu", torch.float64)))
            if self.details and out.log_scale is not None:
                scales.append(out.log_scale.to("cpu", torch.float64).exp())
        return (torch.cat(points), torch.cat(visible) if visible else None,
                torch.cat(scales) if scales else None)

    def predict_many(self, items: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> Iterator[list[Face]]:
        """Faces per image for ``(image, boxes)`` pairs, in order; crops of several images share
        a forward pass, so each image is yielded once the batch holding its last face has run.

        ``image``: ``ndarray[H, W, 3]`` uint8 RGB; ``boxes``: ``ndarray[F, 4]`` landmark boxes
        (``F`` may be 0), or ``None`` for the detector (or the whole image without one).
        """
        pending: list[tuple[list[Face], Tensor]] = []
        crops: list[Tensor] = []
        count = 0
        for image, boxes in items:
            faces, crop_boxes, margin = self._faces_to_crop(image, boxes)
            face_crops, maps = crop_faces(image, crop_boxes, self.image_size, margin)
            pending.append((faces, maps))
            crops.append(face_crops)
            count += len(faces)
            if count >= self.batch_size:
                yield from self._finish(pending, crops)
                pending, crops, count = [], [], 0
        yield from self._finish(pending, crops)

    def _finish(self, pending: list[tuple[list[Face], Tensor]], crops: list[Tensor]) -> Iterator[list[Face]]:
        if not pending:
            return
        points, visible, scales = self._run(torch.cat(crops)) if sum(len(c) for c in crops) else (None,) * 3
        start = 0
        for faces, maps in pending:
            image_points = uncrop_points(points[start : start + len(faces)], maps).numpy() if faces else ()
            for i, face in enumerate(faces):
                face.landmarks = image_points[i]
                if visible is not None:
                    face.visibility = visible[start + i].numpy()
                if scales is not None:  # axis-aligned crops: crop pixels per image pixel on each axis
                    face.scale = (scales[start + i] / maps[i].diagonal()[:2].abs()).numpy()
            start += len(faces)
            yield faces

    def predict(self, image: np.ndarray, boxes: np.ndarray | Sequence | None = None) -> list[Face]:
        """The faces of one ``ndarray[H, W, 3]`` uint8 image (see :meth:`predict_many`)."""
        return next(self.predict_many([(image, boxes)]))


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from files and folders: a file as it is, a folder's files that Pillow can
    open by their suffix (not its subfolders), sorted.

    Raises:
        FileNotFoundError: a path that does not exist, a folder without images.
    """
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("reading image files needs Pillow: pip install pillow") from error
    Image.init()
    suffixes = {suffix.lower() for suffix in Image.registered_extensions()}
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not images:
                raise FileNotFoundError(f"no image files in folder {str(path)!r}")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
    return found


_BOX_FORMAT = "4 numbers x_min y_min x_max y_max"


def _box_entry(path: Path, line: int | None, where: str, values: object) -> np.ndarray:
    try:
        box = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        box = None
    if box is None or box.shape != (4,):
        raise AnnotationError(path, line, f"{where}: expected {_BOX_FORMAT}, got {values!r}")
    try:
        return check_boxes("box", box)[0]
    except ValueError as error:
        raise AnnotationError(path, line, f"{where}: {error}") from None


def read_boxes(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Face boxes per image: ``{image: ndarray[F, 4]}`` from a JSON or a text file.

    - ``.json``: ``{"image": [[x_min, y_min, x_max, y_max], ...], ...}``; ``[]`` for no face.
    - any other suffix: one face per line, ``image x_min y_min x_max y_max`` (the image name may
      hold spaces: the last four fields are the box); a line holding only the image name lists
      an image without faces; blank lines and ``#`` comments are skipped; an image with several
      faces has several lines.

    ``image`` is a path as given to :func:`list_images` or a file name. Boxes are in pixels.

    Raises:
        AnnotationError: a malformed line or entry, naming the file and the line (JSON: the image
            and the face).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"box file {str(path)!r} does not exist")
    table: dict[str, list[np.ndarray]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise AnnotationError(path, error.lineno, f"not valid JSON ({error.msg})") from None
        if not isinstance(data, dict):
            raise AnnotationError(path, None, f'expected an object {{"image": [[{_BOX_FORMAT}], ...]}}, '
                                  f"got {type(data).__name__}")
        for image, faces in data.items():
            if not isinstance(faces, list):
                raise AnnotationError(path, None, f"image {image!r}: expected a list of boxes, got {faces!r}")
            table[image] = [_box_entry(path, None, f"image {image!r} face {i}", face)
                            for i, face in enumerate(faces, 1)]
    else:
        with open(path, encoding="utf-8") as handle:
            for line_no, text in enumerate(handle, 1):
                text = text.split("#", 1)[0].strip()
                if not text:
                    continue
                fields = text.rsplit(maxsplit=4)
                if len(fields) == 1:  # an image without faces
                    table.setdefault(fields[0], [])
                    continue
                if len(fields) != 5:
                    problem = f"expected an image name and {_BOX_FORMAT}, got {text!r}"
                    raise AnnotationError(path, line_no, problem)
                table.setdefault(fields[0], []).append(_box_entry(path, line_no, "box", fields[1:]))
    return {image: np.stack(faces) if faces else np.zeros((0, 4)) for image, faces in table.items()}


def boxes_for(images: Sequence[str | os.PathLike], table: dict[str, np.ndarray],
              source: str = "the box file") -> list[np.ndarray]:
    """Each image's boxes from a :func:`read_boxes` table, matched by the path as given, else
    by file name.

    Raises:
        ValueError: an image without an entry, a file name shared by two of the images.
    """
    names: dict[str, int] = {}
    for image in images:
        names[Path(image).name] = names.get(Path(image).name, 0) + 1
    out = []
    for image in images:
        key, name = str(image), Path(image).name
        if key in table:
            out.append(table[key])
        elif name in table and names[name] == 1:
            out.append(table[name])
        elif name in table:
            raise ValueError(f"{source}: {name!r} names {names[name]} of the images; use their paths")
        else:
            raise ValueError(f"{source} has no entry for image {key!r} (give it [] if it has no face)")
    return out
