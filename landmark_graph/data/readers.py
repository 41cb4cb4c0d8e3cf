"""Readers for the annotation files of WFLW, 300W and COFW.

Every reader returns a list of :class:`FaceRecord`, one per face, with landmarks in the pixel
coordinates of the file (x right, y down) and nothing dropped: a malformed line, a bad number
or a missing image raises :class:`AnnotationError` naming the file and the line (for ``.mat``
files, the face).

Coordinates are kept as stored. 300W ``.pts`` files and COFW come from MATLAB tools whose
pixel centres sit at 1, 1; WFLW lists use 0-based pixels. Subtract 1 from the former where
the half-pixel matters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..metrics import WFLW_ATTRIBUTES

__all__ = [
    "IMAGE_EXTENSIONS",
    "AnnotationError",
    "FaceRecord",
    "load_image",
    "read_300w",
    "read_cofw",
    "read_pts",
    "read_wflw",
]

#: Image suffixes looked up beside a ``.pts`` file, in this order.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG", ".bmp")
_WFLW_POINTS = 98


class AnnotationError(ValueError):
    """Malformed annotation: ``str(err)`` reads ``path:line: problem``; ``.path``, ``.line`` hold both."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str) -> None:
        self.path, self.line = str(path), line
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


@dataclass
class FaceRecord:
    """One annotated face.

    Attributes:
        landmarks: ``ndarray[N, 2]`` float64, image pixels.
        image_path: where the image is, or ``None`` when ``image`` holds it (COFW).
        image: ``ndarray[H, W]`` or ``[H, W, 3]`` uint8 held in memory, else ``None``.
        bbox: ``ndarray[4]`` face box ``(x_min, y_min, x_max, y_max)``, or ``None`` (300W has
            none; the landmark extent is used).
        occluded: ``ndarray[N]`` bool occlusion flags when annotated (COFW), else ``None``.
        attributes: ``ndarray[6]`` bool WFLW flags (:data:`~landmark_graph.metrics.WFLW_ATTRIBUTES`
            order), else ``None``.
        source: ``"file:line"`` the record came from, for messages.
    """

    landmarks: np.ndarray
    image_path: Path | None = None
    image: np.ndarray | None = None
    bbox: np.ndarray | None = None
    occluded: np.ndarray | None = None
    attributes: np.ndarray | None = None
    source: str = ""

    def box(self) -> np.ndarray:
        """``ndarray[4]`` ``(x_min, y_min, x_max, y_max)``: the face box, or the landmark extent."""
        if self.bbox is not None:
            return self.bbox
        return np.concatenate([self.landmarks.min(0), self.landmarks.max(0)])


