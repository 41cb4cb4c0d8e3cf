"""The Triton kernels of the aggregation on a GPU (skipped without CUDA; run by
``benchmarks/gpu_check.sh``)."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import assert_close, assert_grads_match_contiguous
from test_ops import dense_reference, random_index, random_table

from landmark_graph import ops
from landmark_graph.ops import edge_softmax, neighbor_aggregate, neighbor_softmax_aggregate

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]



@pytest.fixture(autouse=True)
def _triton_backend():
    pytest.importorskip("triton")
    previous = ops.backend()
    ops.set_backend("triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the PyTorch path warns
        yield
    ops.set_backend(previous)


def test_the_kernels_run_and_a_failing_one_hands_over_with_one_warning(monkeypatch):
    from landmark_graph.ops import _triton_kernels

    calls = []
    launch = _triton_kernels.aggregate
    monkeypatch.setattr(_triton_kernels, "aggregate", lambda *a: calls.append(1) or launch(*a))
    table = random_table(29, 1).cuda()
    x, w = torch.randn(4, 29, 8, device="cuda"), torch.rand(4, *table.index.shape, device="cuda")
    want = neighbor_aggregate(x, w, table)
    assert calls == [1]

    def broken(*args):
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setattr(_triton_kernels, "aggregate", broken)
    ops.set_backend("triton")
    with pytest.warns(RuntimeWarning, match="out of resources") as caught:
        for _ in range(2):
            assert_close(neighbor_aggregate(x, w, table), want)
    assert len(caught) == 1
    ops.set_backend("triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("n, k, b, d", [(98, 7, 256, 128), (98, 4, 64, 2), (29, 4, 1, 256),
                                         (68, 7, 0, 16), (1, 1, 3, 5)])
def test_values_and_grads_match_a_float64_reference(dtype, n, k, b, d):
    idx = random_index(n, k, n + k + b).cuda()
    g = torch.Generator(device="cuda").manual_seed(n)
    for shared in (False, True):
        x = torch.randn(b, n, d, device="cuda", generator=g).to(dtype).requires_grad_()
        w = torch.rand(*(() if shared else (b,)), n, k, device="cuda", generator=g).to(dtype)
        w.requires_grad_()
        out = neighbor_aggregate(x, w, idx)
        assert out.dtype == dtype and out.shape == (b, n, d)
        xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        ref = dense_reference(xd.cpu(), wd.cpu(), idx.cpu()).cuda()
        assert_close(out.double(), ref, dtype, factor=4)
        grad = torch.randn(b, n, d, device="cuda", generator=g).to(dtype)
        gx, gw = torch.autograd.grad(out, (x, w), grad)
        xc, wc = xd.detach().cpu().requires_grad_(), wd.detach().cpu().requires_grad_()
        rx, rw = torch.autograd.grad(dense_reference(xc, wc, idx.cpu()), (xc, wc), grad.double().cpu(),
                                     allow_unused=True, materialize_grads=True)
        assert_close(gx.double().cpu(), rx, dtype, factor=8)
        # dw sums D (shared weights: B * D) products: scale atol with their typical size.
        scale = max(d * (b if shared else 1), 1) ** 0.5
        assert_close(gw.double().cpu(), rw, dtype, factor=8, scale=scale)


def test_softmax_aggregate_matches_the_cpu_result():
    table = random_table(98, 7, k=5)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 98, 32, generator=g, dtype=torch.float64)
    a = torch.randn(16, *table.index.shape, generator=g, dtype=torch.float64)
    want = dense_reference(x, edge_softmax(a, table.valid), table.index)
    got = neighbor_softmax_aggregate(x.cuda(), a.cuda(), table.cuda())
    torch.testing.assert_close(got.cpu(), want)


@pytest.mark.parametrize("shared", [False, True], ids=["per-image", "shared"])
def test_gradcheck_and_gradgradcheck_float64(shared):
    table = random_table(9, 0).cuda()
    x = torch.randn(3, 9, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(*(() if shared else (3,)), *table.index.shape, device="cuda", dtype=torch.float64,
                    requires_grad=True)
    fn = lambda x, w: neighbor_aggregate(x, w, table)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_opcheck_on_cuda():
    table = random_table(20, 1).cuda()
    x = torch.randn(4, 20, 8, device="cuda", requires_grad=True)
    w = torch.rand(4, *table.index.shape, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.landmark_graph.aggregate.default, (x, w, *table.tables))
    torch.library.opcheck(torch.ops.landmark_graph.edge_dot.default, (x, x.detach().clone(), *table.tables))


def test_backward_is_bitwise_deterministic_and_matches_the_torch_backend():
    table = random_table(98, 2).cuda()
    x = torch.randn(256, 98, 128, device="cuda", requires_grad=True)
    w = torch.rand(256, *table.index.shape, device="cuda", requires_grad=True)
    grad = torch.randn(256, 98, 128, device="cuda")
    runs = [torch.autograd.grad(neighbor_aggregate(x, w, table), (x, w), grad) for _ in range(3)]
    for gx, gw in runs[1:]:
        assert torch.equal(gx, runs[0][0]) and torch.equal(gw, runs[0][1])
    ops.set_backend("torch")
    gx, gw = torch.autograd.grad(neighbor_aggregate(x, w, table), (x, w), grad)
    assert_close(gx, runs[0][0], factor=10)
    torch.testing.assert_close(gw, runs[0][1], atol=1e-3, rtol=1e-4)


def test_non_contiguous_inputs():
    table = random_table(29, 3).cuda()
    x = torch.randn(8, 64, 29, device="cuda").transpose(1, 2).requires_grad_()
    w = torch.rand(8, 29, 2 * table.max_degree, device="cuda")[:, :, ::2].requires_grad_()
    out = neighbor_aggregate(x, w, table)
    ref = neighbor_aggregate(x.detach().contiguous(), w.detach().contiguous(), table)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(8, 64, 29, device="cuda").transpose(1, 2)
    assert_grads_match_contiguous(out, x, w, table, grad)


def test_no_batch_by_edges_by_features_tensor_is_materialised():
    b, n, d = 256, 98, 128
    table = random_table(n, 4).cuda()
    k = table.max_degree
    x = torch.randn(b, n, d, device="cuda", requires_grad=True)
    w = torch.rand(b, n, k, device="cuda", requires_grad=True)
    neighbor_aggregate(x, w, table).sum().backward()  # warm up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    neighbor_aggregate(x, w, table).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < b * n * k * d * 4 / 2, f"{extra} bytes: a (B, N, K, D) tensor is {b * n * k * d * 4}"


def test_autocast_graph_conv_runs_in_half_precision():
    import landmark_graph as lg

    conv = lg.GraphConv(32, 16, random_table(29, 5)).cuda()
    x = torch.randn(4, 29, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = conv(x)
    assert_close(out.float(), conv(x), torch.float16, factor=10)


@pytest.mark.slow
def test_torch_compile_fullgraph_uses_the_kernels():
    table = random_table(98, 6).cuda()

    def layer(x, w):
        return neighbor_aggregate(x, w, table).relu()

    x = torch.randn(16, 98, 64, device="cuda", requires_grad=True)
    w = torch.rand(16, *table.index.shape, device="cuda", requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(x, w)
    torch.testing.assert_close(out, layer(x, w))
    grads = torch.autograd.grad(out.sum(), (x, w))
    refs = torch.autograd.grad(layer(x, w).sum(), (x, w))
    for got, want in zip(grads, refs, strict=True):
        assert_close(got, want, factor=10)
