"""The training engine behind ``landmark-graph train``, reusable from Python.

A run is described by one :class:`TrainConfig`; :func:`train` builds the data sets, the model
(backbone + head, :func:`build_model`), the loss (:class:`LandmarkCriterion`), the optimiser and
the learning-rate schedule, trains, evaluates every ``eval_every`` epochs, writes a JSON line
per epoch to ``out_dir/log.jsonl`` and checkpoints ``out_dir/last.pt`` / ``best.pt`` (the best
evaluated epoch) with the configuration embedded, each file replaced atomically. ``resume``
continues a run from a checkpoint: every random stream of an epoch derives from ``(seed,
epoch)``, so on CPU a run killed mid-epoch and resumed ends with the same weights as one never
interrupted.

The same code runs under ``torchrun``: when ``WORLD_SIZE > 1`` it joins the process group
(``nccl`` on GPU, ``gloo`` on CPU), wraps the model in ``DistributedDataParallel`` (optionally
with ``SyncBatchNorm``) and shards the training set with a ``DistributedSampler``;
``batch_size`` is per process. Every rank evaluates the full test sets (no collective calls
in evaluation); rank 0 logs and writes files.

Example:
    >>> cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4, image_size=32,
    ...                   train_size=8, test_size=4, scheme="cofw29", hidden_features=16,
    ...                   num_blocks=1, backbone_width=8, progress=False)
    >>> result = train(cfg)
    >>> sorted(result["metrics"])
    ['clean', 'occluded']
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import functional as LF
from .._checks import check_window
from ..adjacency import build_correlation_adjacency, index_order_adjacency
from ..heads import EMBEDDINGS, FCHead, HeadOutput, LGRLHead
from ..losses import RelativeLocationLoss, SoftWingLoss, WingLoss
from ..metrics import LandmarkEvaluator, attribute_subsets, occlusion_report
from ..registry import Registry
from ..schemes import get_scheme
from .backbones import SmallCNN, build_backbone
from .checkpoints import CheckpointError, read_torch_file, replacing, save_atomic

__all__ = [
    "ADJACENCIES",
    "DATASETS",
    "HEADS",
    "LOSSES",
    "MODEL_KEYS",
    "OPTIMIZERS",
    "SCHEDULES",
    "CachedDataset",
    "CheckpointError",
    "LandmarkCriterion",
    "LandmarkModel",
    "TrainConfig",
    "batch_loss",
    "build_loader",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "train",
]

REFERENCE_SIZE = 256  # loss parameters (Soft Wing's omega in pixels) assume a 256x256 crop


@dataclass
class TrainConfig:
    r"""Everything that defines a training run (also stored in each checkpoint).

    Data: ``dataset`` is ``"synthetic"`` or a real set (``"wflw"``, ``"300w"``, ``"cofw"``) read
    from ``data_root``; ``scheme`` defaults to the data set's; ``train_size``, ``test_size`` and
    ``occlusion`` (share of occluded training images) apply to synthetic data; ``one_based``
    subtracts 1 from 300W ``.pts`` and COFW coordinates (MATLAB's pixels counted from 1; WFLW
    and synthetic data are 0-based and ignore it); ``augment`` is the strength of the training
    augmentation of a real set (1: the paper's ranges, 0: none;
    :meth:`~landmark_graph.data.Augmentation.scaled`; synthetic faces are not augmented).
    Model: ``backbone`` name (:func:`~landmark_graph.engine.backbones.build_backbone`), ``head``
    (``"lgrl"`` or ``"fc"``) and its options; ``adjacency`` is ``"correlation"`` (eq. 1-2 on the
    training landmarks), ``"scheme"`` (the scheme's default) or ``"index"`` (index order).
    Loss: ``loss`` (``"l1"``, ``"wing"``, ``"softwing"``) plus ``relative_weight`` times the
    relative location loss (the paper's :math:`\lambda = 1`; 0 disables it). Optimisation:
    ``optimizer``, ``lr``, ``schedule`` (``"constant"``, ``"step"``: times ``gamma`` every
    ``step_epochs``, ``"cosine"``).
    Occlusion-aware head (``LGRLHead`` options, off by default): ``embedding``
    (``"map_to_node"`` or ``"attention"``), ``attention_window``, ``visibility``, ``uncertainty``,
    ``gate_edges``; their losses, each added to the landmark loss times its weight:
    ``attention_weight`` (the attention heatmap cross-entropy on the visible landmarks, attention
    embedding only),
    ``visibility_weight`` (BCE of the visibility logits on the data's ``visible`` flags),
    ``uncertainty_weight`` (Laplace NLL; both 10 by default, measured better than 1 on every
    output and needed for consistency training to train: docs/results.md).
    ``consistency_weight`` > 0: every batch also goes through with synthetic occluders pasted on
    (:func:`~landmark_graph.data.synthetic.paste_occluders`), the landmark loss on both copies
    plus this weight times Soft Wing between the pasted copy's visible landmarks and the clean
    copy's (detached) predictions, per point as strong as the landmark loss at weight 1
    (:func:`batch_loss`).
    """

    dataset: str = "synthetic"
    data_root: str | None = None
    scheme: str | None = None
    image_size: int = 128
    train_size: int = 2000
    test_size: int = 200
    occlusion: float = 0.5
    one_based: bool = False
    augment: float = 1.0
    backbone: str = "small"
    backbone_width: int = 32
    backbone_depth: int = 4
    pretrained: bool = False
    head: str = "lgrl"
    k: int = 3
    adjacency: str = "correlation"
    hidden_features: int = 128
    num_blocks: int = 4
    expansion: int = 4
    edge_weights: str = "dynamic"
    head_channels: int = 256
    embedding: str = "map_to_node"
    attention_window: int | None = None
    visibility: bool = False
    uncertainty: bool = False
    gate_edges: bool = False
    loss: str = "softwing"
    relative_weight: float = 1.0
    attention_weight: float = 10.0
    visibility_weight: float = 10.0
    uncertainty_weight: float = 10.0
    consistency_weight: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    step_epochs: int = 100
    gamma: float = 0.2
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 32
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    sync_bn: bool = False
    eval_every: int = 1
    out_dir: str | None = None
    resume: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {"dataset": DATASETS, "head": HEADS, "loss": LOSSES, "optimizer": OPTIMIZERS,
                   "schedule": SCHEDULES, "adjacency": ADJACENCIES}
        for name, registry in choices.items():
            if getattr(self, name) not in registry:
                raise ValueError(f"{name} must be one of {sorted(registry)}, got {getattr(self, name)!r}")
        for name in ("image_size", "train_size", "test_size", "epochs", "batch_size", "k",
                     "hidden_features", "expansion", "head_channels", "backbone_width", "eval_every",
                     "backbone_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be a positive int or None, got {self.steps_per_epoch!r}")
        if not (self.lr > 0 and self.relative_weight >= 0 and 0 <= self.occlusion <= 1
                and 0 <= self.augment < math.inf):
            raise ValueError(
                "lr must be > 0, relative_weight >= 0, occlusion in [0, 1] and augment >= 0, got "
                f"lr={self.lr!r}, relative_weight={self.relative_weight!r}, occlusion={self.occlusion!r}, "
                f"augment={self.augment!r}"
            )
        if self.dataset != "synthetic" and self.data_root is None:
            raise ValueError(f"data_root is required for dataset {self.dataset!r}")
        self._check_occlusion_options()

    def _check_occlusion_options(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        options = {"embedding": self.embedding != "map_to_node", "visibility": self.visibility,
                   "uncertainty": self.uncertainty, "gate_edges": self.gate_edges}
        used = [name for name, on in options.items() if on]
        if used and self.head != "lgrl":
            raise ValueError(f"{', '.join(used)} are options of head='lgrl', got head={self.head!r}")
        check_window("attention_window", self.attention_window, self.embedding)
        if self.gate_edges and not self.visibility:
            raise ValueError("gate_edges needs visibility: the gate is the senders' predicted visibility")
        for name in ("attention_weight", "visibility_weight", "uncertainty_weight", "consistency_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @property
    def details(self) -> bool:
        """Whether training needs the head's :class:`~landmark_graph.heads.HeadOutput`, not just
        the landmarks (an occlusion option or consistency training is on)."""
        return (self.embedding != "map_to_node" or self.visibility or self.uncertainty
                or self.consistency_weight > 0)

    @property
    def scheme_name(self) -> str:
        return self.scheme or DATASETS[self.dataset].scheme

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# Fields that fix the model's architecture: a checkpoint only loads into a model built with
# the same values.
MODEL_KEYS = ("scheme_name", "image_size", "backbone", "backbone_width", "backbone_depth", "head", "k",
              "hidden_features", "num_blocks", "expansion", "edge_weights", "head_channels", "embedding",
              "attention_window", "visibility", "uncertainty", "gate_edges")


# ---------------------------------------------------------------------------------------------
# Data sets.


@dataclass(frozen=True)
class DatasetSpec:
    """How to build a data set: its default scheme and ``build(config) -> (train, {name: test})``."""

    scheme: str
    build: Callable[[TrainConfig], tuple[Dataset, dict[str, Dataset]]]


#: Data sets by name (``TrainConfig.dataset``).
DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _synthetic(config: TrainConfig) -> tuple[Dataset, dict[str, Dataset]]:
    from ..data.synthetic import SyntheticFaces

    def make(length: int, stream: int, occlusion: float) -> SyntheticFaces:
        return SyntheticFaces(config.scheme_name, length, config.image_size,
                              seed=config.seed * 10 + stream, occlusion=occlusion)

    return make(config.train_size, 0, config.occlusion), {
        "clean": make(config.test_size, 1, 0.0),
        "occluded": make(config.test_size, 2, 1.0),
    }


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.rglob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} under data_root {str(root)!r}")
    return found[0]


def _wflw_records(root: Path, split: str, config: TrainConfig) -> list:
    from ..data import read_wflw

    images = root / "WFLW_images"
    return read_wflw(_one(root, f"list_98pt_rect_attr_{split}.txt"), images if images.is_dir() else None)


def _300w_records(root: Path, split: str, config: TrainConfig) -> list:
    from ..data import read_300w

    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"300W needs the folder {str(folder)!r} with .pts (or .ljson) files and "
                                "their images")
    return read_300w(folder, one_based=config.one_based)


def _cofw_records(root: Path, split: str, config: TrainConfig) -> list:
    from ..data import read_cofw

    return read_cofw(_one(root, f"COFW_{split}*.mat"), split, one_based=config.one_based)


def _real(
    read: Callable[[Path, str, TrainConfig], list],
) -> Callable[[TrainConfig], tuple[Dataset, dict[str, Dataset]]]:
    """Builder for a data set on disk: ``read(root, split, config)`` gives the records of a split."""

    def build(config: TrainConfig) -> tuple[Dataset, dict[str, Dataset]]:
        from ..data import Augmentation, LandmarkDataset

        root = Path(config.data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"data_root {str(root)!r} is not a folder")
        augmentation = Augmentation().scaled(config.augment)
        make = lambda split, train: LandmarkDataset(  # noqa: E731
            read(root, split, config), config.scheme_name, config.image_size, train and config.augment > 0,
            augmentation=augmentation, seed=config.seed)
        return make("train", True), {"test": make("test", False)}

    return build


DATASETS.register("synthetic", DatasetSpec("wflw98", _synthetic))
DATASETS.register("wflw", DatasetSpec("wflw98", _real(_wflw_records)))
DATASETS.register("300w", DatasetSpec("300w68", _real(_300w_records)))
DATASETS.register("cofw", DatasetSpec("cofw29", _real(_cofw_records)))


class CachedDataset(Dataset):
    """Every sample of a data set rendered once and held in memory as stacked tensors.

    Shares one rendering between several runs (the demo, an ablation); items are dicts of the
    same keys as the source's.

    Example:
        >>> from landmark_graph.data.synthetic import SyntheticFaces
        >>> cached = CachedDataset(SyntheticFaces("cofw29", length=3, image_size=16))
        >>> cached[2]["image"].shape, len(cached)
        (torch.Size([3, 16, 16]), 3)
    """

    def __init__(self, dataset: Dataset, progress: bool = False, description: str = "render") -> None:
        bar = _progress(len(dataset), description, progress)
        items = []
        for i in range(len(dataset)):
            items.append(dataset[i])
            bar.update(1)
        bar.close()
        self.tensors = {k: torch.stack([item[k] for item in items]) for k in items[0]}

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def landmarks(self, count: int | None = None) -> Tensor:
        """``Tensor[M, N, 2]``: the landmarks of the first ``count`` samples."""
        return self.tensors["landmarks"][:count]


def training_landmarks(dataset: Dataset, count: int = 1000) -> Tensor:
    """``Tensor[M, N, 2]``: landmarks of up to ``count`` training samples (for the adjacency).

    Uses the synthetic set's ``landmarks(count)`` method when it has one (no rendering).
    """
    if callable(getattr(dataset, "landmarks", None)):
        return dataset.landmarks(count)
    return torch.stack([dataset[i]["landmarks"] for i in range(min(count, len(dataset)))])


# ---------------------------------------------------------------------------------------------
# Model.


class LandmarkModel(nn.Module):
    r"""Backbone + landmark head, predicting pixel coordinates of the input image.

    .. math::
        \hat P = \bar P + \tfrac{S}{2}\, \mathrm{head}(\mathrm{backbone}(I))

    with :math:`\bar P` the mean training shape ``(N, 2)`` (a buffer) and :math:`S` the image
    side: the head regresses offsets in normalised units.

    With ``return_details=True`` it returns the head's :class:`~landmark_graph.heads.HeadOutput`
    in image units: landmarks in pixels, ``log_scale`` the log of a Laplace scale in pixels
    (the head's plus :math:`\ln(S/2)`); an :class:`FCHead` gives ``None`` for the rest.

    Shape:
        - Input: ``Tensor[B, 3, S, S]``.
        - Output: ``Tensor[B, N, 2]`` in pixels (x, y).

    Example:
        >>> import torch
        >>> model = LandmarkModel(SmallCNN(8, 3), FCHead(5), torch.zeros(5, 2), image_size=32)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 5, 2])
    """

    mean_shape: Tensor

    def __init__(self, backbone: nn.Module, head: nn.Module, mean_shape: Tensor, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.image_size = image_size
        self.register_buffer("mean_shape", torch.as_tensor(mean_shape, dtype=torch.float32).clone())

    def forward(self, images: Tensor, return_details: bool = False) -> Tensor | HeadOutput:
        if not return_details:
            return self.mean_shape + self.head(self.backbone(images)) * (self.image_size / 2)
        features, half = self.backbone(images), self.image_size / 2
        out = (self.head(features, return_details=True) if isinstance(self.head, LGRLHead)
               else HeadOutput(self.head(features), None, None))
        log_scale = None if out.log_scale is None else out.log_scale + math.log(half)
        return out._replace(landmarks=self.mean_shape + out.landmarks * half, log_scale=log_scale)


#: Head builders ``(config, channels, adjacency) -> nn.Module`` by name (``TrainConfig.head``).
HEADS: Registry[Callable[[TrainConfig, int, Tensor], nn.Module]] = Registry("head")


@HEADS.register("lgrl")
def _lgrl(config: TrainConfig, channels: int, adjacency: Tensor) -> nn.Module:
    return LGRLHead(
        adjacency.shape[0], config.k, adjacency=adjacency, in_channels=channels,
        hidden_features=config.hidden_features, num_blocks=config.num_blocks, expansion=config.expansion,
        edge_weights=config.edge_weights, hidden_channels=config.head_channels,
        embedding=config.embedding, attention_window=config.attention_window, visibility=config.visibility,
        uncertainty=config.uncertainty, gate_edges=config.gate_edges,
    )


@HEADS.register("fc")
def _fc(config: TrainConfig, channels: int, adjacency: Tensor) -> nn.Module:
    return FCHead(adjacency.shape[0], channels, hidden_features=config.head_channels)


#: Neighbourhoods ``(scheme, k, training shapes or None) -> BoolTensor[N, N]`` by name.
ADJACENCIES: Registry[Callable[[Any, int, Tensor | None], Tensor]] = Registry("adjacency")
ADJACENCIES.register("correlation", lambda scheme, k, shapes: (
    build_correlation_adjacency(shapes, k) if shapes is not None else scheme.adjacency(k)))
ADJACENCIES.register("scheme", lambda scheme, k, shapes: scheme.adjacency(k))
ADJACENCIES.register("index", lambda scheme, k, shapes: index_order_adjacency(scheme.num_points, k))


def _scheme_adjacency_works(scheme, k: int) -> bool:
    try:
        scheme.adjacency(k)
    except ValueError:
        return False
    return True


def build_model(config: TrainConfig, landmarks: Tensor | None = None) -> LandmarkModel:
    """The model a config describes, with lazy layers materialised (ready for DDP and optimisers).

    Args:
        config: the run's :class:`TrainConfig`.
        landmarks: ``Tensor[M, N, 2]`` training landmarks in pixels, for the correlation
            adjacency and the mean shape; ``None`` (when a checkpoint will be loaded) uses the
            scheme's adjacency and template.
    """
    scheme = get_scheme(config.scheme_name)
    if config.backbone == "small":
        backbone: nn.Module = SmallCNN(config.backbone_width, config.backbone_depth)
        channels = backbone.out_channels
    else:
        backbone, channels = build_backbone(config.backbone, config.pretrained)
    try:
        adjacency = ADJACENCIES[config.adjacency](scheme, config.k, landmarks)
    except ValueError as error:
        if config.adjacency != "correlation" or not _scheme_adjacency_works(scheme, config.k):
            raise
        raise ValueError(
            f"the correlation adjacency cannot be built from {len(landmarks)} training shapes: {error}; "
            "adjacency='scheme' (CLI: --adjacency scheme) uses the scheme's own neighbourhood instead"
        ) from error
    head = HEADS[config.head](config, channels, adjacency)
    if landmarks is not None:
        mean = landmarks.float().mean(0)
    else:  # placeholder until a checkpoint's buffer replaces it
        mean = torch.full((scheme.num_points, 2), config.image_size / 2)
    model = LandmarkModel(backbone, head, mean, config.image_size)
    model.eval()
    with torch.no_grad():  # materialise lazy layers
        model(torch.zeros(1, 3, config.image_size, config.image_size))
    return model.train()


# ---------------------------------------------------------------------------------------------
# Loss, optimiser, schedule.


#: Absolute landmark losses ``(reduction) -> nn.Module`` by name (``TrainConfig.loss``).
LOSSES: Registry[Callable[[str], nn.Module]] = Registry("loss")
LOSSES.register("l1", lambda reduction: nn.L1Loss(reduction=reduction))
LOSSES.register("wing", lambda reduction: WingLoss(reduction=reduction))
LOSSES.register("softwing", lambda reduction: SoftWingLoss(reduction=reduction))


class LandmarkCriterion(nn.Module):
    r"""Absolute loss plus :math:`\lambda` times the relative location loss, in 256-pixel units.

    .. math::
        \mathcal L = \ell(s\hat P, sP) + \lambda\, \mathcal L_{\text{rel}}(s\hat P, sP),
        \qquad s = 256 / S

    Given a :class:`~landmark_graph.heads.HeadOutput` (``LandmarkModel(...,
    return_details=True)``) instead of the landmarks, it adds the occlusion-aware head's terms
    for the outputs the head has:

    .. math::
        \mathcal L \mathrel{+}= w_a\, \mathcal L_{\text{heatmap}}(a, u; v)
        + w_v\, \mathrm{BCE}(\text{logits}, v)
        + w_u\, \mathcal L_{\text{Laplace}}(s\hat P, sP, \log b + \log s)

    with :math:`v` the ``visible`` flags (the heatmap term counts the visible landmarks only;
    all when ``visible`` is ``None``), :math:`u` the targets in normalised map coordinates
    (:func:`~landmark_graph.functional.attention_heatmap_loss`) and :math:`b` the predicted
    Laplace scale in pixels.

    Example:
        >>> import torch
        >>> from landmark_graph import index_order_adjacency
        >>> crit = LandmarkCriterion("l1", 64, adjacency=index_order_adjacency(4, 1), relative_weight=1.0)
        >>> p = torch.zeros(1, 4, 2)
        >>> crit(p + 1.0, p).item()  # a shift: absolute 4 px at the 256 scale, relative 0
        4.0
    """

    def __init__(
        self, loss: str, image_size: int, adjacency: Tensor | None = None, relative_weight: float = 0.0,
        *, attention_weight: float = 0.0, visibility_weight: float = 0.0, uncertainty_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.absolute = LOSSES[loss]("mean")
        self.scale = REFERENCE_SIZE / image_size
        self.image_size = image_size
        self.relative_weight = relative_weight
        self.relative = (
            RelativeLocationLoss(adjacency, criterion=LOSSES[loss]("none"))
            if relative_weight > 0 else None
        )
        self.attention_weight = attention_weight
        self.visibility_weight = visibility_weight
        self.uncertainty_weight = uncertainty_weight

    def forward(self, pred: Tensor | HeadOutput, target: Tensor, visible: Tensor | None = None) -> Tensor:
        details = pred if isinstance(pred, HeadOutput) else None
        if details is not None:
            pred = details.landmarks
        pred, target = pred * self.scale, target * self.scale
        loss = self.absolute(pred, target)
        if self.relative is not None:
            loss = loss + self.relative_weight * self.relative(pred, target)
        if details is not None:
            loss = loss + self._occlusion_terms(details, pred, target, visible)
        return loss

    def _occlusion_terms(
        self, out: HeadOutput, pred: Tensor, target: Tensor, visible: Tensor | None
    ) -> Tensor:
        """The heatmap, visibility and Laplace terms of the outputs ``out`` has (coordinates scaled)."""
        loss = pred.new_zeros(())
        if out.attention_logits is not None and self.attention_weight > 0:
            # 256-unit targets back to [-1, 1] map coordinates (pixel centres at integers).
            grid = (target / self.scale + 0.5) / (self.image_size / 2) - 1
            heatmap = LF.attention_heatmap_loss(out.attention_logits, grid, visible)
            loss = loss + self.attention_weight * heatmap
        if out.visibility_logits is not None and self.visibility_weight > 0:
            if visible is None:
                raise ValueError("the head predicts visibility, but the batch has no 'visible' flags "
                                 "to train it")
            loss = loss + self.visibility_weight * nn.functional.binary_cross_entropy_with_logits(
                out.visibility_logits, visible.to(out.visibility_logits.dtype))
        if out.log_scale is not None and self.uncertainty_weight > 0:
            log_scale = out.log_scale + math.log(self.scale)
            loss = loss + self.uncertainty_weight * LF.laplace_nll_loss(pred, target, log_scale)
        return loss


#: Optimisers ``(parameters, config) -> Optimizer`` by name (``TrainConfig.optimizer``).
OPTIMIZERS: Registry[Callable[[Iterable[Tensor], TrainConfig], torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd", lambda params, c: torch.optim.SGD(params, c.lr, momentum=c.momentum,
                                                              weight_decay=c.weight_decay))
OPTIMIZERS.register("adam", lambda params, c: torch.optim.Adam(params, c.lr, weight_decay=c.weight_decay))
OPTIMIZERS.register("adamw", lambda params, c: torch.optim.AdamW(params, c.lr, weight_decay=c.weight_decay))

#: Multiplier of the learning rate at optimisation step ``s`` of ``total``, ``per_epoch`` a epoch.
SCHEDULES: Registry[Callable[[int, int, int, TrainConfig], float]] = Registry("schedule")
SCHEDULES.register("constant", lambda s, total, per_epoch, c: 1.0)
SCHEDULES.register("step", lambda s, total, per_epoch, c: c.gamma ** (s // (c.step_epochs * per_epoch)))
SCHEDULES.register("cosine", lambda s, total, per_epoch, c: 0.5 * (1 + math.cos(math.pi * min(s, total)
                                                                                 / total)))


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def _model_signature(config: TrainConfig) -> dict[str, Any]:
    return {key: getattr(config, key) for key in MODEL_KEYS}


def check_compatible(saved: TrainConfig, wanted: TrainConfig, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming the architecture fields that differ."""
    a, b = _model_signature(saved), _model_signature(wanted)
    diff = [f"{k}={a[k]!r} (checkpoint) vs {b[k]!r}" for k in MODEL_KEYS if a[k] != b[k]]
    if diff:
        raise CheckpointError(f"checkpoint {str(path)!r} is from another configuration: {'; '.join(diff)}")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`train`; its ``"config"`` becomes a :class:`TrainConfig`.

    Only tensors and plain containers are unpickled (``weights_only=True``): such a checkpoint
    runs no code from the file.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a checkpoint of :func:`train`, or unreadable (one line saying why).
    """
    path = Path(path)
    state = read_torch_file(path, map_location=map_location)
    if not isinstance(state, dict) or not {"config", "model"} <= state.keys():
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by landmark-graph train")
    state["config"] = TrainConfig.from_dict(state["config"])
    return state


def model_from_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[LandmarkModel, TrainConfig]:
    """Rebuild the model stored in a checkpoint, in eval mode."""
    state = load_checkpoint(path)
    config = state["config"]
    model = build_model(config)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as error:
        message = f"checkpoint {str(path)!r} does not match its configuration: {error}"
        raise CheckpointError(message) from error
    return model.to(device).eval(), config


# ---------------------------------------------------------------------------------------------
# Loops.


def _progress(total: int, description: str, enabled: bool):
    """A tqdm bar when tqdm is installed, otherwise a plain one that prints every ~10%."""
    if not enabled:
        return _PlainProgress(total, description, quiet=True)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainProgress(total, description)
    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)


class _PlainProgress:
    def __init__(self, total: int, description: str, quiet: bool = False) -> None:
        self.total, self.description, self.quiet = total, description, quiet
        self.count, self.every = 0, max(1, total // 10)
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.quiet and (self.count % self.every == 0 or self.count == self.total):
            line = f"{self.description}: {self.count}/{self.total} {self.postfix}"
            print(line, file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    @contextlib.contextmanager
    def external_write_mode(self) -> Iterator[None]:
        """tqdm's interface for printing beside a bar; here each line is flushed in order."""
        sys.stderr.flush()
        yield
        sys.stdout.flush()

    def close(self) -> None:
        pass


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Mapping[str, Tensor]], scheme=None, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """NME, FR and AUC (:class:`~landmark_graph.metrics.LandmarkEvaluator`) of ``model`` on ``loader``.

    Batches are dicts with ``"image"`` and ``"landmarks"``; WFLW ``"attributes"`` are reported
    per subset (pose, expression, ...). When the batches carry ``"visible"`` flags (synthetic
    faces, COFW), the result also holds ``"occlusion"``:
    :func:`~landmark_graph.metrics.occlusion_report` of the whole set (visible-only NME per
    occluded-share group, the rise, and for a :class:`LandmarkModel` whose head has them the
    visibility AUROC and the calibration of the Laplace scales). The model's training mode is
    restored.

    Returns:
        ``LandmarkEvaluator.compute()``: ``{"nme", "fr", "auc", "count", "subsets", ...}``, plus
        ``"occlusion"`` with visibility flags.
    """
    evaluator = LandmarkEvaluator(scheme)
    was_training = model.training
    model.eval()
    details = isinstance(model, LandmarkModel)
    kept: dict[str, list[Tensor]] = {}
    for batch in loader:
        batch = _to(batch, torch.device(device))
        out = model(batch["image"], return_details=True) if details else model(batch["image"])
        pred = out.landmarks if details else out
        flags = batch.get("attributes")
        evaluator.update(pred.float().cpu(), batch["landmarks"].float().cpu(),
                         subsets=None if flags is None else attribute_subsets(flags.cpu()))
        if "visible" in batch:
            parts = {"pred": pred, "target": batch["landmarks"], "visible": batch["visible"]}
            if details:
                parts.update(visibility_logits=out.visibility_logits, log_scale=out.log_scale)
            for name, value in parts.items():
                if value is not None:
                    kept.setdefault(name, []).append(value.float().cpu() if value.is_floating_point()
                                                     else value.cpu())
    model.train(was_training)
    result = evaluator.compute()
    if kept:
        result["occlusion"] = occlusion_report(**{k: torch.cat(v) for k, v in kept.items()}, scheme=scheme)
    return result


def _distributed_setup(config: TrainConfig) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; returns ``(rank, world, device, created)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and config.device in ("auto", "cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else ("cpu" if config.device == "auto" else config.device))
    if cuda:
        torch.cuda.set_device(device)
    if config.sync_bn and (world < 2 or not cuda):
        raise ValueError("sync_bn needs several GPU processes (torchrun --nproc_per_node N on CUDA): "
                         "PyTorch's SyncBatchNorm is GPU only")
    created = world > 1 and not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device, created


def build_loader(dataset: Dataset, config: TrainConfig, sampler=None, shuffle: bool = False) -> DataLoader:
    """The ``DataLoader`` of a run: ``config.batch_size`` and ``workers``, seeded by ``config.seed``;
    ``shuffle`` (training) also drops the last partial batch."""
    # Workers are not kept between epochs: a persistent worker holds the data set as it was at
    # the first epoch and would miss set_epoch (and a resumed run's starting epoch).
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, config.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=config.workers, drop_last=shuffle, generator=generator)


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s random streams: a function of ``(seed, epoch)`` alone (``seed`` for
    epoch 0), so a run resumed at the start of an epoch draws what an uninterrupted run draws."""
    return seed + (epoch << 32)


def _batches(loader: DataLoader, count: int) -> Iterator[Any]:
    """``count`` batches from ``loader``, starting another pass whenever one ends."""
    done = 0
    while done < count:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            done += 1
            if done == count:
                return
        if empty:  # an empty pass would otherwise restart forever
            raise ValueError("the training loader gives no batch")


def train(
    config: TrainConfig,
    *,
    train_set: Dataset | None = None,
    test_sets: Mapping[str, Dataset] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run a training job; see the module docstring.

    Args:
        config: the run.
        train_set, test_sets: prebuilt data sets (for example cached in memory to share
            between runs); default: built from ``config``.
        log: called with one line naming ``out_dir`` and one summary line per evaluation (rank 0
            only); default: nothing.

    Returns:
        ``{"model", "config", "metrics" (last evaluation, per test set), "history" (one dict
        per epoch), "checkpoint" (path or None), "seconds"}``; ``"model"`` is unwrapped from DDP.
    """
    rank, world, device, created = _distributed_setup(config)
    torch.manual_seed(config.seed)
    if train_set is None or test_sets is None:
        built_train, built_tests = DATASETS[config.dataset].build(config)
        train_set, test_sets = train_set or built_train, test_sets or built_tests
    scheme = get_scheme(config.scheme_name)
    if config.visibility and "visible" not in train_set[0]:
        raise ValueError(f"visibility=True trains on per-landmark 'visible' flags, and the {config.dataset} "
                         "training set has none (synthetic faces and COFW have them): turn visibility off")
    state = None
    if config.resume:
        state = load_checkpoint(config.resume)
        check_compatible(state["config"], config, config.resume)
    model = build_model(config, None if state else training_landmarks(train_set))
    if state:
        model.load_state_dict(state["model"])
    criterion = LandmarkCriterion(config.loss, config.image_size, model.head.adjacency
                                  if hasattr(model.head, "adjacency") else scheme.adjacency(config.k),
                                  config.relative_weight, attention_weight=config.attention_weight,
                                  visibility_weight=config.visibility_weight,
                                  uncertainty_weight=config.uncertainty_weight).to(device)
    model.to(device)
    net: nn.Module = model
    if world > 1:
        if config.sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    optimizer = OPTIMIZERS[config.optimizer](net.parameters(), config)
    sampler = (torch.utils.data.distributed.DistributedSampler(train_set, world, rank, seed=config.seed)
               if world > 1 else None)
    loader = build_loader(train_set, config, sampler, shuffle=True)
    if len(loader) < 1:  # the partial batch is dropped: nothing would be left to train on
        shard = f", {len(sampler)} per process" if sampler is not None else ""
        raise ValueError(f"the training set ({len(train_set)} samples{shard}) is smaller than "
                         f"batch_size={config.batch_size}: lower batch_size (--batch-size) or add samples")
    per_epoch = config.steps_per_epoch or len(loader)
    total = per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: SCHEDULES[config.schedule](s, total, per_epoch, config))
    start_epoch, history, best = 0, [], math.inf
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state.get("history", [])
        best = state.get("best", math.inf)
    test_loaders = {name: build_loader(ds, config) for name, ds in test_sets.items()}
    out = Path(config.out_dir) if config.out_dir else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if log is not None:
            log(f"checkpoints and log.jsonl go to {out}")
    started, metrics, checkpoint = time.perf_counter(), {}, None
    bar = _progress(total - start_epoch * per_epoch, f"train {config.head}", config.progress and rank == 0)
    for epoch in range(start_epoch, config.epochs):
        # Every random stream of the epoch restarts from (seed, epoch): the shuffle, the
        # augmentation, torch's global generator (whatever a data set draws from it).
        torch.manual_seed(_epoch_seed(config.seed, epoch))
        loader.generator.manual_seed(_epoch_seed(config.seed, epoch))
        for reseeded in (sampler, train_set):
            if callable(getattr(reseeded, "set_epoch", None)):
                reseeded.set_epoch(epoch)
        net.train()
        losses = []
        # The occluders of consistency training: their own stream per epoch, so the data's stay
        # as they are and a resumed run pastes the same ones.
        occluders = (np.random.default_rng([config.seed, 1, epoch])
                     if config.consistency_weight > 0 else None)
        for batch in _batches(loader, per_epoch):
            if occluders is not None:
                batch = _with_pasted_occluders(batch, occluders)
            batch = _to(batch, device)
            loss = batch_loss(net, criterion, batch, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix_str(f"loss {losses[-1]:.3f}")
            bar.update(1)
        record = {"epoch": epoch + 1, "step": (epoch + 1) * per_epoch, "lr": scheduler.get_last_lr()[0],
                  "train_loss": sum(losses) / len(losses), "seconds": round(time.perf_counter() - started, 2)}
        evaluated = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs
        if evaluated:
            metrics = {name: evaluate(model, tl, scheme, device) for name, tl in test_loaders.items()}
            record["eval"] = metrics
        history.append(record)
        if rank == 0:
            if log is not None and evaluated:
                with bar.external_write_mode():  # the line must not land inside the bar
                    log(f"epoch {epoch + 1}/{config.epochs} loss {record['train_loss']:.4f} " + " ".join(
                        f"{name}: NME {m['nme']:.4f}" for name, m in metrics.items()))
            if out is not None:
                # Only a model that was just evaluated, and beats every earlier one, is the best.
                score = next(iter(metrics.values()))["nme"] if evaluated and metrics else math.nan
                improved = score < best
                best = score if improved else best
                checkpoint = _save(out, model, optimizer, scheduler, config, epoch + 1, history, best,
                                   is_best=improved)
    bar.close()
    if created:
        dist.barrier()
        dist.destroy_process_group()
    return {"model": model, "config": config, "metrics": metrics, "history": history,
            "checkpoint": checkpoint, "seconds": time.perf_counter() - started}


def _with_pasted_occluders(batch: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """The batch plus ``"pasted"`` images (occluders drawn over) and their ``"pasted_visible"`` flags."""
    from ..data.synthetic import paste_occluders

    pasted, covered = paste_occluders(batch["image"], batch["landmarks"], rng)
    visible = batch.get("visible")
    return {**batch, "pasted": pasted, "pasted_visible": ~covered if visible is None else visible & ~covered}


def batch_loss(net: nn.Module, criterion: LandmarkCriterion, batch: Mapping[str, Tensor],
               config: TrainConfig) -> Tensor:
    r"""The training loss of one batch (on the device) as :func:`train` computes it.

    The paper's setting is ``criterion(net(images), landmarks)``. With an occlusion option the
    criterion gets the model's :class:`~landmark_graph.heads.HeadOutput` and the ``"visible"``
    flags. With ``"pasted"`` images in the batch (consistency training), clean and pasted
    images go through together, the criterion counts both, and

    .. math::
        \mathcal L \mathrel{+}= \frac{w_c}{4BN} \sum_{i,\,c}\, v^{\text{pasted}}_i\,
        \mathrm{SoftWing}\big(s\hat P^{\text{pasted}}_{ic}
        - \operatorname{sg}(s\hat P^{\text{clean}}_{ic})\big)

    pulls the landmarks the occluders left visible to where the clean image puts them
    (:math:`\operatorname{sg}`: no gradient through the clean copy). The sum is divided by the
    landmark loss's count (``2B`` images of ``N`` points, 2 coordinates), not by the visible
    points': a mean over them would pull each point up to four times harder than the landmark
    loss does where occluders hide half the face, and the clean predictions the term chases would
    run away from the targets (docs/results.md).
    """
    images, target = batch["image"], batch["landmarks"]
    if not config.details:
        return criterion(net(images), target)
    visible = batch.get("visible")
    if "pasted" not in batch:
        return criterion(net(images, return_details=True), target, visible)
    pasted_visible = batch["pasted_visible"]
    clean_visible = torch.ones_like(pasted_visible) if visible is None else visible
    out = net(torch.cat([images, batch["pasted"]]), return_details=True)
    loss = criterion(out, torch.cat([target, target]), torch.cat([clean_visible, pasted_visible]))
    clean, pasted = (out.landmarks * criterion.scale).chunk(2)
    consistency = LF.soft_wing_loss(pasted, clean.detach(), pasted_visible, reduction="sum")
    return loss + config.consistency_weight * consistency / (2 * pasted.numel())


def _save(out: Path, model, optimizer, scheduler, config, epoch, history, best, is_best) -> str:
    """Write ``last.pt`` (and ``best.pt``), then ``log.jsonl`` from the history they hold.

    Each file is replaced atomically, so a run killed at any moment leaves the previous complete
    checkpoint; the log is rewritten whole, so after a resume it matches the checkpoint's history.
    """
    state = {"config": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "best": best}
    last = out / "last.pt"
    save_atomic(state, last)
    if is_best:
        save_atomic(state, out / "best.pt")
    with replacing(out / "log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
    return str(last)
