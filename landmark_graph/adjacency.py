r"""Sparse landmark neighbourhoods (paper §III-B, eq. 1-2).

A neighbourhood is a boolean mask ``Tensor[N, N]``: row ``i`` lists the nodes that node ``i``
receives from, its own self loop included.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# The mask checks sit with the other input checks, below ops/, which needs them too.
from ._checks import as_square_mask, check_adjacency

__all__ = ["as_square_mask", "build_correlation_adjacency", "check_adjacency", "index_order_adjacency"]


def _top_k_with_self(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep node ``i`` plus its ``k`` best-scoring others in each row; ties go to lower index."""
    n = scores.shape[0]
    scores = scores.copy()
    np.fill_diagonal(scores, np.inf)
    # A stable sort of the negated scores keeps the lower index first among equal scores.
    order = np.argsort(-scores, axis=1, kind="stable")[:, : k + 1]
    mask = np.zeros((n, n), dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def build_correlation_adjacency(
    landmarks: np.ndarray | Tensor, k: int = 3, *, symmetric: bool = False
) -> Tensor:
    r"""Data-driven neighbourhood of the paper's eq. 1-2.

    With :math:`C_x, C_y` the Pearson correlations over the :math:`M` training shapes of the
    x and y coordinates,

    .. math::
        C = \tfrac12\left(|C_x| + |C_y|\right), \qquad
        M_{ij} = 1 \iff j = i \ \text{or}\ C_{ij} \in \operatorname{top}_k\{C_{it} : t \ne i\}.

    Ties are broken by the lower index, so the result is deterministic.

    Args:
        landmarks: ``Tensor[M, N, 2]`` or array of training shapes, any units, ``M >= 2``.
        k: neighbours per node besides itself, ``1 <= k < N``.
        symmetric: return :math:`M \lor M^\top` (the authors' code); rows then hold between
            ``k + 1`` and ``N`` entries.

    Returns:
        ``BoolTensor[N, N]``, rows are receivers; exactly ``k + 1`` ``True`` per row unless
        ``symmetric``.

    Raises:
        ValueError: wrong shape, ``M < 2``, ``N < 2``, ``k`` out of range, NaN/inf, or a
            landmark whose x or y never varies (its correlation is undefined).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> shapes = torch.randn(50, 5, 2, generator=g)
        >>> mask = build_correlation_adjacency(shapes, k=2)
        >>> mask.shape, mask.sum(1).tolist()
        (torch.Size([5, 5]), [3, 3, 3, 3, 3])
    """
    if isinstance(landmarks, Tensor):
        if landmarks.is_complex() or landmarks.dtype == torch.bool:
            raise TypeError(f"landmarks must hold real numbers, got dtype {landmarks.dtype}")
        data = landmarks.detach().to("cpu", torch.float64).numpy()
    elif isinstance(landmarks, np.ndarray):
        if not np.issubdtype(landmarks.dtype, np.number) or np.iscomplexobj(landmarks):
            raise TypeError(f"landmarks must hold real numbers, got dtype {landmarks.dtype}")
        data = landmarks.astype(np.float64)
    else:
        raise TypeError(f"landmarks must be a numpy array or torch.Tensor, got {type(landmarks).__name__}")
    if data.ndim != 3 or data.shape[2] != 2:
        raise ValueError(f"landmarks must have shape (M, N, 2), got {tuple(data.shape)}")
    m, n, _ = data.shape
    if m < 2:
        raise ValueError(f"landmarks must hold at least 2 shapes (M >= 2) to correlate, got M={m}")
    if n < 2:
        raise ValueError(f"landmarks must hold at least 2 points per shape (N >= 2), got N={n}")
    _check_k(k, n)
    if not np.isfinite(data).all():
        raise ValueError("landmarks contain NaN or inf; drop or fill those shapes first")
    centred = data - data.mean(axis=0, keepdims=True)
    std = np.sqrt((centred**2).mean(axis=0))  # (N, 2)
    scale = np.abs(data).max(axis=0) + 1.0
    constant = std <= 1e-12 * scale
    if constant.any():
        idx, axis = np.argwhere(constant)[0]
        raise ValueError(
            f"landmark {idx} has zero variance in {'xy'[axis]} over the {m} shapes, so its "
            "correlation is undefined; remove it or add shapes where it moves"
        )
    z = centred / std  # standardised coordinates, (M, N, 2)
    zt = z.transpose(2, 1, 0)  # (2, N, M)
    corr = zt @ zt.transpose(0, 2, 1) / m  # (2, N, N) Pearson correlations, one matmul per axis
    scores = 0.5 * np.abs(corr).sum(axis=0)
    mask = _top_k_with_self(scores, k)
    if symmetric:
        mask |= mask.T
    return torch.from_numpy(mask)


def index_order_adjacency(num_landmarks: int, k: int = 3) -> Tensor:
    r"""Neighbourhood by landmark order: node ``i`` plus the ``k`` indices nearest to ``i``.

    Distance is :math:`|i - j|`, ties go to the lower index, so interior nodes take
    ``k // 2`` neighbours on each side (one more before when ``k`` is odd) and end nodes reach
    further along the order. It is the fallback of :class:`~landmark_graph.LGRLHead` when no
    better neighbourhood is known for ``num_landmarks``.

    Returns:
        ``BoolTensor[N, N]`` with exactly ``k + 1`` ``True`` per row.

    Example:
        >>> index_order_adjacency(4, k=1).int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    """
    if not isinstance(num_landmarks, int) or num_landmarks < 2:
        raise ValueError(f"num_landmarks must be an int >= 2, got {num_landmarks!r}")
    _check_k(k, num_landmarks)
    idx = np.arange(num_landmarks)
    return torch.from_numpy(_top_k_with_self(-np.abs(idx[:, None] - idx[None, :]).astype(float), k))


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ValueError(f"k must be an int with 1 <= k < N={n}, got {k!r}")
