"""Landmark heads that sit on a backbone feature map: the paper's L-GRL head and the FC baseline."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import check_feature_map, check_param_dtype, materialized
from .adjacency import build_correlation_adjacency, check_adjacency, index_order_adjacency
from .edge_weights import EDGE_WEIGHT_MODES, DynamicAdjacency
from .graph_conv import GraphConv, GraphResidualBlock
from .map_to_node import MapToNode
from .ops import NeighborTable
from .schemes import BUILTIN_SCHEMES, scheme_for_num_landmarks

__all__ = ["FCHead", "LGRLHead", "default_adjacency"]


def default_adjacency(num_landmarks: int, k: int = 3) -> Tensor:
    """The neighbourhood :class:`LGRLHead` uses when none is given.

    For 98, 68 and 29 points, the built-in scheme's :meth:`~landmark_graph.schemes.LandmarkScheme.adjacency`
    (WFLW, 300W, COFW): eq. 1-2 on shapes sampled around the scheme's template, deterministic.
    For any other count, the ``k`` nearest indices along the landmark order
    (:func:`index_order_adjacency`); pass ``adjacency=`` training landmarks for better.

    Example:
        >>> default_adjacency(68, 3).sum(1).unique().tolist()
        [4]
    """
    scheme = scheme_for_num_landmarks(num_landmarks)
    if scheme is not None and scheme.name in BUILTIN_SCHEMES:
        return scheme.adjacency(k)
    return index_order_adjacency(num_landmarks, k)


def _resolve_adjacency(adjacency: Tensor | np.ndarray, num_landmarks: int, k: int) -> Tensor:
    """A mask ``(N, N)`` is taken as is; training landmarks ``(M, N, 2)`` are correlated (eq. 1-2)."""
    if isinstance(adjacency, (Tensor, np.ndarray)) and adjacency.ndim == 3:
        mask = build_correlation_adjacency(adjacency, k)
    else:
        mask = check_adjacency(adjacency)
    if mask.shape[0] != num_landmarks:
        raise ValueError(
            f"adjacency must describe num_landmarks={num_landmarks} nodes, got {mask.shape[0]}"
        )
    return mask


class LGRLHead(nn.Module):
    r"""Landmark-graph relational head (paper §III, Fig. 3 and 5).

    .. math::
        H_0 = \mathrm{MapToNode}(F), \quad A = \sigma(\cdot), \quad
        P = g_{\text{out}}\big(R_{L}(\cdots R_1(g_{\text{in}}(H_0, A), A) \cdots, A)\big)

    with :math:`g` :class:`GraphConv` layers (input ``I -> F`` with BN-ReLU, output ``F -> 2``
    without) and :math:`R` :class:`GraphResidualBlock` s.

    Args:
        num_landmarks: ``N``.
        k: neighbours per node besides itself, for the default neighbourhood or when
            ``adjacency`` is given as training landmarks.
        adjacency: ``BoolTensor[N, N]`` mask, or training landmarks ``Tensor[M, N, 2]`` to
            build it from (:func:`build_correlation_adjacency`). ``None`` uses
            :func:`default_adjacency`.
        in_channels: ``C`` of the backbone map; ``None`` infers it at the first call.
        hidden_features: ``F``, the width of the graph layers.
        num_blocks: number of residual blocks.
        expansion: ``n``, map-to-node channels per landmark, so ``I = n * H * W``.
        edge_weights: ``"dynamic"`` (per image, the paper), ``"static"`` (learned per layer,
            the authors' code) or ``"binary"`` (all edges equal).
        hidden_channels: width of the first map-to-node convolution.

    Shape:
        - Input: ``Tensor[B, C, H, W]`` backbone feature map, any ``H, W`` (fixed after the
          first call, since ``I`` depends on it).
        - Output: ``Tensor[B, N, 2]`` landmark coordinates, in the units of the targets.

    Example:
        >>> import torch
        >>> head = LGRLHead(num_landmarks=98, k=3)
        >>> head(torch.randn(2, 512, 8, 8)).shape
        torch.Size([2, 98, 2])
    """

    def __init__(
        self,
        num_landmarks: int = 98,
        k: int = 3,
        *,
        adjacency: Tensor | np.ndarray | None = None,
        in_channels: int | None = None,
        hidden_features: int = 128,
        num_blocks: int = 4,
        expansion: int = 4,
        edge_weights: str = "dynamic",
        hidden_channels: int = 256,
    ) -> None:
        super().__init__()
        if not isinstance(num_landmarks, int) or num_landmarks < 2:
            raise ValueError(f"num_landmarks must be an int >= 2, got {num_landmarks!r}")
        if edge_weights not in EDGE_WEIGHT_MODES:
            raise ValueError(f"edge_weights must be one of {EDGE_WEIGHT_MODES}, got {edge_weights!r}")
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an int >= 0, got {num_blocks!r}")
        self.num_landmarks = num_landmarks
        self.k = k
        self.edge_weight_mode = edge_weights
        mask = (
            default_adjacency(num_landmarks, k) if adjacency is None
            else _resolve_adjacency(adjacency, num_landmarks, k)
        )
        # One table shared by every graph layer: set_adjacency and .to() act on it once.
        self.table = NeighborTable(mask)
        self.map_to_node = MapToNode(num_landmarks, in_channels, expansion, hidden_channels)
        self.dynamic = (
            DynamicAdjacency(self.table, num_landmarks * expansion, hidden_features)
            if edge_weights == "dynamic" else None
        )
        learn = edge_weights == "static"
        self.input_conv = GraphConv(None, hidden_features, self.table, learn_edge_weights=learn)
        self.blocks = nn.ModuleList(
            GraphResidualBlock(hidden_features, self.table, learn_edge_weights=learn)
            for _ in range(num_blocks)
        )
        self.output_conv = GraphConv(
            hidden_features, 2, self.table, learn_edge_weights=learn, norm_act=False
        )

    @property
    def adjacency(self) -> Tensor:
        """``BoolTensor[N, N]``: the neighbourhood in use."""
        return self.table.adjacency

    def set_adjacency(self, adjacency: Tensor | np.ndarray) -> None:
        """Use another neighbourhood: a mask ``(N, N)`` or training landmarks ``(M, N, 2)``.

        The edge-weight parameters (dynamic output layer, static logits) are re-initialised,
        since their slots index the old neighbours; everything else is kept. The new parameters
        take the module's current dtype and device. They are new ``Parameter`` objects: an
        optimizer built before this call still holds the old ones, so build it again (with its
        state, e.g. Adam's moments, starting afresh).
        """
        self.table.set_adjacency(_resolve_adjacency(adjacency, self.num_landmarks, self.k))
        for module in self.modules():
            if module is not self and hasattr(module, "reset_edge_parameters"):
                module.reset_edge_parameters()

    def _embed(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        nodes = self.map_to_node(features)  # (B, N, n*H*W)
        if self.dynamic is None:
            return nodes, None
        b, n = nodes.shape[:2]
        # Context: spatial mean of each of the N*n map-to-node channels (SPEC §3).
        expansion = self.map_to_node.expansion
        # Explicit sizes, not -1: a view of an empty batch cannot infer a dimension.
        context = nodes.view(b, n, expansion, nodes.shape[-1] // expansion).mean(dim=-1).flatten(1)
        return nodes, self.dynamic(context)

    def forward(self, features: Tensor) -> Tensor:
        size = materialized(self.input_conv.linear)
        nodes, edge_weights = self._embed(features)
        if size is not None and nodes.shape[-1] != size:
            raise ValueError(
                f"features must keep the spatial size of the first call, n*H*W = {size}, "
                f"got shape {tuple(features.shape)}"
            )
        h = self.input_conv(nodes, edge_weights)
        for block in self.blocks:
            h = block(h, edge_weights)
        return self.output_conv(h, edge_weights)

    @torch.no_grad()
    def dense_edge_weights(self, features: Tensor) -> Tensor:
        """``Tensor[B, N, N]``: the edge weights the input layer uses, as a dense matrix.

        For inspection and plots: dynamic weights differ per image; static and binary weights
        are the input layer's, repeated over the batch.
        """
        nodes, weights = self._embed(features)
        if weights is None:
            weights = self.input_conv.own_edge_weights().expand(nodes.shape[0], -1, -1)
        n = self.num_landmarks
        index = self.table.index.clamp(min=0).expand(weights.shape[0], -1, -1)
        dense = weights.new_zeros(weights.shape[0], n, n)
        return dense.scatter_add_(2, index, weights * self.table.valid)

    def extra_repr(self) -> str:
        return (f"num_landmarks={self.num_landmarks}, k={self.k}, "
                f"edge_weights={self.edge_weight_mode!r}")


class FCHead(nn.Module):
    r"""The paper's baseline regressor: flatten, hidden FC + BN + ReLU, FC to ``2N``.

    .. math::
        P = W_2\, \mathrm{ReLU}(\mathrm{BN}(W_1 \operatorname{vec}(F))) + b_2

    The BatchNorm is ours, not the paper's: with targets in pixel units the first updates push
    the plain FC + ReLU hidden layer into dead units (measured: all of them within 30 SGD steps
    of the paper's recipe on the synthetic faces), leaving a mean-shape predictor that would make
    any comparison meaningless. BatchNorm recentres the hidden units every batch.

    Args:
        num_landmarks: ``N``.
        in_channels: ``C`` of the backbone map, checked when given; the first layer infers its
            size ``C * H * W`` at the first call.
        hidden_features: width of the hidden layer.

    Shape:
        - Input: ``Tensor[B, C, H, W]``.
        - Output: ``Tensor[B, N, 2]``.

    Example:
        >>> import torch
        >>> FCHead(98)(torch.randn(2, 512, 4, 4)).shape
        torch.Size([2, 98, 2])
    """

    def __init__(
        self, num_landmarks: int, in_channels: int | None = None, hidden_features: int = 256
    ) -> None:
        super().__init__()
        if not isinstance(num_landmarks, int) or num_landmarks < 1:
            raise ValueError(f"num_landmarks must be a positive int, got {num_landmarks!r}")
        if not isinstance(hidden_features, int) or hidden_features < 1:
            raise ValueError(f"hidden_features must be a positive int, got {hidden_features!r}")
        if in_channels is not None and (not isinstance(in_channels, int) or in_channels < 1):
            raise ValueError(f"in_channels must be a positive int or None, got {in_channels!r}")
        self.num_landmarks = num_landmarks
        self.in_channels = in_channels
        self.hidden = nn.LazyLinear(hidden_features, bias=False)
        self.norm = nn.BatchNorm1d(hidden_features)
        self.out = nn.Linear(hidden_features, 2 * num_landmarks)

    def forward(self, features: Tensor) -> Tensor:
        check_feature_map("features", features, self.in_channels)
        check_param_dtype("features", features, self)
        size = materialized(self.hidden)
        if size is not None and features.shape[1:].numel() != size:
            raise ValueError(
                f"features must keep the size of the first call, C*H*W = {size}, "
                f"got shape {tuple(features.shape)}"
            )
        hidden = torch.relu(self.norm(self.hidden(features.flatten(1))))
        return self.out(hidden).view(-1, self.num_landmarks, 2)

    def extra_repr(self) -> str:
        return f"num_landmarks={self.num_landmarks}, in_channels={self.in_channels}"
