import io

import pytest
import torch
from helpers import DEVICES, assert_close
from torch import nn

from landmark_graph import (
    DynamicAdjacency,
    FCHead,
    GraphConv,
    GraphResidualBlock,
    LGRLHead,
    MapToNode,
    build_correlation_adjacency,
    index_order_adjacency,
)
from landmark_graph.ops import edge_softmax

N = 7


def _small_head(**kwargs) -> LGRLHead:
    defaults = dict(num_landmarks=N, k=2, hidden_features=8, num_blocks=1, expansion=2, hidden_channels=6)
    return LGRLHead(**{**defaults, **kwargs})


def _dense_graph_conv(conv: GraphConv, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reference: sigma(A) H W with a dense (B, N, N) matrix, then BN-ReLU or bias."""
    dense = torch.zeros(x.shape[0], N, N, dtype=x.dtype)
    index = conv.table.index
    for i in range(N):
        for k in range(index.shape[1]):
            if index[i, k] >= 0:
                dense[:, i, index[i, k]] += weights[..., i, k]
    out = dense @ x @ conv.linear.weight.T
    if conv.norm is None:
        return out + conv.bias
    return torch.relu(conv.norm(out.transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize(("in_f", "out_f"), [(5, 9), (9, 5)])  # both aggregation orders
@pytest.mark.parametrize("norm_act", [True, False])
def test_graph_conv_matches_dense_formula(in_f, out_f, norm_act):
    torch.manual_seed(0)
    adj = build_correlation_adjacency(torch.randn(20, N, 2), k=2, symmetric=True)  # padded rows
    conv = GraphConv(in_f, out_f, adj, norm_act=norm_act).double().eval()
    x = torch.randn(3, N, in_f, dtype=torch.float64)
    weights = torch.rand(3, N, conv.table.max_degree, dtype=torch.float64)
    assert_close(conv(x, weights), _dense_graph_conv(conv, x, weights))
    shared = conv.own_edge_weights().double()
    assert torch.allclose(shared.sum(-1), torch.ones(N, dtype=torch.float64))
    assert_close(conv(x), _dense_graph_conv(conv, x, shared))


def test_residual_block_is_f_f_plus_identity():
    torch.manual_seed(0)
    block = GraphResidualBlock(6, index_order_adjacency(N, 2)).eval()
    x = torch.randn(2, N, 6)
    torch.testing.assert_close(block(x), block.conv2(block.conv1(x)) + x)


def test_map_to_node_channel_ownership():
    m = MapToNode(3, in_channels=4, expansion=2, hidden_channels=5).eval()
    feats = torch.randn(2, 4, 3, 5)
    maps = m.embed(feats)  # (B, N*n, H, W)
    nodes = m(feats)
    assert nodes.shape == (2, 3, 2 * 3 * 5)
    # Node 1 owns channels 2 and 3.
    torch.testing.assert_close(nodes[:, 1], maps[:, 2:4].flatten(1))


def test_dynamic_adjacency_starts_uniform_and_is_row_stochastic():
    adj = build_correlation_adjacency(torch.randn(30, N, 2), k=2, symmetric=True)
    dyn = DynamicAdjacency(adj, in_features=4)
    w = dyn(torch.randn(3, 4))
    degree = dyn.table.valid.sum(1)
    expected = dyn.table.valid / degree[:, None]
    torch.testing.assert_close(w, expected.expand(3, -1, -1))
    nn.init.normal_(dyn.logits.weight)
    w = dyn(torch.randn(3, 4))
    torch.testing.assert_close(w.sum(-1), torch.ones(3, N))
    assert (w[:, ~dyn.table.valid] == 0).all()


@pytest.mark.parametrize("batch", [1, 40])  # both forward forms: library softmax, written out
def test_edge_softmax_matches_masked_softmax_with_gradients(batch):
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(N, 4, generator=g) > 0.4
    valid[:, 0] = True
    logits = torch.randn(batch, N, 4, generator=g, dtype=torch.float64)
    # A padded logit far above its row's maximum must not overflow into a NaN gradient.
    logits[:, ~valid] = 1e4
    logits.requires_grad_()
    weights = edge_softmax(logits, valid)
    expected = logits.detach().masked_fill(~valid, float("-inf")).softmax(-1)
    assert_close(weights, expected)
    upstream = torch.randn(batch, N, 4, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(weights, logits, upstream)
    dense = logits.detach().requires_grad_()
    expected = dense.masked_fill(~valid, float("-inf")).softmax(-1)
    (expected_grad,) = torch.autograd.grad(expected, dense, upstream)
    assert_close(grad, expected_grad)
    small = logits.detach()[:2, :, :].clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a: edge_softmax(a, valid), small)


@pytest.mark.parametrize("batch", [1, 40])
def test_edge_softmax_without_a_mask_is_the_softmax_over_the_slots(batch):
    logits = torch.randn(batch, N, 4, generator=torch.Generator().manual_seed(0))
    full = torch.ones(N, 4, dtype=torch.bool)
    torch.testing.assert_close(edge_softmax(logits, None), logits.softmax(-1))
    torch.testing.assert_close(edge_softmax(logits, None), edge_softmax(logits, full))


@pytest.mark.parametrize("mode", ["dynamic", "static", "binary"])
@pytest.mark.parametrize("device", DEVICES)
def test_head_shapes_any_map_size(mode, device):
    for h, w in [(8, 8), (3, 5)]:
        head = _small_head(edge_weights=mode).to(device)
        out = head(torch.randn(2, 5, h, w, device=device))
        assert out.shape == (2, N, 2) and out.device.type == device
        assert torch.isfinite(out).all()


def test_default_head_as_written_in_the_readme():
    head = LGRLHead(num_landmarks=98, k=3)
    assert head(torch.randn(2, 64, 4, 4)).shape == (2, 98, 2)
    assert head.adjacency.shape == (98, 98) and (head.adjacency.sum(1) == 4).all()


def _gradcheck_module(module: nn.Module, *inputs: torch.Tensor) -> None:
    module = module.double().eval()
    inputs = tuple(t.double().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(module, inputs, atol=1e-6)


def test_gradcheck_layers():
    g = torch.Generator().manual_seed(0)
    adj = index_order_adjacency(N, 2)
    _gradcheck_module(MapToNode(N, 3, expansion=1, hidden_channels=2), torch.randn(1, 3, 3, 3, generator=g))
    _gradcheck_module(DynamicAdjacency(adj, 4, hidden_features=3), torch.randn(2, 4, generator=g))
    conv = GraphConv(4, 3, adj, learn_edge_weights=True)
    nn.init.normal_(conv.edge_logits, generator=g)
    _gradcheck_module(conv, torch.randn(2, N, 4, generator=g), torch.rand(2, N, 3, generator=g))
    _gradcheck_module(conv, torch.randn(2, N, 4, generator=g))
    _gradcheck_module(GraphResidualBlock(3, adj), torch.randn(2, N, 3, generator=g))
    _gradcheck_module(FCHead(N, hidden_features=4), torch.randn(2, 2, 2, 2, generator=g))


@pytest.mark.parametrize("mode", ["dynamic", "static", "binary"])
def test_gradcheck_head(mode):
    torch.manual_seed(0)
    head = _small_head(edge_weights=mode, hidden_channels=3, expansion=1)
    head(torch.randn(2, 2, 2, 2))  # materialise lazy layers
    if head.dynamic is not None:
        nn.init.normal_(head.dynamic.logits.weight)
    _gradcheck_module(head, torch.randn(2, 2, 2, 2))


@pytest.mark.parametrize("mode", ["dynamic", "static", "binary"])
def test_state_dict_round_trip_into_a_fresh_lazy_head(mode):
    torch.manual_seed(0)
    adj = build_correlation_adjacency(torch.randn(40, N, 2), k=2)
    head = _small_head(edge_weights=mode, adjacency=adj)
    x = torch.randn(3, 5, 4, 4)
    head(x)
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    clone = _small_head(edge_weights=mode)  # default adjacency, lazy, untrained
    clone.load_state_dict(torch.load(buffer))
    assert torch.equal(clone.adjacency, adj)
    assert torch.equal(clone.table.index, head.table.index)
    head.eval(), clone.eval()
    torch.testing.assert_close(clone(x), head(x), rtol=0, atol=0)


def test_state_dict_of_another_landmark_count_or_k_fails_clearly():
    saved = _small_head().state_dict()
    with pytest.raises(ValueError, match="saved for 7 landmarks, this model has 8"):
        _small_head(num_landmarks=8).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"3 neighbours per node.*this model has 4"):
        _small_head(k=3).load_state_dict(saved)


def test_set_adjacency_from_mask_or_landmarks():
    torch.manual_seed(0)
    head = _small_head()
    shapes = torch.randn(30, N, 2)
    head.set_adjacency(shapes)
    assert torch.equal(head.adjacency, build_correlation_adjacency(shapes, k=2))
    # Every layer sees the new graph (one shared table).
    assert all(m.table is head.table for m in head.modules() if isinstance(m, GraphConv))
    sym = build_correlation_adjacency(shapes, k=2, symmetric=True)
    head.set_adjacency(sym)
    out = head(torch.randn(2, 5, 3, 3))
    assert out.shape == (2, N, 2) and head.dynamic.logits.out_features == N * head.table.max_degree
    with pytest.raises(ValueError, match="num_landmarks=7 nodes, got 5"):
        head.set_adjacency(torch.ones(5, 5))


def test_adjacency_follows_to_device_and_dtype():
    head = _small_head().to(torch.float64)
    assert head.adjacency.dtype == torch.bool and head.table.index.dtype == torch.long
    assert head(torch.randn(1, 5, 2, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("mode", ["dynamic", "static", "binary"])
def test_set_adjacency_after_a_dtype_change_keeps_the_dtype(dtype, mode, device):
    # The new edge-weight parameters must follow .double()/.half()/.to(device), or the next forward fails.
    head = _small_head(edge_weights=mode).to(device=device, dtype=dtype)
    head.set_adjacency(build_correlation_adjacency(torch.randn(30, N, 2), k=3))
    assert {(p.dtype, p.device.type) for p in head.parameters()} == {(dtype, torch.device(device).type)}
    out = head(torch.randn(2, 5, 3, 3, dtype=dtype, device=device))
    out.float().square().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in head.parameters())


def test_batch_of_one_in_eval_mode_and_determinism():
    def run() -> torch.Tensor:
        torch.manual_seed(3)
        head = _small_head().eval()
        # Lazy layers draw their initial weights at the first call, from the global generator.
        return head(torch.randn(1, 5, 4, 4))

    first = run()
    assert first.shape == (1, N, 2) and torch.isfinite(first).all()
    assert torch.equal(first, run())


def test_autocast_bfloat16_on_cpu_is_close_to_float32():
    torch.manual_seed(0)
    head = _small_head(hidden_features=16).eval()
    x = torch.randn(4, 5, 4, 4)
    ref = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic", "static"])  # static: neighbor_softmax_aggregate
def test_torch_compile_of_the_head(mode):
    torch.manual_seed(0)
    head = _small_head(edge_weights=mode).eval()
    x = torch.randn(2, 5, 4, 4)
    ref = head(x)
    compiled = torch.compile(head, fullgraph=True)
    torch.testing.assert_close(compiled(x), ref)


def test_bad_inputs_name_the_argument():
    head = _small_head(in_channels=5)
    with pytest.raises(ValueError, match=r"features must have 4 dimensions \(B, C, H, W\), got shape \(5,"):
        head(torch.randn(5, 4, 4))
    with pytest.raises(ValueError, match=r"features must have 5 channels .* got shape \(1, 3, 4, 4\)"):
        head(torch.randn(1, 3, 4, 4))
    with pytest.raises(TypeError, match="features must be a floating point tensor"):
        head(torch.zeros(1, 5, 4, 4, dtype=torch.long))
    conv = GraphConv(4, 3, index_order_adjacency(N, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, I\) = \(\*, 7, 4\), got \(2, 6, 4\)"):
        conv(torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match=r"edge_weights must have shape \(B, N, K\) = \(2, 7, 3\), got"):
        conv(torch.randn(2, N, 4), torch.rand(2, N, 4))
    with pytest.raises(ValueError, match="edge_weights must be one of"):
        LGRLHead(N, edge_weights="soft")
    with pytest.raises(ValueError, match=r"context must have shape \(B, F\) with F=4"):
        DynamicAdjacency(index_order_adjacency(N, 2), 4)(torch.randn(2, 5))


def test_reprs_show_configuration():
    head = _small_head(edge_weights="static")
    text = repr(head)
    assert "num_landmarks=7, k=2, edge_weights='static'" in text
    assert "learn_edge_weights=True" in text and "NeighborTable(num_nodes=7, max_degree=3" in text


def test_fc_head_shapes_and_errors():
    head = FCHead(N, in_channels=5, hidden_features=16)
    assert head(torch.randn(3, 5, 2, 2)).shape == (3, N, 2)
    with pytest.raises(ValueError, match="features must have 5 channels"):
        head(torch.randn(3, 4, 2, 2))


@pytest.mark.slow
@pytest.mark.parametrize("head_cls", ["lgrl", "fc"])
def test_small_cnn_with_head_overfits_fixed_samples(head_cls):
    from landmark_graph import SoftWingLoss

    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
    )
    if head_cls == "lgrl":
        head = _small_head(hidden_features=32, num_blocks=2)
    else:
        head = FCHead(N, hidden_features=64)
    model = nn.Sequential(backbone, head)
    images = torch.randn(8, 1, 16, 16)
    targets = torch.rand(8, N, 2) * 16  # pixel units of a 16 x 16 crop
    criterion = SoftWingLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()
    model.eval()
    error = (model(images) - targets).norm(dim=-1).mean().item()
    baseline = (targets - targets.mean(0)).norm(dim=-1).mean().item()  # predict the mean shape
    assert error < 0.2 * baseline, (error, baseline)
