r"""Edge weights :math:`\sigma(A)` over a fixed neighbourhood (paper §III-B).

Three ways to weight the edges of the neighbour table, chosen by name in
:class:`~landmark_graph.LGRLHead` (``edge_weights=``):

- ``"dynamic"``: :class:`DynamicAdjacency`, one weight set per image from a context vector
  (the paper).
- ``"static"``: learned logits per graph layer, shared by all images (the authors' released code).
- ``"binary"``: every edge of a row weighs the same (the paper's ablation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_floating, check_ndim, check_param_dtype, materialized
from .ops import NeighborTable, as_neighbor_table, edge_softmax

__all__ = ["EDGE_WEIGHT_MODES", "DynamicAdjacency"]

EDGE_WEIGHT_MODES = ("dynamic", "static", "binary")


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
        self.table = as_neighbor_table(adjacency)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.hidden = (
            nn.LazyLinear(hidden_features) if in_features is None
            else nn.Linear(in_features, hidden_features)
        )
        self.reset_edge_parameters()

    def reset_edge_parameters(self) -> None:
        """(Re)build the output layer for the table's current ``(N, K)``, zero so weights start uniform.

        The new layer takes the dtype and device of the hidden layer, so that it follows an
        earlier ``.double()``, ``.half()`` or ``.to(device)`` of the module.
        """
        n, k = self.table.num_nodes, self.table.max_degree
        weight = self.hidden.weight  # a lazy layer's weight has its dtype and device too
        self.logits = nn.Linear(self.hidden_features, n * k, device=weight.device, dtype=weight.dtype)
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
        return edge_softmax(logits, self.table.softmax_mask)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, hidden_features={self.hidden_features}"
