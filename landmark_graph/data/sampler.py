r"""Pose-based Data Balancing (PDB, used by the paper §IV-B, from the Wing loss paper).

Shapes are Procrustes-aligned to their mean (similarity transform, no reflection); the first
principal component of the aligned shapes is mostly head yaw. Its projections are cut into
``num_bins`` equal-width bins and each face is drawn with probability proportional to
:math:`1 / |\text{its bin}|`, so every occupied bin is drawn equally often.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["PoseBalancedSampler", "pose_bins", "procrustes_align"]


def _as_shapes(shapes: Tensor | np.ndarray) -> np.ndarray:
    data = shapes.detach().cpu().double().numpy() if isinstance(shapes, Tensor) else np.asarray(shapes, float)
    if data.ndim != 3 or data.shape[2] != 2 or data.shape[0] < 2 or data.shape[1] < 2:
        raise ValueError(f"shapes must have shape (M, N, 2) with M, N >= 2, got {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("shapes contain NaN or inf")
    return data


def procrustes_align(shapes: Tensor | np.ndarray, iterations: int = 5) -> np.ndarray:
    r"""Generalised Procrustes alignment: ``ndarray[M, N, 2]`` shapes rotated, scaled and moved
    onto their common mean (unit norm, centred).

    Each step solves :math:`\min_{s, R} \lVert s X R - \bar X \rVert` per shape by SVD
    (:math:`\det R = 1`) and re-estimates the mean.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(1, 6, 2))
        >>> turned = x @ np.array([[0.0, 1.0], [-1.0, 0.0]]) * 3 + 5
        >>> a = procrustes_align(np.concatenate([x, turned]))
        >>> bool(np.allclose(a[0], a[1]))
        True
    """
    data = _as_shapes(shapes)
    centred = data - data.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=(1, 2), keepdims=True)
    if (norms <= 0).any():
        raise ValueError("shapes must not collapse to a single point")
    aligned = centred / norms
    mean = aligned[0]
    for _ in range(iterations):
        u, sigma, vt = np.linalg.svd(np.einsum("mni,nj->mij", aligned, mean))
        d = np.sign(np.linalg.det(u @ vt))  # forbid reflections
        u[:, :, -1] *= d[:, None]
        sigma[:, -1] *= d
        aligned = np.einsum("mni,mij->mnj", aligned, u @ vt) * sigma.sum(-1)[:, None, None]
        mean = aligned.mean(axis=0)
        mean /= np.linalg.norm(mean)
    return aligned


def pose_bins(
    shapes: Tensor | np.ndarray, num_bins: int = 9, *, absolute: bool = False
) -> tuple[Tensor, Tensor]:
    """Bin of each face along the first principal component of its aligned shape.

    Args:
        shapes: ``Tensor[M, N, 2]`` annotated landmarks.
        num_bins: equal-width bins between the smallest and largest projection.
        absolute: bin the absolute projection (the authors' code), merging the two yaw sides.

    Returns:
        ``(bins, projection)``: ``LongTensor[M]`` in ``[0, num_bins)`` and ``Tensor[M]`` float64.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be an int >= 1, got {num_bins!r}")
    aligned = procrustes_align(shapes).reshape(len(shapes), -1)
    centred = aligned - aligned.mean(axis=0)
    projection = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    if absolute:
        projection = np.abs(projection)
    edges = np.linspace(projection.min(), projection.max(), num_bins + 1)
    bins = np.clip(np.searchsorted(edges, projection, side="right") - 1, 0, num_bins - 1)
    return torch.from_numpy(bins), torch.from_numpy(projection)


class PoseBalancedSampler(Sampler[int]):
    """Draws indices so that each occupied pose bin is equally likely (with replacement).

    Args:
        shapes: ``Tensor[M, N, 2]`` landmarks of the data set, in its order (e.g.
            :attr:`LandmarkDataset.shapes <landmark_graph.data.LandmarkDataset.shapes>`).
        num_bins: pose bins (9 in the paper).
        num_samples: indices per epoch (default ``M``).
        absolute: bin the absolute projection (the authors' code).
        generator: ``torch.Generator`` for reproducible draws.

    Attributes:
        bins: ``LongTensor[M]`` the bin of each face; ``weights``: ``Tensor[M]`` draw probabilities.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> shapes = torch.randn(50, 5, 2, generator=g)
        >>> sampler = PoseBalancedSampler(shapes, num_bins=3, generator=g)
        >>> len(list(sampler)), round(float(sampler.weights.sum()), 6)
        (50, 1.0)
    """

    def __init__(
        self,
        shapes: Tensor | np.ndarray,
        num_bins: int = 9,
        num_samples: int | None = None,
        *,
        absolute: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.bins, self.projection = pose_bins(shapes, num_bins, absolute=absolute)
        counts = torch.bincount(self.bins, minlength=num_bins).double()
        occupied = int((counts > 0).sum())
        self.weights = 1.0 / (counts[self.bins] * occupied)
        self.num_samples = len(self.bins) if num_samples is None else num_samples
        if isinstance(num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=self.generator)
        return iter(draws.tolist())
