"""The Triton kernels of the aggregation on CPU tensors, under the Triton interpreter.

``TRITON_INTERPRET=1`` must be set before the kernels are defined, so the outer test reruns this
file in a fresh interpreter with ``TRITON_INTERPRET=1 LANDMARK_GRAPH_BACKEND=triton``; the inner
tests only exist in that process. The interpreter is slow: shapes are small and subsampled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

INNER = os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("LANDMARK_GRAPH_BACKEND") == "triton"


if not INNER:

    def test_triton_kernels_under_the_interpreter():
        pytest.importorskip("triton")
        env = dict(os.environ, TRITON_INTERPRET="1", LANDMARK_GRAPH_BACKEND="triton",
                   OMP_NUM_THREADS="1")
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
             "-p", "no:randomly", "-o", "addopts=--import-mode=importlib", str(Path(__file__))],
            env=env, cwd=root, capture_output=True, text=True, timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]

    def test_interpreter_detection_without_triton_knobs_reads_the_variable(monkeypatch):
        triton = pytest.importorskip("triton")
        from landmark_graph.ops import _triton_kernels

        assert _triton_kernels._interpreted() is bool(triton.knobs.runtime.interpret)
        monkeypatch.delattr(triton, "knobs")  # triton < 3.4
        for value, interpreted in (("1", True), ("true", True), ("0", False), ("", False)):
            monkeypatch.setenv("TRITON_INTERPRET", value)
            assert _triton_kernels._interpreted() is interpreted

else:
    from helpers import assert_close
    from test_ops import dense_reference, random_index, random_table

    from landmark_graph import ops
    from landmark_graph.ops import (
        NeighborTable,
        _triton_kernels,
        edge_softmax,
        neighbor_aggregate,
        neighbor_softmax_aggregate,
    )

    @pytest.fixture(autouse=True)
    def _count_launches(monkeypatch):
        assert _triton_kernels.INTERPRETED
        calls = []
        for name in ("aggregate", "edge_dot"):
            original = getattr(_triton_kernels, name)

            def spy(*args, _original=original, _name=name):
                calls.append(_name)
                return _original(*args)

            monkeypatch.setattr(_triton_kernels, name, spy)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a fallback to the PyTorch path warns
            yield calls
        ops.set_backend("triton")  # clears the fallback of a failed kernel

    @pytest.mark.parametrize("n, k, b", [(1, 1, 1), (29, 4, 0), (29, 7, 3), (68, 4, 1), (98, 7, 2)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_values_and_grads_match_the_dense_reference(n, k, b, dtype, _count_launches):
        idx = random_index(n, k, n + k + b)
        g = torch.Generator().manual_seed(n)
        # one feature tile; and (float32, small N) two tiles with a ragged end
        for d in (3, 70) if dtype == torch.float32 and n <= 29 else (3,):
            x = torch.randn(b, n, d, generator=g, dtype=dtype, requires_grad=True)
            for shared in (False, True):
                w = torch.randn(*(() if shared else (b,)), n, k, generator=g, dtype=dtype,
                                requires_grad=True)
                out = neighbor_aggregate(x, w, idx)
                ref = dense_reference(x.detach(), w.detach(), idx).to(dtype)
                assert_close(out, ref)
                grad = torch.randn(b, n, d, generator=g, dtype=dtype)
                gx, gw = torch.autograd.grad(out, (x, w), grad)
                xd = x.detach().double().requires_grad_()
                wd = w.detach().double().requires_grad_()
                rx, rw = torch.autograd.grad(dense_reference(xd, wd, idx), (xd, wd), grad.double(),
                                             allow_unused=True, materialize_grads=True)
                factor = 1 if dtype == torch.float64 else 10  # float32: sums of B * D products
                assert_close(gx, rx, factor=factor)
                assert_close(gw, rw, factor=factor)
        assert _count_launches.count("aggregate") >= 4 and "edge_dot" in _count_launches

    def test_softmax_aggregate_runs_the_kernels_after_edge_softmax(_count_launches):
        # On the Triton route the fused CPU formulation is skipped: edge_softmax, then the kernels.
        table = random_table(29, 6, k=5)
        g = torch.Generator().manual_seed(6)
        x = torch.randn(2, 29, 5, generator=g, dtype=torch.float64, requires_grad=True)
        a = torch.randn(2, *table.index.shape, generator=g, dtype=torch.float64, requires_grad=True)
        out = neighbor_softmax_aggregate(x, a, table)
        w = edge_softmax(a.detach(), table.valid)
        torch.testing.assert_close(out, dense_reference(x.detach(), w, table.index))
        assert _count_launches == ["aggregate"]
        torch.autograd.grad(out.square().sum(), (x, a))
        assert "edge_dot" in _count_launches

    def test_a_kernel_that_fails_warns_once_and_the_pytorch_path_takes_over(monkeypatch, _count_launches):
        def broken(*args):
            raise RuntimeError("out of resources: shared memory")

        monkeypatch.setattr(_triton_kernels, "aggregate", broken)
        table = random_table(12, 4)
        x = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
        w = torch.rand(2, *table.index.shape, dtype=torch.float64, requires_grad=True)
        want = dense_reference(x.detach(), w.detach(), table.index)
        with pytest.warns(RuntimeWarning, match="out of resources") as caught:
            out = neighbor_aggregate(x, w, table)
            torch.autograd.grad(out.sum(), (x, w))  # the backward's ops take the PyTorch path too
            torch.testing.assert_close(neighbor_aggregate(x, w, table), want)
        assert len(caught) == 1
        torch.testing.assert_close(out, want)
        assert not _count_launches  # the working edge_dot kernel is not used either: one path
        ops.set_backend("triton")
        monkeypatch.undo()
        torch.testing.assert_close(neighbor_aggregate(x, w, table), want)

    @pytest.mark.parametrize("shared", [False, True], ids=["per-image", "shared"])
    def test_gradcheck_and_gradgradcheck_float64(shared):
        table = random_table(4, 0)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(*(() if shared else (2,)), *table.index.shape, generator=g,
                        dtype=torch.float64, requires_grad=True)
        fn = lambda x, w: neighbor_aggregate(x, w, table)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)

    def test_opcheck_with_triton_kernels():
        table = random_table(6, 2)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(2, 6, 3, generator=g, requires_grad=True)
        w = torch.randn(2, *table.index.shape, generator=g, requires_grad=True)
        torch.library.opcheck(torch.ops.landmark_graph.aggregate.default, (x, w, *table.tables))
        torch.library.opcheck(torch.ops.landmark_graph.edge_dot.default, (x, x.detach().clone(),
                                                                          *table.tables))

    def test_non_contiguous_inputs_and_bitwise_deterministic_backward():
        table: NeighborTable = random_table(20, 3)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(2, 9, 20, generator=g).transpose(1, 2).requires_grad_()
        w = torch.randn(2, 20, 2 * table.max_degree, generator=g)[:, :, ::2].requires_grad_()
        out = neighbor_aggregate(x, w, table)
        torch.testing.assert_close(out, dense_reference(x.detach(), w.detach(), table.index).float())
        grad = torch.randn(2, 9, 20, generator=g).transpose(1, 2)
        first = torch.autograd.grad(out, (x, w), grad, retain_graph=True)
        second = torch.autograd.grad(out, (x, w), grad)
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
