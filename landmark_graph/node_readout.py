r"""Per-landmark readouts of node features: the visibility logits and Laplace scales of :class:`LGRLHead`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ops import NeighborTable, neighbor_aggregate

__all__ = ["NodeReadout"]


class NodeReadout(nn.Module):
    r"""A small MLP shared by all nodes, with a bias per node, optionally reading each node's
    neighbourhood too.

    .. math::
        o_i = W_2\, \mathrm{ReLU}\big(W_s h_i + W_n \bar h_{\mathcal{N}(i)} + c\big) + b_i,
        \qquad \bar h_{\mathcal{N}(i)} = \frac{1}{|\mathcal{N}(i)|}\sum_{j \in \mathcal{N}(i)} h_j

    The per-node bias :math:`b_i` carries what differs by landmark (a jaw point errs more than an
    eye corner); the neighbourhood mean (``table`` given) carries what neighbours share (an
    occluder hides a patch of landmarks, not one). :math:`W_n` is applied before the mean, so the
    neighbourhood costs one aggregation of ``hidden`` features, not of ``D``.

    Args:
        num_nodes: ``N``.
        in_features: ``D``; ``None`` infers it at the first call.
        out_features: ``O``.
        hidden: width of the hidden layer.
        table: the graph whose neighbourhoods are read; ``None``: each node alone.

    Shape:
        - Input: ``Tensor[B, N, D]``.
        - Output: ``Tensor[B, N, O]``.

    Example:
        >>> readout = NodeReadout(5, 8, 1, table=NeighborTable(torch.ones(5, 5, dtype=torch.bool)))
        >>> readout(torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 1])
    """

    def __init__(self, num_nodes: int, in_features: int | None, out_features: int, hidden: int = 32,
                 table: NeighborTable | None = None) -> None:
        super().__init__()
        width = 2 * hidden if table is not None else hidden
        self.input = nn.LazyLinear(width) if in_features is None else nn.Linear(in_features, width)
        self.output = nn.Linear(hidden, out_features)
        self.node_bias = nn.Parameter(torch.zeros(num_nodes, out_features))
        self.table = table
        self.hidden = hidden

    def forward(self, nodes: Tensor) -> Tensor:
        h = self.input(nodes)
        if self.table is not None:
            own, neighbours = h.split(self.hidden, dim=-1)
            valid = self.table.valid.to(h.dtype)
            mean = valid / valid.sum(1, keepdim=True)
            h = own + neighbor_aggregate(neighbours.contiguous(), mean, self.table)
        return self.output(torch.relu(h)) + self.node_bias.to(h.dtype)
