r"""Face detectors behind a small registry, and the change of box convention between a detector
and a landmark model.

A detector is a function from an ``ndarray[H, W, 3]`` uint8 RGB image to ``(boxes, scores)``:
``ndarray[F, 4]`` boxes ``(x_min, y_min, x_max, y_max)`` in pixels (pixel centres at integers,
so a box around the pixels ``0 .. w - 1`` spans ``-0.5 .. w - 0.5``) and ``ndarray[F]`` scores,
higher is surer. Register one with :func:`register_detector`; :func:`get_detector` returns it
wrapped in a :class:`Detector`, which checks its output and sorts the faces best first.

A detector frames a face its own way (OpenCV's Haar boxes sit higher and wider than the
landmarks); its :class:`BoxMap` turns its boxes into *landmark boxes*, the extent of the face's
landmarks, which is the box a model trained on 300W or synthetic faces was cropped around.

The built-in ``"haar"`` detector is OpenCV's frontal-face Haar cascade; the cascade file ships
inside ``opencv-python-headless`` 4.x (``pip install 'landmark-graph[detect]'``), nothing is
downloaded.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._checks import check_boxes
from ..registry import Registry

__all__ = [
    "DETECTORS",
    "HAAR_BOX_MAP",
    "BoxMap",
    "Detector",
    "DetectorFn",
    "get_detector",
    "haar_frontal_faces",
    "register_detector",
]

DetectorFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BoxMap:
    r"""A change of face-box convention: the box keeps its aspect, its sides are scaled by
    ``scale`` and its centre moves by ``shift`` times its longer side :math:`L`,

    .. math::
        c' = c + L\,\delta, \qquad (w', h') = s\,(w, h), \qquad L = \max(w, h).

    Args:
        scale: :math:`s`, the ratio of the new box's sides to the old one's.
        shift: :math:`\delta = (\delta_x, \delta_y)`, the centre's move in units of :math:`L`
            (``y`` down: a positive :math:`\delta_y` moves the box down).

    Example:
        >>> m = BoxMap(scale=0.5, shift=(0.0, 0.25))
        >>> m(np.array([[0.0, 0.0, 100.0, 100.0]])).tolist()
        [[25.0, 50.0, 75.0, 100.0]]
        >>> BoxMap.fit([[0.0, 0.0, 100.0, 100.0]], [[25.0, 50.0, 75.0, 100.0]])
        BoxMap(scale=0.5, shift=(0.0, 0.25))
    """

    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")
        if len(self.shift) != 2 or not all(math.isfinite(v) for v in self.shift):
            raise ValueError(f"shift must be two finite numbers (dx, dy), got {self.shift!r}")
        object.__setattr__(self, "shift", (float(self.shift[0]), float(self.shift[1])))
        object.__setattr__(self, "scale", float(self.scale))

    def __call__(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``ndarray[F, 4]`` boxes (or one ``[4]`` box) to ``ndarray[F, 4]`` float64."""
        boxes = check_boxes("boxes", boxes)
        centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
        centre = centre + size.max(1, keepdims=True) * np.asarray(self.shift)
        half = size * self.scale / 2
        return np.concatenate([centre - half, centre + half], axis=1)

    @classmethod
    def fit(cls, source: np.ndarray, target: np.ndarray) -> BoxMap:
        """The map from ``source`` to ``target`` boxes (``ndarray[F, 4]`` each, face by face):
        the median ratio of their longer sides and the median centre offset over the source's
        longer side (medians, so that a few odd faces do not pull it)."""
        source, target = check_boxes("source", source), check_boxes("target", target)
        if len(source) != len(target):
            raise ValueError(f"source and target must hold the same faces, got {len(source)} and "
                             f"{len(target)}")
        side = (source[:, 2:] - source[:, :2]).max(1)
        scale = np.median((target[:, 2:] - target[:, :2]).max(1) / side)
        offset = ((target[:, :2] + target[:, 2:]) - (source[:, :2] + source[:, 2:])) / 2 / side[:, None]
        dx, dy = np.median(offset, axis=0)
        return cls(float(scale), (float(dx), float(dy)))


