"""The occlusion-aware options of LGRLHead: attention embedding, visibility, gating, uncertainty."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import TOLERANCES
from torch import nn

from landmark_graph import (
    AttentionHeatmapLoss,
    AttentionToNode,
    DynamicAdjacency,
    GraphConv,
    GraphResidualBlock,
    HeadOutput,
    LaplaceNLLLoss,
    LGRLHead,
    MapToNode,
    NodeEdgeWeights,
    build_correlation_adjacency,
    index_order_adjacency,
)
from landmark_graph import functional as LF
from landmark_graph.node_readout import NodeReadout
from landmark_graph.ops import NeighborTable

N = 7
OPTIONS = {
    "attention": dict(embedding="attention"),
    "attention-all": dict(embedding="attention", visibility=True, gate_edges=True, uncertainty=True),
    "attention-windowed": dict(embedding="attention", attention_window=3, visibility=True, gate_edges=True,
                               uncertainty=True),
    "attention-static-gated": dict(embedding="attention", edge_weights="static", visibility=True,
                                   gate_edges=True),
    "map_to_node-all": dict(visibility=True, gate_edges=True, uncertainty=True),
    "map_to_node-binary-gated": dict(edge_weights="binary", visibility=True, gate_edges=True),
}


def small_head(**kwargs) -> LGRLHead:
    defaults = dict(num_landmarks=N, k=2, hidden_features=8, num_blocks=1, expansion=2, hidden_channels=6)
    return LGRLHead(**{**defaults, **kwargs})


def perturbed(head: nn.Module, x: torch.Tensor, scale: float = 0.3) -> nn.Module:
    """Materialise ``head`` on ``x`` and move every parameter off its (often zero) initial value."""
    head(x)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(scale * torch.randn_like(p))
    return head


# --- NodeReadout --------------------------------------------------------------------------------


def _readout_by_hand(readout: NodeReadout, h: torch.Tensor) -> torch.Tensor:
    """Reference, one node at a time: own row and the plain mean of its neighbours' rows."""
    w, c = readout.input.weight, readout.input.bias
    hid = readout.hidden
    out = []
    for i in range(h.shape[1]):
        z = h[:, i] @ w[:hid].T + c[:hid]
        if readout.table is not None:
            senders = [j for j in readout.table.index[i].tolist() if j >= 0]
            z = z + torch.stack([h[:, j] @ w[hid:].T + c[hid:] for j in senders]).mean(0)
        out.append(readout.output(torch.relu(z)) + readout.node_bias[i])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("with_table", [True, False])
def test_node_readout_matches_the_node_by_node_formula(with_table):
    torch.manual_seed(0)
    readout = NodeReadout(N, 5, 2, hidden=4, table=_table() if with_table else None).double()
    with torch.no_grad():
        readout.node_bias.normal_()
    h = torch.randn(3, N, 5, dtype=torch.float64)
    torch.testing.assert_close(readout(h), _readout_by_hand(readout, h))


def test_node_readout_reads_the_neighbourhood_and_nothing_else():
    torch.manual_seed(0)
    table = _table()
    readout = NodeReadout(N, 5, 1, table=table)
    h = torch.randn(2, N, 5)
    out = readout(h)
    i = 0
    neighbour = next(j for j in table.index[i].tolist() if j not in (i, -1))
    outside = next(j for j in range(N) if j not in table.index[i].tolist())
    for j, changes in ((neighbour, True), (outside, False)):
        moved = h.clone()
        moved[:, j] += 5
        assert not torch.allclose(readout(moved)[:, i], out[:, i]) if changes else \
            torch.equal(readout(moved)[:, i], out[:, i])