def _numbers(path: Path, line: int, fields: list[str], what: str) -> np.ndarray:
    values = []
    for column, text in enumerate(fields, 1):
        try:
            value = float(text)
        except ValueError:
            raise AnnotationError(path, line, f"{what}: field {column} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise AnnotationError(path, line, f"{what}: field {column} is {text!r}, not a finite number")
        values.append(value)
    return np.asarray(values, dtype=np.float64)


def _existing_image(path: Path, line: int | None, image: Path) -> Path:
    if not image.is_file():
        raise AnnotationError(path, line, f"image {str(image)!r} does not exist")
    return image


def read_wflw(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    check_images: bool = True,
) -> list[FaceRecord]:
    """Read a WFLW list (``list_98pt_rect_attr_{train,test}.txt`` or a per-attribute subset).

    Each line: 196 coordinates ``x0 y0 ... x97 y97``, the box ``x_min y_min x_max y_max``, six
    0/1 attribute flags (pose, expression, illumination, make-up, occlusion, blur) and the image
    path relative to ``image_root`` (default: the list's folder). Blank lines are allowed.

    Args:
        annotation_file: the list.
        image_root: the ``WFLW_images`` folder.
        check_images: raise when an image file is missing.

    Raises:
        AnnotationError: wrong field count, a bad number or flag, an empty box, a missing image.
    """
    path = Path(annotation_file)
    root = path.parent if image_root is None else Path(image_root)
    expected = 2 * _WFLW_POINTS + 4 + len(WFLW_ATTRIBUTES) + 1
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_no, text in enumerate(handle, 1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != expected:
                raise AnnotationError(path, line_no, f"expected {expected} fields (196 coordinates, 4 box "
                                      f"values, 6 attribute flags, image path), got {len(fields)}")
            values = _numbers(path, line_no, fields[:-1], "WFLW annotation")
            flags = values[-len(WFLW_ATTRIBUTES):]
            if not np.isin(flags, (0, 1)).all():
                raise AnnotationError(path, line_no, f"attribute flags must be 0 or 1, got {flags.tolist()}")
            bbox = values[2 * _WFLW_POINTS : 2 * _WFLW_POINTS + 4]
            if not (bbox[2] > bbox[0] and bbox[3] > bbox[1]):
                raise AnnotationError(path, line_no, f"box needs x_max > x_min and y_max > y_min, got {bbox}")
            image = root / fields[-1]
            records.append(FaceRecord(
                landmarks=values[: 2 * _WFLW_POINTS].reshape(_WFLW_POINTS, 2),
                image_path=_existing_image(path, line_no, image) if check_images else image,
                bbox=bbox, attributes=flags.astype(bool), source=f"{path}:{line_no}",
            ))
    return records


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Read one iBUG ``.pts`` file: ``ndarray[n_points, 2]``.

    Format: ``version: 1``, ``n_points: N``, ``{``, ``N`` lines ``x y``, ``}``.

    Raises:
        AnnotationError: missing header or braces, a wrong number of points, a bad number.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        lines = [(i, text.strip()) for i, text in enumerate(handle, 1) if text.strip()]
    header = {}
    body = iter(lines)
    for line_no, text in body:
        if text == "{":
            break
        key, sep, value = text.partition(":")
        if not sep:
            raise AnnotationError(path, line_no, f"expected a 'key: value' header line or '{{', got {text!r}")
        header[key.strip()] = value.strip()
    else:
        raise AnnotationError(path, None, "no '{' opening the point list")
    if "n_points" not in header or not header["n_points"].isdigit():
        raise AnnotationError(path, 2, f"header needs 'n_points: <int>', got {header}")
    count = int(header["n_points"])
    points = []
    for line_no, text in body:
        if text == "}":
            break
        fields = text.split()
        if len(fields) != 2:
            raise AnnotationError(path, line_no, f"expected 'x y', got {text!r}")
        points.append(_numbers(path, line_no, fields, "point"))
    else:
        raise AnnotationError(path, None, "no '}' closing the point list")
    if len(points) != count:
        raise AnnotationError(path, line_no, f"n_points says {count} but the list holds {len(points)}")
    return np.stack(points) if points else np.zeros((0, 2))


def _image_beside(pts: Path) -> Path:
    for suffix in IMAGE_EXTENSIONS:
        candidate = pts.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    looked = f"{pts.stem}{{{','.join(IMAGE_EXTENSIONS)}}}"
    raise AnnotationError(pts, None, f"no image beside it (looked for {looked})")


def read_300w(
    source: str | os.PathLike | Iterable[str | os.PathLike], num_points: int = 68
) -> list[FaceRecord]:
    """Read 300W-style ``.pts`` files, each with its image beside it (same name).

    Args:
        source: a folder (searched recursively, sorted), one ``.pts`` file, or an iterable of them.
        num_points: points each file must hold.

    Raises:
        AnnotationError: a malformed file, another point count, no image beside a file.
        FileNotFoundError: a folder without ``.pts`` files.
    """
    if isinstance(source, (str, os.PathLike)):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"{str(source)!r} does not exist")
        files = sorted(source.rglob("*.pts")) if source.is_dir() else [source]
        if not files:
            raise FileNotFoundError(f"no .pts files under {str(source)!r}")
    else:
        files = [Path(p) for p in source]
    records = []
    for pts in files:
        landmarks = read_pts(pts)
        if len(landmarks) != num_points:
            raise AnnotationError(pts, 2, f"expected {num_points} points, got {len(landmarks)}")
        records.append(FaceRecord(landmarks=landmarks, image_path=_image_beside(pts), source=str(pts)))
    return records


# Variable names of the released COFW files: (images, shapes, boxes) per split.
_COFW_KEYS = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}
_COFW_POINTS = 29


def _load_mat(path: Path, names: set[str]) -> dict:
    """Variables of a MATLAB file: scipy for v4-v7.2, h5py (when installed) for v7.3."""
    import scipy.io

    if _is_hdf5(path):
        return _load_mat_v73(path, names)
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy's answer to v7.3 (HDF5) files
        return _load_mat_v73(path, names)
    except ValueError as err:
        raise AnnotationError(path, None, f"not a readable MATLAB file ({err})") from err
    out = {}
    for key in names & set(data):
        value = data[key]
        # Cell arrays load as object arrays; images then sit one per cell.
        out[key] = [np.asarray(v) for v in value.ravel()] if value.dtype == object else value
    return out


