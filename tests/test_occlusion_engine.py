"""The occlusion-aware head in the engine: TrainConfig options, the loss, consistency training,
evaluation reports, checkpoints, the CLI and export."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from landmark_graph import functional as LF
from landmark_graph.data.synthetic import SyntheticConfig, SyntheticFaces, paste_occluders, synthesize_face
from landmark_graph.engine.cli import main
from landmark_graph.engine.training import (
    LandmarkCriterion,
    TrainConfig,
    batch_loss,
    build_model,
    evaluate,
    model_from_checkpoint,
    train,
)
from landmark_graph.heads import HeadOutput

TINY = dict(epochs=1, steps_per_epoch=2, batch_size=4, image_size=32, train_size=8, test_size=4,
            scheme="cofw29", hidden_features=8, num_blocks=1, backbone_width=8, head_channels=8,
            backbone_depth=3, progress=False, lr=1e-3)
FULL = dict(embedding="attention", visibility=True, gate_edges=True, uncertainty=True)


def _batch(count: int = 4, size: int = 32, occlusion: float = 0.5) -> dict[str, torch.Tensor]:
    config = SyntheticConfig(occlusion=occlusion)
    faces = [synthesize_face("cofw29", 3, i, size, config) for i in range(count)]
    return {k: torch.stack([f[k] for f in faces]) for k in ("image", "landmarks", "visible")}


def test_default_training_ignores_the_occlusion_options():
    """With the options off, their loss weights change nothing: the same weights bit for bit
    (and no extra random draws: consistency training is off at weight 0)."""
    base = train(TrainConfig(**{**TINY, "backbone_depth": 4, "head_channels": 16}))["model"].state_dict()
    other = TrainConfig(**{**TINY, "backbone_depth": 4, "head_channels": 16, "attention_weight": 3.0,
                           "visibility_weight": 5.0, "uncertainty_weight": 7.0})
    trained = train(other)["model"].state_dict()
    assert base.keys() == trained.keys()
    for name, value in base.items():
        assert torch.equal(value, trained[name]), name


def test_paper_head_details_give_the_same_loss_as_the_landmarks():
    config = TrainConfig(**TINY)
    model = build_model(config)
    batch = _batch()
    criterion = LandmarkCriterion("softwing", 32, attention_weight=10, visibility_weight=1,
                                  uncertainty_weight=1)
    plain = criterion(model(batch["image"]), batch["landmarks"])
    details = criterion(model(batch["image"], return_details=True), batch["landmarks"], batch["visible"])
    assert torch.equal(plain, details)


def test_criterion_terms_by_hand():
    torch.manual_seed(0)
    b, n, size = 2, 5, 32
    target = torch.rand(b, n, 2) * (size - 1)
    pred = target + torch.randn(b, n, 2)
    visible = torch.rand(b, n) > 0.3
    out = HeadOutput(pred, torch.randn(b, n), torch.randn(b, n, 2), torch.randn(b, n, 4, 4))
    criterion = LandmarkCriterion("softwing", size, attention_weight=2.0, visibility_weight=3.0,
                                  uncertainty_weight=0.5)
    s = 256 / size
    grid = (target + 0.5) / (size / 2) - 1  # pixel centres at integers -> [-1, 1]
    expected = (LF.soft_wing_loss(pred * s, target * s)
                + 2.0 * LF.attention_heatmap_loss(out.attention_logits, grid, visible)
                + 3.0 * torch.nn.functional.binary_cross_entropy_with_logits(out.visibility_logits,
                                                                             visible.float())
                + 0.5 * LF.laplace_nll_loss(pred * s, target * s, out.log_scale + math.log(s)))
    torch.testing.assert_close(criterion(out, target, visible), expected)
    with pytest.raises(ValueError, match="no 'visible' flags"):
        criterion(out, target)


def test_model_details_are_in_image_units():
    config = TrainConfig(**TINY, **FULL)
    model = build_model(config).eval()
    images = torch.rand(2, 3, 32, 32)
    out = model(images, return_details=True)
    torch.testing.assert_close(out.landmarks, model(images))
    head = model.head(model.backbone(images), return_details=True)
    torch.testing.assert_close(out.log_scale, head.log_scale + math.log(16))  # scale in pixels
    assert out.visibility_logits.shape == (2, 29) and out.attention_logits.shape == (2, 29, 4, 4)


def test_consistency_term_is_soft_wing_of_the_pasted_copy_to_the_detached_clean_one():
    config = TrainConfig(**TINY, **FULL, consistency_weight=0.3)
    model = build_model(config)
    batch = _batch()
    criterion = LandmarkCriterion("softwing", 32, attention_weight=10, visibility_weight=1,
                                  uncertainty_weight=1)
    # Pasting nothing: both copies predict the same, the term is 0, the loss counts both copies.
    same = {**batch, "pasted": batch["image"], "pasted_visible": batch["visible"]}
    torch.manual_seed(1)
    loss = batch_loss(model, criterion, same, config)
    torch.manual_seed(1)
    both = model(torch.cat([batch["image"]] * 2), return_details=True)
    expected = criterion(both, torch.cat([batch["landmarks"]] * 2), torch.cat([batch["visible"]] * 2))
    torch.testing.assert_close(loss, expected)
    # With occluders: the term is the weight times Soft Wing over the landmarks left visible.
    pasted, covered = paste_occluders(batch["image"], batch["landmarks"], np.random.default_rng(0))
    visible = batch["visible"] & ~covered
    real = {**batch, "pasted": pasted, "pasted_visible": visible}
    out = model(torch.cat([batch["image"], pasted]), return_details=True)
    base = criterion(out, torch.cat([batch["landmarks"]] * 2), torch.cat([batch["visible"], visible]))
    clean, occluded = (out.landmarks * 8).chunk(2)
    term = LF.soft_wing_loss(occluded, clean, visible, reduction="sum") / (2 * occluded.numel())
    assert term > 0
    torch.testing.assert_close(batch_loss(model, criterion, real, config), base + 0.3 * term)


class _FixedPredictions(torch.nn.Module):
    """A 'model' whose landmarks are one parameter per image of the batch (clean, then pasted)."""

    def __init__(self, landmarks: torch.Tensor) -> None:
        super().__init__()
        self.landmarks = torch.nn.Parameter(landmarks.clone())

    def forward(self, images: torch.Tensor, return_details: bool = False) -> HeadOutput:
        return HeadOutput(self.landmarks, None, None, None)


@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_consistency_pulls_a_point_no_harder_when_others_are_hidden(weight):
    """The consistency term's pull on a visible pasted point is the weight times the landmark
    loss's pull for the same error, however many points the occluders hide (a mean over the
    visible points pulled harder the more were hidden, and made training run away)."""
    config = TrainConfig(**TINY, consistency_weight=weight)
    criterion = LandmarkCriterion("softwing", 32)
    batch = _batch()
    target = batch["landmarks"]
    # Clean copy on target; pasted copy 0.5 px off target at every point.
    net = _FixedPredictions(torch.cat([target, target + 0.5]))
    grads = []
    for hidden in (0, 20):
        visible = torch.ones(4, 29, dtype=torch.bool)
        visible[:, 29 - hidden:] = False
        b = {**batch, "visible": torch.ones_like(visible), "pasted": batch["image"],
             "pasted_visible": visible}
        net.zero_grad()
        batch_loss(net, criterion, b, config).backward()
        grads.append(net.landmarks.grad[4:, 0].clone())  # pasted copy, point 0 (always visible)
    torch.testing.assert_close(grads[0], grads[1])
    # Landmark pull on the pasted copy's point 0 (the error of the clean copy is 0).
    net.zero_grad()
    criterion(net.landmarks, torch.cat([target, target])).backward()
    torch.testing.assert_close(grads[0], (1 + weight) * net.landmarks.grad[4:, 0])


def test_paste_occluders_paints_over_the_covered_landmarks_only():
    batch = _batch(occlusion=0.0)
    pasted, covered = paste_occluders(batch["image"], batch["landmarks"], np.random.default_rng(0))
    again, covered_again = paste_occluders(batch["image"], batch["landmarks"], np.random.default_rng(0))
    assert torch.equal(pasted, again) and torch.equal(covered, covered_again)  # seeded
    assert covered.any(dim=1).all()  # the default config always pastes, near landmarks
    assert 0 <= pasted.min() and pasted.max() <= 1
    changed = (pasted != batch["image"]).any(dim=1)  # (B, S, S)
    ij = batch["landmarks"].round().long().clamp(0, 31)
    at_landmark = changed[torch.arange(4)[:, None], ij[..., 1], ij[..., 0]]
    assert at_landmark[covered].all()  # a covered landmark's pixel was painted
    with pytest.raises(ValueError, match="images must be"):
        paste_occluders(batch["image"][0], batch["landmarks"], np.random.default_rng(0))


class _NoFlags(Dataset):
    """Synthetic faces without their visibility flags, like WFLW or 300W."""

    def __init__(self, length: int) -> None:
        self.faces = SyntheticFaces("cofw29", length, 32, seed=0)

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.faces[index].items() if k not in ("visible", "occluded")}


def test_visibility_without_flags_is_a_clear_error():
    config = TrainConfig(**TINY, visibility=True)
    with pytest.raises(ValueError, match=r"training set has none.*turn visibility off"):
        train(config, train_set=_NoFlags(8), test_sets={"test": _NoFlags(4)})


@pytest.mark.parametrize(("options", "message"), [
    ({"gate_edges": True}, "gate_edges needs visibility"),
    ({"embedding": "glimpse"}, "embedding must be one of"),
    ({"attention_window": 3}, "attention_window needs embedding='attention'"),
    ({"embedding": "attention", "attention_window": 4}, "attention_window must be None or an odd positive"),
    ({"head": "fc", "visibility": True}, "options of head='lgrl'"),
    ({"head": "fc", "embedding": "attention"}, "options of head='lgrl'"),
    ({"consistency_weight": -1.0}, "consistency_weight must be a finite number >= 0"),
    ({"attention_weight": math.nan}, "attention_weight must be"),
    ({"backbone_depth": 0}, "backbone_depth must be a positive int"),
])
def test_bad_options_fail_clearly(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, **options})


@pytest.mark.slow
def test_full_head_with_consistency_trains_reports_and_round_trips(tmp_path):
    config = TrainConfig(**TINY, **FULL, consistency_weight=0.3, out_dir=str(tmp_path / "run"))
    result = train(config)
    assert all(math.isfinite(r["train_loss"]) for r in result["history"])
    report = result["metrics"]["occluded"]["occlusion"]
    assert set(report["visible_nme"]) == {"0%-10%", "10%-30%", "30%-60%"}
    assert report["visibility_auroc"] is None or 0 <= report["visibility_auroc"] <= 1
    assert 0 <= report["coverage"]["0.9"] <= 1 and -1 <= report["scale_spearman"] <= 1
    assert result["metrics"]["clean"]["occlusion"]["visibility_auroc"] is None  # one class only
    model, saved = model_from_checkpoint(result["checkpoint"])
    assert saved == config
    images = torch.rand(2, 3, 32, 32)
    result["model"].eval()
    with torch.no_grad():
        for got, want in zip(model(images, return_details=True), result["model"](images, return_details=True),
                             strict=True):
            assert torch.equal(got, want)
    again = evaluate(model, DataLoader(SyntheticFaces("cofw29", 4, 32, seed=2, occlusion=1.0), 4), "cofw29")
    assert again["nme"] == pytest.approx(result["metrics"]["occluded"]["nme"], rel=1e-6)


@pytest.mark.slow
def test_cli_train_evaluate_predict_with_the_full_head(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--image-size", "32",
             "--train-size", "8", "--test-size", "8", "--scheme", "cofw29", "--hidden-features", "8",
             "--num-blocks", "1", "--backbone-width", "8", "--backbone-depth", "3", "--head-channels", "8",
             "--embedding", "attention", "--attention-window", "3", "--visibility", "--uncertainty",
             "--gate-edges", "--consistency-weight", "0.3", "--no-progress", "--out-dir", str(run)]
    assert main(["train", *flags]) == 0
    model, saved = model_from_checkpoint(run / "last.pt")
    assert saved.attention_window == 3 and "window=3" in repr(model)
    assert main(["evaluate", str(run / "last.pt"), "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "visible-only NME by occluded share: 0%-10%" in printed and "visibility AUROC" in printed
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["occluded"]["occlusion"]["visible_nme"]) == {"0%-10%", "10%-30%", "30%-60%"}
    image = tmp_path / "face.png"
    pil = pytest.importorskip("PIL.Image")
    face = synthesize_face("cofw29", 0, 1, 48, SyntheticConfig(occlusion=1.0))
    pil.fromarray((face["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(image)
    out = tmp_path / "pred.json"
    assert main(["predict", str(run / "last.pt"), str(image), "--output", str(out),
                 "--draw", str(tmp_path / "drawn")]) == 0
    (face,) = json.loads(out.read_text())["images"][0]["faces"]
    assert len(face["visibility"]) == 29
    assert all(0 <= p <= 1 for p in face["visibility"])
    assert np.asarray(face["scale"]).shape == (29, 2)
    assert all(b > 0 for pair in face["scale"] for b in pair)


def test_cli_rejects_gate_edges_without_visibility(capsys):
    assert main(["train", "--gate-edges", "--no-progress"]) == 2
    assert "gate_edges needs visibility" in capsys.readouterr().err


@pytest.mark.slow
def test_export_checkpoint_carries_named_visibility_and_scale_outputs(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from landmark_graph.engine.export import export_checkpoint
    from landmark_graph.onnx import run_onnx

    config = TrainConfig(**TINY, **FULL, out_dir=str(tmp_path / "run"))
    result = train(config)
    path = tmp_path / "model.onnx"
    error = export_checkpoint(result["checkpoint"], path)
    assert error is not None and error <= 1e-4  # the check covers every output
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["landmarks", "visibility_logits", "log_scale"]
    model, _ = model_from_checkpoint(result["checkpoint"])
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        want = model(images, return_details=True)
    got = run_onnx(path, images, all_outputs=True)
    for name in ("landmarks", "visibility_logits", "log_scale"):
        assert getattr(want, name).abs().max() > 1e-3, name
        torch.testing.assert_close(got[name], getattr(want, name), rtol=0, atol=1e-4, msg=name)
    plain = dataclasses.replace(config, **{k: False for k in ("visibility", "gate_edges", "uncertainty")},
                                out_dir=str(tmp_path / "plain"))
    export_checkpoint(train(plain)["checkpoint"], tmp_path / "plain.onnx")
    plain_session = ort.InferenceSession(str(tmp_path / "plain.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in plain_session.get_outputs()] == ["landmarks"]
