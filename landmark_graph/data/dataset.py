"""A ``torch.utils.data.Dataset`` over annotated faces: crop, resize, augment."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..schemes import LandmarkScheme, get_scheme
from .readers import AnnotationError, FaceRecord, load_image
from .transforms import Augmentation, LandmarkTransform

__all__ = ["LandmarkDataset"]


def _name(index: int, record: FaceRecord) -> str:
    """``records[i]``, with the record's source or image path, for messages."""
    where = record.source or (str(record.image_path) if record.image_path is not None else "")
    return f"records[{index}] ({where})" if where else f"records[{index}]"


def _validated(index: int, record: FaceRecord, image_size: tuple[int, int] | None = None) -> None:
    try:
        record.validate(image_size)
    except AnnotationError as err:
        raise AnnotationError(_name(index, record), None, err.problem) from None


class LandmarkDataset(Dataset):
    """Faces from :class:`~landmark_graph.data.FaceRecord` s as crops of ``image_size`` pixels.

    Training applies the paper's augmentation (:class:`~landmark_graph.data.Augmentation`:
    rotation ±40°, shift ±30 px at 256, scale ±10%, flip with the scheme's mirror table, one
    random rectangle over 20% of the crop); the test transform is the plain crop, deterministic.

    Args:
        records: the faces, e.g. from :func:`~landmark_graph.data.read_wflw`.
        scheme: their landmark scheme (name or object).
        image_size: crop side ``S``.
        train: augment.
        augmentation: the random ranges when ``train`` (default: the paper's).
        margin: crop side over the longer face-box side.
        seed: with a seed, sample ``i`` of epoch ``e`` (:meth:`set_epoch`) is a fixed function
            of ``(seed, e, i)``, also across DataLoader workers; without, augmentation draws
            from torch's global generator.
        image_loader: reads ``record.image_path`` to an ``ndarray[H, W(, C)]``.

    Every record is checked (:meth:`~landmark_graph.data.FaceRecord.validate`) when the data set
    is built and, against its image's size, when its item is read; an
    :class:`~landmark_graph.data.AnnotationError` names ``records[i]`` and its source or image.

    Each item is a dict: ``"image"`` ``Tensor[3, S, S]`` float32 in ``[0, 1]``, ``"landmarks"``
    ``Tensor[N, 2]`` crop pixels, ``"transform"`` ``Tensor[2, 3]`` from image to crop pixels,
    ``"flipped"``, ``"index"``; plus ``"occluded"`` and ``"visible"`` ``BoolTensor[N]`` when the
    records carry occlusion flags (COFW) and ``"attributes"`` ``BoolTensor[6]`` when they carry
    WFLW attributes.

    Example:
        >>> import numpy as np
        >>> from landmark_graph.data import FaceRecord
        >>> pts = get_scheme("cofw29").template * 30 + 50
        >>> rec = FaceRecord(pts, image=np.zeros((100, 100, 3), np.uint8), occluded=np.zeros(29, bool))
        >>> item = LandmarkDataset([rec], "cofw29", image_size=32, train=True, seed=0)[0]
        >>> item["image"].shape, item["landmarks"].shape, item["visible"].all().item()
        (torch.Size([3, 32, 32]), torch.Size([29, 2]), True)
    """

    def __init__(
        self,
        records: Sequence[FaceRecord],
        scheme: LandmarkScheme | str,
        image_size: int = 256,
        train: bool = False,
        *,
        augmentation: Augmentation | None = None,
        margin: float = 1.25,
        seed: int | None = None,
        image_loader: Callable[[str | os.PathLike], np.ndarray] = load_image,
    ) -> None:
        self.scheme = get_scheme(scheme)
        self.records = list(records)
        for index, record in enumerate(self.records):
            if not isinstance(record, FaceRecord):
                raise TypeError(f"records[{index}] must be a FaceRecord, got {type(record).__name__}")
            _validated(index, record)
            if np.shape(record.landmarks) != (self.scheme.num_points, 2):
                raise AnnotationError(_name(index, record), None, f"landmarks must have shape "
                                      f"({self.scheme.num_points}, 2) for scheme {self.scheme.name!r}, "
                                      f"got {np.shape(record.landmarks)}")
            if record.image is None and record.image_path is None:
                raise AnnotationError(_name(index, record), None, "has neither image nor image_path")
        self.train = train
        augmentation = (augmentation or Augmentation()) if train else None
        self.transform = LandmarkTransform(self.scheme, image_size, augmentation, margin)
        self.seed = seed
        self.epoch = 0
        self.image_loader = image_loader

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream of a seeded data set (call once per epoch)."""
        self.epoch = int(epoch)

    @property
    def shapes(self) -> Tensor:
        """``Tensor[M, N, 2]`` float64: the annotated landmarks in image pixels (for
        :class:`~landmark_graph.data.PoseBalancedSampler` or a correlation adjacency)."""
        return torch.from_numpy(np.stack([np.asarray(r.landmarks, np.float64) for r in self.records]))

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None or not self.train:
            return None
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        record = self.records[index]
        image = record.image if record.image is not None else self.image_loader(record.image_path)
        _validated(index, record, np.shape(image)[:2])  # the image size is known only now
        out = self.transform(image, record.landmarks, record.box(), self._generator(index))
        order = out.pop("order")
        out["index"] = torch.tensor(index)
        if record.occluded is not None:
            out["occluded"] = torch.as_tensor(np.asarray(record.occluded, bool))[order]
            out["visible"] = ~out["occluded"]
        if record.attributes is not None:
            out["attributes"] = torch.as_tensor(np.asarray(record.attributes, bool))
        return out
