"""The benchmark scripts run end to end on their smallest settings (timings are not checked here:
speed is compared inside each script, against peers measured in the same run)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.slow


def _run(script: str, *args: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    assert done.value.code == 0


def test_bench_aggregate_one_shape(tmp_path, monkeypatch):
    out = tmp_path / "agg.json"
    _run("bench_aggregate.py", "--only", "29,4,16,2", "--budget", "0", "--threads", "1",
         "--json", str(out), monkeypatch=monkeypatch)
    result = json.loads(out.read_text())
    methods = {r["method"] for r in result["records"]}
    assert {"op", "dense", "gather+einsum", "sparse-csr"} <= methods
    assert {r["mode"] for r in result["records"]} == {"fwd", "fwd+bwd"}


def test_bench_synthetic(tmp_path, monkeypatch):
    out = tmp_path / "synth.json"
    _run("bench_synthetic.py", "--schemes", "cofw29", "--sizes", "32", "--images", "2", "--budget", "0",
         "--json", str(out), monkeypatch=monkeypatch)
    assert json.loads(out.read_text())["images_per_second"]["cofw29@32"] > 0


def test_bench_head_counts_the_formula(tmp_path, monkeypatch):
    out = tmp_path / "head.json"
    _run("bench_head.py", "--batch", "2", "--budget", "0", "--threads", "1", "--json", str(out),
         monkeypatch=monkeypatch)
    result = json.loads(out.read_text())
    formula = result["spec_formula_graph_flops"]
    assert formula == 33_266_688  # SPEC §4 with N = 98, K = 4, I = 256, F = 128, O = 2, 4 blocks
    flops = result["params_flops"]
    assert abs(flops["LGRLHead-dynamic"]["flops_graph_layers"] / formula - 1) < 0.01
    assert flops["authors-dense"]["flops_graph_layers"] > 3 * formula  # dense N x N products
    assert set(result["graph_layers_fwd_bwd"]) == {"LGRLHead-dynamic", "LGRLHead-static", "authors-dense"}


def test_compare_latency_runs_both_trees(monkeypatch, capsys):
    root = str(BENCHMARKS.parent)
    _run("compare_latency.py", root, root, "--repeats", "1", "--threads", "1", "--rounds", "5",
         monkeypatch=monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["label"] for r in records] == ["old", "new"]
    assert all(r["B1"]["ratio"] > 0 and r["B64"]["ratio"] > 0 for r in records)
    assert any(line.startswith("threads=1 B1:") and "new/old" in line for line in lines)


def test_profile_graph_layers_prints_each_stack(monkeypatch, capsys):
    _run("profile_graph_layers.py", "--batch", "2", "--threads", "1", monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert "== ours (LGRLHead-dynamic):" in out and "aten::mm" in out
