"""Each example script runs end to end on a few steps (in-process, through runpy)."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import usable

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


def _run(script: str, *args: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    return capsys.readouterr().out


def _needs(module: str) -> None:
    if not usable(module):
        pytest.skip(f"{module} is not usable here")


def test_adjacency_from_landmarks(monkeypatch, capsys):
    out = _run("adjacency_from_landmarks.py", "--steps", "2", monkeypatch=monkeypatch, capsys=capsys)
    assert "1000 shapes of 68 landmarks: 272 directed edges" in out  # 68 x (k + 1)
    assert "landmark 30 listens to [" in out and "after 2 steps: loss" in out


def test_adjacency_from_your_file(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "shapes.npy", np.random.default_rng(0).normal(size=(40, 10, 2)))
    out = _run("adjacency_from_landmarks.py", "--landmarks", str(tmp_path / "shapes.npy"), "--k", "2",
               monkeypatch=monkeypatch, capsys=capsys)
    assert "40 shapes of 10 landmarks: 30 directed edges" in out


def test_train_resnet(monkeypatch, capsys):
    _needs("torchvision")
    out = _run("train_resnet.py", "--steps", "2", "--batch-size", "2", "--image-size", "64",
               monkeypatch=monkeypatch, capsys=capsys)
    assert "step 2: loss" in out and "NME on occluded test faces" in out


def test_timm_head(monkeypatch, capsys):
    _needs("timm")
    out = _run("timm_head.py", "--steps", "2", "--image-size", "64", monkeypatch=monkeypatch, capsys=capsys)
    assert "step 2: loss" in out and "training-batch NME" in out


def test_occlusion_head_maps(tmp_path, monkeypatch, capsys):
    out = _run("occlusion_head_maps.py", "--steps", "2", "--train-size", "40", "--out",
               str(tmp_path / "maps.png"), monkeypatch=monkeypatch, capsys=capsys)
    assert "paper head: occluded test NME" in out and "occlusion-aware head: this face's NME" in out
    if usable("matplotlib"):
        assert (tmp_path / "maps.png").stat().st_size > 0
