#!/usr/bin/env python
"""Ablation study of the paper's claims (SPEC §9; paper Tables I, VI, VII, Fig. 2 and 8).

Trains every variant of the studies below with several seeds, through
:func:`landmark_graph.engine.training.train`, and reports the mean and spread (std, min, max over
seeds) of NME, FR@0.1 and AUC@0.1 on a clean and an occluded test set:

- ``head_loss``: FC vs L-GRL head, each with L1, Wing and Soft Wing (Tables I, VI, VII);
- ``relative``: with and without the relative location loss, for both heads (Table VI);
- ``edge_weights``: dynamic vs static vs binary edge weights (§IV-E);
- ``k``: neighbours per node, k in {1, 3, 6, 20, N-1} (Fig. 8);
- ``occlusion``: NME as a function of the occluded share of the face, 0 to 60 %, FC vs L-GRL
  (Fig. 2), on all landmarks and on the visible ones only. It needs no extra training: the
  ``head_loss`` Soft Wing models are evaluated on a test set with larger occluders, binned by
  the share of landmarks the synthetic generator flags as occluded.
- ``occlusion_head`` (issue 15, its own profile ``occlusion``; not in the default set): the
  paper head against the occlusion-aware options of ``LGRLHead`` added one at a time
  (attention embedding with its heatmap loss, + visibility, + gating, + uncertainty), and the
  paper head and the full head each with occlusion-consistency training (the latter also with a
  3x3 or 5x5 attention window). ``--variants`` trains and reports a subset. On the heavily
  occluded sweep set (on a real set with visibility flags, COFW: its test set): visible-only NME
  per occluded-share group (0-10, 10-30, 30-60 %) and its rise, all-point NME, visibility
  AUROC, Spearman(scale, error) and the 90 % Laplace interval coverage; paired over seeds.

Variants that several studies share (the base model is in all of them) are trained once per
seed. Each finished run is saved under ``OUT/runs/`` and reused when the command is run again
with the same configuration, so an interrupted study resumes where it stopped.

Usage::

    python benchmarks/ablation.py --quick --out /tmp/ablation          # smoke test, minutes on CPU
    python benchmarks/ablation.py --device cuda --out ablation          # full grid, 3 seeds
    python benchmarks/ablation.py --profile cpu --steps 3000 --train-size 4000 --seeds 0 1 2 3 4 \
        --threads 1 --out ablation                                      # docs/results.md, run 1
    python benchmarks/ablation.py --data wflw:/data/WFLW --device cuda  # the same study on WFLW
    python benchmarks/ablation.py --profile cpu --out ablation --report-only  # tables from saved runs
    python benchmarks/ablation.py --study occlusion_head --seeds 0 1 2 3 4 --jobs 2 --out occlusion_head
    python benchmarks/ablation.py --study occlusion_head --data cofw:/data/COFW --jobs 2 --out cofw_head
    python benchmarks/ablation.py --study occlusion_head --variants "paper head" "full head + consistency" \
        "full head + consistency, window 3" --seeds 0 1 2 3 4 --jobs 2 --out window  # three variants

Writes ``OUT/results.json`` (every run, every summary, the configuration and the machine),
``OUT/results.md`` (the tables, with the paper's numbers beside ours) and, when matplotlib is
installed, ``OUT/occlusion.png``, ``OUT/k.png`` and ``OUT/head_loss.png`` (``occlusion_head``:
``OUT/occlusion_head_rise.png`` and ``OUT/occlusion_head_reliability.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landmark_graph.engine.drawing import pyplot
from landmark_graph.engine.training import DATASETS, CachedDataset, TrainConfig, build_model, evaluate, train
from landmark_graph.heads import LGRLHead
from landmark_graph.metrics import LandmarkEvaluator
from landmark_graph.schemes import get_scheme

METRICS = ("nme", "fr", "auc")
SHARE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # occluded share of the landmarks, bin edges


# ---------------------------------------------------------------------------------------------
# The grid.


@dataclass(frozen=True)
class Variant:
    """One model of a study: ``overrides`` of the base :class:`TrainConfig`, and the paper's number."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    paper: str = ""

    @property
    def key(self) -> str:
        """Identifies the trained model by its differences from :data:`BASE`, so that variants of
        different studies that resolve to the same configuration share one model."""
        resolved = {**BASE, **dict(self.overrides)}
        return ",".join(f"{k}={v}" for k, v in sorted(resolved.items()) if BASE.get(k) != v) or "base"

    @classmethod
    def of(cls, name: str, paper: str = "", **overrides: Any) -> Variant:
        """The variant ``name`` with these :class:`TrainConfig` overrides."""
        return cls(name, tuple(sorted(overrides.items())), paper)


# The base model: L-GRL head, Soft Wing, no relative loss, dynamic edge weights, k = 3.
BASE = {"head": "lgrl", "loss": "softwing", "relative_weight": 0.0, "edge_weights": "dynamic", "k": 3}

# Paper numbers are WFLW NME (%) with real backbones, for reference beside ours (not comparable
# in absolute value: our data and models differ; only the direction of each effect is).
HEAD_LOSS_PAPER = {
    ("fc", "l1"): "5.02 (T. VI, ResNet18); 4.99 (T. I, MobileNetV2)",
    ("fc", "wing"): "-",
    ("fc", "softwing"): "4.86 (T. I, MobileNetV2)",
    ("lgrl", "l1"): "4.76 (T. VII); 4.77 (T. I)",
    ("lgrl", "wing"): "4.76 (T. VII, eps 0.5)",
    ("lgrl", "softwing"): "4.65 (T. VI/VII); 4.70 (T. I)",
}


