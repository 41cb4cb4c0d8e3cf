"""The ablation study script (benchmarks/ablation.py): grid, summaries, and end-to-end runs."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablation"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("ablation", None)


def test_grid_covers_the_paper_claims(ablation):
    studies = ablation.build_studies(98, ablation.FULL_K)
    overrides = {name: [dict(v.overrides) for v in s.variants] for name, s in studies.items()}
    assert {(o["head"], o["loss"]) for o in overrides["head_loss"]} == {
        (h, loss) for h in ("fc", "lgrl") for loss in ("l1", "wing", "softwing")}
    assert sorted(o["k"] for o in overrides["k"]) == [1, 3, 6, 20, 97]  # N-1 resolved
    modes = {o.get("edge_weights", "dynamic") for o in overrides["edge_weights"]}
    assert modes == {"dynamic", "static", "binary"}
    assert {(o["head"], o["relative_weight"]) for o in overrides["relative"]} == {
        (h, w) for h in ("fc", "lgrl") for w in (0.0, 1.0)}


def test_shared_variants_are_trained_once(ablation):
    studies = ablation.build_studies(29, (1, 3, "N-1"))
    variants = ablation.unique_variants(studies)
    keys = [v.key for v in variants]
    assert len(keys) == len(set(keys))
    # The base model (L-GRL, Soft Wing, dynamic, k = 3) is in every study but trained once.
    base = {**ablation.BASE}
    resolved = [{**base, **dict(v.overrides)} for v in variants]
    assert resolved.count(base) == 1
    for study in studies.values():
        assert any({**base, **dict(v.overrides)} == base for v in study.variants)


def test_share_bins_partition_zero_to_sixty_percent(ablation):
    share = torch.arange(0, 99) / 98
    bins = ablation.share_bins(share)
    member = torch.stack(list(bins.values()))
    inside = share <= 0.6 + 1e-9
    assert torch.equal(member.sum(0), inside.long())  # each share up to 60 % in exactly one bin
    lows = [0.0, *ablation.SHARE_EDGES[:-1]]
    for (label, mask), low in zip(bins.items(), lows, strict=True):
        if mask.any():
            assert share[mask].min() >= low, label


def test_spread_matches_statistics(ablation):
    values = np.random.default_rng(0).random(5).tolist()
    s = ablation.spread([*values, math.nan])  # non-finite values are left out
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(statistics.fmean(values))
    assert s["std"] == pytest.approx(np.std(values, ddof=1))
    assert (s["min"], s["max"]) == (min(values), max(values))
    assert ablation.spread([0.5])["std"] == 0.0
    assert ablation.spread([])["n"] == 0


def test_pairs_name_existing_variants(ablation):
    for num_points, ks in ((98, ablation.FULL_K), (29, ablation.QUICK_K)):
        for study in ablation.build_studies(num_points, ks).values():
            names = {v.name for v in study.variants}
            assert study.pairs and all(ref in names and cand in names for ref, cand in study.pairs)


def test_paired_differences_are_per_seed(ablation):
    ref, cand = ablation.Variant.of("ref", k=1), ablation.Variant.of("cand", k=6)

    def record(clean):
        return {"metrics": {"clean": {"nme": clean}}}

    # Seed 2 has no candidate run: only seeds 0 and 1 pair up.
    runs = {ref.key: {0: record(0.05), 1: record(0.07), 2: record(0.09)},
            cand.key: {0: record(0.04), 1: record(0.08)}}
    p = ablation.paired(runs, ref, cand)
    assert p["seeds"] == [0, 1] and (p["reference"], p["candidate"]) == ("ref", "cand")
    assert p["clean"]["mean"] == pytest.approx(0.0) and p["clean"]["std"] == pytest.approx(0.01 * 2**0.5)
    assert p["clean"]["candidate_lower"] == 1
    assert ablation.paired({ref.key: {}, cand.key: {0: record(0.1)}}, ref, cand) is None


@pytest.mark.parametrize("text", ["synthetic:/x", "wflw", "nope:/x"])
def test_data_argument_names_the_problem(ablation, text, capsys):
    with pytest.raises(SystemExit):
        ablation.build_parser().parse_args(["--data", text])
    assert "--data must be NAME:PATH" in capsys.readouterr().err


def _finite_summary(summary, sets):
    for name in sets:
        for metric in ("nme", "fr", "auc"):
            s = summary["metrics"][name][metric]
            finite = all(math.isfinite(s[k]) for k in ("mean", "std", "min", "max"))
            assert s["n"] >= 1 and finite, (name, metric)
            assert s["min"] <= s["mean"] <= s["max"]


@pytest.mark.slow
def test_quick_run_writes_complete_finite_reports(ablation, tmp_path, monkeypatch):
    torch.set_num_threads(2)
    assert ablation.main(["--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["seeds"] == [0, 1]
    assert set(results["studies"]) == {"head_loss", "relative", "edge_weights", "k"}
    report = (tmp_path / "results.md").read_text()
    for study in results["studies"].values():
        assert study["title"] in report
        assert study["pairs"] and all(p["seeds"] == [0, 1] for p in study["pairs"])
        for v in study["variants"]:
            assert v["name"] in report
            _finite_summary(v["summary"], ("clean", "occluded"))
            assert v["summary"]["metrics"]["clean"]["nme"]["n"] == 2
    sweep, counts = results["occlusion_sweep"], results["sweep_counts"]
    assert set(sweep) == {v["name"] for v in results["studies"]["head_loss"]["variants"]}
    assert sum(counts.values()) > 0
    for head in sweep.values():
        for which in ("all", "visible"):
            for label, count in counts.items():
                assert math.isfinite(head[which][label]["nme"]["mean"]) == (count > 0), (which, label)
    assert {r["head"] for r in results["costs"]["rows"]} == {"FC", "L-GRL (dynamic)", "L-GRL (static)",
                                                             "L-GRL (binary)"}
    assert all(r["params"] > 0 and r["flops"] > 0 for r in results["costs"]["rows"])
    if importlib.util.find_spec("matplotlib") is not None:
        assert all((tmp_path / f"{name}.png").stat().st_size > 0 for name in ("occlusion", "k", "head_loss"))

    # A second run with the same configuration reuses the saved runs instead of training.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ablation, "train", no_training)
    again = tmp_path / "again"
    again.mkdir()
    (again / "runs").symlink_to(tmp_path / "runs")
    ablation.main(["--quick", "--seeds", "0", "--studies", "k", "--out", str(again)])
    rerun = json.loads((again / "results.json").read_text())
    key = rerun["studies"]["k"]["variants"][0]["key"]
    assert rerun["runs"][key]["0"] == results["runs"][key]["0"]


def _write_wflw(root: Path, split: str, count: int, seed: int) -> None:
    """A tiny WFLW-format set: synthetic faces saved as PNGs, a list file with box and flags."""
    image_module = pytest.importorskip("PIL.Image", reason="Pillow writes the fixture images")
    from landmark_graph.data.synthetic import synthesize_face

    (root / "WFLW_images" / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        face = synthesize_face("wflw98", seed, i, image_size=64)
        pixels = (face["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image_module.fromarray(pixels).save(root / "WFLW_images" / split / f"{i}.png")
        pts = face["landmarks"].numpy()
        box = [*np.floor(pts.min(0)).astype(int), *np.ceil(pts.max(0)).astype(int)]
        flags = [0, 0, 0, 0, i % 2, 0]  # every other face flagged "occlusion"
        fields = [*(f"{v:.3f}" for v in pts.ravel()), *map(str, box), *map(str, flags), f"{split}/{i}.png"]
        lines.append(" ".join(fields))
    (root / f"list_98pt_rect_attr_{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_wflw_data_runs_the_same_study(ablation, tmp_path):
    root = tmp_path / "WFLW"
    _write_wflw(root, "train", 8, seed=1)
    _write_wflw(root, "test", 4, seed=2)
    out = tmp_path / "out"
    args = ["--quick", "--data", f"wflw:{root}", "--studies", "k", "--k", "3", "--seeds", "0",
            "--batch-size", "4", "--out", str(out)]
    assert ablation.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["data"] == f"wflw:{root}"
    (variant,) = results["studies"]["k"]["variants"]
    _finite_summary(variant["summary"], ("test", "test/occlusion"))
    assert variant["summary"]["metrics"]["test"]["nme"]["n"] == 1
    run = results["runs"][variant["key"]]["0"]
    assert run["metrics"]["test"]["count"] == 4 and run["metrics"]["test/occlusion"]["count"] == 2
    assert "occlusion_sweep" not in results  # WFLW has no per-landmark occlusion flags
    assert "test/occlusion NME" in (out / "results.md").read_text()


def test_parallel_runs_use_the_thread_count_given_even_when_one_is_pending(ablation, monkeypatch):
    """With ``--jobs 2`` a run trains on ``threads`` threads however many runs of its seed are
    pending: a lone pending run trained in the parent, on its thread count, gave other numbers."""
    monkeypatch.setattr(ablation, "run_variant", lambda config, data: {"threads": torch.get_num_threads()})
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for keys in (["a"], ["a", "b"]):
            configs = {key: ablation.TrainConfig() for key in keys}
            records = dict(ablation.run_pending(configs, keys, None, jobs=2, threads=1))
            assert records == {key: {"threads": 1} for key in keys}, keys
        assert dict(ablation.run_pending({}, [], None, jobs=2, threads=1)) == {}
    finally:
        torch.set_num_threads(previous)


def test_occlusion_head_study_adds_one_option_at_a_time(ablation):
    study = ablation.build_studies(98, ablation.FULL_K)["occlusion_head"]
    overrides = [dict(v.overrides) for v in study.variants]
    assert overrides[0] == {}  # the paper head, the base model of the other studies
    parts = ("embedding", "visibility", "gate_edges", "uncertainty")
    for i in range(1, len(parts) + 1):  # variant i adds part i to variant i - 1
        assert set(overrides[i]) == set(parts[:i])
    assert overrides[5] == {"consistency_weight": ablation.CONSISTENCY_WEIGHT}
    assert overrides[6] == {**overrides[4], "consistency_weight": ablation.CONSISTENCY_WEIGHT}
    assert overrides[7] == {**overrides[4], "visibility_weight": 1.0, "uncertainty_weight": 1.0}
    assert overrides[8] == {**overrides[7], "consistency_weight": ablation.CONSISTENCY_WEIGHT}
    assert overrides[9] == {**overrides[6], "visibility_weight": 30.0}
    assert overrides[10] == {**overrides[6], "attention_window": 3}
    assert overrides[11] == {**overrides[6], "attention_window": 5}
    names = {v.name for v in study.variants}
    assert all(ref in names and cand in names for ref, cand in study.pairs)
    args = ablation.build_parser().parse_args(["--study", "occlusion_head"])
    assert args.studies == ["occlusion_head"] and args.profile is None  # main() picks "occlusion"
    assert "occlusion_head" not in ablation.build_parser().parse_args([]).studies


def _check_occlusion_head(results, seeds, occlusion_set):
    section = results["occlusion_head"]
    assert section["set"] == occlusion_set
    by_name = {v["name"]: v for v in section["variants"]}
    assert len(by_name) == 12 and all(v["seeds"] == seeds for v in by_name.values())
    for name, v in by_name.items():
        m = v["metrics"]
        for key in ("clean_nme", "all_nme", "visible 0%-10%"):
            assert math.isfinite(m[key]["mean"]) and m[key]["n"] == len(seeds), (name, key)
        has_visibility = "visibility" in name or "gating" in name or "full head" in name
        assert (m["auroc"]["n"] > 0) == has_visibility, name
        assert (m["spearman"]["n"] > 0) == ("full head" in name), name
        if m["coverage 0.9"]["n"]:
            assert 0 <= m["coverage 0.1"]["mean"] <= m["coverage 0.9"]["mean"] <= 1
    assert {(p["reference"], p["candidate"]) for p in section["pairs"]} == {
        *(("paper head", n) for n in by_name if n != "paper head"),
        ("paper head + consistency", "full head + consistency"),
        ("full head, weights 1", "+ uncertainty (full head)"),
        ("full head + consistency", "full head + consistency, visibility 30"),
        ("full head + consistency", "full head + consistency, window 3"),
        ("full head + consistency, window 3", "full head + consistency, window 5")}
    for p in section["pairs"]:
        assert p["seeds"] == seeds and p["clean_nme"]["n"] == len(seeds)


@pytest.mark.slow
def test_occlusion_head_quick_study_in_two_processes(ablation, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert ablation.main(["--quick", "--study", "occlusion_head", "--seeds", "0", "1", "--jobs", "2",
                          "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    _check_occlusion_head(results, [0, 1], "sweep")
    sweep = results["runs"]["base"]["0"]["occlusion"]["sweep"]
    assert sweep["rise"] is not None and set(sweep["visible_nme"]) == {"0%-10%", "10%-30%", "30%-60%"}
    report = (out / "results.md").read_text()
    assert "Occlusion-aware head" in report and "full head + consistency" in report
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("rise", "reliability"):
            assert (out / f"occlusion_head_{name}.png").stat().st_size > 0

    # One process of one thread trains the same models as two (one thread each).
    single = tmp_path / "single"
    args = ["--quick", "--study", "occlusion_head", "--seeds", "0", "--threads", "1", "--out", str(single)]
    assert ablation.main(args) == 0
    again = json.loads((single / "results.json").read_text())["runs"]
    for key, by_seed in again.items():
        strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
        assert strip(by_seed["0"]) == strip(results["runs"][key]["0"]), key

    # A rerun reuses the saved runs instead of training.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ablation, "train", no_training)
    args = ["--quick", "--study", "occlusion_head", "--seeds", "0", "1", "--out", str(out)]
    assert ablation.main(args) == 0
    # --variants reports the chosen variants and the pairs among them only.
    chosen = ["paper head", "full head + consistency, window 3"]
    assert ablation.main([*args, "--variants", *chosen]) == 0
    section = json.loads((out / "results.json").read_text())["occlusion_head"]
    assert [v["name"] for v in section["variants"]] == chosen
    assert [(p["reference"], p["candidate"]) for p in section["pairs"]] == [tuple(chosen)]


def test_unknown_variants_fail_before_any_training(ablation, tmp_path):
    message = r"--variants: no variant \['full head, window'\] in \['occlusion_head'\]"
    with pytest.raises(SystemExit, match=message):
        ablation.main(["--quick", "--study", "occlusion_head", "--variants", "paper head",
                       "full head, window", "--out", str(tmp_path)])


def _write_cofw(path: Path, split: str, count: int, seed: int) -> None:
    """A tiny COFW-format .mat file: synthetic faces (half occluded) with their occlusion flags."""
    import scipy.io

    from landmark_graph.data.synthetic import SyntheticConfig, synthesize_face

    images = np.empty((count, 1), dtype=object)
    shapes, boxes = [], []
    for i in range(count):
        face = synthesize_face("cofw29", seed, i, image_size=64, config=SyntheticConfig(occlusion=0.5))
        images[i, 0] = (face["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        pts, flags = face["landmarks"].numpy().astype(np.float64), face["occluded"].numpy()
        shapes.append(np.concatenate([pts[:, 0], pts[:, 1], flags.astype(float)]))
        lo, hi = pts.min(0), pts.max(0)
        boxes.append([*lo, *(hi - lo)])
    key = "Tr" if split == "train" else "T"
    scipy.io.savemat(path, {f"Is{key}": images, f"phis{key}": np.array(shapes),
                            f"bboxes{key}": np.array(boxes)})


@pytest.mark.slow
def test_occlusion_head_study_on_cofw_uses_its_occlusion_flags(ablation, tmp_path):
    root = tmp_path / "COFW"
    root.mkdir()
    _write_cofw(root / "COFW_train.mat", "train", 16, seed=1)
    _write_cofw(root / "COFW_test.mat", "test", 12, seed=2)
    out = tmp_path / "out"
    assert ablation.main(["--quick", "--study", "occlusion_head", "--data", f"cofw:{root}", "--seeds", "0",
                          "--batch-size", "4", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["data"] == f"cofw:{root}"
    _check_occlusion_head(results, [0], "test")
    run = results["runs"]["base"]["0"]
    assert "sweep" not in run and run["occlusion"]["test"]["visible_nme"]["0%-10%"]["count"] > 0
