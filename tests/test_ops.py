"""The fused neighbour aggregation (``landmark_graph.ops``): values, gradients, registration,
compile and export, bad input. The Triton path runs in ``test_ops_triton.py`` (interpreter) and
``test_ops_cuda.py`` (GPU)."""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import assert_close, assert_grads_match_contiguous

import landmark_graph as lg
from landmark_graph import ops
from landmark_graph.ops import (
    NeighborTable,
    edge_softmax,
    export_decompositions,
    neighbor_aggregate,
    neighbor_softmax_aggregate,
    reverse_table,
    set_cpu_formulation,
)

OPS = (torch.ops.landmark_graph.aggregate.default, torch.ops.landmark_graph.edge_dot.default)
FORMULATIONS = ops.CPU_FORMULATIONS[1:]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread_torch_backend():
    # Tiny bmm calls on an oversubscribed 2-core box wait for OpenMP peers; one thread is fast.
    threads, settings = torch.get_num_threads(), (ops.backend(), ops.cpu_formulation())
    torch.set_num_threads(1)
    ops.set_backend("torch")
    ops.set_cpu_formulation("auto")
    yield
    torch.set_num_threads(threads)
    ops.set_backend(settings[0])
    ops.set_cpu_formulation(settings[1])


def random_index(n: int, k: int, seed: int, pad: float = 0.3) -> torch.Tensor:
    """A raw ``(N, K)`` table: random senders (repeats allowed), ``-1`` in random slots."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n, k), generator=g)
    idx[torch.rand(n, k, generator=g) < pad] = -1
    return idx


def random_table(n: int, seed: int, k: int = 3) -> NeighborTable:
    """A symmetrised top-k graph: degrees vary, so rows are padded."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, n, generator=g)
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask.scatter_(1, scores.topk(min(k, n), dim=1).indices, True)
    return NeighborTable(mask | mask.T)


def dense_reference(x, w, idx):
    """``(B, N, N)`` float64 matrix of the edge weights (repeated edges add up), times ``x``."""
    b, n, _ = x.shape
    valid = idx >= 0
    rows = torch.arange(n)[:, None].expand_as(idx)
    flat = (rows * n + idx)[valid]  # entry (i, j) of each used slot
    w = w.double().expand(b, *idx.shape)[:, valid]
    dense = torch.zeros(b, n * n, dtype=torch.float64).index_add(1, flat, w)
    return dense.view(b, n, n) @ x.double()