@dataclass(frozen=True)
class Study:
    """A claim of the paper and the variants that test it."""

    title: str
    claim: str
    variants: tuple[Variant, ...]
    # The claim's comparisons, ``(reference, candidate)`` variant names: reported per seed, paired.
    pairs: tuple[tuple[str, str], ...] = ()


def build_studies(num_points: int, k_values: Sequence[int | str]) -> dict[str, Study]:
    """The studies, with ``"N-1"`` in ``k_values`` resolved to ``num_points - 1``."""
    ks = sorted({num_points - 1 if k == "N-1" else int(k) for k in k_values})
    losses = {"l1": "L1", "wing": "Wing", "softwing": "Soft Wing"}
    heads = {"fc": "FC", "lgrl": "L-GRL"}
    return {
        "head_loss": Study(
            "Head and absolute loss",
            "L-GRL beats FC with every loss; Soft Wing beats Wing and L1 (Tables I, VI, VII).",
            tuple(Variant.of(f"{heads[h]} + {losses[loss]}", HEAD_LOSS_PAPER[h, loss], head=h, loss=loss)
                  for h in heads for loss in losses),
            tuple((f"FC + {name}", f"L-GRL + {name}") for name in losses.values())
            + tuple((f"{head} + {name}", f"{head} + Soft Wing") for head in heads.values()
                    for name in ("L1", "Wing")),
        ),
        "relative": Study(
            "Relative location loss",
            "Adding the relative location loss (lambda = 1) lowers NME by 0.1-0.2 % for either head (§IV-E).",
            tuple(Variant.of(f"{heads[h]} + Soft Wing{' + relative' if w else ''}",
                           "-0.1 to -0.2 vs without" if w else "", head=h, relative_weight=w)
                  for h in heads for w in (0.0, 1.0)),
            tuple((f"{head} + Soft Wing", f"{head} + Soft Wing + relative") for head in heads.values()),
        ),
        "edge_weights": Study(
            "Edge weights",
            "Dynamic (per-image) edge weights beat binary ones by 0.2 % NME (§IV-E); the authors' code "
            "uses static learned weights.",
            (Variant.of("dynamic", "4.65"), Variant.of("static", "- (authors' code)", edge_weights="static"),
             Variant.of("binary", "4.85 (+0.2)", edge_weights="binary")),
            (("binary", "dynamic"), ("static", "dynamic")),
        ),
        "occlusion_head": Study(
            "Occlusion-aware head",
            "The graph head keeps the visible landmarks right while occluders hide others (Fig. 2, "
            "§III-E); issue 15: the rise of the visible NME at most half the paper head's, visibility "
            "AUROC >= 0.9, Spearman(scale, error) >= 0.5, 90 % interval holding 85-95 %.",
            OCCLUSION_HEAD_VARIANTS,
            (*(("paper head", v.name) for v in OCCLUSION_HEAD_VARIANTS[1:]),
             ("paper head + consistency", "full head + consistency"),
             ("full head, weights 1", "+ uncertainty (full head)"),
             ("full head + consistency", "full head + consistency, visibility 30"),
             ("full head + consistency", "full head + consistency, window 3"),
             ("full head + consistency, window 3", "full head + consistency, window 5")),
        ),
        "k": Study(
            "Neighbours per node k",
            f"k = 3 or 6 is best; sparser (k = 1) and denser graphs (k up to N-1 = {num_points - 1}) "
            "are worse (Fig. 8).",
            tuple(Variant.of(f"k = {k}", "best" if k in (3, 6) else "worse", k=k) for k in ks),
            tuple((f"k = {k}", "k = 3") for k in ks if k != 3) if 3 in ks else (),
        ),
    }


# The occlusion-aware options added one at a time, then consistency training for both ends, then
# the full head with its visibility BCE and Laplace NLL at weight 1 instead of TrainConfig's 10, and the
# full head + consistency with the visibility BCE at 30 or with a 3x3 or 5x5 attention window.
_FULL_HEAD = dict(embedding="attention", visibility=True, gate_edges=True, uncertainty=True)
CONSISTENCY_WEIGHT = 1.0  # per point as strong as the landmark loss
_WEIGHTS_1 = dict(visibility_weight=1.0, uncertainty_weight=1.0)
OCCLUSION_HEAD_VARIANTS = (
    Variant.of("paper head"),
    Variant.of("attention", embedding="attention"),
    Variant.of("+ visibility", embedding="attention", visibility=True),
    Variant.of("+ gating", embedding="attention", visibility=True, gate_edges=True),
    Variant.of("+ uncertainty (full head)", **_FULL_HEAD),
    Variant.of("paper head + consistency", consistency_weight=CONSISTENCY_WEIGHT),
    Variant.of("full head + consistency", **_FULL_HEAD, consistency_weight=CONSISTENCY_WEIGHT),
    Variant.of("full head, weights 1", **_FULL_HEAD, **_WEIGHTS_1),
    Variant.of("full head, weights 1 + consistency", **_FULL_HEAD, **_WEIGHTS_1,
               consistency_weight=CONSISTENCY_WEIGHT),
    Variant.of("full head + consistency, visibility 30", **_FULL_HEAD, consistency_weight=CONSISTENCY_WEIGHT,
               visibility_weight=30.0),
    *(Variant.of(f"full head + consistency, window {w}", **_FULL_HEAD, consistency_weight=CONSISTENCY_WEIGHT,
                 attention_window=w) for w in (3, 5)),
)
STUDIES = ("head_loss", "relative", "edge_weights", "k", "occlusion_head")


def unique_variants(studies: Mapping[str, Study]) -> list[Variant]:
    """Each distinct model once, in study order."""
    seen: dict[str, Variant] = {}
    for study in studies.values():
        for v in study.variants:
            seen.setdefault(v.key, v)
    return list(seen.values())