def test_node_readout_gradcheck_lazy_and_dtypes():
    table = _table()
    readout = NodeReadout(N, None, 2, hidden=3, table=table)
    assert readout(torch.randn(1, N, 6)).shape == (1, N, 2)  # in_features inferred
    readout = readout.double()
    h = torch.randn(2, N, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(readout, (h,))
    assert torch.autograd.gradgradcheck(readout, (h,))
    for dtype in (torch.float32, torch.bfloat16):
        cast = readout.to(dtype)
        out = cast(h.detach().to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out, readout.double()(h.detach()).to(dtype), **TOLERANCES[dtype])


# --- gate_edge_weights ------------------------------------------------------------------------


def _table() -> NeighborTable:
    adj = build_correlation_adjacency(torch.randn(30, N, 2, generator=torch.Generator().manual_seed(0)),
                                      k=2, symmetric=True)  # rows of different degrees: padded slots
    return NeighborTable(adj)


def _dense_gated(weights: torch.Tensor, visibility: torch.Tensor, table: NeighborTable) -> torch.Tensor:
    """Reference, one edge at a time: w_ij * (1 if i == j else v_j), rows renormalised."""
    out = torch.zeros(visibility.shape[0], N, N, dtype=weights.dtype)
    for b in range(visibility.shape[0]):
        for i in range(N):
            for k, j in enumerate(table.index[i].tolist()):
                if j >= 0:
                    out[b, i, j] = weights[b, i, k] * (1.0 if i == j else visibility[b, j])
    return out / out.sum(-1, keepdim=True)


def _dense(weights: torch.Tensor, table: NeighborTable) -> torch.Tensor:
    dense = torch.zeros(weights.shape[0], N, N, dtype=weights.dtype)
    return dense.scatter_add_(2, table.index.clamp(min=0).expand_as(weights), weights * table.valid)


def test_gating_matches_the_edge_by_edge_formula():
    g = torch.Generator().manual_seed(1)
    table = _table()
    weights = torch.rand(3, N, table.max_degree, generator=g, dtype=torch.float64) * table.valid
    weights = weights / weights.sum(-1, keepdim=True)
    visibility = torch.rand(3, N, generator=g, dtype=torch.float64)
    gated = LF.gate_edge_weights(weights, visibility, table)
    torch.testing.assert_close(_dense(gated, table), _dense_gated(weights, visibility, table),
                               **TOLERANCES[torch.float64])
    torch.testing.assert_close(gated.sum(-1), torch.ones(3, N, dtype=torch.float64))
    assert (gated[:, ~table.valid] == 0).all()
    # A raw index table gives the same; shared (N, K) weights broadcast over the batch.
    torch.testing.assert_close(LF.gate_edge_weights(weights, visibility, table.index), gated)
    shared = LF.gate_edge_weights(weights[0], visibility, table)
    torch.testing.assert_close(shared, LF.gate_edge_weights(weights[0].expand(3, -1, -1), visibility, table))


def test_gating_never_silences_the_self_edge():
    table = _table()
    weights = table.valid / table.valid.sum(-1, keepdim=True)
    for visibility in (torch.zeros(2, N), torch.full((2, N), 1e-30)):  # every sender occluded
        gated = LF.gate_edge_weights(weights, visibility, table)
        torch.testing.assert_close(_dense(gated, table), torch.eye(N).expand(2, -1, -1))
    # All visible: the weights are unchanged.
    unchanged = LF.gate_edge_weights(weights, torch.ones(2, N), table)
    torch.testing.assert_close(unchanged, weights.expand(2, -1, -1))


def test_gating_row_without_self_slot_and_all_senders_gone_is_zero_not_nan():
    index = torch.tensor([[1, 2], [1, 0], [2, -1]])  # row 0 has no self slot
    weights = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    gated = LF.gate_edge_weights(weights, torch.tensor([[1.0, 0.0, 0.0]]), index)
    assert torch.equal(gated[0, 0], torch.zeros(2))
    torch.testing.assert_close(gated[0, 1], torch.tensor([0.5, 0.5]))


def test_gating_gradcheck_and_gradgradcheck_float64():
    g = torch.Generator().manual_seed(2)
    table = _table()
    logits = torch.randn(2, N, table.max_degree, generator=g, dtype=torch.float64, requires_grad=True)
    vis = torch.rand(2, N, generator=g, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()

    def gate(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from landmark_graph.ops import edge_softmax

        return LF.gate_edge_weights(edge_softmax(a, table.valid), v, table)

    assert torch.autograd.gradcheck(gate, (logits, vis))
    assert torch.autograd.gradgradcheck(gate, (logits, vis))


def test_gating_bad_arguments():
    table = _table()
    k = table.max_degree
    with pytest.raises(ValueError, match=r"visibility must have shape \(B, N\) = \(\*, 7\), got \(2, 6\)"):
        LF.gate_edge_weights(torch.rand(2, N, k), torch.rand(2, 6), table)
    with pytest.raises(ValueError, match=r"weights must have shape \(B, N, K\) = \(2, 7, 4\), got \(3,"):
        LF.gate_edge_weights(torch.rand(3, N, k), torch.rand(2, N), table)
    with pytest.raises(TypeError, match="visibility must be a floating point tensor"):
        LF.gate_edge_weights(torch.rand(2, N, k), torch.ones(2, N, dtype=torch.bool), table)
    with pytest.raises(ValueError, match="index must be an integer table"):
        LF.gate_edge_weights(torch.rand(2, N, k), torch.rand(2, N), table.index.float())


# --- Laplace NLL ---------------------------------------------------------------------------------


def test_laplace_nll_by_hand_and_minimum_at_the_error():
    pred, target = torch.zeros(1, 2, 2), torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])
    log_scale = torch.tensor([[[0.0, 1.0], [-1.0, 0.5]]])
    expected = log_scale + target.abs() * torch.exp(-log_scale)
    torch.testing.assert_close(LF.laplace_nll_loss(pred, target, log_scale, reduction="none"), expected)
    torch.testing.assert_close(LaplaceNLLLoss(full=True, reduction="sum")(pred, target, log_scale),
                               expected.sum() + 4 * torch.log(torch.tensor(2.0)))
    s = torch.linspace(-3, 3, 601).view(-1, 1, 1).expand(-1, 1, 2)
    losses = LF.laplace_nll_loss(torch.zeros_like(s), torch.full_like(s, 2.0), s, reduction="none")[:, 0, 0]
    assert abs(float(s[losses.argmin(), 0, 0]) - torch.log(torch.tensor(2.0)).item()) < 0.01


def test_laplace_nll_mask_semantics():
    g = torch.Generator().manual_seed(3)
    pred, target, log_scale = (torch.randn(2, 4, 2, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    full = LF.laplace_nll_loss(pred, target, log_scale, reduction="none")
    expected = (full * mask.unsqueeze(-1)).sum() / (2 * mask.sum())
    for name in ("pred", "target", "log_scale"):  # NaN placeholders where hidden
        inputs = {"pred": pred.clone(), "target": target.clone(), "log_scale": log_scale.clone()}
        inputs[name][~mask] = float("nan")
        inputs["pred"].requires_grad_()
        inputs["log_scale"].requires_grad_()
        loss = LF.laplace_nll_loss(**inputs, mask=mask)
        torch.testing.assert_close(loss, expected)
        loss.backward()
        assert torch.isfinite(inputs["pred"].grad).all() and torch.isfinite(inputs["log_scale"].grad).all()
        assert (inputs["log_scale"].grad[~mask] == 0).all()
    hidden_target = target.clone()
    hidden_target[0, 0] = float("nan")  # counted: no mask
    with pytest.raises(ValueError, match="target must be finite at visible landmarks"):
        LF.laplace_nll_loss(pred, hidden_target, log_scale)
    with pytest.raises(ValueError, match="log_scale must be finite at visible landmarks"):
        LF.laplace_nll_loss(pred, target, log_scale.masked_fill(~mask.unsqueeze(-1), float("nan")),
                            mask=torch.ones(2, 4))
    assert LF.laplace_nll_loss(pred, target, log_scale, mask=torch.zeros(2, 4)) == 0


def test_laplace_nll_gradcheck_gradgradcheck_and_dtypes():
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
    log_scale = torch.randn(2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.5]], dtype=torch.float64)

    def loss(p, s):
        return LF.laplace_nll_loss(p, target, s, mask)

    assert torch.autograd.gradcheck(loss, (pred, log_scale))
    assert torch.autograd.gradgradcheck(loss, (pred, log_scale))
    ref = LF.laplace_nll_loss(pred, target, log_scale).detach()
    for dtype in (torch.float32, torch.bfloat16):
        out = LaplaceNLLLoss()(pred.detach().to(dtype), target.to(dtype), log_scale.detach().to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), ref, **TOLERANCES[dtype])


