"""Where the graph layers' forward + backward time goes, ours against PyG's DenseGCNConv stack.

    python -W ignore benchmarks/profile_graph_layers.py            # B = 64, 2 threads

The same stacks as ``bench_head.py``'s graph-layer table (``torch.profiler``, CPU, self time per
ATen op over 5 calls after 3 warm-up calls). The Linear layers, BatchNorm and activations are the
same work in both stacks; only the aggregation differs, which bounds how much faster one stack
can be than the other. Without ``torch_geometric`` only ours is profiled.
"""

from __future__ import annotations

import argparse
import sys

import bench_head
import torch
from torch.profiler import ProfilerActivity, profile


def top_ops(fn, calls: int = 5, rows: int = 12) -> tuple[float, list[tuple[str, float]]]:
    """Self CPU milliseconds per call: the total and the ``rows`` largest ATen ops."""
    for _ in range(3):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / calls / 1e3
    largest = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    return total, [(e.key, e.self_cpu_time_total / calls / 1e3) for e in largest]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    heads = bench_head.build(torch.device("cpu"))
    ours = heads["LGRLHead-dynamic"]
    g = torch.Generator().manual_seed(1)
    nodes = torch.randn(args.batch, bench_head.N, bench_head.I, generator=g).requires_grad_()
    grad = torch.randn(args.batch, bench_head.N, 2, generator=g)
    stacks = {"ours (LGRLHead-dynamic)": bench_head.fwd_bwd(ours, bench_head.graph_part(ours), nodes, grad)}
    for name, (module, run) in bench_head.pyg_peers(ours, nodes[:2].detach()).items():
        if "Dense" in name:
            module.train()
            stacks[name] = bench_head.fwd_bwd(module, run, nodes, grad)
    ours.train()
    threads = torch.get_num_threads()
    print(f"# graph layers fwd+bwd, B={args.batch}, {threads} threads, torch {torch.__version__}")
    for name, fn in stacks.items():
        total, ops = top_ops(fn)
        print(f"== {name}: {total:.1f} ms self CPU per call")
        for key, ms in ops:
            print(f"  {key:45s} {ms:8.2f} ms  {100 * ms / total:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