def _is_hdf5(path: Path) -> bool:
    """HDF5 puts its signature at byte 0, 512, 1024, ...; MATLAB v7.3 files use offset 512."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    return any(head[offset : offset + 8] == b"\x89HDF\r\n\x1a\n" for offset in range(0, len(head), 512))


def _load_mat_v73(path: Path, names: set[str]) -> dict:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py: "
                          "pip install h5py (or landmark-graph[data])") from err
    out = {}
    with h5py.File(path, "r") as handle:
        for key in names & set(handle):
            value = handle[key]
            if value.dtype == h5py.ref_dtype:
                # HDF5 stores MATLAB arrays transposed: (W, H) or (3, W, H) for an H x W image.
                out[key] = [np.asarray(handle[ref]).T for ref in np.asarray(value).ravel()]
            else:
                out[key] = np.asarray(value).T
    return out


def read_cofw(path: str | os.PathLike, split: str | None = None) -> list[FaceRecord]:
    """Read a COFW ``.mat`` file (``COFW_train_color.mat``, ``COFW_test_color.mat``, ...).

    The file holds images (cell array), shapes ``(M, 87)`` (29 x, 29 y, 29 occlusion flags) and
    boxes ``(M, 4)`` as ``x, y, width, height``, named ``IsTr, phisTr, bboxesTr`` (train) or
    ``IsT, phisT, bboxesT`` (test). Images stay in memory in the records.

    Args:
        path: the ``.mat`` file (MATLAB v5 through scipy, v7.3 through h5py when installed).
        split: ``"train"`` or ``"test"``; ``None`` takes whichever the file holds.

    Raises:
        AnnotationError: missing variables, wrong sizes, bad values; the "line" is the face (1-based).
        ImportError: a v7.3 file without h5py.
    """
    path = Path(path)
    if split is not None and split not in _COFW_KEYS:
        raise ValueError(f"split must be one of {sorted(_COFW_KEYS)} or None, got {split!r}")
    splits = [split] if split else list(_COFW_KEYS)
    data = _load_mat(path, {key for s in splits for key in _COFW_KEYS[s]})
    found = [s for s in splits if set(_COFW_KEYS[s]) <= set(data)]
    if not found:
        wanted = " or ".join(str(_COFW_KEYS[s]) for s in splits)
        raise AnnotationError(path, None, f"expected the variables {wanted}, found {sorted(data)}")
    images, shapes, boxes = (data[key] for key in _COFW_KEYS[found[0]])
    shapes = np.atleast_2d(np.asarray(shapes, np.float64))
    boxes = np.atleast_2d(np.asarray(boxes, np.float64))
    if shapes.shape[1] != 3 * _COFW_POINTS or boxes.shape[1] != 4:
        raise AnnotationError(path, None, f"shapes must be (M, 87) and boxes (M, 4), got {shapes.shape} "
                              f"and {boxes.shape}")
    if not len(images) == len(shapes) == len(boxes):
        counts = f"{len(images)} images, {len(shapes)} shapes and {len(boxes)} boxes"
        raise AnnotationError(path, None, f"{counts} must match")
    records = []
    for face, (image, shape, box) in enumerate(zip(images, shapes, boxes, strict=True), 1):
        if not (np.isfinite(shape).all() and np.isfinite(box).all()):
            raise AnnotationError(path, face, "shape or box holds NaN or inf")
        flags = shape[2 * _COFW_POINTS:]
        if not np.isin(flags, (0, 1)).all():
            raise AnnotationError(path, face, f"occlusion flags must be 0 or 1, got {np.unique(flags)}")
        if not (box[2] > 0 and box[3] > 0):
            raise AnnotationError(path, face, f"box width and height must be > 0, got {box.tolist()}")
        if image.ndim not in (2, 3) or image.size == 0:
            raise AnnotationError(path, face, f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
        records.append(FaceRecord(
            landmarks=np.stack([shape[:_COFW_POINTS], shape[_COFW_POINTS : 2 * _COFW_POINTS]], axis=1),
            image=image, bbox=np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]]),
            occluded=flags.astype(bool), source=f"{path}:{face}",
        ))
    return records


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``ndarray[H, W, 3]`` uint8 RGB (needs Pillow, installed with matplotlib)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("reading image files needs Pillow: pip install pillow") from err
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise AnnotationError(path, None, f"cannot read the image ({err})") from err