def test_laplace_nll_bad_arguments():
    pred = torch.zeros(2, 5, 2)
    with pytest.raises(ValueError, match=r"log_scale must have the shape of pred \(B, N, 2\) = \(2, 5, 2\), "
                                         r"got \(2, 5\)"):
        LaplaceNLLLoss()(pred, pred, torch.zeros(2, 5))
    with pytest.raises(TypeError, match="log_scale must be a floating point tensor"):
        LF.laplace_nll_loss(pred, pred, torch.zeros(2, 5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction must be one of"):
        LaplaceNLLLoss(reduction="avg")
    with pytest.raises(TypeError, match="full must be a bool"):
        LaplaceNLLLoss(full=1)
    assert repr(LaplaceNLLLoss()) == "LaplaceNLLLoss(full=False, reduction='mean')"


def test_attention_heatmap_loss_by_hand_and_mask_semantics():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    target = torch.rand(2, 3, 2, generator=g) * 2 - 1
    out = LF.attention_heatmap_loss(logits, target, sigma=0.7, reduction="none")
    xs = (2 * torch.arange(5) + 1) / 5 - 1
    ys = (2 * torch.arange(4) + 1) / 4 - 1
    for b, i in ((0, 0), (1, 2)):  # written out for two landmarks
        heat = torch.exp(-0.5 * (((xs[None] - target[b, i, 0]) / (1.4 / 5)) ** 2
                                 + ((ys[:, None] - target[b, i, 1]) / (1.4 / 4)) ** 2))
        heat = heat / heat.sum()
        expected = -(heat * logits[b, i].flatten().log_softmax(0).view(4, 5)).sum()
        torch.testing.assert_close(out[b, i], expected)
    uniform = AttentionHeatmapLoss()(torch.zeros(2, 3, 4, 5), target)
    torch.testing.assert_close(uniform, torch.log(torch.tensor(20.0)))
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    hidden = target.clone()
    hidden[~mask] = float("nan")
    nan_logits = logits.masked_fill(~mask[..., None, None], float("nan"))
    masked = LF.attention_heatmap_loss(nan_logits, hidden, mask, sigma=0.7)
    torch.testing.assert_close(masked, (out * mask).sum() / mask.sum())
    with pytest.raises(ValueError, match="target must be finite at visible landmarks"):
        LF.attention_heatmap_loss(logits, hidden)
    with pytest.raises(ValueError, match=r"target must have shape \(B, N, 2\) matching logits"):
        LF.attention_heatmap_loss(logits, target[:, :2])
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        AttentionHeatmapLoss(sigma=0.0)


def test_attention_heatmap_loss_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 2, 2, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)

    def loss(a, t):
        return LF.attention_heatmap_loss(a, t, mask)

    assert torch.autograd.gradcheck(loss, (logits, target))
    assert torch.autograd.gradgradcheck(loss, (logits, target))


def test_attention_heatmap_loss_localises_the_attention():
    """A few steps of the loss alone pull a landmark's attention onto its target cell."""
    torch.manual_seed(0)
    m = AttentionToNode(2, in_channels=3, hidden_channels=8)
    x = torch.randn(4, 3, 6, 6)
    target = torch.tensor([[0.5, -0.5], [-0.5, 0.5]]).expand(4, -1, -1)
    optimizer = torch.optim.Adam(m.parameters(), 0.05)
    for _ in range(60):
        optimizer.zero_grad()
        LF.attention_heatmap_loss(m(x)[1], target).backward()
        optimizer.step()
    position = m.eval()(x)[0][..., -4:-2]
    assert (position - target).abs().max() < 0.15


# --- the head -------------------------------------------------------------------------------------


def _paper_head_from_parts(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The paper's head written out from its public parts, in the order LGRLHead builds them."""
    from landmark_graph import heads

    table = NeighborTable(heads.default_adjacency(N, 2))
    map_to_node = MapToNode(N, None, 2, 6)
    dynamic = DynamicAdjacency(table, N * 2, 8) if mode == "dynamic" else None
    learn = mode == "static"
    first = GraphConv(None, 8, table, learn_edge_weights=learn)
    block = GraphResidualBlock(8, table, learn_edge_weights=learn)
    last = GraphConv(8, 2, table, learn_edge_weights=learn, norm_act=False)
    nodes = map_to_node(x)
    weights = None
    if dynamic is not None:
        weights = dynamic(nodes.view(x.shape[0], N, 2, -1).mean(-1).flatten(1))
    return last(block(first(nodes, weights), weights), weights)


@pytest.mark.parametrize("mode", ["dynamic", "static", "binary"])
def test_default_head_is_bitwise_the_paper_head(mode):
    x = torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    expected = _paper_head_from_parts(x, mode)
    torch.manual_seed(0)
    head = small_head(edge_weights=mode)
    assert torch.equal(head(x), expected)
    assert torch.equal(head(x, return_details=True).landmarks, expected)
    assert not any(name.startswith(("attention", "visibility_head", "scale_head", "position_bias"))
                   for name in head.state_dict())


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_shapes_details_and_gradients(name):
    torch.manual_seed(0)
    options = OPTIONS[name]
    head = perturbed(small_head(**options), torch.randn(4, 5, 4, 4))
    x = torch.randn(3, 5, 4, 4, requires_grad=True)
    out = head(x, return_details=True)
    assert isinstance(out, HeadOutput) and out.landmarks.shape == (3, N, 2)
    assert torch.equal(head(x), out.landmarks)
    assert (out.visibility_logits is None) == (not options.get("visibility"))
    assert (out.log_scale is None) == (not options.get("uncertainty"))
    if options.get("visibility"):
        assert out.visibility_logits.shape == (3, N)
    if options.get("uncertainty"):
        assert out.log_scale.shape == (3, N, 2)
    attention = options.get("embedding") == "attention"
    assert (out.attention_logits is None) == (not attention)
    if attention:
        assert out.attention_logits.shape == (3, N, 4, 4)
    total = sum(t.sum() for t in out if t is not None)
    total.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    weights = head.dense_edge_weights(x.detach())
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, N))


