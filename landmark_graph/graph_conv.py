"""Graph relational layers (paper §III-C, eq. 3-5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_floating, check_ndim, check_param_dtype, check_shape, materialized
from .functional import gate_edge_weights
from .ops import (
    NeighborTable,
    as_neighbor_table,
    edge_softmax,
    neighbor_aggregate,
    neighbor_softmax_aggregate,
)

__all__ = ["GraphConv", "GraphResidualBlock"]


class GraphConv(nn.Module):
    r"""Graph convolution over a fixed sparse neighbourhood (eq. 4).

    .. math::
        H' = \psi\left(\sigma(A)\, H\, W\right) + b

    with :math:`\sigma(A)` the row-stochastic edge weights, :math:`\psi` BatchNorm1d over the
    feature channel then ReLU (``norm_act=True``), and the bias :math:`b` only without
    :math:`\psi` (BatchNorm would cancel it). :math:`\sigma(A)(HW)` and :math:`(\sigma(A)H)W`
    are equal; the layer aggregates on the narrower side.

    Edge weights come from the ``edge_weights`` argument of :meth:`forward` when given (dynamic
    weights), else from the layer's own learned logits (``learn_edge_weights=True``, the
    authors' static variant), else every edge of a row weighs the same (binary). With a
    ``sender_gate`` (each node's visibility), the weights are first gated by their senders'
    visibility and renormalised (:func:`~landmark_graph.functional.gate_edge_weights`).

    Args:
        in_features: ``I``; ``None`` infers it at the first call.
        out_features: ``O``.
        adjacency: ``BoolTensor[N, N]`` neighbourhood mask, or a :class:`NeighborTable` shared
            with other layers.
        learn_edge_weights: learn ``(N, K)`` logits of this layer's own.
        norm_act: apply BatchNorm1d + ReLU; ``False`` for the output layer, which gets a bias.

    Shape:
        - ``x``: ``Tensor[B, N, I]``.
        - ``edge_weights``: ``Tensor[B, N, K]``, ``Tensor[N, K]`` or ``None``.
        - ``sender_gate``: ``Tensor[B, N]`` in :math:`[0, 1]` or ``None``.
        - Output: ``Tensor[B, N, O]``.

    Example:
        >>> import torch
        >>> from landmark_graph import index_order_adjacency
        >>> conv = GraphConv(16, 8, index_order_adjacency(10, k=3))
        >>> conv(torch.randn(4, 10, 16)).shape
        torch.Size([4, 10, 8])
    """

    def __init__(
        self,
        in_features: int | None,
        out_features: int,
        adjacency: Tensor | NeighborTable,
        *,
        learn_edge_weights: bool = False,
        norm_act: bool = True,
    ) -> None:
        super().__init__()
        if in_features is not None and (not isinstance(in_features, int) or in_features < 1):
            raise ValueError(f"in_features must be a positive int or None, got {in_features!r}")
        if not isinstance(out_features, int) or out_features < 1:
            raise ValueError(f"out_features must be a positive int, got {out_features!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.learn_edge_weights = learn_edge_weights
        self.norm_act = norm_act
        self.table = as_neighbor_table(adjacency)
        self.linear = (
            nn.LazyLinear(out_features, bias=False) if in_features is None
            else nn.Linear(in_features, out_features, bias=False)
        )
        self.bias = None if norm_act else nn.Parameter(torch.zeros(out_features))
        self.norm = nn.BatchNorm1d(out_features) if norm_act else None
        self.edge_logits: nn.Parameter | None = None
        self.reset_edge_parameters()

    def reset_edge_parameters(self) -> None:
        """(Re)create the learned logits for the table's current ``(N, K)``, zero (uniform weights).

        They take the dtype and device of the layer's weight, so that they follow an earlier
        ``.double()``, ``.half()`` or ``.to(device)`` of the module.
        """
        if self.learn_edge_weights:
            shape = (self.table.num_nodes, self.table.max_degree)
            weight = self.linear.weight  # a lazy layer's weight has its dtype and device too
            self.edge_logits = nn.Parameter(torch.zeros(shape, dtype=weight.dtype, device=weight.device))

    def own_edge_logits(self) -> Tensor:
        """``Tensor[N, K]``: the learned (static) logits of this layer, or zeros (binary)."""
        if self.edge_logits is not None:
            return self.edge_logits
        weight = self.linear.weight  # dtype and device are known even before a lazy layer's first call
        return torch.zeros(self.table.valid.shape, dtype=weight.dtype, device=weight.device)

    def own_edge_weights(self) -> Tensor:
        """``Tensor[N, K]``: the learned (static) or uniform (binary) weights of this layer."""
        return edge_softmax(self.own_edge_logits(), self.table.softmax_mask)

    def forward(
        self, x: Tensor, edge_weights: Tensor | None = None, sender_gate: Tensor | None = None
    ) -> Tensor:
        check_floating("x", x)
        n, k = self.table.num_nodes, self.table.max_degree
        check_ndim("x", x, 3, "(B, N, I)")
        check_shape("x", x, (None, n, materialized(self.linear)), "(B, N, I)")
        check_param_dtype("x", x, self)
        if sender_gate is not None:
            check_shape("sender_gate", sender_gate, (x.shape[0], n), "(B, N)")
            own = self.own_edge_weights() if edge_weights is None else edge_weights
            edge_weights = gate_edge_weights(own, sender_gate, self.table)
        if edge_weights is None:
            # Own logits: softmax and aggregation fused (the authors' static layer).
            aggregate, edge_weights = neighbor_softmax_aggregate, self.own_edge_logits()
        else:
            check_floating("edge_weights", edge_weights)
            if edge_weights.dim() == 2:
                check_shape("edge_weights", edge_weights, (n, k), "(N, K)")
            else:
                check_shape("edge_weights", edge_weights, (x.shape[0], n, k), "(B, N, K)")
            aggregate = neighbor_aggregate
        if self.out_features < x.shape[-1]:
            h = self.linear(x)
            out = aggregate(h, edge_weights.to(h.dtype), self.table)
        else:
            out = self.linear(aggregate(x, edge_weights.to(x.dtype), self.table))
        if self.norm is not None:
            # BatchNorm1d over the B*N rows of (B*N, O): the per-channel statistics of (B, O, N),
            # on contiguous rows. A transposed (B, O, N) view costs BatchNorm copies and strided
            # reductions: 15-22 ms against 4-5 ms, fwd+bwd with ReLU, at (64, 98, 128) on 2 threads.
            return torch.relu(self.norm(out.reshape(-1, out.shape[-1]))).view(out.shape)
        return out + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"learn_edge_weights={self.learn_edge_weights}, norm_act={self.norm_act}")


class GraphResidualBlock(nn.Module):
    r"""Two graph convolutions with a skip connection (eq. 5, Fig. 5).

    .. math::
        H_{l+2} = f\big(f(H_l, A), A\big) + H_l

    each :math:`f` a :class:`GraphConv` with BatchNorm + ReLU; no activation after the sum.

    Args:
        features: ``F``, input and output width.
        adjacency: ``BoolTensor[N, N]`` or a shared :class:`NeighborTable`.
        learn_edge_weights: give each of the two convolutions learned (static) logits.

    Shape:
        - ``x``: ``Tensor[B, N, F]``; ``edge_weights``: ``Tensor[B, N, K]``, ``Tensor[N, K]`` or
          ``None``; ``sender_gate``: ``Tensor[B, N]`` or ``None`` (see :class:`GraphConv`).
        - Output: ``Tensor[B, N, F]``.

    Example:
        >>> import torch
        >>> from landmark_graph import index_order_adjacency
        >>> block = GraphResidualBlock(32, index_order_adjacency(6, k=2))
        >>> block(torch.randn(3, 6, 32)).shape
        torch.Size([3, 6, 32])
    """

    def __init__(
        self, features: int, adjacency: Tensor | NeighborTable, *, learn_edge_weights: bool = False
    ) -> None:
        super().__init__()
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}")
        table = as_neighbor_table(adjacency)
        self.conv1 = GraphConv(features, features, table, learn_edge_weights=learn_edge_weights)
        self.conv2 = GraphConv(features, features, table, learn_edge_weights=learn_edge_weights)

    def forward(
        self, x: Tensor, edge_weights: Tensor | None = None, sender_gate: Tensor | None = None
    ) -> Tensor:
        return self.conv2(self.conv1(x, edge_weights, sender_gate), edge_weights, sender_gate) + x