# Base training settings. "full" is sized for a GPU or a long CPU run, "cpu" for well under an hour
# on two (shared) CPU cores (docs/results.md), "quick" is a smoke test (minutes).
PROFILES: dict[str, dict[str, Any]] = {
    "full": dict(image_size=64, train_size=3000, test_size=300, backbone_width=24, hidden_features=64,
                 num_blocks=2, head_channels=128, batch_size=32, lr=2e-3, steps=1500),
    "cpu": dict(scheme="cofw29", image_size=32, train_size=1000, test_size=150, backbone_width=16,
                hidden_features=32, num_blocks=1, head_channels=32, batch_size=16, lr=3e-3, steps=300),
    "quick": dict(scheme="cofw29", image_size=32, train_size=64, test_size=16, backbone_width=8,
                  hidden_features=16, num_blocks=1, head_channels=16, batch_size=8, lr=2e-3, steps=8),
    # occlusion_head: a 128x8x8 map (SmallCNN depth 3 at 64 px), fine enough for a spatial attention;
    # 29 points and 600 steps so that 5 seeds x 7 variants take about an hour on two CPU processes.
    "occlusion": dict(scheme="cofw29", image_size=64, train_size=2000, test_size=300, backbone_width=32,
                      backbone_depth=3, hidden_features=64, num_blocks=2, head_channels=128, batch_size=32,
                      lr=2e-3, steps=600),
}
# --quick also thins the grid: no Wing loss, no static edge weights, three values of k.
QUICK_K = (1, 3, "N-1")
QUICK_SKIP = {("loss", "wing"), ("edge_weights", "static")}
FULL_K = (1, 3, 6, 20, "N-1")


def base_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """The :class:`TrainConfig` every variant starts from, for one seed."""
    profile = {**PROFILES[args.profile]}
    for name in ("image_size", "train_size", "test_size", "steps", "batch_size"):
        if getattr(args, name) is not None:
            profile[name] = getattr(args, name)
    steps = profile.pop("steps")
    data = {"dataset": "synthetic"}
    if args.data is not None:  # a real data set keeps its own landmark scheme
        data = {"dataset": args.data[0], "data_root": args.data[1]}
        profile.pop("scheme", None)
    return TrainConfig(**data, **profile, **BASE, backbone=args.backbone, epochs=1, steps_per_epoch=steps,
                       optimizer="adam", schedule="cosine", seed=seed, device=args.device, progress=False)


# ---------------------------------------------------------------------------------------------
# Data and evaluation.


def share_bins(share: Tensor) -> dict[str, Tensor]:
    """``{label: BoolTensor[B]}``: images by occluded share, ``0%`` then ``(lo, hi]`` bins up to 60 %."""
    bins = {"0%": share == 0}
    for lo, hi in itertools.pairwise(SHARE_EDGES):
        bins[f"{lo:.0%}-{hi:.0%}"] = (share > lo) & (share <= hi + 1e-9)
    return bins


def build_data(config: TrainConfig, quick: bool) -> tuple[Any, dict[str, Any], Any]:
    """``(train_set, {name: test_set}, sweep_set or None)`` for one seed.

    Synthetic sets are rendered once and cached in memory, shared by every variant of the seed;
    the sweep set has more and larger occluders (up to 3 per image, 15-55 % of the face) so that
    the occluded share spans 0-60 %. Real data sets are read from disk by their readers (the
    training set keeps its random augmentation) and have no sweep set: WFLW flags occlusion
    per image only (the ``occlusion`` attribute subset is reported instead).
    """
    train_set, test_sets = DATASETS[config.dataset].build(config)
    if config.dataset != "synthetic":
        return train_set, test_sets, None
    from landmark_graph.data.synthetic import SyntheticFaces

    sweep = SyntheticFaces(config.scheme_name, 2 * config.test_size, config.image_size,
                           seed=config.seed * 10 + 3, occlusion=0.85, max_occluders=3,
                           occluder_size=(0.15, 0.55))
    progress = not quick
    cache = lambda ds, name: CachedDataset(ds, progress=progress, description=f"render {name}")  # noqa: E731
    return (cache(train_set, "train"), {name: cache(ds, name) for name, ds in test_sets.items()},
            cache(sweep, "sweep"))


@torch.no_grad()
def occlusion_sweep(model: nn.Module, dataset: Any, scheme: str, batch_size: int, device: str | torch.device):
    """NME per occluded-share bin, on all landmarks and on the visible ones only.

    Images whose occluded share exceeds the last bin edge are left out.

    Returns:
        ``{"all": {bin: {"nme", "fr", "auc", "count"}}, "visible": {...}}``.
    """
    evaluators = {"all": LandmarkEvaluator(scheme), "visible": LandmarkEvaluator(scheme)}
    was_training = model.training
    model.eval()
    for start in range(0, len(dataset), batch_size):
        batch = dataset[list(range(start, min(start + batch_size, len(dataset))))]
        occluded = batch["occluded"]
        share = occluded.float().mean(1)
        keep = share <= SHARE_EDGES[-1] + 1e-9
        if not keep.any():
            continue
        pred = model(batch["image"][keep].to(device)).float().cpu()
        target, bins = batch["landmarks"][keep].float(), share_bins(share[keep])
        evaluators["all"].update(pred, target, bins)
        evaluators["visible"].update(pred, target, bins, mask=~occluded[keep])
    model.train(was_training)
    return {name: ev.compute()["subsets"] for name, ev in evaluators.items()}


