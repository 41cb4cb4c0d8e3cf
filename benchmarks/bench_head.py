"""Benchmark LGRLHead's graph layers against the authors' dense formulation, plus whole heads.

Reports, for N = 98 landmarks on an 8 x 8 backbone map (I = n*H*W = 256, F = 128, 4 blocks):

1. Graph layers (everything after map-to-node), forward + backward at B = 64: LGRLHead with
   dynamic (default) and static edge weights vs the same layers written the authors' way
   (``_authors_head.AuthorsGraphLayers``: dense masked softmax over N x N, separate
   self/neighbour weights, 10 graph convolutions; target >= 3x), and, when ``torch_geometric``
   is installed, with PyG's ``GCNConv`` and ``DenseGCNConv`` (``_pyg_head.PygGraphLayers``, the
   dynamic head's parameters and edge weights, checked to give its numbers; target >= 1.5x).
2. Whole heads (same map-to-node convolutions), forward + backward at B = 64.
3. Latency (eval mode, forward only) at B = 1 and B = 64: LGRLHead, FCHead, the authors' head,
   and LGRLHead's as a ratio to FCHead's (comparable across commits and machines).
4. Parameters and FLOPs (``torch.utils.flop_counter.FlopCounterMode``, per image) of LGRLHead,
   FCHead and the authors' head, next to SPEC §4's formula for the graph layers.

Tables 2-4 also have the occlusion-aware head (issue 15): ``LGRLHead-attention``
(``embedding="attention"``, value width D = 128) and ``LGRLHead-attention-full`` (+ visibility,
gating, uncertainty).

Usage::

    python benchmarks/bench_head.py [--device cuda] [--threads 1 --clock cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _authors_head import AuthorsDenseHead
from _timing import add_arguments, interleaved, setup

from landmark_graph import FCHead, LGRLHead

N, K_NEIGHBOURS, C, HW, EXPANSION, F, BLOCKS = 98, 3, 512, 8, 4, 128, 4
I = EXPANSION * HW * HW  # noqa: E741

def dynamic_weights(head: LGRLHead, nodes: torch.Tensor) -> torch.Tensor | None:
    """The dynamic head's ``(B, N, K)`` edge weights from the nodes' context (SPEC §3)."""
    if head.dynamic is None:
        return None
    b, n = nodes.shape[:2]
    context = nodes.view(b, n, EXPANSION, nodes.shape[-1] // EXPANSION).mean(dim=-1).flatten(1)
    return head.dynamic(context)


def graph_part(head: LGRLHead) -> Callable[[torch.Tensor], torch.Tensor]:
    """LGRLHead.forward after map-to-node."""

    def run(nodes: torch.Tensor) -> torch.Tensor:
        weights = dynamic_weights(head, nodes)
        h = head.input_conv(nodes, weights)
        for block in head.blocks:
            h = block(h, weights)
        return head.output_conv(h, weights)

    return run


def pyg_peers(head: LGRLHead, probe: torch.Tensor) -> dict[str, tuple[nn.Module, Callable]]:
    """PyG's ``GCNConv`` and ``DenseGCNConv`` stacks with ``head``'s parameters and edge weights,
    checked on ``probe`` nodes to compute what ``head``'s graph layers do; empty without PyG."""
    if importlib.util.find_spec("torch_geometric") is None:
        print("# PyG peers skipped: torch_geometric is not installed (pip install torch_geometric)")
        return {}
    from _pyg_head import PygGraphLayers

    peers = {}
    head.eval()
    for name, dense in (("PyG-GCNConv", False), ("PyG-DenseGCNConv", True)):
        layers = PygGraphLayers(head, dense).to(probe.device).eval()

        def run(nodes: torch.Tensor, layers: nn.Module = layers) -> torch.Tensor:
            return layers(nodes, dynamic_weights(head, nodes))

        with torch.no_grad():
            torch.testing.assert_close(run(probe), graph_part(head)(probe), atol=1e-4, rtol=1e-4)
        peers[name] = (nn.ModuleList([layers, head.dynamic]), run)
    return peers


