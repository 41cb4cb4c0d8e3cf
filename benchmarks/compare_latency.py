"""LGRLHead's eval latency against FCHead's, compared between two source trees.

A change to the op or the head is judged by the ratio LGRLHead / FCHead measured in the same
process (FCHead does not use the op, so the ratio cancels how fast the machine is that minute),
in alternating subprocesses of the two trees, each importing ``landmark_graph`` from its tree::

    git worktree add /tmp/old <commit>
    python benchmarks/compare_latency.py /tmp/old . --repeats 3 --threads 1 2

Prints one JSON line per run and, per thread count, each tree's mean ratio and ``new / old``
(the second tree over the first). Only public names are used, so any past commit can be timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

TIMER = r"""
import json, random, statistics, sys, time
import torch
import landmark_graph
from landmark_graph import FCHead, LGRLHead
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
rounds = {1: int(sys.argv[2]), 64: max(5, int(sys.argv[2]) // 10)}
heads = {"lgrl": LGRLHead(98, 3, in_channels=512, hidden_features=128, num_blocks=4).eval(),
         "fc": FCHead(98, in_channels=512).eval()}
out = {"tree": landmark_graph.__file__, "threads": torch.get_num_threads()}
order = random.Random(0)
for b, n in rounds.items():
    x = torch.randn(b, 512, 8, 8)
    times = {name: [] for name in heads}
    with torch.inference_mode():
        for head in heads.values():
            for _ in range(5):
                head(x)
        for _ in range(n):
            names = list(heads)
            order.shuffle(names)
            for name in names:
                t = time.perf_counter()
                heads[name](x)
                times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    out[f"B{b}"] = {"lgrl_ms": med["lgrl"] * 1e3, "fc_ms": med["fc"] * 1e3, "ratio": med["lgrl"] / med["fc"]}
print(json.dumps(out))
"""


def run(tree: Path, threads: int, rounds: int) -> dict:
    root = tree.resolve()
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", TIMER, str(threads), str(rounds)], env=env, cwd=root,
                          check=True, capture_output=True, text=True)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(record["tree"]).resolve().is_relative_to(root):
        raise SystemExit(f"{tree}: landmark_graph was imported from {record['tree']}, not from the tree")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the reference tree (a checkout's root)")
    parser.add_argument("new", type=Path, help="the tree under test")
    parser.add_argument("--repeats", type=int, default=3, help="alternations per thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=400,
                        help="interleaved rounds at B = 1 (B = 64: a tenth)")
    args = parser.parse_args(argv)
    for threads in args.threads:
        ratios: dict[str, dict[str, list[float]]] = {k: {"B1": [], "B64": []} for k in ("old", "new")}
        for _ in range(args.repeats):
            for label, tree in (("old", args.old), ("new", args.new)):
                record = run(tree, threads, args.rounds)
                print(json.dumps({"label": label, **record}), flush=True)
                for b in ("B1", "B64"):
                    ratios[label][b].append(record[b]["ratio"])
        for b in ("B1", "B64"):
            old, new = (statistics.mean(ratios[k][b]) for k in ("old", "new"))
            print(f"threads={threads} {b}: LGRL/FC old {old:.2f} new {new:.2f}  new/old {new / old:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