def _flat_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{set: {nme, fr, auc}}`` plus ``{set/subset: ...}`` for each subset (WFLW attributes)."""
    flat = {}
    for name, m in metrics.items():
        flat[name] = {k: m[k] for k in (*METRICS, "count")}
        for sub, sm in m.get("subsets", {}).items():
            flat[f"{name}/{sub}"] = {k: sm[k] for k in (*METRICS, "count")}
    return flat


def run_variant(config: TrainConfig, data: tuple[Any, dict[str, Any], Any]) -> dict[str, Any]:
    """Train one variant on prebuilt data; its test metrics, occlusion sweep and, on sets with
    visibility flags, ``"occlusion"``: :func:`~landmark_graph.metrics.occlusion_report` per set
    (``"sweep"`` included, with its all-point ``"nme"``)."""
    train_set, test_sets, sweep = data
    result = train(config, train_set=train_set, test_sets=test_sets)
    record = {"metrics": _flat_metrics(result["metrics"]), "seconds": round(result["seconds"], 1),
              "final_loss": result["history"][-1]["train_loss"]}
    occlusion = {name: {**m["occlusion"], "nme": m["nme"]} for name, m in result["metrics"].items()
                 if "occlusion" in m}
    if sweep is not None:
        device = next(result["model"].parameters()).device
        record["sweep"] = occlusion_sweep(result["model"], sweep, config.scheme_name, config.batch_size,
                                          device)
        swept = evaluate(result["model"], torch.utils.data.DataLoader(sweep, config.batch_size),
                         config.scheme_name, device)
        occlusion["sweep"] = {**swept["occlusion"], "nme": swept["nme"]}
    if occlusion:
        record["occlusion"] = occlusion
    return record


def run_pending(configs: Mapping[str, TrainConfig], keys: Sequence[str], data: Any, jobs: int = 1,
                threads: int = 1) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(key, record)`` of each run as it finishes; ``jobs > 1``: that many forked processes of
    ``threads`` torch threads each, sharing ``data`` (rendered once), the longest runs first; also
    for a single run, whose numbers would otherwise depend on how many runs were pending."""
    if jobs <= 1:
        for key in keys:
            yield key, run_variant(configs[key], data)
        return
    if not keys:
        return
    global _JOB
    _JOB = (configs, data)
    cost = lambda key: ((1 + (configs[key].consistency_weight > 0))  # noqa: E731
                        * (1 + (configs[key].head == "lgrl" and configs[key].embedding == "map_to_node")))
    with multiprocessing.get_context("fork").Pool(min(jobs, len(keys)), torch.set_num_threads,
                                                  (threads,)) as pool:
        yield from pool.imap_unordered(_run_job, sorted(keys, key=cost, reverse=True))
    _JOB = None


_JOB: tuple[Mapping[str, TrainConfig], Any] | None = None  # what forked workers of run_pending train


def _run_job(key: str) -> tuple[str, dict[str, Any]]:
    configs, data = _JOB
    return key, run_variant(configs[key], data)


# ---------------------------------------------------------------------------------------------
# Summaries.


def spread(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "std", "min", "max", "n"}`` of finite values (std: sample std, 0 for one value)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values),
            "n": len(values)}


def summarize(runs: Mapping[str, Mapping[int, Mapping[str, Any]]], variant: Variant) -> dict[str, Any] | None:
    """Mean and spread over seeds of every metric of every test set (and sweep bin) of a variant;
    ``None`` when it has no finished run."""
    seeds = runs[variant.key]
    if not seeds:
        return None
    first = next(iter(seeds.values()))
    out: dict[str, Any] = {"seeds": sorted(seeds), "metrics": {
        name: {m: spread(r["metrics"][name][m] for r in seeds.values()) for m in METRICS}
        for name in first["metrics"]
    }}
    if "sweep" in first:
        out["sweep"] = {
            which: {b: {m: spread(r["sweep"][which][b][m] for r in seeds.values()) for m in METRICS}
                    for b in first["sweep"][which]}
            for which in first["sweep"]
        }
    return out


# ---------------------------------------------------------------------------------------------
# Head costs (parameters and FLOPs).


