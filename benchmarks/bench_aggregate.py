"""Benchmark the fused neighbour aggregation against the other ways to compute it.

Every method computes the same thing a graph layer needs, from logits to features:

    w = softmax of each receiver's edge logits;  y[b,i] = sum_k w[b,i,k] x[b, idx[i,k]]

- ``op``: ``neighbor_softmax_aggregate`` on the ``(B, N, K)`` logits (this library; on CPU the
  dense formulation runs fused, the others as the next line).
- ``2-step``: ``edge_softmax`` over the logits, then ``neighbor_aggregate`` (this library, shown
  for reference; not an alternative).
- ``dense``: the authors' formulation: logits over ``N x N``, masked softmax, ``bmm``.
- ``gather+einsum``: ``x[:, idx]`` as a ``(B, N, K, D)`` tensor, then ``einsum``.
- ``sparse-coo`` / ``sparse-csr``: the ``B`` graphs as one block-diagonal ``torch.sparse``
  matrix, then ``torch.sparse.mm``.
- ``embedding-bag``: the same CSR matrix as ``F.embedding_bag`` with per-sample weights (each
  output row a weighted bag of ``x``'s rows; FBGEMM on CPU).
- ``torch_scatter`` / ``pyg``: when those packages are installed.

``fwd`` times the forward pass; ``fwd+bwd`` adds the backward pass to ``x`` and the logits.
Times are medians over interleaved rounds (every method once per round, so background load
hits all of them alike). ``ratio`` = method time / op time: above 1 the op is faster.

Usage::

    python benchmarks/bench_aggregate.py                 # full grid, CPU
    python benchmarks/bench_aggregate.py --quick         # reduced grid
    python benchmarks/bench_aggregate.py --device cuda   # GPU (Triton path), adds bandwidth
    python benchmarks/bench_aggregate.py --json out.json --formulations
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import add_arguments, interleaved, setup, sync

from landmark_graph import ops
from landmark_graph.ops import NeighborTable, edge_softmax, neighbor_aggregate, neighbor_softmax_aggregate

FULL = {"N": (29, 68, 98), "K": (4, 7), "D": (128, 256), "B": (1, 64, 256)}
QUICK = {"N": (29, 98), "K": (4, 7), "D": (128,), "B": (1, 64)}
LIBRARY = ("op", "2-step")  # this library's methods; the rest are the alternatives


def graph(n: int, k: int, seed: int = 0) -> NeighborTable:
    """A landmark-like graph whose largest row has exactly ``k`` slots (self included).

    ``k = 4``: node ``i`` and its 3 nearest indices (every row full). Larger ``k``: the same,
    symmetrised and topped up with random symmetric edges until some row holds ``k`` (rows
    then hold between 4 and ``k``: padded, like the authors' symmetric 98-point graph).
    """
    from landmark_graph.adjacency import index_order_adjacency

    mask = index_order_adjacency(n, min(3, n - 1))
    if k > 4:
        mask = mask | mask.T
        g = torch.Generator().manual_seed(seed)
        while int(mask.sum(1).max()) < k:
            i, j = torch.randint(0, n, (2,), generator=g).tolist()
            if i != j and mask[i].sum() < k and mask[j].sum() < k:
                mask[i, j] = mask[j, i] = True
    table = NeighborTable(mask)
    if table.max_degree != k:
        raise RuntimeError(f"graph builder made K={table.max_degree}, wanted {k}")
    return table


def build_methods(table: NeighborTable, b: int, d: int, device: torch.device, dtype: torch.dtype,
                  formulations: bool) -> dict[str, Callable[[], torch.Tensor]]:
    n, k = table.index.shape
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(b, n, d, generator=g).to(device, dtype).requires_grad_()
    logits = torch.randn(b, n, k, generator=g).to(device, dtype).requires_grad_()
    mask = table.adjacency.to(device)
    valid = table.valid.to(device)
    table = table.to(device)
    # The dense method's own parameter: the same logits laid out over N x N (padding slots go
    # to an extra column, dropped).
    dense_logits = torch.zeros(b, n, n + 1, device=device, dtype=dtype)
    dense_logits.scatter_(2, table.index.where(valid, n).expand(b, -1, -1), logits.detach())
    dense_logits = dense_logits[:, :, :n].contiguous().requires_grad_()
    safe = table.index.clamp(min=0)
    rows = torch.arange(n, device=device)[:, None].expand(n, k)[valid]
    cols = table.index[valid]
    offsets = torch.arange(b, device=device)[:, None] * n
    coo_index = torch.stack([(rows[None] + offsets).reshape(-1), (cols[None] + offsets).reshape(-1)])
    crow = torch.zeros(b * n + 1, dtype=torch.long, device=device)
    torch.cumsum(valid.sum(1).repeat(b), 0, out=crow[1:])
    col_indices = coo_index[1]

    def op() -> torch.Tensor:
        return neighbor_softmax_aggregate(x, logits, table)

    def two_step() -> torch.Tensor:
        return neighbor_aggregate(x, edge_softmax(logits, valid), table)

    def dense() -> torch.Tensor:
        a = dense_logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return torch.bmm(a, x)

    def gather_einsum() -> torch.Tensor:
        w = edge_softmax(logits, valid).masked_fill(~valid, 0)
        return torch.einsum("bnk,bnkd->bnd", w, x[:, safe])

    def sparse_coo() -> torch.Tensor:
        w = edge_softmax(logits, valid)[:, valid].reshape(-1)
        a = torch.sparse_coo_tensor(coo_index, w, (b * n, b * n), is_coalesced=True)
        return torch.sparse.mm(a, x.reshape(b * n, d)).view(b, n, d)

    def sparse_csr() -> torch.Tensor:
        w = edge_softmax(logits, valid)[:, valid].reshape(-1)
        a = torch.sparse_csr_tensor(crow, col_indices, w, (b * n, b * n))
        return torch.sparse.mm(a, x.reshape(b * n, d)).view(b, n, d)

    def embedding_bag() -> torch.Tensor:
        w = edge_softmax(logits, valid)[:, valid].reshape(-1)
        return F.embedding_bag(col_indices, x.reshape(b * n, d), crow, mode="sum", per_sample_weights=w,
                               include_last_offset=True).view(b, n, d)

    methods: dict[str, Callable[[], torch.Tensor]] = {
        "op": op, "2-step": two_step, "dense": dense, "gather+einsum": gather_einsum,
        "sparse-coo": sparse_coo, "sparse-csr": sparse_csr, "embedding-bag": embedding_bag,
    }
    if importlib.util.find_spec("torch_scatter") is not None:
        import torch_scatter

        dst = torch.arange(n, device=device)[:, None].expand(n, k)[valid]

        def scatter() -> torch.Tensor:
            w = edge_softmax(logits, valid)[:, valid]
            msg = w.unsqueeze(-1) * x[:, cols]
            return torch_scatter.scatter(msg, dst, dim=1, dim_size=n, reduce="sum")

        methods["torch_scatter"] = scatter
    if formulations and device.type == "cpu":
        for form in ops.CPU_FORMULATIONS[1:]:
            def pinned(form: str = form) -> torch.Tensor:
                previous = ops.cpu_formulation()
                ops.set_cpu_formulation(form)
                try:
                    return op()
                finally:
                    ops.set_cpu_formulation(previous)

            methods[f"op[{form}]"] = pinned
    methods = {name: _with_inputs(fn, (x, logits, dense_logits)) for name, fn in methods.items()}
    return methods


def _with_inputs(fn: Callable[[], torch.Tensor], leaves: tuple[torch.Tensor, ...]):
    fn.leaves = leaves  # type: ignore[attr-defined]
    return fn


def run_once(fn, mode: str, grad: torch.Tensor | None) -> None:
    if mode == "fwd":
        with torch.no_grad():
            fn()
        return
    out = fn()
    used = [t for t in fn.leaves if t.requires_grad]
    torch.autograd.grad(out, used, grad, allow_unused=True)


def time_methods(methods, mode: str, device: torch.device, budget: float, grad,
                 clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds per call of the methods that run in this mode (interleaved rounds)."""
    usable = {}
    for name, fn in methods.items():
        try:
            for _ in range(2):
                run_once(fn, mode, grad)
            sync(device)
            usable[name] = functools.partial(run_once, fn, mode, grad)
        except (RuntimeError, NotImplementedError) as err:  # e.g. no backward for CSR
            print(f"    {name} {mode}: not supported ({str(err).splitlines()[0][:80]})", file=sys.stderr)
    # Already warmed up; each sample lasts >= ~2 ms.
    return interleaved(usable, device, budget, clock=clock, max_rounds=200, min_sample=2e-3, warmup=0)


def peak_memory(fn, mode: str, device: torch.device, grad) -> int | None:
    if device.type != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_once(fn, mode, grad)
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


NOMINAL_PEAK_GBS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0,
                    "A100-SXM4-80GB": 2039.0, "A100": 1555.0, "L4": 300.0, "A10G": 600.0, "T4": 320.0}