@dataclass(frozen=True)
class Detector:
    """A registered detector: ``detector(image) -> (boxes, scores)``, checked and sorted best first.

    Attributes:
        name: its registry name.
        detect: the function (see the module docstring).
        box_map: from its boxes to landmark boxes (see :class:`BoxMap`).
    """

    name: str
    detect: DetectorFn
    box_map: BoxMap = BoxMap()

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``ndarray[H, W, 3]`` uint8 -> ``ndarray[F, 4]`` float64 boxes, ``ndarray[F]`` float64 scores."""
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise ValueError(f"detector {self.name!r} takes an ndarray[H, W, 3] uint8 RGB image, got "
                             f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
        boxes, scores = self.detect(image)
        boxes = check_boxes(f"detector {self.name!r} boxes", np.asarray(boxes, np.float64).reshape(-1, 4))
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"detector {self.name!r} returned {len(boxes)} boxes but {len(scores)} scores")
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order]


#: Registered detectors by name.
DETECTORS: Registry[Detector] = Registry("detector")


def register_detector(name: str, *, box_map: BoxMap = BoxMap()) -> Callable[[DetectorFn], DetectorFn]:
    """Decorator: make ``fn(image) -> (boxes, scores)`` available as ``get_detector(name)``.

    Args:
        name: the registry name (also ``landmark-graph predict --detector NAME``).
        box_map: from the detector's boxes to landmark boxes; the identity when its boxes
            already frame the landmarks.

    Example:
        >>> @register_detector("centre-square")
        ... def centre_square(image):
        ...     h, w = image.shape[:2]
        ...     r = min(h, w) / 4
        ...     return np.array([[w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r]]), np.ones(1)
        >>> get_detector("centre-square")(np.zeros((40, 60, 3), np.uint8))[0].tolist()
        [[20.0, 10.0, 40.0, 30.0]]
        >>> DETECTORS.unregister("centre-square")
    """

    def add(fn: DetectorFn) -> DetectorFn:
        DETECTORS.register(name, Detector(name, fn, box_map))
        return fn

    return add


def get_detector(name: str) -> Detector:
    """The detector registered as ``name``; ``"package.module:name"`` imports ``package.module``
    first (where it registers ``name``). A ``ValueError`` lists the known ones otherwise."""
    module, _, short = name.rpartition(":")
    if module:
        importlib.import_module(module)
    return DETECTORS.get(short)


@functools.cache
def _haar_cascade(file_name: str):
    try:
        import cv2
    except ImportError as error:
        raise ImportError("the 'haar' face detector needs OpenCV 4.x: "
                          "pip install 'landmark-graph[detect]'") from error
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None:  # opencv-python 5.x no longer ships the cascade files
        raise ImportError(f"OpenCV {cv2.__version__} ships no Haar cascades; "
                          "pip install 'landmark-graph[detect]' (opencv-python-headless 4.x)")
    cascade = cv2.CascadeClassifier(folder + file_name)
    if cascade.empty():
        raise ImportError(f"OpenCV could not load {folder + file_name}")
    return cv2, cascade


#: Haar boxes to landmark boxes, fitted with :meth:`BoxMap.fit` on the photos with 68-point
#: annotations measured in docs/cli.md; ``shift_x`` is set to 0, since a frontal face
#: detector is left-right symmetric.
HAAR_BOX_MAP = BoxMap(scale=0.91, shift=(0.0, 0.19))


@register_detector("haar", box_map=HAAR_BOX_MAP)
def haar_frontal_faces(
    image: np.ndarray, *, scale_factor: float = 1.1, min_neighbors: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``).

    Args:
        image: ``ndarray[H, W, 3]`` uint8 RGB.
        scale_factor: step between the scanned window sizes.
        min_neighbors: overlapping raw hits needed to keep a face (fewer: more faces found,
            more false ones).

    Returns:
        ``ndarray[F, 4]`` boxes and ``ndarray[F]`` scores (the cascade's last-stage weight).
    """
    cv2, cascade = _haar_cascade("haarcascade_frontalface_default.xml")
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    found, _, weights = cascade.detectMultiScale3(grey, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                                  outputRejectLevels=True)
    found = np.asarray(found, np.float64).reshape(-1, 4)
    # Pixels x .. x + w - 1 span x - 0.5 .. x + w - 0.5.
    boxes = np.concatenate([found[:, :2] - 0.5, found[:, :2] + found[:, 2:] - 0.5], axis=1)
    return boxes, np.asarray(weights, np.float64).reshape(-1)
