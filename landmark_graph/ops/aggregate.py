"""``neighbor_aggregate``: the one sparse op every graph layer runs."""

from __future__ import annotations

import torch
from torch import Tensor

from .neighbor_table import NeighborTable

__all__ = ["neighbor_aggregate"]


def neighbor_aggregate(x: Tensor, weight: Tensor, index: Tensor | NeighborTable) -> Tensor:
    r"""Weighted sum over each node's neighbours.

    .. math::
        y_{b,i,:} = \sum_{k} w_{b,i,k}\, x_{b,\,\mathrm{idx}_{i,k},\,:}

    slots with :math:`\mathrm{idx}_{i,k} = -1` are skipped.

    Args:
        x: ``Tensor[B, N, D]`` node features.
        weight: ``Tensor[B, N, K]`` per-image edge weights, or ``Tensor[N, K]`` shared by all.
        index: ``LongTensor[N, K]`` neighbour table (``-1`` pads) or a :class:`NeighborTable`.

    Returns:
        ``Tensor[B, N, D]``.
    """
    idx = index.index if isinstance(index, NeighborTable) else index
    valid = idx >= 0
    gathered = x[:, idx.clamp(min=0)]  # (B, N, K, D)
    w = weight.masked_fill(~valid, 0) if weight.dim() == 2 else weight.masked_fill(~valid[None], 0)
    if w.dim() == 2:
        w = w.expand(x.shape[0], -1, -1)
    return torch.einsum("bnk,bnkd->bnd", w, gathered)