def bandwidth_report(device: torch.device, dtype: torch.dtype) -> dict:
    """Achieved bandwidth of the bare op (no softmax) at a large batch, vs the device's peak."""
    b, n, k, d = 4096, 98, 7, 128
    table = graph(n, k).to(device)
    x = torch.randn(b, n, d, device=device, dtype=dtype)
    w = torch.rand(b, n, k, device=device, dtype=dtype)
    size = x.element_size()
    moved = (2 * b * n * d + b * n * k) * size  # read x and w, write y: the least traffic possible

    def timed(fn, reps=20):
        fn()
        sync(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        sync(device)
        return start.elapsed_time(end) / 1e3 / reps

    t_op = timed(lambda: neighbor_aggregate(x, w, table))
    t_copy = timed(lambda: x.clone())
    name = torch.cuda.get_device_name(device)
    nominal = next((v for key, v in NOMINAL_PEAK_GBS.items() if key in name), None)
    report = {
        "shape": {"B": b, "N": n, "K": k, "D": d}, "dtype": str(dtype), "device": name,
        "op_seconds": t_op, "op_GBs": moved / t_op / 1e9,
        "copy_GBs": 2 * x.numel() * size / t_copy / 1e9, "nominal_peak_GBs": nominal,
    }
    report["fraction_of_copy"] = report["op_GBs"] / report["copy_GBs"]
    if nominal:
        report["fraction_of_nominal"] = report["op_GBs"] / nominal
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="reduced grid: N 29/98, K 4/7, D 128, B 1/64")
    add_arguments(parser)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per shape and mode")
    parser.add_argument("--formulations", action="store_true",
                        help="also time the op with each CPU formulation pinned")
    parser.add_argument("--only", default=None, help="comma-separated N,K,D,B to run one shape")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    device, clock, meta = setup(args)
    dtype = getattr(torch, args.dtype)
    grid = QUICK if args.quick else FULL
    shapes = list(itertools.product(grid["N"], grid["K"], grid["D"], grid["B"]))
    if args.only:
        shapes = [tuple(int(v) for v in args.only.split(","))]
    budget = args.budget if args.budget is not None else (0.4 if args.quick else 0.8)
    meta["dtype"] = args.dtype
    print(f"# bench_aggregate  {meta}")
    records = []
    worst: dict[str, float] = {}
    for n, k, d, b in shapes:
        table = graph(n, k)
        methods = build_methods(table, b, d, device, dtype, args.formulations)
        for mode in ("fwd", "fwd+bwd"):
            grad = torch.randn(b, n, d, device=device, dtype=dtype)
            times = time_methods(methods, mode, device, budget, grad, clock)
            t_op = times["op"]
            alternatives = {m: t for m, t in times.items() if m not in LIBRARY and not m.startswith("op[")}
            best_alt = min(alternatives, key=alternatives.get)
            ratio_best = alternatives[best_alt] / t_op
            key = f"N={n} K={k} D={d} B={b} {mode}"
            worst[key] = ratio_best
            cells = "  ".join(f"{m}={t * 1e6:9.1f}us(x{t / t_op:5.2f})" for m, t in times.items())
            print(f"{key:28s} {cells}  best-alt={best_alt} ratio={ratio_best:.2f}", flush=True)
            for m, t in times.items():
                rec = {"N": n, "K": k, "D": d, "B": b, "mode": mode, "method": m, "seconds": t,
                       "ratio_to_op": t / t_op}
                if device.type == "cuda":
                    rec["peak_bytes"] = peak_memory(methods[m], mode, device, grad)
                records.append(rec)
    low = min(worst.values())
    misses = {k: v for k, v in worst.items() if v < 0.95}
    print(f"# worst ratio best-alternative/op: {low:.2f} "
          f"({'target >= 0.95 met' if not misses else f'{len(misses)} shapes below 0.95'})")
    for key, v in sorted(misses.items(), key=lambda kv: kv[1]):
        print(f"#   below target: {key}: {v:.2f}")
    result = {"meta": meta, "records": records, "worst_ratio": low, "below_target": misses}
    if device.type == "cuda":
        result["bandwidth"] = bandwidth_report(device, dtype)
        print(f"# bandwidth {result['bandwidth']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