def test_attention_any_map_size_between_calls_and_inspectable_maps():
    torch.manual_seed(0)
    head = small_head(embedding="attention", in_channels=5).eval()
    for h, w in [(8, 8), (3, 5), (1, 1), (16, 4)]:
        x = torch.randn(2, 5, h, w)
        assert head(x).shape == (2, N, 2)
        maps = head.attention_maps(x)
        assert maps.shape == (2, N, h, w) and (maps >= 0).all()
        torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, N))
    with pytest.raises(ValueError, match="attention_maps needs embedding='attention'"):
        small_head().attention_maps(torch.randn(1, 5, 4, 4))


def test_attention_features_are_the_pooled_map_and_the_expected_position():
    torch.manual_seed(0)
    m = perturbed(AttentionToNode(3, in_channels=4, hidden_channels=5), torch.randn(2, 4, 3, 2)).eval()
    x = torch.randn(2, 4, 3, 2)
    (nodes, logits), maps = m(x), m.attention_maps(x)  # (B, N, D + 4), (B, N, H, W) twice
    torch.testing.assert_close(maps, logits.flatten(2).softmax(-1).view_as(maps))
    values = m.value(x)  # (B, D, H, W)
    pooled = torch.einsum("bnhw,bdhw->bnd", maps, values) + m.node_code
    torch.testing.assert_close(nodes[..., :5], pooled)
    xs, ys = torch.tensor([-0.5, 0.5]), torch.tensor([-2 / 3, 0.0, 2 / 3])  # cell centres in [-1, 1]
    # The logits are the appearance term plus the Gaussian log-prior over positions.
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    z = ((torch.stack([gx, gy], -1)[None] - m.prior_centre[:, None, None]) /
         m.prior_log_scale.exp()[:, None, None])
    torch.testing.assert_close(logits, m.attend(values) - 0.5 * z.square().sum(-1))
    mean_x = (maps.sum(2) * xs).sum(-1)
    mean_y = (maps.sum(3) * ys).sum(-1)
    torch.testing.assert_close(nodes[..., 5], mean_x)
    torch.testing.assert_close(nodes[..., 6], mean_y)
    var_x = (maps.sum(2) * (xs - mean_x.unsqueeze(-1)) ** 2).sum(-1)
    torch.testing.assert_close(nodes[..., 7], (var_x + 1e-6).sqrt())


