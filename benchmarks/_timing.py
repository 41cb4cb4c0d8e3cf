"""What the benchmark scripts share: device/thread/clock options, run metadata, and timing.

Timing is by interleaved rounds: every function runs once per round, so background load on a
shared machine hits all of them alike; the result is each function's median per-call time. The
order is shuffled every round (seeded): in a fixed or rotated order each function always follows
the same neighbour, whose freed memory and cache footprint it inherits; after a slow, memory-hungry
method that cost the next one up to 40 %.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch

from landmark_graph.ops import backend

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--threads`` and ``--clock``."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                        help="wall: perf_counter; cpu: process CPU time, steadier on a shared "
                             "machine (use with --threads 1: with more threads it adds theirs up)")


def setup(args: argparse.Namespace) -> tuple[torch.device, Callable[[], float], dict]:
    """Apply ``--threads``; return the device, the clock and the run's metadata."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = {"device": str(device), "threads": torch.get_num_threads(), "clock": args.clock,
            "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "backend": backend()}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return device, CLOCKS[args.clock], meta


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    budget: float,
    *,
    clock: Callable[[], float] = time.perf_counter,
    max_rounds: int = 100,
    min_sample: float = 0.0,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds per call of each function, from at least 5 interleaved rounds.

    Rounds go on until ``budget`` seconds (wall) or ``max_rounds``. A sample repeats a function
    until it lasts about ``min_sample`` seconds (one call when 0), so that microsecond calls are
    not lost in the clock's resolution.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    reps = dict.fromkeys(fns, 1)
    if min_sample > 0:
        for name, fn in fns.items():
            t0 = clock()
            fn()
            sync(device)
            reps[name] = max(1, int(min_sample / max(clock() - t0, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    order = random.Random(0)
    start = time.perf_counter()
    rounds = 0
    while rounds < 5 or (time.perf_counter() - start < budget and rounds < max_rounds):
        order.shuffle(names)
        for name in names:
            fn = fns[name]
            t0 = clock()
            for _ in range(reps[name]):
                fn()
            sync(device)
            samples[name].append((clock() - t0) / reps[name])
        rounds += 1
    return {name: statistics.median(s) for name, s in samples.items()}