@pytest.mark.parametrize("n", [1, 29, 68, 98])
@pytest.mark.parametrize("k", [1, 4, 7])
@pytest.mark.parametrize("b", [0, 1, 64])
def test_matches_dense_reference_values_and_grads(n, k, b):
    seed = n * 100 + k * 10 + b
    idx = random_index(n, k, seed)
    g = torch.Generator().manual_seed(seed)
    d = 5
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64, requires_grad=True)
    for shared in (False, True):
        w = torch.randn(*(() if shared else (b,)), n, k, generator=g, dtype=torch.float64,
                        requires_grad=True)
        out = neighbor_aggregate(x, w, idx)
        ref = dense_reference(x, w, idx)
        assert out.shape == (b, n, d) and out.dtype == torch.float64
        torch.testing.assert_close(out, ref)
        grad = torch.randn(b, n, d, generator=g, dtype=torch.float64)
        gx, gw = torch.autograd.grad(out, (x, w), grad)
        rx, rw = torch.autograd.grad(ref, (x, w), grad, allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(gx, rx)
        torch.testing.assert_close(gw, rw)


@pytest.mark.parametrize("n", [29, 68, 98])
def test_inference_and_training_give_the_same_result(n):
    # Without a backward to prepare for, larger graphs take the embedding bags instead of the
    # dense product: the numbers must not depend on it.
    idx = random_index(n, 7, n)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(64, n, 32, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(64, n, 7, generator=g, dtype=torch.float64, requires_grad=True)
    ref = dense_reference(x.detach(), w.detach(), idx)
    torch.testing.assert_close(neighbor_aggregate(x, w, idx), ref)
    with torch.no_grad():
        torch.testing.assert_close(neighbor_aggregate(x, w, idx), ref)


@pytest.mark.parametrize("form", FORMULATIONS)
@pytest.mark.parametrize("n, d", [(29, 2), (98, 40)])
def test_every_cpu_formulation_agrees(form, n, d):
    set_cpu_formulation(form)
    g = torch.Generator().manual_seed(n + d)
    for index in (random_index(n, 7, n), random_table(n, n)):
        idx = index.index if isinstance(index, NeighborTable) else index
        x = torch.randn(3, n, d, generator=g, requires_grad=True)
        for shared in (False, True):
            w = torch.randn(*(() if shared else (3,)), *idx.shape, generator=g, requires_grad=True)
            out = neighbor_aggregate(x, w, index)
            ref = dense_reference(x.detach(), w.detach(), idx).float()
            assert_close(out, ref)
            grad = torch.randn_like(out)
            gx, gw = torch.autograd.grad(out, (x, w), grad)
            xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
            rx, rw = torch.autograd.grad(dense_reference(xd, wd, idx), (xd, wd), grad.double(),
                                         allow_unused=True, materialize_grads=True)
            assert_close(gx, rx, factor=10)
            assert_close(gw, rw, factor=10)


@pytest.mark.parametrize("form", FORMULATIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_cpu_formulation_runs_half_precision(form, dtype):
    # sampled_addmm (the sparse weight gradient) has no half kernel on CPU: it must not be asked.
    set_cpu_formulation(form)
    table = random_table(29, 3)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, 29, 16, generator=g).to(dtype).requires_grad_()
    for w in (torch.rand(5, *table.index.shape, generator=g), torch.rand(*table.index.shape, generator=g)):
        w = w.to(dtype).requires_grad_()
        out = neighbor_aggregate(x, w, table)
        assert out.dtype == dtype
        grad = torch.randn(out.shape, generator=g).to(dtype)
        gx, gw = torch.autograd.grad(out, (x, w), grad)
        xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        ref = dense_reference(xd, wd, table.index)
        rx, rw = torch.autograd.grad(ref, (xd, wd), grad.double())
        for got, want in ((out, ref), (gx, rx), (gw, rw)):
            # half-precision inputs, float32 accumulation: atol relative to the values' size
            assert_close(got.double(), want.detach(), dtype, scale=float(want.detach().abs().max()))


@pytest.mark.parametrize("form", FORMULATIONS)
@pytest.mark.parametrize("shared", [False, True], ids=["per-image", "shared"])
def test_gradcheck_and_gradgradcheck_float64(shared, form):
    # dense: autograd differentiates ATen ops; sparse and gather: the op-made backward.
    set_cpu_formulation(form)
    table = random_table(7, 0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*(() if shared else (2,)), *table.index.shape, generator=g, dtype=torch.float64,
                    requires_grad=True)
    fn = lambda x, w: neighbor_aggregate(x, w, table)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


@pytest.mark.parametrize("form", FORMULATIONS)
@pytest.mark.parametrize("shared", [False, True], ids=["per-image", "shared"])
def test_softmax_aggregate_is_the_two_step_composition(shared, form):
    # dense: the fused path (logits scattered into -inf, softmax, bmm); else edge_softmax + op.
    set_cpu_formulation(form)
    g = torch.Generator().manual_seed(5)
    for index in (random_table(9, 0), random_index(9, 4, 1, pad=0.0), random_table(29, 1, k=5)):
        idx = index.index if isinstance(index, NeighborTable) else index
        n, k = idx.shape
        x = torch.randn(3, n, 4, generator=g, dtype=torch.float64, requires_grad=True)
        a = torch.randn(*(() if shared else (3,)), n, k, generator=g, dtype=torch.float64)
        a = a.masked_fill(idx < 0, 50.0).requires_grad_()  # padding slots: ignored
        fn = lambda x, a, index=index: neighbor_softmax_aggregate(x, a, index)  # noqa: E731
        out = fn(x, a)
        want = neighbor_aggregate(x, edge_softmax(a, idx >= 0), idx)
        torch.testing.assert_close(out, want)
        grad = torch.randn_like(out)
        for got, ref in zip(torch.autograd.grad(out, (x, a), grad), torch.autograd.grad(want, (x, a), grad),
                            strict=True):
            torch.testing.assert_close(got, ref)
        assert torch.autograd.gradcheck(fn, (x, a))
        if n < 20:
            assert torch.autograd.gradgradcheck(fn, (x, a))


def test_softmax_aggregate_ignores_minus_inf_and_large_padding_logits():
    table = random_table(11, 3)
    assert not table.valid.all()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 11, 5, generator=g, requires_grad=True)
    for fill in (float("-inf"), -1e30, 1e30):
        a = torch.randn(2, *table.index.shape, generator=g).masked_fill(~table.valid, fill).requires_grad_()
        out = neighbor_softmax_aggregate(x, a, table)  # fused (dense formulation at this size)
        want = neighbor_aggregate(x, edge_softmax(a, table.valid), table)
        torch.testing.assert_close(out, want)
        gx, ga = torch.autograd.grad(out.sum(), (x, a))
        wx, wa = torch.autograd.grad(want.sum(), (x, a))
        torch.testing.assert_close(gx, wx)
        torch.testing.assert_close(ga, wa)
        assert (ga[:, ~table.valid] == 0).all()


@pytest.mark.parametrize("index", ["table", "raw"])
def test_inference_bags_take_the_softmax_in_a_slot_major_layout(index):
    # The sparse formulation without grad gathers the logits into (K, B*N), padding reading an
    # appended -inf: any padding logit, even +inf or NaN, is ignored there.
    set_cpu_formulation("sparse")
    table = random_table(13, 4)
    idx = table if index == "table" else table.index
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 13, 6, generator=g)
    for fill in (float("-inf"), 1e30, float("inf"), float("nan")):
        a = torch.randn(3, *table.index.shape, generator=g)
        want = dense_reference(x, edge_softmax(a, table.valid), table.index).float()
        a = a.masked_fill(~table.valid, fill)
        with torch.no_grad():
            for _ in range(2):  # a first call, then one on what it derived
                torch.testing.assert_close(neighbor_softmax_aggregate(x, a, idx), want)