def test_attention_output_is_an_offset_from_the_expected_position():
    torch.manual_seed(0)
    head = perturbed(small_head(embedding="attention"), torch.randn(4, 5, 4, 4)).eval()
    with torch.no_grad():
        nn.init.zeros_(head.output_conv.linear.weight)
        nn.init.zeros_(head.output_conv.bias)
        head.position_bias.zero_()
    x = torch.randn(2, 5, 4, 4)
    position = head.attention(x)[0][..., -4:-2]
    torch.testing.assert_close(head(x), position)


def _windowed_by_hand(logits: torch.Tensor, window: int) -> torch.Tensor:
    """Reference, one map at a time: the softmax over the cells of the square around the peak."""
    out = torch.zeros_like(logits)  # (B, N, H, W)
    r = window // 2
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            a = logits[b, i]
            row, col = divmod(int(a.argmax()), a.shape[1])
            rows = slice(max(row - r, 0), row + r + 1)
            cols = slice(max(col - r, 0), col + r + 1)
            out[b, i, rows, cols] = a[rows, cols].flatten().softmax(0).view_as(a[rows, cols])
    return out


@pytest.mark.parametrize("window", [1, 3, 5])
def test_windowed_attention_is_the_softmax_over_the_square_around_the_peak(window):
    torch.manual_seed(0)
    m = perturbed(AttentionToNode(4, in_channels=3, hidden_channels=5, window=window),
                  torch.randn(2, 3, 6, 7)).eval()
    x = torch.randn(3, 3, 6, 7)
    (nodes, logits), maps = m(x), m.attention_maps(x)
    expected = _windowed_by_hand(logits, window)
    torch.testing.assert_close(maps, expected)
    assert ((maps > 0).flatten(2).sum(-1) <= window * window).all()
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(3, 4))
    pooled = torch.einsum("bnhw,bdhw->bnd", maps, m.value(x)) + m.node_code
    torch.testing.assert_close(nodes[..., :5], pooled)
    # The logits stay those of the whole map: the window only cuts the softmax.
    whole = AttentionToNode(4, in_channels=3, hidden_channels=5)
    whole.load_state_dict(m.state_dict())
    torch.testing.assert_close(whole.eval()(x)[1], logits)


