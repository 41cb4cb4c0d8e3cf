"""Rendering speed of the built-in synthetic faces, on one core.

Issue target: at least a few hundred 128x128 images per second on one core. Each round renders
a fresh block of sample indices for every (scheme, size), interleaved, so background load hits
all alike; the result is the median images per second over the rounds.

Usage::

    python benchmarks/bench_synthetic.py                       # 98/68/29 points, 64 and 128 px
    python benchmarks/bench_synthetic.py --sizes 128 --schemes wflw98 --json synth.json
"""

from __future__ import annotations

import os

# One core: numpy's BLAS (the blur and noise products) must not spread over more.
os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import CLOCKS, interleaved

from landmark_graph.data.synthetic import SyntheticFaces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", nargs="+", default=["wflw98", "300w68", "cofw29"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--images", type=int, default=50, help="images per function call")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timing in all")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="cpu: process CPU time, steadier on a shared machine")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    counter = itertools.count()

    def renderer(scheme: str, size: int):
        data = SyntheticFaces(scheme, length=10**9, image_size=size)

        def render() -> None:
            start = next(counter) * args.images  # new samples every call: nothing is cached
            for i in range(start, start + args.images):
                data[i]

        return render

    fns = {f"{scheme}@{size}": renderer(scheme, size) for scheme in args.schemes for size in args.sizes}
    times = interleaved(fns, torch.device("cpu"), args.budget, clock=CLOCKS[args.clock], warmup=1)
    rates = {name: args.images / seconds for name, seconds in times.items()}
    print(f"# bench_synthetic: one core, {args.clock} clock, {args.images} images per call, "
          "median over interleaved rounds")
    for name, rate in rates.items():
        print(f"{name:16s} {rate:7.0f} images/s")
    if args.json:
        args.json.write_text(json.dumps({"images_per_second": rates, "clock": args.clock,
                                         "torch": torch.__version__}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
