r"""Local node embedding (``LGRLHead(embedding="attention")``): each landmark pools the map where it looks.

The paper's :class:`~landmark_graph.MapToNode` gives every node ``n * H * W`` features computed
from the *whole* map by two 3x3 convolutions, so an occluder anywhere reaches every node before
the graph runs. :class:`AttentionToNode` gives each landmark a spatial attention of its own over
the backbone map and pools the map through it: a node's features come from the region it
attends to, plus where that region is. :class:`NodeEdgeWeights` then derives the dynamic edge
weights from the node features of each edge's two ends, instead of the paper's global pool.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import (
    check_feature_map,
    check_floating,
    check_ndim,
    check_param_dtype,
    check_shape,
    check_window,
    materialized,
)
from .ops import NeighborTable, edge_softmax

__all__ = ["POSITION_FEATURES", "AttentionToNode", "NodeEdgeWeights", "grid_coordinates"]

#: The last features of each :class:`AttentionToNode` node: expected position ``(x, y)`` and spread.
POSITION_FEATURES = 4


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def grid_coordinates(height: int, width: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    r"""``Tensor[H * W, 2]``: the ``(x, y)`` centre of each map cell, row-major, in :math:`[-1, 1]`.

    Cell :math:`j` of a side of :math:`W` cells sits at :math:`(2j + 1)/W - 1` (the
    ``align_corners=False`` convention of :func:`torch.nn.functional.grid_sample`): ``-1`` and
    ``1`` are the image's outer edges whatever the stride of the backbone.

    Example:
        >>> grid_coordinates(1, 2, dtype=torch.float32, device=torch.device("cpu"))
        tensor([[-0.5000,  0.0000],
                [ 0.5000,  0.0000]])
    """
    xs = (2 * torch.arange(width, dtype=dtype, device=device) + 1) / width - 1
    ys = (2 * torch.arange(height, dtype=dtype, device=device) + 1) / height - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(height * width, 2)


def _separable_block(in_channels: int | None, out_channels: int) -> list[nn.Module]:
    """1x1 convolution, depthwise 3x3, BN, ReLU: a 3x3 receptive field at a 1x1's cost."""
    pointwise = (nn.LazyConv2d(out_channels, 1, bias=False) if in_channels is None
                 else nn.Conv2d(in_channels, out_channels, 1, bias=False))
    depthwise = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False)
    return [pointwise, depthwise, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class AttentionToNode(nn.Module):
    r"""Per-landmark spatial attention over the backbone map, pooled into one vector per node.

    .. math::
        V &= \psi_2(\psi_1(F)) \in \mathbb R^{D \times HW}, \qquad
        a_{ip} = w_i^\top V_{:,p} + c_i
          - \tfrac12 \big\lVert (g_p - m_i) \oslash s_i \big\rVert^2, \qquad
        A_i = \operatorname{softmax}_p(a_i), \\
        \mu_i &= \sum_p A_{ip}\, g_p, \qquad
        \sigma_i = \Big(\sum_p A_{ip}\, (g_p - \mu_i)^{\odot 2} + \epsilon\Big)^{\odot 1/2}, \\
        h_i &= \Big[\textstyle\sum_p A_{ip} V_{:,p} + e_i,\ \ \mu_i,\ \ \sigma_i\Big] \in \mathbb R^{D + 4}

    with :math:`\psi` two depthwise-separable blocks (1x1 convolution, depthwise 3x3, BN, ReLU:
    a 5x5-cell receptive field, so that a landmark can be told from its look-alikes),
    :math:`w_i, c_i` the 1x1 convolution to the ``N`` attention logits, a learned Gaussian
    log-prior per landmark over positions (centre :math:`m_i`, scales :math:`s_i`; :math:`m_i = 0,
    s_i = 1` at the start), :math:`g_p \in [-1, 1]^2` the centre of cell :math:`p`
    (:func:`grid_coordinates`, x right, y down), :math:`e_i` a learned code of node :math:`i`
    (zero at the start) and :math:`\epsilon = 10^{-6}`. :math:`\mu_i` is the attention's expected
    position and :math:`\sigma_i` its spread per axis; they are the last
    :data:`POSITION_FEATURES` features of each node. Nothing depends on ``H, W``, which may
    change from call to call.

    The attention only stays local, so that an occluder far from a landmark does not move it,
    when it is trained to be (:func:`~landmark_graph.functional.attention_heatmap_loss` on the
    logits :math:`a`); trained through the landmarks alone it spreads over the map.

    With ``window=w`` the softmax runs over the :math:`w \times w` cells around each landmark's
    peak :math:`\arg\max_p a_{ip}` only (cut at the map's edges), so that what attention mass
    even a trained attention leaves far from its peak no longer carries an occluder's features
    into the node; the logits returned are still the full :math:`a`, for the heatmap loss. The
    peak's choice has no gradient; the softmax inside the window has.

    Args:
        num_landmarks: ``N``.
        in_channels: ``C`` of the backbone map; ``None`` infers it at the first call.
        hidden_channels: ``D``, the width of the value path :math:`\psi`.
        window: ``None`` (the whole map) or an odd side ``w`` of the square of cells the
            attention keeps around its peak.

    Shape:
        - Input: ``Tensor[B, C, H, W]``.
        - Output: ``(nodes, logits)``: ``Tensor[B, N, D + 4]`` and the attention logits
          :math:`a` as ``Tensor[B, N, H, W]``.

    Example:
        >>> import torch
        >>> m = AttentionToNode(98, in_channels=512, hidden_channels=128)
        >>> nodes, logits = m(torch.randn(2, 512, 8, 8))
        >>> nodes.shape, logits.shape
        (torch.Size([2, 98, 132]), torch.Size([2, 98, 8, 8]))
        >>> maps = m.attention_maps(torch.randn(2, 512, 5, 7))
        >>> torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(2, 98))
        True
    """

    def __init__(
        self,
        num_landmarks: int,
        in_channels: int | None = None,
        hidden_channels: int = 128,
        *,
        window: int | None = None,
    ) -> None:
        super().__init__()
        _positive_int("num_landmarks", num_landmarks)
        _positive_int("hidden_channels", hidden_channels)
        if in_channels is not None:
            _positive_int("in_channels", in_channels)
        check_window("window", window)
        self.num_landmarks = num_landmarks
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.window = window
        self.value = nn.Sequential(*_separable_block(in_channels, hidden_channels),
                                   *_separable_block(hidden_channels, hidden_channels))
        self.attend = nn.Conv2d(hidden_channels, num_landmarks, 1)
        self.prior_centre = nn.Parameter(torch.zeros(num_landmarks, 2))
        self.prior_log_scale = nn.Parameter(torch.zeros(num_landmarks, 2))
        self.node_code = nn.Parameter(torch.zeros(num_landmarks, hidden_channels))

    @property
    def out_features(self) -> int:
        """``D + 4``, the size of each node's features."""
        return self.hidden_channels + POSITION_FEATURES

    def _values_and_logits(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``V`` ``Tensor[B, D, H, W]``, the logits ``Tensor[B, N, H * W]`` and the grid ``[H * W, 2]``."""
        check_feature_map("features", features, materialized(self.value[0]))
        check_param_dtype("features", features, self)
        values = self.value(features)
        logits = self.attend(values).flatten(2)
        grid = grid_coordinates(*values.shape[-2:], dtype=logits.dtype, device=logits.device)
        z = (grid - self.prior_centre.unsqueeze(1).to(logits.dtype)) * torch.exp(
            -self.prior_log_scale.unsqueeze(1).to(logits.dtype))  # (N, HW, 2)
        return values, logits - 0.5 * z.square().sum(-1), grid

    def _attention(self, logits: Tensor, height: int, width: int) -> Tensor:
        """Softmax of ``logits`` ``Tensor[B, N, H * W]`` over the whole map or the window."""
        if self.window is None:
            return logits.softmax(dim=-1)
        radius = self.window // 2
        peak = logits.argmax(dim=-1, keepdim=True)  # (B, N, 1)
        cell = torch.arange(height * width, device=logits.device)
        near = ((torch.div(cell, width, rounding_mode="floor")
                 - torch.div(peak, width, rounding_mode="floor")).abs() <= radius) & (
            (cell % width - peak % width).abs() <= radius)
        return logits.masked_fill(~near, -math.inf).softmax(dim=-1)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        values, logits, grid = self._values_and_logits(features)
        attention = self._attention(logits, *values.shape[-2:])
        pooled = torch.bmm(attention.to(values.dtype), values.flatten(2).transpose(1, 2))
        position = attention @ grid  # (B, N, 2)
        offset = grid - position.unsqueeze(2)  # (B, N, HW, 2)
        spread = ((attention.unsqueeze(-1) * offset.square()).sum(dim=2) + 1e-6).sqrt()
        nodes = pooled + self.node_code.to(pooled.dtype)
        nodes = torch.cat([nodes, position.to(nodes.dtype), spread.to(nodes.dtype)], dim=-1)
        return nodes, logits.view(*logits.shape[:2], *values.shape[-2:])

    @torch.no_grad()
    def attention_maps(self, features: Tensor) -> Tensor:
        """``Tensor[B, N, H, W]``: each landmark's attention :math:`A_i`, summing to 1 over the map."""
        values, logits, _ = self._values_and_logits(features)
        attention = self._attention(logits, *values.shape[-2:])
        return attention.view(*logits.shape[:2], *values.shape[-2:])

    def extra_repr(self) -> str:
        window = "" if self.window is None else f", window={self.window}"
        return (f"num_landmarks={self.num_landmarks}, in_channels={self.in_channels}, "
                f"hidden_channels={self.hidden_channels}{window}")


class NodeEdgeWeights(nn.Module):
    r"""Per-image edge weights from the node features at each edge's two ends, then the row softmax.

    .. math::
        a_{bik} = \beta_{ik} + \frac{\langle W_q h_{bi},\ W_k h_{bj} \rangle}{\sqrt d},
        \quad j = \mathrm{idx}_{ik}, \qquad A_b = \sigma(a_b)

    :math:`\beta` is a learned logit per edge (the static weights of the authors' code) and the
    scaled dot product lets receiver :math:`i` weigh each sender :math:`j` by what both nodes
    see. A receiver's weights depend on its own and its senders' features only, so what happens
    elsewhere on the face does not reach them. :math:`W_q` and :math:`\beta` start at zero: the
    first forward gives uniform weights over each row.

    Args:
        adjacency: ``BoolTensor[N, N]`` neighbourhood mask, or a shared :class:`NeighborTable`.
        in_features: ``I``, the size of the node features.
        key_features: ``d``, the size of the query and key projections.

    Shape:
        - Input: ``Tensor[B, N, I]`` node features.
        - Output: ``Tensor[B, N, K]``, row-stochastic over each node's table slots.

    Example:
        >>> import torch
        >>> from landmark_graph import index_order_adjacency
        >>> w = NodeEdgeWeights(index_order_adjacency(5, k=2), in_features=8)
        >>> w(torch.randn(4, 5, 8))[0, 0]
        tensor([0.3333, 0.3333, 0.3333], grad_fn=<SelectBackward0>)
    """

    def __init__(self, adjacency: Tensor | NeighborTable, in_features: int, key_features: int = 16) -> None:
        super().__init__()
        _positive_int("in_features", in_features)
        _positive_int("key_features", key_features)
        self.table = adjacency if isinstance(adjacency, NeighborTable) else NeighborTable(adjacency)
        self.in_features, self.key_features = in_features, key_features
        self.query = nn.Linear(in_features, key_features, bias=False)
        self.key = nn.Linear(in_features, key_features, bias=False)
        nn.init.zeros_(self.query.weight)
        self.edge_bias = nn.Parameter(torch.zeros(self.table.valid.shape))

    def reset_edge_parameters(self) -> None:
        """Zero per-edge logits for the table's current ``(N, K)``, in the dtype and device they had."""
        old = self.edge_bias
        self.edge_bias = nn.Parameter(old.new_zeros(self.table.valid.shape))

    def forward(self, nodes: Tensor) -> Tensor:
        check_floating("nodes", nodes)
        check_ndim("nodes", nodes, 3, "(B, N, I)")
        check_shape("nodes", nodes, (None, self.table.num_nodes, self.in_features), "(B, N, I)")
        check_param_dtype("nodes", nodes, self)
        query, key = self.query(nodes), self.key(nodes)  # (B, N, d)
        senders = key[:, self.table.index.clamp(min=0)]  # (B, N, K, d)
        logits = (query.unsqueeze(2) * senders).sum(dim=-1) / math.sqrt(self.key_features)
        return edge_softmax(logits + self.edge_bias.to(logits.dtype), self.table.softmax_mask)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, key_features={self.key_features}"