def fwd_bwd(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor,
            grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        inp.grad = None
        fn(inp).backward(grad)

    return step


def forward_only(fn: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            fn(inp)

    return step


def flops(fn: Callable[[], torch.Tensor]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def spec_formula(n: int, k: int, i: int, f: int, blocks: int, o: int = 2) -> int:
    """SPEC §4: 2N(K+F)I + (2*2*blocks)N(K+F)F + 2N(K+O)F, K = k + 1."""
    kk = k + 1
    return 2 * n * (kk + f) * i + 2 * 2 * blocks * n * (kk + f) * f + 2 * n * (kk + o) * f


def build(device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    heads: dict[str, nn.Module] = {
        "LGRLHead-dynamic": LGRLHead(N, K_NEIGHBOURS, in_channels=C, hidden_features=F, num_blocks=BLOCKS,
                                     expansion=EXPANSION, edge_weights="dynamic"),
        "LGRLHead-static": LGRLHead(N, K_NEIGHBOURS, in_channels=C, hidden_features=F, num_blocks=BLOCKS,
                                    expansion=EXPANSION, edge_weights="static"),
    }
    mask = heads["LGRLHead-dynamic"].adjacency
    heads["authors-dense"] = AuthorsDenseHead(
        mask, C, HW * HW, EXPANSION, hidden_features=F, num_blocks=BLOCKS
    )
    heads["FCHead"] = FCHead(N, in_channels=C)
    full = dict(visibility=True, gate_edges=True, uncertainty=True)
    for name, options in (("LGRLHead-attention", {}), ("LGRLHead-attention-full", full)):
        heads[name] = LGRLHead(N, K_NEIGHBOURS, in_channels=C, hidden_features=F, num_blocks=BLOCKS,
                               embedding="attention", **options)
    probe = torch.randn(2, C, HW, HW)
    for head in heads.values():
        head(probe)  # materialise lazy layers
    return {name: head.to(device) for name, head in heads.items()}



def _speedup_table(title: str, times: dict[str, float]) -> dict[str, dict[str, float]]:
    """Print ``times`` with each one's speed-up over the authors' dense head; return them."""
    print(f"\n## {title}")
    rows = {}
    for name, t in times.items():
        ratio = times["authors-dense"] / t
        rows[name] = {"seconds": t, "speedup_vs_authors": ratio}
        print(f"  {name:18s} {t * 1e3:9.2f} ms   authors/this = {ratio:5.2f}x")
    return rows

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per table")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device, clock, meta = setup(args)
    meta["shape"] = {"N": N, "k": K_NEIGHBOURS, "C": C, "H=W": HW, "I": I, "F": F, "blocks": BLOCKS}
    print(f"# bench_head  {meta}")
    heads = build(device)
    result: dict = {"meta": meta}
    b = args.batch
    g = torch.Generator().manual_seed(1)

    # 1. graph layers, fwd+bwd
    nodes = torch.randn(b, N, I, generator=g).to(device).requires_grad_()
    grad = torch.randn(b, N, 2, generator=g).to(device)
    mask = heads["LGRLHead-dynamic"].adjacency
    authors_graph = heads["authors-dense"].graph
    layer_fns = {
        name: fwd_bwd(heads[name], graph_part(heads[name]), nodes, grad)
        for name in ("LGRLHead-dynamic", "LGRLHead-static")
    }
    layer_fns["authors-dense"] = fwd_bwd(authors_graph, authors_graph, nodes, grad)
    peers = pyg_peers(heads["LGRLHead-dynamic"], nodes[:2].detach())
    for name, (module, run) in peers.items():
        layer_fns[name] = fwd_bwd(module, run, nodes, grad)
        module.train()
    for head in heads.values():
        head.train()
    times = interleaved(layer_fns, device, args.budget, clock=clock)
    title = f"graph layers (after map-to-node), fwd+bwd, B={b}, N={N}, I={I}, F={F}"
    result["graph_layers_fwd_bwd"] = _speedup_table(title, {k: v for k, v in times.items() if k not in peers})
    if peers:
        ours = times["LGRLHead-dynamic"]
        result["graph_layers_fwd_bwd_pyg"] = {}
        for name in peers:
            ratio = times[name] / ours
            result["graph_layers_fwd_bwd_pyg"][name] = {"seconds": times[name],
                                                        "speedup_of_LGRLHead_dynamic": ratio}
            print(f"  {name:18s} {times[name] * 1e3:9.2f} ms   this/LGRLHead-dynamic = {ratio:5.2f}x "
                  "(target >= 1.5)")

    # 2. whole heads, fwd+bwd
    features = torch.randn(b, C, HW, HW, generator=g).to(device).requires_grad_()
    whole_fns = {name: fwd_bwd(head, head, features, torch.randn(b, N, 2, generator=g).to(device))
                 for name, head in heads.items()}
    times = interleaved(whole_fns, device, args.budget, clock=clock)
    result["whole_head_fwd_bwd"] = _speedup_table(f"whole heads (same map-to-node), fwd+bwd, B={b}", times)

    # 3. latency, eval
    for head in heads.values():
        head.eval()
    result["latency_eval"] = {}
    for batch in (1, b):
        inp = torch.randn(batch, C, HW, HW, generator=g).to(device)
        times = interleaved({name: forward_only(head, inp) for name, head in heads.items()}, device,
                            args.budget / 2, clock=clock)
        print(f"\n## latency, eval forward, B={batch}")
        for name, t in times.items():
            print(f"  {name:18s} {t * 1e3:9.3f} ms   / FCHead = {t / times['FCHead']:5.2f}")
        result["latency_eval"][f"B={batch}"] = {name: t for name, t in times.items()}
        result["latency_eval"][f"B={batch} / FCHead"] = {name: t / times["FCHead"]
                                                          for name, t in times.items()}

    # 4. parameters and FLOPs per image
    one = torch.randn(1, C, HW, HW).to(device)
    one_nodes = torch.randn(1, N, I).to(device)
    formula = spec_formula(N, K_NEIGHBOURS, I, F, BLOCKS)
    print(f"\n## parameters and FLOPs per image (FlopCounterMode; SPEC §4 graph-layer formula: "
          f"{formula / 1e6:.2f} MFLOP)")
    counts = {}
    for name, head in heads.items():
        entry = {"parameters": params(head), "flops_whole": flops(lambda h=head: h(one))}
        if name in ("LGRLHead-dynamic", "LGRLHead-static"):
            entry["flops_graph_layers"] = flops(lambda h=head: graph_part(h)(one_nodes))
            entry["parameters_graph_layers"] = params(head) - params(head.map_to_node)
        elif name == "authors-dense":
            entry["flops_graph_layers"] = flops(lambda: authors_graph(one_nodes))
            entry["parameters_graph_layers"] = params(authors_graph)
        counts[name] = entry
        graph = entry.get("flops_graph_layers")
        print(f"  {name:18s} params {entry['parameters'] / 1e6:7.3f}M  "
              f"whole {entry['flops_whole'] / 1e6:9.2f} MFLOP"
              + (f"  graph layers {graph / 1e6:7.2f} MFLOP ({graph / formula:4.2f} x formula), "
                 f"{entry['parameters_graph_layers'] / 1e6:.3f}M params" if graph else ""))
    result["params_flops"] = counts
    result["spec_formula_graph_flops"] = formula
    mask_k = int(mask.sum(1).max())
    result["note"] = (f"graph K = {mask_k} slots per row; LGRLHead aggregates on the narrower side "
                      "(I -> F: linear first), so it counts less than the formula's 2NKI")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
