"""The authors' formulation of the L-GRL graph layers, for comparison only.

Written from SPEC §3-4's description of the authors' released code (SemGCN style), not copied:
each graph convolution learns its own logits for the nonzeros of the mask, scatters them into a
dense ``N x N`` matrix (``-9e15`` elsewhere), takes a row softmax, and applies separate weights
to the node itself and to its neighbours:

.. math::
    H' = (A \\odot I)\\, H W_{\\text{self}} + (A \\odot (1 - I))\\, H W_{\\text{nb}} + b

Ten of them make the head's graph layers: input ``I -> F``, four residual blocks of two
``F -> F`` convolutions (BatchNorm + ReLU after each), output ``F -> 2``. The same
:class:`~landmark_graph.MapToNode` feeds them in :class:`AuthorsDenseHead`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from landmark_graph import MapToNode


class DenseSemGraphConv(nn.Module):
    """One dense graph convolution with learned static logits and self/neighbour weights."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__()
        n = mask.shape[0]
        self.register_buffer("mask", mask.clone())
        self.register_buffer("eye", torch.eye(n))
        self.weight = nn.Parameter(torch.empty(2, in_features, out_features))
        nn.init.xavier_uniform_(self.weight[0])
        nn.init.xavier_uniform_(self.weight[1])
        self.logits = nn.Parameter(torch.zeros(int(mask.sum())))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        h_self = x @ self.weight[0]
        h_nb = x @ self.weight[1]
        dense = torch.full(self.mask.shape, -9e15, dtype=x.dtype, device=x.device)
        dense = dense.masked_scatter(self.mask, self.logits.to(x.dtype))
        adj = dense.softmax(dim=1)
        return (adj * self.eye) @ h_self + (adj * (1 - self.eye)) @ h_nb + self.bias


class _ConvBNReLU(nn.Module):
    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__()
        self.conv = DenseSemGraphConv(in_features, out_features, mask)
        self.norm = nn.BatchNorm1d(out_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.norm(self.conv(x).transpose(1, 2)).transpose(1, 2))


class _Block(nn.Module):
    def __init__(self, features: int, mask: Tensor) -> None:
        super().__init__()
        self.f1 = _ConvBNReLU(features, features, mask)
        self.f2 = _ConvBNReLU(features, features, mask)

    def forward(self, x: Tensor) -> Tensor:
        return self.f2(self.f1(x)) + x


class AuthorsGraphLayers(nn.Module):
    """The ten dense graph convolutions: ``(B, N, I) -> (B, N, 2)``."""

    def __init__(self, mask: Tensor, in_features: int, hidden_features: int = 128,
                 num_blocks: int = 4, out_features: int = 2) -> None:
        super().__init__()
        self.input = _ConvBNReLU(in_features, hidden_features, mask)
        self.blocks = nn.ModuleList(_Block(hidden_features, mask) for _ in range(num_blocks))
        self.output = DenseSemGraphConv(hidden_features, out_features, mask)

    def forward(self, nodes: Tensor) -> Tensor:
        h = self.input(nodes)
        for block in self.blocks:
            h = block(h)
        return self.output(h)


class AuthorsDenseHead(nn.Module):
    """Map-to-node (the library's, same sizes as :class:`~landmark_graph.LGRLHead`) + dense layers."""

    def __init__(self, mask: Tensor, in_channels: int, feature_size: int, expansion: int = 4,
                 hidden_channels: int = 256, hidden_features: int = 128, num_blocks: int = 4) -> None:
        super().__init__()
        n = mask.shape[0]
        self.map_to_node = MapToNode(n, in_channels, expansion, hidden_channels)
        self.graph = AuthorsGraphLayers(mask, expansion * feature_size, hidden_features, num_blocks)

    def forward(self, features: Tensor) -> Tensor:
        return self.graph(self.map_to_node(features))
