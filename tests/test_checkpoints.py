"""Checkpoints of the training engine: safe loading, atomic writes, best.pt, resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from landmark_graph.data.synthetic import SyntheticFaces
from landmark_graph.engine import cli
from landmark_graph.engine.export import load_checkpoint_model
from landmark_graph.engine.training import CachedDataset, CheckpointError, TrainConfig, load_checkpoint, train

TINY = ["--scheme", "cofw29", "--image-size", "32", "--test-size", "4", "--backbone-width", "8",
        "--hidden-features", "16", "--num-blocks", "1", "--head-channels", "16", "--no-progress"]


def _tiny_config(**changes) -> TrainConfig:
    values = dict(scheme="cofw29", image_size=32, train_size=8, test_size=4, backbone_width=8,
                  hidden_features=16, num_blocks=1, head_channels=16, batch_size=4, steps_per_epoch=2,
                  lr=1e-2, progress=False)
    return TrainConfig(**values | changes)


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "landmark_graph", *argv], capture_output=True, text=True,
                          timeout=timeout)


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("landmark-graph: error: "), stderr
    return lines[0]


# --- a training set smaller than one batch ------------------------------------------------------


@pytest.mark.parametrize("steps", [[], ["--steps-per-epoch", "1"]], ids=["one-pass", "steps-per-epoch"])
def test_a_training_set_smaller_than_a_batch_is_an_error_not_a_hang(steps, tmp_path):
    # Before the fix, --steps-per-epoch made the loop restart an empty loader forever.
    done = _run("train", *TINY, "--train-size", "4", "--batch-size", "8", *steps, "--epochs", "1",
                "--out-dir", str(tmp_path / "run"), timeout=90)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert "training set (4 samples) is smaller than batch_size=8" in line and "--batch-size" in line


# --- best.pt ------------------------------------------------------------------------------------


class _CrashAfter(Dataset):
    """A training set that raises once ``reads`` items have been read: a run that dies mid-way."""

    def __init__(self, dataset: Dataset, reads: int) -> None:
        self.dataset, self.reads = dataset, reads

    def __len__(self) -> int:
        return len(self.dataset)

    def landmarks(self, count: int | None = None) -> torch.Tensor:  # for the adjacency, not a read
        return self.dataset.landmarks(count)

    def __getitem__(self, index: int):
        self.reads -= 1
        if self.reads < 0:
            raise RuntimeError("simulated crash")
        return self.dataset[index]


@pytest.mark.parametrize("crash_epoch, best_epoch", [(2, None), (4, 2)])
def test_best_pt_holds_an_evaluated_model_only(tmp_path, crash_epoch, best_epoch):
    # Evaluations after epochs 2 and 4 only; the run dies during epoch `crash_epoch`. Before the
    # fix, epoch 1 (never evaluated: inf <= inf) and epoch 3 (the metrics of epoch 2 reused, so
    # score == best) both wrote best.pt.
    config = _tiny_config(epochs=4, eval_every=2, out_dir=str(tmp_path))
    faces = CachedDataset(SyntheticFaces("cofw29", 8, 32, seed=1))
    tests = {"clean": CachedDataset(SyntheticFaces("cofw29", 4, 32, seed=2))}
    reads_per_epoch = config.steps_per_epoch * config.batch_size
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, train_set=_CrashAfter(faces, (crash_epoch - 1) * reads_per_epoch), test_sets=tests)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == crash_epoch - 1
    if best_epoch is None:
        assert not (tmp_path / "best.pt").exists()
        return
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == best_epoch
    assert best["best"] == best["history"][-1]["eval"]["clean"]["nme"]


# --- loading only weights -----------------------------------------------------------------------


class _WritesAFile:
    """Unpickling this object writes a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def test_a_pickled_object_is_refused_without_an_opt_in(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "model.pt"
    torch.save({"model": _WritesAFile(marker)}, evil)
    with pytest.raises(CheckpointError, match="trust=True"):
        load_checkpoint_model(evil)
    assert cli.main(["export", str(evil), str(tmp_path / "model.onnx"), "--input-shape", "3", "8", "8"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert cli.main(["evaluate", str(evil)]) == 2
    capsys.readouterr()
    assert not marker.exists() and not (tmp_path / "model.onnx").exists()
    # The opt-in does unpickle (so the file above really runs code when loaded).
    with pytest.raises(ValueError, match="keys"):
        load_checkpoint_model(evil, trust=True)
    assert marker.read_text() == "code ran"


def test_a_whole_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 3), path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects.*torch\.nn\.modules\.linear\.Linear"):
        load_checkpoint_model(path)
    model, shape = load_checkpoint_model(path, trust=True)
    assert isinstance(model, torch.nn.Linear) and shape is None


@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xe0" + bytes(200), b"not a checkpoint"],
                         ids=["jpeg", "text"])
def test_evaluate_on_a_file_that_is_no_checkpoint_says_so_in_one_line(tmp_path, capsys, content):
    image = tmp_path / "face.jpg"
    image.write_bytes(content)
    assert cli.main(["evaluate", str(image)]) == 2
    line = capsys.readouterr().err.strip()
    # The length without the path, which grows with pytest's temporary directory number.
    assert "\n" not in line and "is not a checkpoint" in line, line
    assert len(line.replace(str(image), "")) < 150, line


# --- atomic writes and resuming -----------------------------------------------------------------


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = _tiny_config(epochs=1, out_dir=str(tmp_path))
    train(config)
    before = load_checkpoint(tmp_path / "last.pt")
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        train(TrainConfig.from_dict(config.to_dict() | {"epochs": 2, "resume": str(tmp_path / "last.pt")}))
    monkeypatch.setattr(torch, "save", real_save)
    after = load_checkpoint(tmp_path / "last.pt")
    assert after["epoch"] == 1
    for key, value in before["model"].items():
        assert torch.equal(after["model"][key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "log.jsonl"]

    # What a writer killed mid-save (SIGKILL: no clean-up) leaves behind goes with the next save.
    leftover = tmp_path / ".last.pt.4194305.tmp"  # above Linux's largest process id: a dead writer
    leftover.write_bytes(b"PK\x03\x04 half a zip")
    train(TrainConfig.from_dict(config.to_dict() | {"epochs": 2, "resume": str(tmp_path / "last.pt")}))
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2 and not leftover.exists()


def _train_args(out: Path) -> list[str]:
    # 16 faces in batches of 4 and 6 steps an epoch: each epoch reshuffles 1.5 times.
    return ["train", *TINY, "--train-size", "16", "--batch-size", "4", "--steps-per-epoch", "6",
            "--epochs", "3", "--lr", "0.01", "--threads", "1", "--out-dir", str(out)]


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _run(*_train_args(reference)).returncode == 0

    process = subprocess.Popen([sys.executable, "-m", "landmark_graph", *_train_args(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # log.jsonl is the last file written after an epoch: kill as soon as epoch 1 is saved.
    while not (killed / "log.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    saved = load_checkpoint(killed / "last.pt")["epoch"]
    assert 1 <= saved < 3, saved

    resumed = _run(*_train_args(killed)[:-2], "--resume", str(killed / "last.pt"))  # out dir: its folder
    assert resumed.returncode == 0, resumed.stderr
    expected, got = load_checkpoint(reference / "last.pt"), load_checkpoint(killed / "last.pt")
    assert got["epoch"] == 3
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key
    assert got["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    for index, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(got["optimizer"]["state"][index][name], value), (index, name)
    logs = [[json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
            for folder in (reference, killed)]
    assert [r["epoch"] for r in logs[1]] == [1, 2, 3]
    assert [r["eval"] for r in logs[1]] == [r["eval"] for r in logs[0]]
    assert not [p for p in os.listdir(killed) if p.endswith(".tmp")]
