"""The old import paths of the modules that moved into landmark_graph.engine give those very modules."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import landmark_graph.engine.training as training
from landmark_graph._aliases import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_engine_module(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__name__ == module.__spec__.name == MOVED[old]


def test_old_path_first_in_a_fresh_interpreter():
    # Old path before the new one, names taken from it, the module reloadable, a pickle naming
    # the old path (as a file written before the move would) read back.
    code = """
import importlib, pickle
from landmark_graph.training import TrainConfig
import landmark_graph.engine.training as new
import landmark_graph.training as old
from landmark_graph.export import export_onnx, load_checkpoint_model
import landmark_graph.onnx, landmark_graph.engine.export
assert old is new and TrainConfig is new.TrainConfig
assert export_onnx is landmark_graph.onnx.export_onnx
assert load_checkpoint_model is landmark_graph.engine.export.load_checkpoint_model
assert importlib.reload(old) is new
data = pickle.dumps(new.TrainConfig(epochs=3), protocol=0)
assert b"landmark_graph.engine.training" in data
config = pickle.loads(data.replace(b"landmark_graph.engine.training", b"landmark_graph.training"))
assert isinstance(config, new.TrainConfig) and config.epochs == 3
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_monkeypatching_the_old_path_patches_the_engine(monkeypatch):
    monkeypatch.setattr("landmark_graph.training.build_model", lambda config: "patched")
    assert training.build_model(None) == "patched"


def test_unknown_old_path_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("landmark_graph.no_such_module")
