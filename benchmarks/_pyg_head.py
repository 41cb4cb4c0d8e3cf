"""LGRLHead's graph layers written with PyTorch Geometric, for comparison only.

What a user would write instead of this library: the same stack (input convolution, residual
blocks of two, output convolution; BatchNorm over the ``B·N`` rows and ReLU after all but the
last; the same per-image ``(B, N, K)`` edge weights) with

- ``GCNConv`` over the ``B`` graphs batched block-diagonally, one weight per edge
  (``normalize=False``: the weights are already row-stochastic);
- ``DenseGCNConv`` over the ``(B, N, N)`` weight matrices (``add_loop=False``; its symmetric
  normalisation is the identity on row-stochastic weights, whose rows all sum to 1).

:class:`PygGraphLayers` copies a head's parameters, so both compute the head's function.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch_geometric.nn import DenseGCNConv, GCNConv

from landmark_graph import LGRLHead


class PygGraphLayers(nn.Module):
    """``(nodes (B, N, I), weights (B, N, K)) -> (B, N, 2)`` with ``head``'s parameters."""

    def __init__(self, head: LGRLHead, dense: bool) -> None:
        super().__init__()
        self.dense = dense
        ours = [head.input_conv, *(c for block in head.blocks for c in (block.conv1, block.conv2)),
                head.output_conv]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for conv in ours:
            bias = conv.bias is not None
            size = (conv.linear.in_features, conv.linear.out_features)
            pyg = (DenseGCNConv(*size, bias=bias) if dense
                   else GCNConv(*size, bias=bias, normalize=False, add_self_loops=False))
            with torch.no_grad():
                pyg.lin.weight.copy_(conv.linear.weight)
                if bias:
                    pyg.bias.copy_(conv.bias)
            self.convs.append(pyg)
            if conv.norm is not None:
                self.norms.append(copy.deepcopy(conv.norm))
        table = head.table
        self.register_buffer("safe", table.index.clamp(min=0))
        self.register_buffer("valid", table.valid)
        receivers = torch.arange(table.num_nodes, device=table.index.device)[:, None].expand_as(table.index)
        self.register_buffer("edges", torch.stack([table.index[table.valid], receivers[table.valid]]))
        self._batched: dict[int, Tensor] = {}  # edge_index of B images: built once, as a data loader would

    def edge_index(self, b: int) -> Tensor:
        if b not in self._batched:
            n = self.safe.shape[0]
            offsets = torch.arange(b, device=self.edges.device).repeat_interleave(self.edges.shape[1]) * n
            self._batched[b] = self.edges.repeat(1, b) + offsets
        return self._batched[b]

    def _conv(self, i: int, h: Tensor, graph: tuple[Tensor, ...]) -> Tensor:
        if self.dense:
            return self.convs[i](h, graph[0], add_loop=False)
        b, n, _ = h.shape
        return self.convs[i](h.reshape(b * n, -1), *graph).view(b, n, -1)

    def _norm_act(self, i: int, h: Tensor) -> Tensor:
        return torch.relu(self.norms[i](h.reshape(-1, h.shape[-1]))).view(h.shape)

    def forward(self, nodes: Tensor, weights: Tensor) -> Tensor:
        b, n, _ = nodes.shape
        if self.dense:
            adj = weights.new_zeros(b, n, n).scatter_add_(2, self.safe.expand(b, -1, -1),
                                                          weights.masked_fill(~self.valid, 0))
            graph: tuple[Tensor, ...] = (adj,)
        else:
            graph = (self.edge_index(b), weights[:, self.valid].reshape(-1))
        h = self._norm_act(0, self._conv(0, nodes, graph))
        for block in range(1, len(self.convs) - 1, 2):
            inner = self._norm_act(block, self._conv(block, h, graph))
            h = self._norm_act(block + 1, self._conv(block + 1, inner, graph)) + h
        return self._conv(len(self.convs) - 1, h, graph)