def _bench_head():
    """``benchmarks/bench_head.py`` (the head benchmark) as a module: its heads and counters."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_head

    return bench_head


def cost_table(config: TrainConfig, paper: bool = True, occlusion: bool = False) -> list[dict[str, Any]]:
    """Parameters and forward FLOPs per image of the heads, counted by ``bench_head.py``
    (``FlopCounterMode``: matmul and conv FLOPs, 2 per multiply-add).

    Rows: with ``paper``, the heads ``bench_head.py`` builds at the paper's setting (N = 98,
    ResNet map 512x8x8, I = 256, F = 128, 4 blocks, k = 3); then the heads of this study, built
    by :func:`~landmark_graph.engine.training.build_model` from ``config`` exactly as trained (with
    ``occlusion``, the attention and full heads of ``occlusion_head`` too).
    """
    bench = _bench_head()
    heads: list[tuple[str, str, nn.Module, Tensor]] = []
    if paper:
        features = torch.randn(1, bench.C, bench.HW, bench.HW)
        heads += [("paper setting", name, head, features)
                  for name, head in bench.build(torch.device("cpu")).items()]
    ours = {"FC": {"head": "fc"}, **{f"L-GRL ({mode})": {"head": "lgrl", "edge_weights": mode}
                                     for mode in ("dynamic", "static", "binary")}}
    if occlusion:
        ours.update({"L-GRL (attention)": {"embedding": "attention"}, "L-GRL (full head)": _FULL_HEAD})
    for name, overrides in ours.items():
        model = build_model(dataclasses.replace(config, **overrides)).eval()
        size = config.image_size
        with torch.no_grad():
            features = model.backbone(torch.zeros(1, 3, size, size))
        heads.append(("this study", name, model.head, features))
    rows = []
    for setting, name, head, features in heads:
        row = {"setting": setting, "head": name, "features": "x".join(map(str, features.shape[1:])),
               "params": bench.params(head), "flops": bench.flops(lambda h=head, f=features: h.eval()(f))}
        if isinstance(head, LGRLHead) and head.map_to_node is not None:  # graph layers alone (paper: 29.95 M)
            with torch.no_grad():
                nodes = head.map_to_node(features)
            row["graph_flops"] = bench.flops(lambda h=head, x=nodes: bench.graph_part(h)(x))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Reports.


def paired(runs: Mapping[str, Mapping[int, Mapping[str, Any]]], reference: Variant,
           candidate: Variant) -> dict[str, Any] | None:
    """Per-seed NME differences ``candidate - reference`` on each test set (same seed: same data
    and initialisation), their spread, and on how many seeds the candidate is lower; ``None``
    without a seed both finished."""
    seeds = sorted(set(runs[reference.key]) & set(runs[candidate.key]))
    if not seeds:
        return None
    first = runs[candidate.key][seeds[0]]["metrics"]
    out: dict[str, Any] = {"reference": reference.name, "candidate": candidate.name, "seeds": seeds}
    for name in first:
        nme = {v.key: [runs[v.key][s]["metrics"][name]["nme"] for s in seeds] for v in (reference, candidate)}
        diffs = [c - r for c, r in zip(nme[candidate.key], nme[reference.key], strict=True)]
        out[name] = {**spread(diffs), "candidate_lower": sum(d < 0 for d in diffs)}
    return out


def occlusion_head_metrics(record: Mapping[str, Any]) -> dict[str, float | None]:
    """One run's occlusion numbers (empty without a set with visibility flags): on the sweep set
    (else the first test set with flags) ``clean_nme`` (the clean set's NME; that set's own
    without one), ``all_nme``, ``visible <group>`` per occluded-share group, ``rise``,
    ``auroc``, ``spearman``, ``coverage <level>``."""
    reports = record.get("occlusion", {})
    name = "sweep" if "sweep" in reports else next(iter(reports), None)
    if name is None:
        return {}
    r = reports[name]
    clean = record["metrics"].get("clean", record["metrics"].get(name, {})).get("nme")
    out: dict[str, float | None] = {"clean_nme": clean, "all_nme": r["nme"]}
    out.update({f"visible {group}": m["nme"] for group, m in r["visible_nme"].items()})
    out.update(rise=r["rise"], auroc=r.get("visibility_auroc"), spearman=r.get("scale_spearman"))
    out.update({f"coverage {level}": c for level, c in r.get("coverage", {}).items()})
    return out


def occlusion_head_results(
    runs: Mapping[str, Mapping[int, Mapping[str, Any]]], study: Study
) -> dict[str, Any]:
    """Per variant the spread over seeds of :func:`occlusion_head_metrics`; per pair of the study
    the per-seed differences ``candidate - reference`` and on how many seeds the candidate is lower."""
    per_run = {v.key: {seed: occlusion_head_metrics(r) for seed, r in runs[v.key].items()}
               for v in study.variants}
    names = list(dict.fromkeys(m for by_seed in per_run.values() for r in by_seed.values() for m in r))
    variants = [{"name": v.name, "key": v.key, "seeds": sorted(per_run[v.key]),
                 "metrics": {m: spread(r.get(m) for r in per_run[v.key].values()) for m in names}}
                for v in study.variants]
    by_name, pairs = {v.name: v for v in study.variants}, []
    for reference, candidate in study.pairs:
        ref, cand = per_run[by_name[reference].key], per_run[by_name[candidate].key]
        seeds = sorted(set(ref) & set(cand))
        if not seeds:
            continue
        pair: dict[str, Any] = {"reference": reference, "candidate": candidate, "seeds": seeds}
        for m in names:
            diffs = [cand[s][m] - ref[s][m] for s in seeds if cand[s].get(m) is not None
                     and ref[s].get(m) is not None]
            pair[m] = {**spread(diffs), "candidate_lower": sum(d < 0 for d in diffs)}
        pairs.append(pair)
    return {"set": "sweep" if any("sweep" in r.get("occlusion", {}) for by_seed in runs.values()
                                  for r in by_seed.values()) else "test",
            "metrics": names, "variants": variants, "pairs": pairs}


def _occlusion_head_markdown(results: Mapping[str, Any]) -> list[str]:
    names = [m for m in results["metrics"] if not m.startswith("coverage ") or m == "coverage 0.9"]
    label = {"clean_nme": "clean NME", "all_nme": "all-point NME", "rise": "rise", "auroc": "vis. AUROC",
             "spearman": "Spearman", "coverage 0.9": "90 % cover"}
    fmt = lambda m, s: (_pm(s, 100) if "nme" in m or m.startswith("visible") else  # noqa: E731
                        _pm(s, 1, 3 if m in ("auroc", "spearman") else 2))
    where = ("the heavily occluded sweep set (occlusion 0.85, up to 3 occluders of 15-55 % of the face)"
             if results["set"] == "sweep" else "the test set, grouped by its own occlusion flags")
    lines = ["### Occlusion-aware head: visible-only NME by occluded share, visibility, uncertainty", "",
             f"On {where}. NME in % (inter-ocular); `visible G`: NME over the unoccluded landmarks of "
             "faces with an occluded share in group G; rise = visible NME at 30-60 % over 0-10 %, minus 1 "
             "(`occlusion_rise`); vis. AUROC of the visibility logits; Spearman of the predicted scale "
             "with the error; 90 % cover = share of coordinates inside the predicted 90 % Laplace "
             "interval. Mean ± std over seeds.", "",
             "| variant | seeds | " + " | ".join(label.get(m, m) for m in names) + " |",
             "|" + "---|" * (len(names) + 2)]
    for v in results["variants"]:
        lines.append(f"| {v['name']} | {len(v['seeds'])} | "
                     + " | ".join(fmt(m, v["metrics"][m]) for m in names) + " |")
    lines += ["", "Paired by seed (same data and initialisation): candidate − reference; `lower in`: seeds "
              "where the candidate's rise is lower.", "",
              "| candidate | reference | " + " | ".join(f"Δ {label.get(m, m)}" for m in names)
              + " | rise lower in |", "|" + "---|" * (len(names) + 3)]
    for p in results["pairs"]:
        lines.append(f"| {p['candidate']} | {p['reference']} | " + " | ".join(fmt(m, p[m]) for m in names)
                     + f" | {p['rise']['candidate_lower']}/{p['rise']['n']} |")
    return [*lines, ""]


def _pm(s: Mapping[str, float], scale: float = 1.0, digits: int = 2) -> str:
    if not s["n"]:
        return "n/a"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def reported_sets(summary: Mapping[str, Any]) -> list[str]:
    """The test sets shown in the tables: synthetic clean/occluded, or WFLW test and its occlusion subset."""
    names = list(summary["metrics"])
    wanted = [n for n in ("clean", "occluded", "test", "test/occlusion") if n in names]
    return wanted or names[:2]


def markdown(results: Mapping[str, Any]) -> str:
    """The study as markdown: one table per study, the occlusion sweep and the head costs."""
    meta, lines = results["meta"], []
    lines += [f"Data: {meta['data']}; profile {meta['profile']}; seeds {meta['seeds']}; {meta['steps']} "
              f"steps of batch {meta['config']['batch_size']} per model; device {meta['device']}; "
              f"{meta['train_seconds'] / 60:.1f} min of training and evaluation (sum over runs).",
              "NME and FR in % (NME normalised by the inter-ocular distance), AUC@0.1 in [0, 1]; "
              "mean ± std over seeds (min-max in results.json).", ""]
    for study in results["studies"].values():
        done = [v for v in study["variants"] if v["summary"]]
        if not done:
            continue
        sets = reported_sets(done[0]["summary"])
        lines += [f"### {study['title']}", "", f"Paper: {study['claim']}", ""]
        header = ["variant", "seeds", *(f"{s} {m.upper()}" for s in sets for m in METRICS), "paper NME (%)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for v in study["variants"]:
            summary = v["summary"]
            cells = (["not run"] * (len(sets) * len(METRICS)) if summary is None else
                     [_pm(summary["metrics"][s][k], *((1, 3) if k == "auc" else (100, 2)))
                      for s in sets for k in METRICS])
            seeds = str(len(summary["seeds"]) if summary else 0)
            lines.append("| " + " | ".join([v["name"], seeds, *cells, v["paper"]]) + " |")
        lines.append("")
        if study.get("pairs"):
            lines += ["Paired by seed (same data and initialisation): NME difference candidate − "
                      "reference (negative: the candidate is better), and the seeds where it is lower.", "",
                      "| candidate | reference | " + " | ".join(f"Δ {s} NME" for s in sets) + " | "
                      + " | ".join(f"{s}: lower in" for s in sets) + " |",
                      "|" + "---|" * (2 + 2 * len(sets))]
            for p in study["pairs"]:
                n = len(p["seeds"])
                lines.append(f"| {p['candidate']} | {p['reference']} | "
                             + " | ".join(_pm(p[s], 100) for s in sets) + " | "
                             + " | ".join(f"{p[s]['candidate_lower']}/{n}" for s in sets) + " |")
            lines.append("")
    if results.get("occlusion_head"):
        lines += _occlusion_head_markdown(results["occlusion_head"])
    sweep = results.get("occlusion_sweep")
    if sweep:
        bins = list(next(iter(sweep.values()))["all"])
        lines += ["### NME (%) vs occluded share of the landmarks (Fig. 2)", "",
                  "The head x loss models on a test set with larger occluders; images binned "
                  "by the share of landmarks under an occluder; `visible` = NME over unoccluded landmarks "
                  "only. Count = images per bin in the first seed's sweep set.", ""]
        lines += ["| head | landmarks | " + " | ".join(bins) + " |", "|" + "---|" * (len(bins) + 2)]
        for head, s in sweep.items():
            for which in ("all", "visible"):
                cells = " | ".join(_pm(s[which][b]["nme"], 100) for b in bins)
                lines.append(f"| {head} | {which} | {cells} |")
        counts = results["sweep_counts"]
        lines += ["| count | | " + " | ".join(str(counts.get(b, 0)) for b in bins) + " |", ""]
    lines += ["### Head cost (one image, forward)", "",
              f"Source: {results['costs']['source']}.", "",
              "| setting | head | backbone map | parameters | FLOPs | graph-layer FLOPs |",
              "|---|---|---|---|---|---|"]
    for r in results["costs"]["rows"]:
        graph = f"{r['graph_flops'] / 1e6:.2f} M" if "graph_flops" in r else "-"
        lines.append(f"| {r['setting']} | {r['head']} | {r['features']} | {r['params']:,} | "
                     f"{r['flops'] / 1e6:.2f} M | {graph} |")
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Any], out: Path) -> list[Path]:
    """The occlusion sweep, NME vs k and the head x loss bars, as PNGs; returns the paths."""
    plt = pyplot(required=False)
    if plt is None:
        return []
    paths = []
    sweep = results.get("occlusion_sweep")
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        bins = list(next(iter(sweep.values()))["all"])
        x = range(len(bins))
        for (head, s), colour in zip(sweep.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"],
                                     strict=False):
            for which, style in (("all", "-o"), ("visible", ":s")):
                mean = [s[which][b]["nme"]["mean"] * 100 for b in bins]
                std = [s[which][b]["nme"]["std"] * 100 for b in bins]
                ax.errorbar(x, mean, yerr=std, fmt=style, color=colour, capsize=3, label=f"{head}, {which}")
        ax.set_xticks(list(x), bins)
        ax.set_xlabel("occluded share of the landmarks")
        ax.set_ylabel("NME (%)")
        ax.set_title("NME vs occlusion (mean ± std over seeds)")
        ax.legend(fontsize=8)
        paths.append(_save(fig, plt, out / "occlusion.png"))
    if results.get("occlusion_head"):
        paths += _plot_occlusion_head(results["occlusion_head"], plt, out)
    for name, xlabel in (("k", "k (neighbours per node)"), ("head_loss", None)):
        study = results["studies"].get(name)
        done = [v for v in study["variants"] if v["summary"]] if study else []
        if not done:
            continue
        sets = reported_sets(done[0]["summary"])
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [v["name"] for v in done]
        width = 0.8 / len(sets)
        for i, s in enumerate(sets):
            mean = [v["summary"]["metrics"][s]["nme"]["mean"] * 100 for v in done]
            std = [v["summary"]["metrics"][s]["nme"]["std"] * 100 for v in done]
            if xlabel:  # a line over k
                ax.errorbar(range(len(labels)), mean, yerr=std, fmt="-o", capsize=3, label=s)
            else:
                ax.bar([j + i * width for j in range(len(labels))], mean, width, yerr=std, capsize=3, label=s)
        ax.set_xticks([j + (0 if xlabel else width * (len(sets) - 1) / 2) for j in range(len(labels))],
                      [lbl.replace("k = ", "") for lbl in labels], rotation=0 if xlabel else 20, fontsize=8)
        ax.set_xlabel(xlabel or "")
        ax.set_ylabel("NME (%)")
        ax.set_title(study["title"] + " (mean ± std over seeds)")
        ax.legend(fontsize=8)
        paths.append(_save(fig, plt, out / f"{name}.png"))
    return paths


def _plot_occlusion_head(results: Mapping[str, Any], plt, out: Path) -> list[Path]:
    """The visible NME per occluded-share group of each variant, and the reliability of the scales."""
    done = [v for v in results["variants"] if v["seeds"]]
    groups = [m for m in results["metrics"] if m.startswith("visible ")]
    levels = [m for m in results["metrics"] if m.startswith("coverage ")]
    paths = []
    if done and groups:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for v in done:
            stats = [v["metrics"][g] for g in groups]
            ax.errorbar(range(len(groups)), [s["mean"] * 100 for s in stats],
                        yerr=[s["std"] * 100 for s in stats], capsize=3, label=v["name"],
                        fmt="--o" if "consistency" in v["name"] else "-o")
        ax.set_xticks(range(len(groups)), [g.removeprefix("visible ") for g in groups])
        ax.set_xlabel("occluded share of the landmarks")
        ax.set_ylabel("visible-only NME (%)")
        ax.set_title("Visible landmarks vs occlusion (mean ± std over seeds)")
        ax.legend(fontsize=8)
        paths.append(_save(fig, plt, out / "occlusion_head_rise.png"))
    scaled = [v for v in done if levels and v["metrics"][levels[0]]["n"]]
    if scaled:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        nominal = [float(m.removeprefix("coverage ")) for m in levels]
        ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
        for v in scaled:
            ax.errorbar(nominal, [v["metrics"][m]["mean"] for m in levels],
                        yerr=[v["metrics"][m]["std"] for m in levels], fmt="-o", capsize=3, label=v["name"])
        ax.set_xlabel("interval probability")
        ax.set_ylabel("share of coordinates inside")
        ax.set_title("Laplace scale reliability")
        ax.legend(fontsize=8)
        paths.append(_save(fig, plt, out / "occlusion_head_reliability.png"))
    return paths


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Driver.


def _machine(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, " \
           f"{torch.get_num_threads()} torch threads"


def _load_run(path: Path, config: TrainConfig) -> dict[str, Any] | None:
    """A saved run, if it was made with exactly this configuration."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["record"] if saved.get("config") == config.to_dict() else None


