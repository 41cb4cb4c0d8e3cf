r"""``edge_softmax``: the softmax over each receiver's neighbour slots, in the table layout."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["edge_softmax"]

# Above this many elements the softmax runs over a leading dimension of the transposed logits: on CPU
# it vectorises across rows there, over a short last one it takes one row at a time.
SMALL_SOFTMAX = 1024


def edge_softmax(logits: Tensor, valid: Tensor | None) -> Tensor:
    r"""Softmax over each receiver's neighbours; padded slots get weight 0.

    .. math::
        w_{ik} = \frac{v_{ik}\, e^{a_{ik}}}{\sum_{k'} v_{ik'}\, e^{a_{ik'}}}

    Padded logits become :math:`-\infty` before PyTorch's softmax, so their value, however
    large, never reaches the result or the gradient; autograd differentiates it (twice).

    Args:
        logits: ``Tensor[..., N, K]``.
        valid: ``BoolTensor[N, K]``, which slots hold a neighbour (every row needs one, else
            its weights are NaN); ``None`` where every slot does.

    Returns:
        ``Tensor[..., N, K]`` whose rows sum to 1 (not contiguous above the size threshold).

    Example:
        >>> import torch
        >>> edge_softmax(torch.tensor([[0.0, 0.0, 9.0]]), torch.tensor([[True, True, False]]))
        tensor([[0.5000, 0.5000, 0.0000]])
    """
    masked = logits if valid is None else torch.where(valid, logits, float("-inf"))
    # Tracers take one form for every size: a size test would guard a dynamic batch.
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    if tracing or logits.numel() <= SMALL_SOFTMAX:
        return masked.softmax(dim=-1)
    k = logits.shape[-1]
    return masked.reshape(-1, k).t().softmax(dim=0).t().view(logits.shape)
