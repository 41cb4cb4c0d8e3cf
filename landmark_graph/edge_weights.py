r"""Edge weights :math:`\sigma(A)` over a fixed neighbourhood (paper §III-B).

Three ways to weight the edges of the neighbour table, chosen by name in
:class:`~landmark_graph.LGRLHead` (``edge_weights=``):

- ``"dynamic"``: :class:`DynamicAdjacency`, one weight set per image from a context vector
  (the paper).
- ``"static"``: learned logits per graph layer, shared by all images (the authors' released code).
- ``"binary"``: every edge of a row weighs the same (the paper's ablation).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_floating, check_ndim, check_param_dtype, materialized
from .ops import NeighborTable

__all__ = ["EDGE_WEIGHT_MODES", "DynamicAdjacency", "edge_softmax"]

EDGE_WEIGHT_MODES = ("dynamic", "static", "binary")


def edge_softmax(logits: Tensor, valid: Tensor) -> Tensor:
    r"""Softmax over each receiver's neighbours; padded slots get weight 0.

    .. math::
        w_{ik} = \frac{v_{ik}\, e^{a_{ik} - m_i}}{\sum_{k'} v_{ik'}\, e^{a_{ik'} - m_i}},
        \qquad m_i = \max_{k : v_{ik}} a_{ik}, \qquad
        \frac{\partial L}{\partial a_{ik}} = w_{ik}\Big(g_{ik} - \sum_{k'} w_{ik'}\, g_{ik'}\Big)

    One autograd node with that closed-form backward (three ops) instead of the eight nodes
    the forward's ops would record. Above about a thousand elements the forward is written out
    (clamped max/exp/sum/div): PyTorch's CPU softmax over a last dimension of 4-8 is 2-8x
    slower there (3.6x at ``(16, 98, 7)``, one thread). Below, the library softmax wins, being
    fewer ops (1.9x faster at ``(1, 29, 4)``). The clamp keeps a padded slot's exponent finite
    (its logit may exceed the row maximum), so no NaN reaches the gradient; for valid slots it
    is a no-op.

    Args:
        logits: ``Tensor[..., N, K]``.
        valid: ``BoolTensor[N, K]``, which slots hold a neighbour (every row has at least one).

    Returns:
        ``Tensor[..., N, K]`` whose rows sum to 1.

    Example:
        >>> import torch
        >>> edge_softmax(torch.tensor([[0.0, 0.0, 9.0]]), torch.tensor([[True, True, False]]))
        tensor([[0.5000, 0.5000, 0.0000]])
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return _EdgeSoftmax.apply(logits, valid)
    return _edge_softmax_forward(logits, valid)


# Below this many elements the library softmax (two ops) beats the written-out form (six);
# the crossover measured on one CPU thread lies between 700 and 1600.
_SMALL_SOFTMAX = 1024


def _edge_softmax_forward(logits: Tensor, valid: Tensor) -> Tensor:
    masked = logits.masked_fill(~valid, float("-inf"))
    # Tracers take the written-out form for every size: a size test would guard a dynamic batch.
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    if not tracing and logits.numel() <= _SMALL_SOFTMAX:
        return masked.softmax(dim=-1)
    weights = (logits - masked.amax(dim=-1, keepdim=True)).clamp_(max=0).exp_().mul_(valid)
    return weights.div_(weights.sum(dim=-1, keepdim=True))


class _EdgeSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, valid: Tensor) -> Tensor:
        weights = _edge_softmax_forward(logits, valid)
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        # Made of differentiable ops on the saved output, so double backward works.
        (weights,) = ctx.saved_tensors
        weighted = grad * weights
        return weighted - weights * weighted.sum(dim=-1, keepdim=True), None


def _as_table(adjacency: Tensor | NeighborTable) -> NeighborTable:
    return adjacency if isinstance(adjacency, NeighborTable) else NeighborTable(adjacency)


class DynamicAdjacency(nn.Module):
    r"""Per-image edge weights from a context vector: two FC layers, then a row softmax.

    .. math::
        A_b = \sigma\!\left(W_2\,\mathrm{ReLU}(W_1 c_b + b_1) + b_2\right)
        \quad\text{restricted to the nonzeros of } M

    The last layer starts at zero, so the first forward gives uniform weights over each row.

    Args:
        adjacency: ``BoolTensor[N, N]`` neighbourhood mask, or a shared :class:`NeighborTable`.
        in_features: ``F``, size of the context vector; ``None`` infers it at the first call.
        hidden_features: width of the hidden layer.

    Shape:
        - Input: ``Tensor[B, F]`` context (in :class:`~landmark_graph.LGRLHead`: the spatial
          mean of each of the ``N * n`` map-to-node channels).
        - Output: ``Tensor[B, N, K]``, row-stochastic over each node's table slots.

    Example:
        >>> import torch
        >>> from landmark_graph import index_order_adjacency
        >>> dyn = DynamicAdjacency(index_order_adjacency(5, k=2), in_features=8)
        >>> dyn(torch.randn(4, 8))[0, 0]
        tensor([0.3333, 0.3333, 0.3333], grad_fn=<SelectBackward0>)
    """

    def __init__(
        self,
        adjacency: Tensor | NeighborTable,
        in_features: int | None = None,
        hidden_features: int = 128,
    ) -> None:
        super().__init__()
        if in_features is not None and (not isinstance(in_features, int) or in_features < 1):
            raise ValueError(f"in_features must be a positive int or None, got {in_features!r}")
        if not isinstance(hidden_features, int) or hidden_features < 1:
            raise ValueError(f"hidden_features must be a positive int, got {hidden_features!r}")
        self.table = _as_table(adjacency)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.hidden = (
            nn.LazyLinear(hidden_features) if in_features is None
            else nn.Linear(in_features, hidden_features)
        )
        self.reset_edge_parameters()

    def reset_edge_parameters(self) -> None:
        """(Re)build the output layer for the table's current ``(N, K)``, zero so weights start uniform."""
        n, k = self.table.num_nodes, self.table.max_degree
        device = self.table.index.device
        self.logits = nn.Linear(self.hidden_features, n * k, device=device)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def forward(self, context: Tensor) -> Tensor:
        check_floating("context", context)
        check_ndim("context", context, 2, "(B, F)")
        size = materialized(self.hidden)
        if size is not None and context.shape[1] != size:
            raise ValueError(f"context must have shape (B, F) with F={size}, got {tuple(context.shape)}")
        check_param_dtype("context", context, self)
        n, k = self.table.num_nodes, self.table.max_degree
        logits = self.logits(torch.relu(self.hidden(context))).view(context.shape[0], n, k)
        return edge_softmax(logits, self.table.valid)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, hidden_features={self.hidden_features}"