def test_windowed_attention_is_cut_at_the_map_edges_and_a_wide_window_is_the_whole_map():
    torch.manual_seed(0)
    m = AttentionToNode(2, in_channels=3, hidden_channels=4, window=3)
    m = perturbed(m, torch.randn(2, 3, 5, 5)).eval()
    with torch.no_grad():
        m.prior_centre.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))  # top-left and bottom-right corners
        m.prior_log_scale.fill_(-1.5)
    maps = m.attention_maps(torch.randn(1, 3, 5, 5))[0]  # (N, H, W)
    assert maps[0].argmax() == 0 and maps[1].argmax() == 24  # peaks in the corners
    for attention, corner in ((maps[0], maps[0, :2, :2]), (maps[1], maps[1, 3:, 3:])):
        assert (corner > 0).all() and corner.sum() == pytest.approx(1.0) == attention.sum().item()
    whole = AttentionToNode(2, in_channels=3, hidden_channels=4)
    wide = AttentionToNode(2, in_channels=3, hidden_channels=4, window=9)  # 9 = 2 * 5 - 1: any peak sees all
    for other in (whole, wide):
        other.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 5, 5)
    for a, b in zip(wide.eval()(x), whole.eval()(x), strict=True):
        torch.testing.assert_close(a, b)


def test_windowed_attention_gradcheck_float64():
    torch.manual_seed(0)
    m = perturbed(AttentionToNode(2, in_channels=2, hidden_channels=3, window=3), torch.randn(2, 2, 4, 5))
    m = m.double().eval()
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: m(f)[0], (x,), atol=1e-6)