def collect(args: argparse.Namespace, studies: Mapping[str, Study], runs: Mapping[str, Mapping[int, Any]],
            probe: TrainConfig, costs: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The results document from the finished runs (variants may have different seeds: see
    ``summary["seeds"]``; a variant without runs has summary ``None``)."""
    variants = unique_variants(studies)
    summaries = {v.key: summarize(runs, v) for v in variants}
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    results: dict[str, Any] = {
        "meta": {"command": "python " + " ".join([sys.argv[0], *args.argv]), "data": probe.dataset
                 if args.data is None else f"{args.data[0]}:{args.data[1]}", "seeds": seeds,
                 "profile": args.profile, "steps": probe.steps_per_epoch,
                 "config": {**probe.to_dict(), "seed": None},
                 "device": _machine(args.device), "torch": torch.__version__, "seconds": seconds,
                 "train_seconds": sum(r["seconds"] for by_seed in runs.values() for r in by_seed.values())},
        "studies": {name: {"title": s.title, "claim": s.claim, "variants": [
            {"name": v.name, "key": v.key, "overrides": dict(v.overrides), "paper": v.paper,
             "summary": summaries[v.key]} for v in s.variants],
            "pairs": [p for ref, cand in s.pairs if (p := _pair(runs, s, ref, cand))]}
            for name, s in studies.items()},
        "runs": {key: {str(seed): r for seed, r in by_seed.items()} for key, by_seed in runs.items()},
        "costs": costs,
    }
    if "occlusion_head" in studies:
        results["occlusion_head"] = occlusion_head_results(runs, studies["occlusion_head"])
    # The occlusion curve of every head x loss model (FC vs L-GRL at equal loss).
    head_loss = studies["head_loss"].variants if "head_loss" in studies else ()
    swept = [v for v in head_loss if summaries.get(v.key) and "sweep" in summaries[v.key]]
    if swept:
        results["occlusion_sweep"] = {v.name: summaries[v.key]["sweep"] for v in swept}
        first = next(iter(runs[swept[0].key].values()))["sweep"]["all"]
        results["sweep_counts"] = {b: m["count"] for b, m in first.items()}
    return results


def _pair(runs: Mapping[str, Mapping[int, Any]], study: Study, reference: str, candidate: str):
    by_name = {v.name: v for v in study.variants}
    return paired(runs, by_name[reference], by_name[candidate])


def write_reports(results: Mapping[str, Any], out: Path, plots: bool = True) -> list[Path]:
    """``results.json``, ``results.md`` and (``plots``) the PNGs in ``out``; returns the paths written."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    return [out / "results.json", out / "results.md", *(plot(results, out) if plots else [])]


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    """Train every variant for every seed (reusing saved runs); the reports are rewritten after
    each seed, so a long run that is stopped still leaves the finished seeds' summary."""
    started = time.perf_counter()
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    probe = base_config(args, args.seeds[0])
    num_points = get_scheme(probe.scheme_name).num_points
    studies = build_studies(num_points, args.k or (QUICK_K if args.quick else FULL_K))
    skip = QUICK_SKIP if args.quick else set()
    studies = {name: s for name, s in studies.items() if name in args.studies}
    names = {v.name for s in studies.values() for v in s.variants}
    unknown = set(args.variants or ()) - names
    if unknown:
        raise SystemExit(f"--variants: no variant {sorted(unknown)} in {args.studies}; "
                         f"they have {sorted(names)}")

    def thinned(study: Study) -> Study:
        """``study`` without the variants ``--quick`` skips or ``--variants`` leaves out, and their pairs."""
        kept = tuple(v for v in study.variants if not skip & set(v.overrides)
                     and (not args.variants or v.name in args.variants))
        pairs = tuple(p for p in study.pairs if set(p) <= {v.name for v in kept})
        return dataclasses.replace(study, variants=kept, pairs=pairs)

    studies = {name: thinned(s) for name, s in studies.items()}
    variants = unique_variants(studies)
    costs = {"source": "benchmarks/bench_head.py counters (torch.utils.flop_counter.FlopCounterMode: "
                       "matmul and conv FLOPs, 2 per multiply-add)",
             "rows": cost_table(probe, paper=not args.quick, occlusion="occlusion_head" in studies)}
    runs: dict[str, dict[int, dict[str, Any]]] = {v.key: {} for v in variants}
    total, done, results = len(variants) * len(args.seeds), 0, {}
    for seed in args.seeds:
        base = base_config(args, seed)
        configs = {v.key: dataclasses.replace(base, **dict(v.overrides)) for v in variants}
        paths = {key: out / "runs" / f"{key.replace('=', '-').replace(',', '_')}_seed{seed}.json"
                 for key in configs}
        pending = set()
        for key, config in configs.items():
            saved = _load_run(paths[key], config)
            if saved is None:
                pending.add(key)
            else:
                runs[key][seed] = saved
        if args.report_only:
            pending.clear()
        data = build_data(base, args.quick) if pending else None
        done += len(configs) - len(pending)
        for key, record in run_pending(configs, [k for k in configs if k in pending], data, args.jobs,
                                       args.threads or 1):
            done += 1
            config = configs[key]
            paths[key].write_text(json.dumps({"config": config.to_dict(), "record": record}))
            runs[key][seed] = record
            m = record["metrics"]
            line = " ".join(f"{s} NME {m[s]['nme']:.4f}" for s in list(m)[:2])
            print(f"[{done}/{total}] seed {seed} {key}: {line} ({record['seconds']:.0f}s, "
                  f"{(time.perf_counter() - started) / 60:.1f} min elapsed)", file=sys.stderr, flush=True)
        results = collect(args, studies, runs, probe, costs, time.perf_counter() - started)
        write_reports(results, out, plots=seed == args.seeds[-1])
    return results


def _data_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition(":")
    if not sep or name not in DATASETS or name == "synthetic":
        names = sorted(set(DATASETS) - {"synthetic"})
        raise argparse.ArgumentTypeError(f"--data must be NAME:PATH with NAME one of {names}, got {text!r}")
    return name, path


def _k_arg(text: str) -> int | str:
    if text == "N-1":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"k values must be positive ints or N-1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="reduced grid (k in 1 3 N-1, seeds 0 1), tiny models: --profile quick")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="base model and training sizes (default: occlusion for --study "
                             "occlusion_head alone, otherwise full)")
    parser.add_argument("--data", type=_data_arg, default=None,
                        help="a real data set NAME:PATH, e.g. wflw:/data/WFLW (default: synthetic faces)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0 1)")
    parser.add_argument("--studies", "--study", nargs="+", default=list(STUDIES[:-1]), choices=STUDIES,
                        help="default: all but occlusion_head")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help="train and report only these variants of the studies (default: all)")
    parser.add_argument("--k", type=_k_arg, nargs="+", default=None,
                        help="k grid (default: 1 3 6 20 N-1; quick: 1 3 N-1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=None, help="synthetic training faces per seed")
    parser.add_argument("--test-size", type=int, default=None, help="synthetic faces per test set")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--backbone", default="small", help="backbone name (default: small CNN)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (per process with --jobs; there default 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, each in its own process (default: 1)")
    parser.add_argument("--out", default="ablation", help="output folder (default: ./ablation)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: summarise the runs already saved in OUT/runs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    if args.quick:
        args.profile = "quick"
    elif args.profile is None:
        args.profile = "occlusion" if args.studies == ["occlusion_head"] else "full"
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_study(args)
    print(markdown(results))
    print(f"results in {args.out}: results.json, results.md and the PNGs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