def test_a_raw_table_wider_than_its_graph_runs_in_two_steps():
    # K > N: a padded row may fill its N columns, with none left for its padding slot.
    idx = torch.tensor([[0, 1, -1], [1, -1, -1]])
    x, a = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    want = neighbor_aggregate(x, edge_softmax(a, idx >= 0), idx)
    torch.testing.assert_close(neighbor_softmax_aggregate(x, a, idx), want)


@pytest.mark.parametrize("form", FORMULATIONS)
@pytest.mark.parametrize("shared", [False, True], ids=["per-image", "shared"])
@pytest.mark.parametrize("op", ["aggregate", "softmax_aggregate"])
def test_repeated_calls_follow_the_table_and_the_inputs(op, shared, form):
    # What a table derives for the CPU formulations is kept on it: a new graph, a move, other
    # batch sizes, dtypes or grad modes must never see stale tensors.
    set_cpu_formulation(form)
    fn = neighbor_aggregate if op == "aggregate" else neighbor_softmax_aggregate
    table = random_table(9, 2)
    g = torch.Generator().manual_seed(7)

    def want(table: NeighborTable, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        w = a if op == "aggregate" else edge_softmax(a, table.valid)
        return dense_reference(x, w, table.index).to(x.dtype)

    def inputs(b: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(b, 9, 4, generator=g, dtype=dtype)
        return x, torch.randn(*(() if shared else (b,)), *table.index.shape, generator=g, dtype=dtype)

    for b in (3, 1, 5, 3):  # a larger batch after smaller ones, and back
        x, a = inputs(b)
        with torch.no_grad():
            torch.testing.assert_close(fn(x, a, table), want(table, x, a))
        xg, ag = x.clone().requires_grad_(), a.clone().requires_grad_()
        out = fn(xg, ag, table)
        grads = torch.autograd.grad(out, (xg, ag), x)
        w = ag if op == "aggregate" else edge_softmax(ag, table.valid)
        wants = torch.autograd.grad(dense_reference(xg, w, table.index), (xg, ag), x.double())
        for got, ref in zip(grads, wants, strict=True):
            torch.testing.assert_close(got, ref.float())
    x, a = inputs(2, torch.float64)
    torch.testing.assert_close(fn(x, a, table), want(table, x, a))
    with pytest.raises(TypeError, match="has dtype"):
        fn(x, a.float(), table)
    with pytest.raises(ValueError, match="rows"):
        fn(x[:, :5], a, table)
    perm = torch.randperm(9, generator=g)
    table.set_adjacency(table.adjacency[perm][:, perm])  # relabelled: another table, the same K
    torch.testing.assert_close(fn(x, a, table), want(table, x, a))
    moved = copy.deepcopy(table).to("meta")  # shapes only: the op's fake kernel
    assert fn(x.to("meta"), a.to("meta"), moved).shape == x.shape
    table.to(torch.float64)  # moves nothing: integer buffers keep their dtype
    torch.testing.assert_close(fn(x, a, table), want(table, x, a))


def test_a_used_table_pickles_and_copies():
    import pickle

    table = random_table(9, 2)
    x, a = torch.randn(2, 9, 4), torch.randn(2, *table.index.shape)
    out = neighbor_softmax_aggregate(x, a, table)
    neighbor_aggregate(x, a, table)
    for clone in (pickle.loads(pickle.dumps(table)), copy.deepcopy(table)):
        torch.testing.assert_close(neighbor_softmax_aggregate(x, a, clone), out)
        clone.set_adjacency(torch.eye(9, dtype=torch.bool) | torch.eye(9, dtype=torch.bool).roll(1, 1))
        assert clone.max_degree == 2
    torch.testing.assert_close(neighbor_softmax_aggregate(x, a, table), out)  # the original is untouched


def test_opcheck_both_ops():
    table = random_table(9, 2)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 9, 4, generator=g, requires_grad=True)
    a = torch.randn(3, 9, 4, generator=g, requires_grad=True)
    w = torch.randn(3, *table.index.shape, generator=g, requires_grad=True)
    cases = [
        (OPS[0], (x, w, *table.tables)),
        (OPS[0], (x, w[0].detach().requires_grad_(), *table.tables)),
        (OPS[1], (a, x, *table.tables)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_non_contiguous_inputs():
    n, k, d = 11, 4, 6
    idx = random_index(n, k, 3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, d, n, generator=g).transpose(1, 2).requires_grad_()  # strides (d*n, 1, n)
    w = torch.randn(2, n, 2 * k, generator=g)[:, :, ::2].requires_grad_()
    idx_t = idx.t().contiguous().t()
    assert not (x.is_contiguous() or w.is_contiguous() or idx_t.is_contiguous())
    out = neighbor_aggregate(x, w, idx_t)
    torch.testing.assert_close(out, dense_reference(x.detach(), w.detach(), idx).float())
    grad = torch.randn(2, d, n).transpose(1, 2)  # a non-contiguous incoming gradient too
    assert_grads_match_contiguous(out, x, w, idx, grad)


def test_backward_is_bitwise_deterministic():
    table = random_table(98, 4)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 98, 32, generator=g, requires_grad=True)
    w = torch.randn(8, *table.index.shape, generator=g, requires_grad=True)
    grad = torch.randn(8, 98, 32, generator=g)
    runs = [torch.autograd.grad(neighbor_aggregate(x, w, table), (x, w), grad) for _ in range(3)]
    for gx, gw in runs[1:]:
        assert torch.equal(gx, runs[0][0]) and torch.equal(gw, runs[0][1])


def test_reverse_table_lists_every_edge_once():
    idx = random_index(13, 5, 5)
    rev, slot, fwd = reverse_table(idx)
    n, k = idx.shape
    r = rev.shape[1]
    seen = []
    for j, q in itertools.product(range(n), range(r)):
        if rev[j, q] >= 0:
            i, kk = divmod(int(slot[j, q]), k)
            assert i == rev[j, q] and idx[i, kk] == j and fwd[i, kk] == j * r + q
            seen.append((i, kk))
        else:
            assert slot[j, q] == n * k
    assert sorted(seen) == [tuple(p) for p in (idx >= 0).nonzero().tolist()]
    assert (fwd[idx < 0] == n * r).all()


def test_neighbor_table_reverse_buffers_follow_the_mask():
    table = NeighborTable(lg.index_order_adjacency(10, 3))
    assert set(table.state_dict()) == {"adjacency"}  # derived tables are rebuilt, not stored
    for got, want in zip(table.tables[1:], reverse_table(table.index), strict=True):
        assert torch.equal(got, want)
    other = random_table(10, 6)
    table.set_adjacency(other.adjacency)
    assert torch.equal(table.reverse_index, other.reverse_index)
    same_k = NeighborTable(lg.index_order_adjacency(10, 3))
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    same_k.set_adjacency(lg.index_order_adjacency(10, 3)[perm][:, perm])  # relabelled: same degrees
    target = NeighborTable(lg.index_order_adjacency(10, 3))
    target.load_state_dict(same_k.state_dict())
    for got, want in zip(target.tables, same_k.tables, strict=True):
        assert torch.equal(got, want)
    moved = target.to("meta")
    assert all(t.device.type == "meta" for t in moved.tables)


def test_softmax_mask_is_none_exactly_while_no_slot_is_padding():
    regular = NeighborTable(lg.index_order_adjacency(10, 3))  # every row: itself and 3 others
    assert not regular.padded and regular.softmax_mask is None
    irregular = random_table(10, 6)
    assert irregular.padded and torch.equal(irregular.softmax_mask, irregular.valid)
    logits = torch.randn(2, 10, regular.max_degree)
    assert torch.equal(edge_softmax(logits, regular.softmax_mask), edge_softmax(logits, regular.valid))
    regular.set_adjacency(irregular.adjacency)  # it follows the graph
    assert regular.padded
    regular.set_adjacency(lg.index_order_adjacency(10, 3))
    assert not regular.padded and regular.softmax_mask is None


def test_graph_layers_unchanged_against_a_dense_aggregation(monkeypatch):
    import landmark_graph.graph_conv as graph_conv

    head = lg.LGRLHead(num_landmarks=29, adjacency=random_table(29, 7).adjacency, in_channels=8,
                       hidden_features=16, num_blocks=2, hidden_channels=8).eval()
    features = torch.randn(3, 8, 4, 4)
    out = head(features)

    def dense(x, w, table):
        return dense_reference(x, w, table.index).to(x.dtype)

    monkeypatch.setattr(graph_conv, "neighbor_aggregate", dense)
    assert_close(out, head(features))


def test_autocast_computes_in_the_dtype_of_x():
    table = random_table(12, 8)
    x = torch.randn(2, 12, 4)
    w = torch.rand(2, *table.index.shape).bfloat16()
    with pytest.raises(TypeError, match="weight"):
        neighbor_aggregate(x, w, table)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = neighbor_aggregate(x, w, table)
        half = neighbor_aggregate(x.bfloat16(), w.float(), table)
    assert out.dtype == torch.float32 and half.dtype == torch.bfloat16
    torch.testing.assert_close(out, neighbor_aggregate(x, w.float(), table))
    a = torch.randn(2, *table.index.shape)
    eager = neighbor_softmax_aggregate(x, a, table)  # an eager call first, then under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = neighbor_softmax_aggregate(x, a, table)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, eager)


def test_empty_batch_and_shared_weight_gradient_is_summed():
    table = random_table(6, 9)
    x = torch.randn(0, 6, 3, requires_grad=True)
    w = torch.randn(*table.index.shape, requires_grad=True)
    out = neighbor_aggregate(x, w, table)
    assert out.shape == (0, 6, 3)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
    x = torch.randn(4, 6, 3, requires_grad=True)
    neighbor_aggregate(x, w.detach().requires_grad_(), table)  # shared (N, K)
    per_image = w.detach().expand(4, -1, -1).clone().requires_grad_()
    wg = w.detach().requires_grad_()
    neighbor_aggregate(x, wg, table).sum().backward()
    neighbor_aggregate(x, per_image, table).sum().backward()
    torch.testing.assert_close(wg.grad, per_image.grad.sum(0))


BAD = {
    "x-int": lambda x, w, i: (x.long(), w, i),
    "w-int": lambda x, w, i: (x, w.int(), i),
    "x-list": lambda x, w, i: (x.tolist(), w, i),
    "index-float": lambda x, w, i: (x, w, i.float()),
    "index-list": lambda x, w, i: (x, w, i.tolist()),
    "index-high": lambda x, w, i: (x, w, i.clamp(min=0) + 1),
    "index-low": lambda x, w, i: (x, w, i - 2),
    "index-rows": lambda x, w, i: (x, w, i[:3]),
    "index-ndim": lambda x, w, i: (x, w, i[0]),
    "w-shape": lambda x, w, i: (x, w[:, :, :2], i),
    "w-batch": lambda x, w, i: (x, w[:1], i),
    "x-ndim": lambda x, w, i: (x[0], w, i),
    "w-dtype": lambda x, w, i: (x, w.double(), i),
    "w-device": lambda x, w, i: (x, w.to("meta"), i),
    "index-device": lambda x, w, i: (x, w, i.to("meta")),
}
BAD_ERROR = {"x-int": TypeError, "w-int": TypeError, "x-list": TypeError, "index-float": TypeError,
             "index-list": TypeError, "w-dtype": TypeError}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_input_is_named(bad):
    table = NeighborTable(lg.index_order_adjacency(5, 2))
    x, w = torch.randn(2, 5, 3), torch.rand(2, 5, 3)
    args = BAD[bad](x, w, table.index)
    with pytest.raises(BAD_ERROR.get(bad, ValueError), match=bad.split("-")[0]):
        neighbor_aggregate(*args)


def test_settings_are_checked_and_read_back():
    with pytest.raises(ValueError, match="backend"):
        ops.set_backend("cuda")
    with pytest.raises(ValueError, match="formulation"):
        ops.set_cpu_formulation("gather")
    ops.set_backend(" Triton ")
    assert ops.backend() == "triton"
    ops.set_cpu_formulation("SPARSE")
    assert ops.cpu_formulation() == "sparse"


def _python(code: str, block_triton: bool = False, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter; ``block_triton``: as on a CPU install, where triton is absent."""
    if block_triton:  # a meta-path finder that refuses triton, as if it were not installed
        code = ("import sys\nclass _NoTriton:\n    def find_spec(self, name, *_):\n"
                "        if name == 'triton' or name.startswith('triton.'):\n"
                "            raise ModuleNotFoundError(\"No module named 'triton'\")\n"
                "sys.meta_path.insert(0, _NoTriton())\n") + code
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LANDMARK_GRAPH_", "TRITON_"))}
    return subprocess.run([sys.executable, "-c", code], env={**full, **env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


CALL = ("import torch, landmark_graph as lg\n"
        "t = lg.NeighborTable(lg.index_order_adjacency(6, 2))\n"
        "x, w = torch.ones(2, 6, 3), torch.full((2, 6, 3), 0.5)\n"
        "assert lg.neighbor_aggregate(x, w, t).eq(1.5).all()\n")


def test_import_and_a_cpu_call_are_silent_without_triton():
    proc = _python("import landmark_graph.engine.cli\n" + CALL, block_triton=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_environment_is_read_at_import():
    proc = _python("from landmark_graph import ops\nprint(ops.backend(), ops.cpu_formulation())",
                   LANDMARK_GRAPH_BACKEND="torch", LANDMARK_GRAPH_CPU_FORMULATION="dense")
    assert proc.returncode == 0 and proc.stdout.split() == ["torch", "dense"], proc.stderr
    proc = _python("import landmark_graph", LANDMARK_GRAPH_BACKEND="cuda")
    assert proc.returncode != 0 and "LANDMARK_GRAPH_BACKEND must be one of" in proc.stderr


def test_backend_triton_without_triton_warns_once_and_runs_pytorch():
    code = ("import warnings\nwarnings.simplefilter('always')\n" + CALL
            + "assert lg.neighbor_aggregate(x, w, t).eq(1.5).all()\n")
    proc = _python(code, block_triton=True, LANDMARK_GRAPH_BACKEND="triton")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("RuntimeWarning") == 1 and "triton cannot be imported" in proc.stderr


def test_backend_triton_on_cpu_outside_the_interpreter_warns_once(recwarn):
    pytest.importorskip("triton")
    table = random_table(6, 10)
    x, w = torch.randn(2, 6, 3), torch.rand(2, *table.index.shape)
    want = neighbor_aggregate(x, w, table)
    ops.set_backend("triton")
    for _ in range(2):
        torch.testing.assert_close(neighbor_aggregate(x, w, table), want)
    assert [str(w.message) for w in recwarn if "interpreter" in str(w.message)] != []
    assert len(recwarn) == 1


def test_flop_counter_counts_the_sparse_work():
    from torch.utils.flop_counter import FlopCounterMode

    table = random_table(20, 11)
    x = torch.randn(3, 20, 8, requires_grad=True)
    w = torch.rand(3, *table.index.shape, requires_grad=True)
    neighbor_aggregate(x, w, table)  # an eager call first: under the mode the op must run all the same
    with FlopCounterMode(display=False) as counter:
        neighbor_aggregate(x, w, table).sum().backward()
    k = table.max_degree
    # forward 2BNKD, backward: dx (2BNRD over the reverse table) and dw (2BNKD)
    r = table.reverse_index.shape[1]
    assert counter.get_total_flops() == 2 * 3 * 20 * 8 * (k + r + k)
    # Eager, this call runs fused (an N x N bmm); under the mode, the op that counts its sparse work.
    with torch.no_grad():
        neighbor_softmax_aggregate(x, w, table)
        with FlopCounterMode(display=False) as counter:
            neighbor_softmax_aggregate(x, w, table)
    assert counter.get_total_flops() == 2 * 3 * 20 * 8 * k


@pytest.mark.parametrize("mode_test", ["torch's", "fallback"])
def test_dispatch_modes_get_correct_numbers(monkeypatch, mode_test):
    # A private torch function tells ops/aggregate.py that a dispatch mode runs (then the op runs,
    # with its flop formula); where torch lacks it, modes must still get the right numbers.
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    if mode_test == "fallback":
        monkeypatch.setattr(ops.aggregate, "_dispatch_modes", lambda: 0)
    table = random_table(20, 11)
    x = torch.randn(3, 20, 8, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, *table.index.shape, dtype=torch.float64, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = neighbor_aggregate(x, w, table)
        gx, gw = torch.autograd.grad(out.sum(), (x, w))
    want = dense_reference(x, w, table.index)
    torch.testing.assert_close(out, want)
    for got, ref in zip((gx, gw), torch.autograd.grad(want.sum(), (x, w)), strict=True):
        torch.testing.assert_close(got, ref)
    assert counter.get_total_flops() > 0
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = neighbor_softmax_aggregate(torch.empty(5, 20, 8), torch.empty(5, *table.index.shape), table)
    assert fake.shape == (5, 20, 8)


@pytest.mark.slow
def test_torch_compile_fullgraph_traces_through_the_op():
    table = random_table(16, 12)

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = table
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, x, w):
            return neighbor_aggregate(self.linear(x), w, self.table)

    layer = Layer()
    x = torch.randn(4, 16, 8, requires_grad=True)
    w = torch.rand(4, *table.index.shape, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(x, w)
    ref = layer(x, w)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), (x, w))
    refs = torch.autograd.grad(ref.square().sum(), (x, w))
    for got, want in zip(grads, refs, strict=True):
        assert_close(got, want)


class _Layer(torch.nn.Module):
    def __init__(self, table, direct=False):
        super().__init__()
        self.table, self.direct = table, direct

    def forward(self, x, w):
        if self.direct:  # the raw op, which export keeps as is
            return torch.ops.landmark_graph.aggregate(x, w, *self.table.tables)
        return neighbor_aggregate(x, w, self.table)


@pytest.mark.parametrize("strict", [False, True], ids=["non-strict", "strict"])
def test_torch_export_emits_standard_ops(strict):
    table = random_table(10, 13)
    x, w = torch.randn(2, 10, 4), torch.rand(2, *table.index.shape)
    layer = _Layer(table)
    layer(x, w)  # an eager call first: what it derived must not leak into the trace
    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(layer, (x, w), dynamic_shapes=({0: batch}, {0: batch}), strict=strict)
    assert "landmark_graph" not in str(ep.graph)
    x5, w5 = torch.randn(5, 10, 4), torch.rand(5, *table.index.shape)
    torch.testing.assert_close(ep.module()(x5, w5), layer(x5, w5))
    # A program that holds the op decomposes with the table the library gives.
    ep = torch.export.export(_Layer(table, direct=True), (x, w))
    assert "landmark_graph.aggregate" in str(ep.graph)
    ep = ep.run_decompositions(export_decompositions())
    assert "landmark_graph" not in str(ep.graph)
    torch.testing.assert_close(ep.module()(x, w), layer(x, w))


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    table = random_table(10, 14)
    x, w = torch.randn(2, 10, 4), torch.rand(2, *table.index.shape)
    layer = _Layer(table)
    path = tmp_path / "agg.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (x, w), path, dynamo=True, opset_version=18, verbose=False)
    session = ort.InferenceSession(str(path))
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), (x, w), strict=True)}
    torch.testing.assert_close(torch.from_numpy(session.run(None, feeds)[0]), layer(x, w))
