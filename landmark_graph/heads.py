"""Landmark heads that sit on a backbone feature map: the paper's L-GRL head and the FC baseline."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import check_feature_map, check_param_dtype, check_window, materialized
from .adjacency import build_correlation_adjacency, check_adjacency, index_order_adjacency
from .attention import POSITION_FEATURES, AttentionToNode, NodeEdgeWeights
from .edge_weights import EDGE_WEIGHT_MODES, DynamicAdjacency
from .functional import gate_edge_weights
from .graph_conv import GraphConv, GraphResidualBlock
from .map_to_node import MapToNode
from .node_readout import NodeReadout
from .ops import NeighborTable
from .schemes import BUILTIN_SCHEMES, scheme_for_num_landmarks

__all__ = ["EMBEDDINGS", "FCHead", "HeadOutput", "LGRLHead", "default_adjacency"]


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


class HeadOutput(NamedTuple):
    """What ``LGRLHead(...)(features, return_details=True)`` returns; ``None`` where an option is off.

    Attributes:
        landmarks: ``Tensor[B, N, 2]``, the coordinates ``head(features)`` returns.
        visibility_logits: ``Tensor[B, N]``, high = visible (``visibility=True``).
        log_scale: ``Tensor[B, N, 2]``, the log of a Laplace scale per coordinate, in the units
            of ``landmarks`` (``uncertainty=True``).
        attention_logits: ``Tensor[B, N, H, W]``, each landmark's attention logits
            (``embedding="attention"``), for :func:`~landmark_graph.functional.attention_heatmap_loss`.

    Example:
        >>> import torch
        >>> out = LGRLHead(5, k=2, hidden_features=8, num_blocks=1, visibility=True)(
        ...     torch.randn(2, 16, 4, 4), return_details=True)
        >>> out.visibility_logits.shape, out.log_scale is None, out.attention_logits is None
        (torch.Size([2, 5]), True, True)
    """

    landmarks: Tensor
    visibility_logits: Tensor | None
    log_scale: Tensor | None
    attention_logits: Tensor | None = None


#: The node embeddings of :class:`LGRLHead` (``embedding=``).
EMBEDDINGS = ("map_to_node", "attention")


class LGRLHead(nn.Module):
    r"""Landmark-graph relational head (paper §III, Fig. 3 and 5), with opt-in occlusion awareness.

    .. math::
        H_0 = \mathrm{MapToNode}(F), \quad A = \sigma(\cdot), \quad
        P = g_{\text{out}}\big(R_{L}(\cdots R_1(g_{\text{in}}(H_0, A), A) \cdots, A)\big)

    with :math:`g` :class:`GraphConv` layers (input ``I -> F`` with BN-ReLU, output ``F -> 2``
    without) and :math:`R` :class:`GraphResidualBlock` s. The defaults are the paper's head.

    Beyond the paper (each off by default):

    - ``embedding="attention"``: :math:`H_0` from :class:`~landmark_graph.attention.AttentionToNode`,
      each landmark pooling the map through a spatial attention of its own (``I = D + 4``, any
      ``H, W``, changing between calls too); dynamic edge weights from the node features
      (:class:`~landmark_graph.attention.NodeEdgeWeights`) instead of the global pool; and the
      output is an offset from the attention's expected position :math:`\mu_i`,
      :math:`P_i = \mu_i + b_i + g_{\text{out}}(\cdot)_i` with a learned :math:`b_i` (zero at
      the start). :math:`\mu_i` is in normalised map coordinates (:math:`[-1, 1]`
      across the map, x right, y down), so targets should be in units of half the image side,
      as :class:`~landmark_graph.engine.training.LandmarkModel`'s. Train the attention with
      :func:`~landmark_graph.functional.attention_heatmap_loss` on
      ``HeadOutput.attention_logits`` beside the landmark loss: without it the attention
      spreads over the map and is no more local than the paper's embedding.
      ``attention_window=w`` keeps each attention to the ``w x w`` cells around its peak
      (``AttentionToNode(window=w)``).
    - ``visibility=True``: per-landmark visibility logits :math:`v`, read by a
      :class:`~landmark_graph.node_readout.NodeReadout` from the node embedding :math:`H_0` before
      the graph, each node's own row and its neighbourhood's mean (train them with
      ``BCEWithLogitsLoss`` on visibility flags).
    - ``gate_edges=True`` (needs ``visibility``): every graph layer's edge weights are gated by
      the senders' :math:`\mathrm{sigmoid}(v)` and renormalised
      (:func:`~landmark_graph.functional.gate_edge_weights`); self edges are never gated.
    - ``uncertainty=True``: a Laplace log-scale per coordinate, read by a
      :class:`~landmark_graph.node_readout.NodeReadout` from the last hidden graph features
      (train it with :class:`~landmark_graph.LaplaceNLLLoss`).

    ``head(features)`` returns the landmarks whatever the options; ``head(features,
    return_details=True)`` returns a :class:`HeadOutput`.

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
        expansion: ``n``, map-to-node channels per landmark, so ``I = n * H * W``
            (``embedding="map_to_node"`` only).
        edge_weights: ``"dynamic"`` (per image, the paper), ``"static"`` (learned per layer,
            the authors' code) or ``"binary"`` (all edges equal).
        hidden_channels: width of the embedding: map-to-node's first 3x3 convolution (default
            256), or the attention's value path ``D`` (default 128).
        embedding: ``"map_to_node"`` (the paper) or ``"attention"``.
        attention_window: ``None`` (the whole map) or the odd side of the square of cells each
            attention keeps around its peak (``embedding="attention"`` only).
        visibility: predict visibility logits.
        uncertainty: predict a Laplace log-scale per coordinate.
        gate_edges: gate the edge weights by the senders' predicted visibility.

    Shape:
        - Input: ``Tensor[B, C, H, W]`` backbone feature map. With ``"map_to_node"`` any
          ``H, W``, fixed after the first call (``I`` depends on it); with ``"attention"`` any
          ``H, W`` at every call.
        - Output: ``Tensor[B, N, 2]`` landmark coordinates, in the units of the targets; or a
          :class:`HeadOutput` with ``return_details=True``.

    Example:
        >>> import torch
        >>> head = LGRLHead(num_landmarks=98, k=3)
        >>> head(torch.randn(2, 512, 8, 8)).shape
        torch.Size([2, 98, 2])
        >>> head = LGRLHead(98, embedding="attention", visibility=True, uncertainty=True, gate_edges=True)
        >>> out = head(torch.randn(2, 512, 8, 8), return_details=True)
        >>> out.landmarks.shape, out.visibility_logits.shape, out.log_scale.shape
        (torch.Size([2, 98, 2]), torch.Size([2, 98]), torch.Size([2, 98, 2]))
        >>> head.attention_maps(torch.randn(1, 512, 6, 5)).shape
        torch.Size([1, 98, 6, 5])
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
        hidden_channels: int | None = None,
        embedding: str = "map_to_node",
        attention_window: int | None = None,
        visibility: bool = False,
        uncertainty: bool = False,
        gate_edges: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(num_landmarks, int) or num_landmarks < 2:
            raise ValueError(f"num_landmarks must be an int >= 2, got {num_landmarks!r}")
        if edge_weights not in EDGE_WEIGHT_MODES:
            raise ValueError(f"edge_weights must be one of {EDGE_WEIGHT_MODES}, got {edge_weights!r}")
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an int >= 0, got {num_blocks!r}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        check_window("attention_window", attention_window, embedding)
        flags = {"visibility": visibility, "uncertainty": uncertainty, "gate_edges": gate_edges}
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if gate_edges and not visibility:
            raise ValueError(
                "gate_edges=True needs visibility=True: the gate is the senders' predicted visibility"
            )
        self.num_landmarks = num_landmarks
        self.k = k
        self.edge_weight_mode = edge_weights
        self.embedding = embedding
        self.gate_edges = gate_edges
        mask = (
            default_adjacency(num_landmarks, k) if adjacency is None
            else _resolve_adjacency(adjacency, num_landmarks, k)
        )
        # One table shared by every graph layer: set_adjacency and .to() act on it once.
        self.table = NeighborTable(mask)
        # The paper's head builds exactly its modules, in its order: same parameters for a seed.
        self.map_to_node: MapToNode | None = None
        self.attention: AttentionToNode | None = None
        self.dynamic: DynamicAdjacency | NodeEdgeWeights | None = None
        if embedding == "map_to_node":
            width = 256 if hidden_channels is None else hidden_channels
            self.map_to_node = MapToNode(num_landmarks, in_channels, expansion, width)
            node_features = None
            if edge_weights == "dynamic":
                self.dynamic = DynamicAdjacency(self.table, num_landmarks * expansion, hidden_features)
        else:
            width = 128 if hidden_channels is None else hidden_channels
            self.attention = AttentionToNode(num_landmarks, in_channels, width, window=attention_window)
            node_features = self.attention.out_features
            if edge_weights == "dynamic":
                self.dynamic = NodeEdgeWeights(self.table, node_features)
        learn = edge_weights == "static"
        self.input_conv = GraphConv(node_features, hidden_features, self.table, learn_edge_weights=learn)
        self.blocks = nn.ModuleList(
            GraphResidualBlock(hidden_features, self.table, learn_edge_weights=learn)
            for _ in range(num_blocks)
        )
        self.output_conv = GraphConv(
            hidden_features, 2, self.table, learn_edge_weights=learn, norm_act=False
        )
        self.visibility_head = (
            NodeReadout(num_landmarks, node_features, 1, table=self.table) if visibility else None
        )
        self.scale_head = NodeReadout(num_landmarks, hidden_features, 2) if uncertainty else None
        self.position_bias = (
            nn.Parameter(torch.zeros(num_landmarks, 2)) if embedding == "attention" else None
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

    def _embed(self, features: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Node features, per-image edge weights (or ``None``) and attention logits (or ``None``)."""
        if self.attention is not None:
            nodes, logits = self.attention(features)  # (B, N, D + 4), (B, N, H, W)
            return nodes, None if self.dynamic is None else self.dynamic(nodes), logits
        nodes = self.map_to_node(features)  # (B, N, n*H*W)
        if self.dynamic is None:
            return nodes, None, None
        b, n = nodes.shape[:2]
        # Context: spatial mean of each of the N*n map-to-node channels (SPEC §3).
        expansion = self.map_to_node.expansion
        # Explicit sizes, not -1: a view of an empty batch cannot infer a dimension.
        context = nodes.view(b, n, expansion, nodes.shape[-1] // expansion).mean(dim=-1).flatten(1)
        return nodes, self.dynamic(context), None

    def _visibility_logits(self, nodes: Tensor) -> Tensor | None:
        return None if self.visibility_head is None else self.visibility_head(nodes).squeeze(-1)

    def forward(self, features: Tensor, return_details: bool = False) -> Tensor | HeadOutput:
        size = materialized(self.input_conv.linear)
        nodes, edge_weights, attention_logits = self._embed(features)
        if size is not None and nodes.shape[-1] != size:
            raise ValueError(
                f"features must keep the spatial size of the first call, n*H*W = {size}, "
                f"got shape {tuple(features.shape)}"
            )
        visibility = self._visibility_logits(nodes)
        gate = torch.sigmoid(visibility) if self.gate_edges else None
        h = self.input_conv(nodes, edge_weights, gate)
        for block in self.blocks:
            h = block(h, edge_weights, gate)
        landmarks = self.output_conv(h, edge_weights, gate)
        if self.position_bias is not None:
            position = nodes[..., -POSITION_FEATURES:-POSITION_FEATURES + 2]
            landmarks = landmarks + (position + self.position_bias).to(landmarks.dtype)
        if not return_details:
            return landmarks
        log_scale = None if self.scale_head is None else self.scale_head(h)
        return HeadOutput(landmarks, visibility, log_scale, attention_logits)

    @torch.no_grad()
    def dense_edge_weights(self, features: Tensor) -> Tensor:
        """``Tensor[B, N, N]``: the edge weights the input layer uses, as a dense matrix.

        For inspection and plots: dynamic weights differ per image; static and binary weights
        are the input layer's, repeated over the batch; with ``gate_edges`` they are gated by
        the predicted visibility, as the layer uses them.
        """
        nodes, weights, _ = self._embed(features)
        if weights is None:
            weights = self.input_conv.own_edge_weights().expand(nodes.shape[0], -1, -1)
        if self.gate_edges:
            weights = gate_edge_weights(weights, torch.sigmoid(self._visibility_logits(nodes)), self.table)
        n = self.num_landmarks
        index = self.table.index.clamp(min=0).expand(weights.shape[0], -1, -1)
        dense = weights.new_zeros(weights.shape[0], n, n)
        return dense.scatter_add_(2, index, weights * self.table.valid)

    @torch.no_grad()
    def attention_maps(self, features: Tensor) -> Tensor:
        """``Tensor[B, N, H, W]``: each landmark's spatial attention (``embedding="attention"`` only)."""
        if self.attention is None:
            raise ValueError("attention_maps needs embedding='attention'; this head uses 'map_to_node'")
        return self.attention.attention_maps(features)

    def extra_repr(self) -> str:
        extras = "".join(f", {name}=True" for name in ("visibility", "uncertainty", "gate_edges")
                         if self._option(name))
        embedding = "" if self.embedding == "map_to_node" else f", embedding={self.embedding!r}"
        return (f"num_landmarks={self.num_landmarks}, k={self.k}, "
                f"edge_weights={self.edge_weight_mode!r}{embedding}{extras}")

    def _option(self, name: str) -> bool:
        return {"visibility": self.visibility_head is not None, "uncertainty": self.scale_head is not None,
                "gate_edges": self.gate_edges}[name]


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
