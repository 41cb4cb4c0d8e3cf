"""The landmark-graph command: train / evaluate / predict / demo and its error contract."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import torch

from landmark_graph.data import LandmarkDataset
from landmark_graph.engine import cli
from landmark_graph.engine.backbones import build_backbone, torchvision_install_command
from landmark_graph.engine.training import DATASETS, TrainConfig, load_checkpoint
from landmark_graph.schemes import SCHEMES

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
    (["evaluate", "/no/such.pt", "--threads", "0"], "--threads must be >= 1"),
    (["train", *TINY, "--train-size", "1"], "CLI: --adjacency scheme"),  # one shape cannot correlate
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
        cli.SUBCOMMANDS.unregister("echo-test")


PLUGIN = """
from landmark_graph.engine.backbones import SmallCNN, register_backbone
from landmark_graph.schemes import LandmarkScheme, register_scheme

register_scheme(LandmarkScheme(
    "plugin-five", 5, {"left_eye": (0,), "right_eye": (1,), "nose": (2,), "outer_mouth": (3, 4)},
    mirror=(1, 0, 2, 4, 3), inter_ocular=(0, 1), inter_pupil=None,
    template=[[-0.5, -0.3], [0.5, -0.3], [0, 0.1], [-0.35, 0.5], [0.35, 0.5]]))