@pytest.mark.parametrize("window", [0, 2, -1, True, 3.0, "3"])
def test_windowed_attention_bad_windows(window):
    with pytest.raises(ValueError, match=r"window must be None or an odd positive int"):
        AttentionToNode(3, window=window)
    with pytest.raises(ValueError, match=r"attention_window must be None or an odd positive int"):
        small_head(embedding="attention", attention_window=window)


def test_node_edge_weights_start_uniform_and_read_both_ends_of_each_edge():
    table = _table()
    weights = NodeEdgeWeights(table, in_features=6)
    uniform = table.valid / table.valid.sum(-1, keepdim=True)
    torch.testing.assert_close(weights(torch.randn(2, N, 6)), uniform.expand(2, -1, -1))
    nn.init.normal_(weights.query.weight)
    nodes = torch.randn(2, N, 6)
    out = weights(nodes)
    q, k = weights.query(nodes), weights.key(nodes)
    i, slot = 3, 1
    j = int(table.index[i, slot])
    logits = torch.stack([(q[:, i] * k[:, int(s)]).sum(-1) / 4.0 for s in table.index[i] if s >= 0], -1)
    torch.testing.assert_close(out[:, i, : logits.shape[-1]], logits.softmax(-1))
    assert j >= 0
    # Changing a node outside receiver i's neighbourhood leaves i's weights alone.
    outside = next(n for n in range(N) if n not in table.index[i].tolist())
    moved = nodes.clone()
    moved[:, outside] += 10
    torch.testing.assert_close(weights(moved)[:, i], out[:, i])


def test_gating_silences_senders_the_head_judges_occluded():
    torch.manual_seed(0)
    head = perturbed(small_head(embedding="attention", visibility=True, gate_edges=True),
                     torch.randn(4, 5, 4, 4)).eval()
    x = torch.randn(2, 5, 4, 4)
    with torch.no_grad():
        head.visibility_head.node_bias.fill_(-60.0)  # everything occluded: only self edges remain
        torch.testing.assert_close(head.dense_edge_weights(x), torch.eye(N).expand(2, -1, -1))
        head.visibility_head.output.weight.zero_()
        head.visibility_head.node_bias.fill_(60.0)  # everything visible: the ungated weights
    ungated = small_head(embedding="attention", visibility=True)
    ungated.load_state_dict(head.state_dict())
    torch.testing.assert_close(head.dense_edge_weights(x), ungated.eval().dense_edge_weights(x))
    torch.testing.assert_close(head(x), ungated(x))


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="gate_edges=True needs visibility=True"):
        small_head(gate_edges=True)
    with pytest.raises(ValueError, match=r"embedding must be one of \('map_to_node', 'attention'\)"):
        small_head(embedding="local")
    with pytest.raises(ValueError, match="attention_window needs embedding='attention'"):
        small_head(attention_window=3)
    with pytest.raises(TypeError, match="uncertainty must be a bool"):
        small_head(uncertainty=1)
    head = small_head(embedding="attention", in_channels=5)
    with pytest.raises(ValueError, match=r"features must have 5 channels"):
        head(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"nodes must have shape \(B, N, I\) = \(\*, 7, 6\)"):
        NodeEdgeWeights(index_order_adjacency(N, 2), 6)(torch.randn(2, N, 5))
    with pytest.raises(ValueError, match=r"sender_gate must have shape \(B, N\) = \(2, 7\)"):
        GraphConv(4, 3, index_order_adjacency(N, 2))(torch.randn(2, N, 4), sender_gate=torch.rand(2, 6))
    assert "embedding='attention', visibility=True, gate_edges=True" in repr(
        small_head(embedding="attention", visibility=True, gate_edges=True))


