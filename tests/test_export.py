"""ONNX and torch.export of models with LGRLHead, and the ``landmark-graph export`` command."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from landmark_graph import LGRLHead
from landmark_graph.engine.export import load_checkpoint_model
from landmark_graph.onnx import export_onnx, export_program, run_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

MODES = ("dynamic", "static", "binary")
SHAPE = (3, 16, 16)  # image (C, H, W); the backbone maps it to (8, 4, 4)


def make_model(mode: str, seed: int = 0) -> nn.Sequential:
    """A small backbone + a lazily sized LGRLHead, with non-trivial weights and BN statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        LGRLHead(6, k=2, hidden_features=8, num_blocks=1, hidden_channels=8, edge_weights=mode),
    )
    model(torch.randn(4, *SHAPE))  # lazy init and one BN statistics update (train mode)
    with torch.no_grad():
        for p in model.parameters():  # the dynamic and static edge logits start at zero
            p.add_(0.3 * torch.randn_like(p))
    return model


class AllModes(nn.Module):
    """The three edge-weight modes side by side, so that one (slow) dynamo export covers them."""

    def __init__(self) -> None:
        super().__init__()
        self.models = nn.ModuleList(make_model(mode, seed) for seed, mode in enumerate(MODES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(x) for model in self.models])  # (modes, B, N, 2)


def test_onnx_runtime_matches_pytorch_with_dynamic_batch(tmp_path, caplog):
    pytest.importorskip("onnxscript")
    model = AllModes()
    with caplog.at_level(logging.WARNING, logger="torch.onnx"):
        path = export_onnx(model, tmp_path / "heads.onnx", torch.randn(2, *SHAPE))
    # No warnings: without torchvision torch's exporter logs a line per torchvision op it skips.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("torch.onnx")] == []
    assert model.training, "export must restore the training mode"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")] == [18]
    model.eval()  # the ONNX graph holds the BN running statistics
    for batch in (1, 5):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x)
        got = run_onnx(path, x)
        for i, mode in enumerate(MODES):
            assert expected[i].abs().max() > 1e-2, mode  # an output of ~0 would make the check vacuous
            torch.testing.assert_close(got[i], expected[i], rtol=0, atol=1e-4, msg=mode)
    assert run_onnx(path, torch.zeros(0, *SHAPE)).shape == (len(MODES), 0, 6, 2)


def test_torch_export_matches_eager():
    model = AllModes()
    program = export_program(model, torch.randn(1, *SHAPE))  # a batch of 1 must not freeze B
    model.eval()
    for batch in (0, 1, 3):
        x = torch.randn(batch, *SHAPE)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-6)


def test_export_leaves_the_model_unchanged(tmp_path):
    model = make_model("static", seed=2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model[1].eval()  # a mixed-mode model keeps each submodule's mode
    export_program(model, torch.randn(2, *SHAPE))
    assert model.training and not model[1].training and model[3].training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_export_rejects_bad_arguments(tmp_path):
    model = make_model("binary")
    with pytest.raises(ValueError, match="opset_version"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(2, *SHAPE), opset_version=17)
    with pytest.raises(ValueError, match="example_input"):
        export_program(model, torch.randn(0, *SHAPE))
    with pytest.raises(TypeError, match="example_input"):
        export_program(model, torch.ones(2, *SHAPE, dtype=torch.long))


def test_export_command_on_a_training_checkpoint(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    from landmark_graph.engine.cli import main
    from landmark_graph.engine.training import TrainConfig, build_model

    config = TrainConfig(image_size=32, scheme="cofw29", hidden_features=8, num_blocks=1,
                         backbone_width=4, head_channels=8)
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    checkpoint = tmp_path / "last.pt"
    torch.save({"config": config.to_dict(), "model": model.state_dict()}, checkpoint)
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), str(out), "--static-batch", "--batch", "3", "--opset", "19"]) == 0
    assert "max abs error" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [3, 3, 32, 32]
    assert [op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")] == [19]
    x = 2 * torch.rand(3, 3, 32, 32) - 1
    with torch.no_grad():
        expected = model.eval()(x)
    assert expected.std() > 0.1
    torch.testing.assert_close(run_onnx(out, x), expected, rtol=0, atol=1e-4)
    # A module saved whole needs the opt-in, then the input shape: one-line errors, exit code 2.
    whole = tmp_path / "whole.pt"
    torch.save(make_model("binary"), whole)
    assert main(["export", str(whole), str(tmp_path / "x.onnx"), "--input-shape", *map(str, SHAPE)]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert main(["export", str(whole), str(tmp_path / "x.onnx"), "--trust-checkpoint"]) == 2
    assert "input_shape" in capsys.readouterr().err


def test_checkpoint_layouts(tmp_path):
    model = make_model("static", seed=4).eval()
    packed = tmp_path / "packed.pt"
    torch.save({"state_dict": model.state_dict(), "input_shape": list(SHAPE)}, packed)
    with pytest.raises(ValueError, match="builder"):
        load_checkpoint_model(packed)
    loaded, shape = load_checkpoint_model(packed, build_model=lambda ckpt: make_model("static", seed=9))
    assert shape == SHAPE
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    boxed = tmp_path / "boxed.pt"
    torch.save({"model": model}, boxed)
    assert isinstance(load_checkpoint_model(boxed, trust=True)[0], nn.Sequential)
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint_model(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list"):
        load_checkpoint_model(tmp_path / "list.pt")


def _trained_like_checkpoint(path, config):
    """A train checkpoint whose BatchNorm statistics come from face images, as after training:
    normal random inputs then drive its outputs to hundreds of pixels."""
    from landmark_graph.data.synthetic import SyntheticFaces
    from landmark_graph.engine.training import build_model

    faces = SyntheticFaces(config.scheme_name, 64, config.image_size, seed=5)
    images = torch.stack([faces[i]["image"] for i in range(64)])
    torch.manual_seed(0)
    model = build_model(config, torch.stack([faces[i]["landmarks"] for i in range(64)]))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.reset_running_stats()
                module.momentum = None  # cumulative: the statistics of the whole batch below
        model.train()(images)
    torch.save({"config": config.to_dict(), "model": model.eval().state_dict()}, path)
    return model, images


def test_export_check_uses_realistic_inputs_and_a_relative_tolerance(tmp_path, capsys):
    # Before the fix the check fed torch.randn images and required 1e-4 absolute: on this
    # checkpoint the outputs reach ~300 px and float32 rounding alone differs by ~3e-4.
    pytest.importorskip("onnxscript")
    from landmark_graph.engine.cli import main
    from landmark_graph.engine.training import TrainConfig

    config = TrainConfig(image_size=32, scheme="cofw29", backbone_width=8, hidden_features=16, num_blocks=1,
                         head_channels=16)
    checkpoint, out = tmp_path / "last.pt", tmp_path / "model.onnx"
    model, faces = _trained_like_checkpoint(checkpoint, config)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))).abs().max() > 200
        assert model(faces).abs().max() < 60
    assert main(["export", str(checkpoint), str(out)]) == 0
    assert "max abs error" in capsys.readouterr().out
    torch.testing.assert_close(run_onnx(out, faces[:5]), model(faces[:5]).detach(), rtol=0, atol=1e-3)

    # A failed check: one line, exit code 1, the earlier file untouched, no temporary file left.
    before = out.read_bytes()
    assert main(["export", str(checkpoint), str(out), "--rtol", "0", "--atol", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ONNX Runtime differs from PyTorch" in err[0] and "not written" in err[0], err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model.onnx"]