@register_backbone("plugin-cnn")
def plugin_cnn(pretrained):
    net = SmallCNN(width=4, depth=3)
    return net, net.out_channels
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A user module registering a scheme and a backbone; unregistered afterwards."""
    from landmark_graph.engine.backbones import BACKBONES
    from landmark_graph.schemes import SCHEMES

    (tmp_path / "lg_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "lg_test_plugin.py"
    sys.modules.pop("lg_test_plugin", None)
    for registry, name in ((SCHEMES, "plugin-five"), (BACKBONES, "plugin-cnn")):
        if name in registry:
            registry.unregister(name)


def test_plugin_registrations_are_usable_from_the_command(plugin, tmp_path, capsys):
    argv = ["train", "--scheme", "plugin-five", "--backbone", "plugin-cnn", "--image-size", "32",
            "--train-size", "8", "--test-size", "4", "--hidden-features", "8", "--num-blocks", "1",
            "--head-channels", "8", "--batch-size", "4", "--steps-per-epoch", "1", "--epochs", "1",
            "--no-progress", "--adjacency", "scheme", "--k", "1"]
    assert cli.main(argv) == 2  # without the plugin the scheme is not a choice
    assert "invalid choice: 'plugin-five'" in _error_line(capsys)
    assert cli.main(["--plugin", "lg_test_plugin", *argv, "--out-dir", str(tmp_path / "a")]) == 0
    assert load_checkpoint(tmp_path / "a" / "last.pt")["config"].scheme_name == "plugin-five"
    with pytest.raises(SystemExit):  # the generated choices list it
        cli.main(["--plugin", "lg_test_plugin", "train", "--help"])
    printed = capsys.readouterr().out
    assert "plugin-five" in printed and "plugin-cnn" in printed
    SCHEMES.unregister("plugin-five")  # a later command, run without the plugin
    assert cli.main(["evaluate", str(tmp_path / "a" / "last.pt")]) == 2
    assert "unknown landmark scheme 'plugin-five'" in (line := _error_line(capsys)) and "--plugin" in line


def test_plugins_from_the_environment_and_files(plugin, monkeypatch, capsys):
    from landmark_graph.schemes import SCHEMES

    monkeypatch.setenv(cli.PLUGINS_ENV, f" {plugin} ")  # a .py path, spaces trimmed
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "plugin-five" in capsys.readouterr().out and "plugin-five" in SCHEMES
    monkeypatch.setenv(cli.PLUGINS_ENV, "no_such_plugin_module")
    assert cli.main(["demo", "--help"]) == 2
    assert "plugin 'no_such_plugin_module' cannot be imported" in _error_line(capsys)
    monkeypatch.delenv(cli.PLUGINS_ENV)
    assert cli.main(["--plugin", "/no/such/plugin.py", "demo"]) == 2
    assert "plugin file '/no/such/plugin.py' does not exist" in _error_line(capsys)


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
    points = np.array(result["images"][0]["faces"][0]["landmarks"])
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
    config = cli.config_from_args(args)
    assert config.relative_weight == 1.0 and config.edge_weights == "static"


def test_train_help_states_each_default_once(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "10000")  # one line per option
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    lines = capsys.readouterr().out.splitlines()
    helps = {line.split()[0]: line for line in lines if line.startswith("  --")}
    doubled = {flag: text for flag, text in helps.items() if text.count("(default:") > 1}
    assert not doubled
    assert "paper's is 1" in helps["--relative-weight"] and "(default: 1.0)" in helps["--relative-weight"]
    assert "0 turns it off" in helps["--augment"]


def test_relative_weight_defaults_to_the_paper_and_the_demo_keeps_it_off():
    assert TrainConfig().relative_weight == 1.0
    assert cli.config_from_args(cli.build_parser().parse_args(["train"])).relative_weight == 1.0
    demo = cli.build_parser().parse_args(["demo"])
    assert {cli.demo_config(demo, head).relative_weight for head in ("lgrl", "fc")} == {0.0}


@pytest.mark.slow
def test_train_writes_to_a_default_out_dir_and_says_where(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY, "--epochs", "1"]) == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "last.pt").is_file()
    assert f"checkpoints and log.jsonl go to {Path('runs') / runs[0].name}" in capsys.readouterr().out
    # Resuming writes next to the checkpoint, not into a new folder.
    assert cli.main(["train", *TINY, "--epochs", "2", "--resume", str(runs[0] / "last.pt")]) == 0
    assert list((tmp_path / "runs").iterdir()) == runs and load_checkpoint(runs[0] / "last.pt")["epoch"] == 2


def _write_300w(root: Path, count: int = 4) -> None:
    """A 300W-style folder pair of synthetic faces: PNG images with their .pts beside them."""
    from PIL import Image

    from landmark_graph.data.synthetic import synthesize_face

    for split, seed in (("train", 0), ("test", 1)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            face = synthesize_face("300w68", seed, i, image_size=64)
            pixels = (face["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(root / split / f"{i}.png")
            points = "\n".join(f"{x:.3f} {y:.3f}" for x, y in face["landmarks"].tolist())
            (root / split / f"{i}.pts").write_text(f"version: 1\nn_points: 68\n{{\n{points}\n}}\n")


def test_augment_sets_the_training_augmentation_strength(tmp_path):
    pytest.importorskip("PIL")
    _write_300w(tmp_path)

    def train_items(strength: float, epoch: int) -> list[dict]:
        config = TrainConfig(dataset="300w", data_root=str(tmp_path), image_size=32, augment=strength)
        train_set, _ = DATASETS["300w"].build(config)
        train_set.set_epoch(epoch)
        plain = LandmarkDataset(train_set.records, "300w68", 32)  # the deterministic test crop
        return [(train_set[i], plain[i]) for i in range(len(train_set))]

    for epoch in (0, 1):  # off: every epoch sees the plain crops
        for item, plain in train_items(0.0, epoch):
            assert torch.equal(item["image"], plain["image"])
            assert torch.equal(item["landmarks"], plain["landmarks"])
    augmented = train_items(1.0, 0)
    assert not any(torch.equal(item["image"], plain["image"]) for item, plain in augmented)
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment=-1.0)


def _terminal_output(argv: list[str], tqdm: bool) -> str:
    """What a terminal shows of ``landmark-graph ARGV``: stdout and stderr on one pty."""
    prelude = "" if tqdm else "import sys; sys.modules['tqdm'] = sys.modules['tqdm.auto'] = None; "
    code = prelude + f"from landmark_graph.engine.cli import main; raise SystemExit(main({argv!r}))"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # rows, columns
    process = subprocess.Popen([sys.executable, "-c", code], stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=120) == 0
    return b"".join(chunks).decode()


@pytest.mark.slow
@pytest.mark.parametrize("tqdm", [True, False], ids=["tqdm", "plain"])
def test_log_lines_start_on_their_own_line_beside_the_progress_bar(tmp_path, tqdm):
    if tqdm:
        pytest.importorskip("tqdm")
    argv = ["train", *[a for a in TINY if a != "--no-progress"], "--epochs", "3", "--steps-per-epoch", "4",
            "--out-dir", str(tmp_path)]
    shown = _terminal_output(argv, tqdm)
    starts = [m.start() for m in re.finditer(r"epoch \d/3 loss", shown)]
    assert len(starts) == 3, shown
    for start in starts:  # a carriage return or a new line right before: not glued to the bar
        assert shown[start - 1] in "\r\n", repr(shown[max(0, start - 80):start + 20])


def test_a_torchvision_built_for_another_torch_gives_the_install_command(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    command = torchvision_install_command()
    with pytest.raises(ImportError, match="does not import beside torch") as caught:
        build_backbone("resnet18")
    assert command in str(caught.value) and "torchvision::nms" in str(caught.value)
    assert cli.main(["train", "--backbone", "resnet18", "--no-progress"]) == 2
    assert command in _error_line(capsys)


def test_torchvision_install_command_pairs_the_releases():
    assert torchvision_install_command("2.13.0+cpu") == (
        "python -m pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torchvision_install_command("2.7.1+cu126").startswith("python -m pip install torchvision==0.22.1 ")
    assert torchvision_install_command("2.13.0") == "python -m pip install torchvision==0.28.0"
    assert "torch 1.13.1" in torchvision_install_command("1.13.1")