@pytest.mark.parametrize("name", ["attention-all", "attention-windowed", "map_to_node-all"])
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    head = perturbed(small_head(**OPTIONS[name]), torch.randn(4, 5, 4, 4)).eval()
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    clone = small_head(**OPTIONS[name])
    clone.load_state_dict(torch.load(buffer))
    x = torch.randn(3, 5, 4, 4)
    for a, b in zip(head(x, return_details=True), clone.eval()(x, return_details=True), strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_set_adjacency_on_an_attention_head():
    torch.manual_seed(0)
    head = small_head(embedding="attention", visibility=True, gate_edges=True).double()
    adj = build_correlation_adjacency(torch.randn(30, N, 2), k=2, symmetric=True)
    head.set_adjacency(adj)
    assert head.dynamic.edge_bias.shape == head.table.valid.shape
    assert head.dynamic.edge_bias.dtype == torch.float64
    assert head(torch.randn(2, 5, 3, 3, dtype=torch.float64)).shape == (2, N, 2)


@pytest.mark.parametrize("name", ["attention-all", "map_to_node-all"])
def test_gradcheck_head_float64(name):
    torch.manual_seed(0)
    head = small_head(**{**OPTIONS[name], "hidden_channels": 3, "expansion": 1})
    head = perturbed(head, torch.randn(2, 2, 2, 2)).double().eval()
    x = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)

    def outputs(features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in head(features, return_details=True) if t is not None)

    assert torch.autograd.gradcheck(outputs, (x,), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["attention-all", "attention-windowed", "map_to_node-all"])
def test_autocast_on_cpu_is_close_to_float32(name, dtype):
    torch.manual_seed(0)
    head = perturbed(small_head(**{**OPTIONS[name], "hidden_features": 16}), torch.randn(4, 5, 4, 4)).eval()
    x = torch.randn(4, 5, 4, 4)
    with torch.no_grad():
        ref = head(x, return_details=True)
        with torch.autocast("cpu", dtype=dtype):
            low = head(x, return_details=True)
    for a, b in zip(low, ref, strict=True):
        if a is None:
            continue
        assert torch.isfinite(a).all()
        error = float((a.float() - b).abs().max() / b.abs().max())
        assert 1e-5 < error < 0.05  # above 1e-5: autocast really ran in low precision
    double = small_head(**{**OPTIONS[name], "hidden_features": 16}).double()
    double.load_state_dict(head.state_dict())
    for a, b in zip(double.eval()(x.double(), return_details=True), ref, strict=True):
        if a is None:
            continue
        assert a.dtype == torch.float64
        torch.testing.assert_close(a.float(), b, **TOLERANCES[torch.float32])


@pytest.mark.slow
def test_torch_compile_fullgraph_of_the_new_modes():
    torch.manual_seed(0)

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = small_head(**OPTIONS["attention-all"])
            self.static = small_head(**OPTIONS["attention-static-gated"])
            self.windowed = small_head(**OPTIONS["attention-windowed"])
            self.paper = small_head(**OPTIONS["map_to_node-all"])

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs = (*self.attention(x, return_details=True), *self.static(x, return_details=True),
                       *self.windowed(x, return_details=True), *self.paper(x, return_details=True))
            return tuple(t for t in outputs if t is not None)

    model = perturbed(Both(), torch.randn(4, 5, 4, 4)).eval()
    x = torch.randn(2, 5, 4, 4)
    compiled = torch.compile(model, fullgraph=True)
    for a, b in zip(compiled(x), model(x), strict=True):
        torch.testing.assert_close(a, b)
