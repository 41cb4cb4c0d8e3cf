"""The landmark-graph command: train / evaluate / predict / demo and its error contract."""

import json
import subprocess
import sys

import numpy as np
import pytest

from landmark_graph import cli
from landmark_graph.training import load_checkpoint

TINY = ["--scheme", "cofw29", "--image-size", "32", "--train-size", "16", "--test-size", "4",
        "--backbone-width", "8", "--hidden-features", "16", "--num-blocks", "1", "--head-channels", "16",
        "--batch-size", "4", "--steps-per-epoch", "2", "--no-progress"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("landmark-graph: error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("argv, expected", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--head", "mlp"], "invalid choice: 'mlp'"),
    (["train", "--epochs", "0"], "epochs must be a positive int"),
    (["train", "--dataset", "wflw"], "data_root is required"),
    (["train", "--dataset", "cofw", "--data-root", "/no/such/folder"], "is not a folder"),
    (["train", "--backbone", "vgg11"], "backbone must be one of"),
    (["evaluate", "/no/such.pt"], "does not exist"),
    (["demo", "--steps", "0"], "--steps must be >= 1"),
    ([], "required: COMMAND"),
])
def test_user_errors_exit_2_with_one_line(argv, expected, capsys):
    assert cli.main(argv) == 2
    assert expected in _error_line(capsys)


@pytest.mark.slow
def test_console_entry_point_exit_code():
    done = subprocess.run([sys.executable, "-m", "landmark_graph", "train", "--loss", "l3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "invalid choice: 'l3'" in done.stderr


def test_subcommand_registry(capsys):
    calls = []

    def add(parser):
        parser.add_argument("--value", type=int, required=True)

    def run(args):
        """Echo a value."""
        calls.append(args.value)
        return 0

    cli.register_subcommand("echo-test", add, run)
    try:
        assert cli.main(["echo-test", "--value", "3"]) == 0
        assert calls == [3]
        with pytest.raises(ValueError, match="already registered"):
            cli.register_subcommand("echo-test", add, run)
    finally:
        del cli.SUBCOMMANDS["echo-test"]


@pytest.mark.slow
def test_train_resume_evaluate_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out-dir", str(out)]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]
    assert set(log[0]["eval"]) == {"clean", "occluded"} and 0 < log[0]["eval"]["clean"]["nme"]
    assert (out / "best.pt").is_file()

    # Resume to 2 epochs: the log continues, the optimiser step count carries over.
    assert cli.main(["train", *TINY, "--epochs", "2", "--out-dir", str(out),
                     "--resume", str(out / "last.pt")]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[1]["step"] == 4
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["config"].scheme_name == "cofw29"
    capsys.readouterr()

    # A checkpoint from another configuration.
    assert cli.main(["train", *TINY, "--hidden-features", "8", "--epochs", "3",
                     "--resume", str(out / "last.pt")]) == 2
    assert "another configuration: hidden_features=16 (checkpoint) vs 8" in _error_line(capsys)
    other_data = ["--dataset", "300w", "--data-root", str(tmp_path)]
    assert cli.main(["evaluate", str(out / "last.pt"), *other_data]) == 2
    assert "predicts scheme 'cofw29'" in _error_line(capsys)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["evaluate", str(tmp_path / "junk.pt")]) == 2
    assert "is not a checkpoint" in _error_line(capsys)

    # Evaluate reproduces the logged metrics of the same test sets.
    metrics_file = tmp_path / "metrics.json"
    assert cli.main(["evaluate", str(out / "last.pt"), "--json", str(metrics_file)]) == 0
    metrics = json.loads(metrics_file.read_text())
    assert metrics["clean"]["nme"] == pytest.approx(log[1]["eval"]["clean"]["nme"], rel=1e-5)
    assert "NME" in capsys.readouterr().out

    # Predict on image files of another size: landmarks in that image's pixels.
    plt = pytest.importorskip("matplotlib.pyplot")
    from landmark_graph.data.synthetic import synthesize_face

    face = synthesize_face("cofw29", 0, 1, image_size=64)
    image_path = tmp_path / "face.png"
    plt.imsave(image_path, face["image"].permute(1, 2, 0).numpy())
    output = tmp_path / "pred.json"
    assert cli.main(["predict", str(out / "last.pt"), str(image_path), "--output", str(output),
                     "--draw", str(tmp_path / "drawn")]) == 0
    result = json.loads(output.read_text())
    points = np.array(result["landmarks"][str(image_path)])
    assert result["scheme"] == "cofw29" and points.shape == (29, 2)
    assert np.all((points > -32) & (points < 96))  # a 64-pixel image, not the 32-pixel crop
    assert (tmp_path / "drawn" / "face_landmarks.png").is_file()
    assert cli.main(["predict", str(out / "last.pt"), str(tmp_path / "missing.png")]) == 2


@pytest.mark.slow
def test_demo_short(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--steps", "2", "--train-size", "32", "--test-size", "8", "--image-size", "32",
            "--scheme", "cofw29", "--batch-size", "8", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "LGRL" in printed and "FC" in printed and "occluded" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"lgrl", "fc"}
    assert set(results["lgrl"]["metrics"]) == {"clean", "occluded"}
    if pytest.importorskip("matplotlib"):
        assert (out / "predictions.png").stat().st_size > 0
        assert (out / "adjacency.png").stat().st_size > 0


def test_train_config_options_cover_the_dataclass():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--relative-weight", "1", "--edge-weights", "static"])
    config = cli._config_from_args(args)
    assert config.relative_weight == 1.0 and config.edge_weights == "static"
