"""The ``landmark-graph`` command (also ``python -m landmark_graph``).

Subcommands live in the registry :data:`SUBCOMMANDS`, ``name -> (add_arguments, run)``:
``add_arguments`` fills an ``argparse`` parser, ``run(args) -> exit code`` does the work (its
docstring's first line is the help). Another module adds one with :func:`register_subcommand`.

The choices of the options (``--scheme``, ``--head``, ``--loss``, ``--detector``, ...) are read
from the registries when the parser is built, after ``--plugin MODULE`` (repeatable; also the
comma-separated ``LANDMARK_GRAPH_PLUGINS``) has imported a module, or a ``.py`` file, whose
registrations thereby become usable: ``landmark-graph --plugin my_schemes train --scheme five``.

User errors (a bad option, a missing file, a checkpoint from another configuration, a missing
optional dependency) print one line on stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..registry import Registry, UnknownNameError
from .export import add_export_arguments, run_export_command

__all__ = ["PLUGINS_ENV", "SUBCOMMANDS", "UsageError", "config_from_args", "import_plugins", "main",
           "register_subcommand"]

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
SUBCOMMANDS: Registry[tuple[AddArguments, Run]] = Registry("subcommand")
#: Environment variable naming plugin modules (comma-separated) imported before parsing.
PLUGINS_ENV = "LANDMARK_GRAPH_PLUGINS"


class UsageError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


def register_subcommand(name: str, add_arguments: AddArguments, run: Run) -> None:
    """Add ``landmark-graph NAME``; ``run.__doc__``'s first line is its help."""
    SUBCOMMANDS.register(name, (add_arguments, run))


def import_plugins(names: Sequence[str]) -> None:
    """Import each module name (or ``.py`` file) for its registrations (schemes, backbones, ...)."""
    for name in names:
        try:
            if name.endswith(".py"):
                if not Path(name).is_file():
                    raise FileNotFoundError(f"plugin file {name!r} does not exist")
                spec = importlib.util.spec_from_file_location(Path(name).stem, name)
                module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                sys.modules[module.__name__] = module
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            else:
                importlib.import_module(name)
        except ImportError as error:
            hint = (" (a module on sys.path; a file is given by its path, ending in .py)"
                    if isinstance(error, ModuleNotFoundError) and error.name == name else "")
            raise ImportError(f"plugin {name!r} cannot be imported: {error}{hint}") from error


def _plugins(argv: Sequence[str]) -> list[str]:
    """The plugins of the environment and of the ``--plugin`` options before the subcommand."""
    names = [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]
    argv = list(argv)
    for i, token in enumerate(argv):
        if not token.startswith("-"):
            break
        if token == "--plugin" and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif token.startswith("--plugin="):
            names.append(token.partition("=")[2])
    return names


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage too: keep it to one line
        command = self.prog.removeprefix("landmark-graph").strip()
        raise UsageError(f"{command}: {message}" if command else message)


# ---------------------------------------------------------------------------------------------
# train: options generated from TrainConfig's fields.

_HELP = {
    "dataset": "synthetic, or a real set read from --data-root",
    "data_root": "folder of the real data set (see docs/cli.md for the layouts)",
    "scheme": "landmark scheme (default: the data set's)",
    "image_size": "side of the square face crop in pixels",
    "train_size": "synthetic training images",
    "test_size": "synthetic images per test set (clean, occluded)",
    "occlusion": "share of occluded synthetic training images",
    "one_based": "300w .pts and cofw coordinates count pixels from 1 (MATLAB): subtract 1 (others: ignored)",
    "augment": "strength of the training augmentation of a real data set: 1 is the paper's (rotation, "
               "shift, scale, flip, an occluding rectangle), 0 turns it off (to sanity-check a data set); "
               "synthetic faces are not augmented",
    "backbone": "{backbones} (the resnets, mobilenet and efficientnet need torchvision) or timm:<name>",
    "backbone_width": "channels of the small backbone's first layer (doubling at each of its 4 layers)",
    "pretrained": "start a torchvision or timm backbone from its ImageNet weights",
    "head": "lgrl (the paper's landmark-graph head) or fc (baseline)",
    "k": "neighbours of each landmark in the graph",
    "adjacency": "graph neighbourhood: correlation (eq. 1-2 on the training landmarks), scheme (the "
                 "scheme's own) or index (landmark order)",
    "hidden_features": "node features of the graph layers",
    "num_blocks": "graph residual blocks",
    "expansion": "map-to-node channels per landmark",
    "edge_weights": "dynamic (per image), static (learned constants) or binary (all 1)",
    "head_channels": "width of the head's first convolution (fc: hidden units)",
    "loss": "absolute landmark loss",
    "relative_weight": "lambda of the relative location loss; the paper's is 1 (0: off)",
    "optimizer": "optimiser",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "schedule": "learning-rate schedule",
    "step_epochs": "epochs between two decays of the step schedule",
    "gamma": "learning-rate factor of each step-schedule decay",
    "epochs": "training epochs",
    "steps_per_epoch": "optimisation steps per epoch (default: one pass over the training set)",
    "batch_size": "images per step and process (the last partial batch of a pass is dropped)",
    "workers": "DataLoader worker processes",
    "seed": "seed of the synthetic data, initialisation, shuffle and augmentation",
    "device": "auto (CUDA when available), cpu, cuda, cuda:1, ...",
    "out_dir": "where checkpoints (last.pt, best.pt) and log.jsonl go (default: the folder of --resume, "
               "else runs/<date>-<time>)",
    "resume": "checkpoint to continue from (same architecture options)",
    "sync_bn": "SyncBatchNorm across processes (under torchrun, on GPUs)",
    "eval_every": "evaluate every N epochs (and after the last)",
    "backbone_depth": "stride-2 blocks of the small backbone (its map is S / 2^depth)",
    "embedding": "node embedding of the lgrl head: map_to_node (the paper) or attention (local)",
    "attention_window": "keep each attention to the NxN cells around its peak (odd N; --embedding attention)",
    "visibility": "predict per-landmark visibility, trained on the data's visible flags (synthetic, COFW)",
    "uncertainty": "predict a Laplace scale per coordinate",
    "gate_edges": "gate each receiver's edges by its senders' predicted visibility (needs --visibility)",
    "attention_weight": "weight of the attention heatmap loss (--embedding attention)",
    "visibility_weight": "weight of the visibility BCE (--visibility)",
    "uncertainty_weight": "weight of the Laplace NLL (--uncertainty)",
    "consistency_weight": "occlusion-consistency training: weight of the visible landmarks' pull to "
                          "their clean-image predictions, occluders pasted on every batch (0: off)",
}
_METAVARS = {"data_root": "DIR", "out_dir": "DIR", "resume": "CKPT", "backbone": "NAME", "device": "DEVICE",
             int: "N", float: "X", str: "NAME"}
_OPTIONAL_TYPES = {"data_root": str, "scheme": str, "steps_per_epoch": int, "attention_window": int,
                   "out_dir": str, "resume": str}


def _config_choices() -> dict[str, list[str]]:
    from ..edge_weights import EDGE_WEIGHT_MODES
    from ..schemes import SCHEMES
    from . import training

    return {"dataset": training.DATASETS.names(), "head": training.HEADS.names(),
            "loss": training.LOSSES.names(), "optimizer": training.OPTIMIZERS.names(),
            "schedule": training.SCHEDULES.names(), "adjacency": training.ADJACENCIES.names(),
            "edge_weights": list(EDGE_WEIGHT_MODES), "scheme": SCHEMES.names(),
            "embedding": list(training.EMBEDDINGS)}


def _add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    from .backbones import BACKBONES
    from .training import TrainConfig

    choices = _config_choices()
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "progress":
            parser.add_argument("--no-progress", dest="progress", action="store_false",
                                help="no progress bar")
        elif isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", help=_HELP.get(f.name))
        else:
            kind = _OPTIONAL_TYPES.get(f.name, type(f.default))
            help_text = _HELP.get(f.name, "").replace("{backbones}", ", ".join(BACKBONES))
            if f.default is not None and "(default:" not in help_text:
                help_text += f" (default: {f.default})"
            parser.add_argument(flag, type=kind, default=f.default, choices=choices.get(f.name),
                                metavar=None if f.name in choices else _METAVARS.get(f.name, _METAVARS[kind]),
                                help=help_text.strip())


def config_from_args(args: argparse.Namespace, **overrides):
    """The :class:`~landmark_graph.engine.training.TrainConfig` of parsed ``train`` options (plus
    ``overrides``)."""
    from .training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names} | overrides)


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_arguments(parser)
    parser.add_argument("--threads", type=int, help="torch CPU threads")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _print_metrics(metrics: dict[str, dict]) -> None:
    for name, m in metrics.items():
        print(f"{name:>10}: NME {m['nme']:.4f}  FR@0.1 {m['fr']:.2%}  AUC@0.1 {m['auc']:.4f}"
              f"  (n={m['count']})")
        occlusion = m.get("occlusion")
        if occlusion:  # a set with visibility flags
            groups = "  ".join(f"{group} {g['nme']:.4f} (n={g['count']})"
                               for group, g in occlusion["visible_nme"].items())
            print(f"{'':>10}  visible-only NME by occluded share: {groups}")
            extras = {"rise": occlusion["rise"], "visibility AUROC": occlusion.get("visibility_auroc"),
                      "Spearman(scale, error)": occlusion.get("scale_spearman"),
                      "90% interval holds": occlusion.get("coverage", {}).get("0.9")}
            shown = "  ".join(f"{label} {value:.4f}" for label, value in extras.items() if value is not None)
            if shown:
                print(f"{'':>10}  {shown}")


def _default_out_dir(resume: str | None) -> str:
    """The folder of the checkpoint resumed from, else a new ``runs/<date>-<time>``."""
    if resume:
        return str(Path(resume).parent)
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


def _run_train(args: argparse.Namespace) -> int:
    """Train a landmark model (any backbone and head) on synthetic or real faces."""
    from .training import train

    _set_threads(args.threads)
    config = config_from_args(args, out_dir=args.out_dir or _default_out_dir(args.resume))
    result = train(config, log=print)
    if result["checkpoint"]:
        print(f"checkpoint: {result['checkpoint']}")
    _print_metrics(result["metrics"])
    return 0


# ---------------------------------------------------------------------------------------------
# evaluate and predict.


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by train (last.pt or best.pt)")
    parser.add_argument("--dataset", help="evaluate on another data set than the training one")
    parser.add_argument("--data-root", metavar="DIR", help="folder of the real data set")
    parser.add_argument("--test-size", type=int, metavar="N",
                        help="synthetic test images per set (default: the training run's)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="images per batch (default: 32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics to this JSON file")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's choice)")


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint: NME, FR and AUC on the test set(s) of its (or another) data set."""
    from .training import DATASETS, CheckpointError, build_loader, evaluate, model_from_checkpoint

    _set_threads(args.threads)
    device = _device(args.device)
    model, saved = model_from_checkpoint(args.checkpoint, device)
    changes = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root),
                                 ("test_size", args.test_size), ("batch_size", args.batch_size)) if v}
    if args.dataset and args.dataset not in DATASETS:
        raise UsageError(f"--dataset must be one of {DATASETS.names()}, got {args.dataset!r}")
    config = dataclasses.replace(saved, **changes)
    # Synthetic faces come in any scheme; a real data set has its own.
    wanted = saved.scheme_name if config.dataset == "synthetic" else DATASETS[config.dataset].scheme
    if wanted != saved.scheme_name:
        raise CheckpointError(f"checkpoint {args.checkpoint!r} predicts scheme {saved.scheme_name!r}; "
                              f"data set {config.dataset!r} uses {wanted!r}")
    _, test_sets = DATASETS[config.dataset].build(config)
    metrics = {name: evaluate(model, build_loader(ds, config), saved.scheme_name, device)
               for name, ds in test_sets.items()}
    _print_metrics(metrics)
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    from .detectors import DETECTORS

    parser.add_argument("checkpoint", help="a checkpoint written by train")
    parser.add_argument("images", nargs="+", help="image files or folders (every image Pillow opens in them)")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--boxes", metavar="FILE",
                       help="face boxes per image: JSON {image: [[x0, y0, x1, y1], ...]} or text lines "
                            "'image x0 y0 x1 y1' (see docs/cli.md)")
    boxes.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                       help="a face box in the one image given (repeat for several faces)")
    boxes.add_argument("--detector", help=f"find the faces with this detector ({', '.join(DETECTORS)}; "
                                          "haar: pip install 'landmark-graph[detect]')")
    parser.add_argument("--min-score", type=float, help="drop detections scoring lower")
    parser.add_argument("--output", help="write the landmarks as JSON here (default: print them)")
    parser.add_argument("--draw", metavar="DIR", help="save each image with its faces drawn in DIR")
    parser.add_argument("--truth", metavar="PATH",
                        help="ground truth to draw: a .pts file (one image) or a folder of <image name>.pts")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default: 32)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="auto")


def _truth_for(images: list[Path], truth: str | None) -> list:
    from ..data import read_pts

    if truth is None:
        return [None] * len(images)
    path = Path(truth)
    if path.is_file():
        if len(images) != 1:
            raise UsageError(f"--truth {truth}: one .pts file holds the truth of one image, "
                             f"got {len(images)} images")
        return [read_pts(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"--truth {truth!r} does not exist")
    return [read_pts(path / f"{image.stem}.pts") if (path / f"{image.stem}.pts").is_file() else None
            for image in images]


def _drawing_names(images: list[Path]) -> list[str]:
    """``<stem>_landmarks.png``; ``<stem>_<position>_landmarks.png`` where stems repeat (a.jpg in two
    folders), so no drawing overwrites another."""
    stems = [path.stem for path in images]
    return [f"{stem}_landmarks.png" if stems.count(stem) == 1 else f"{stem}_{i}_landmarks.png"
            for i, stem in enumerate(stems)]


def _run_predict(args: argparse.Namespace) -> int:
    """Predict landmarks on photos (face boxes given, detected, or the whole image); JSON and drawings.

    With a head that has them, each face's JSON also holds per point the visibility probability
    and the Laplace scale ``(b_x, b_y)`` in image pixels, and the drawing marks the points judged
    occluded (probability under 0.5) with red crosses.
    """
    import numpy as np

    from ..data import load_image
    from .drawing import pyplot, save_face_drawing
    from .inference import LandmarkPredictor, boxes_for, list_images, read_boxes

    _set_threads(args.threads)
    images = list_images(args.images)
    if args.box is not None and len(images) != 1:
        raise UsageError(f"--box gives the faces of one image, got {len(images)} images; use --boxes FILE")
    boxes = ([args.box] if args.box else
             boxes_for(images, read_boxes(args.boxes), args.boxes) if args.boxes else [None] * len(images))
    truth = _truth_for(images, args.truth)
    device = _device(args.device)
    if args.min_score is not None and not args.detector:
        raise UsageError("--min-score filters a --detector's faces; give one")
    predictor = LandmarkPredictor.from_checkpoint(args.checkpoint, device, detector=args.detector,
                                                  min_score=args.min_score, batch_size=args.batch_size)
    draw = args.draw if args.draw and pyplot(required=False) is not None else None
    if draw:
        Path(draw).mkdir(parents=True, exist_ok=True)
    sizes: list[tuple[int, int]] = []

    def loaded():
        for path, image_boxes in zip(images, boxes, strict=True):
            image = load_image(path, exif_orientation=True)
            sizes.append(image.shape[:2])
            yield image, image_boxes

    results, count, names = [], 0, _drawing_names(images)
    for index, faces in enumerate(predictor.predict_many(loaded())):
        path, (height, width) = images[index], sizes[index]
        for number, face in enumerate(faces):
            if not np.isfinite(face.landmarks).all():  # JSON has no NaN, and a user must hear of it
                raise ValueError(f"the model returned non-finite landmarks for face {number} of {path}")
        results.append({"path": str(path), "width": width, "height": height,
                        "faces": [face.to_dict() for face in faces]})
        count += len(faces)
        if draw:  # the image is read again rather than kept for the whole batch
            save_face_drawing(Path(draw) / names[index], load_image(path, exif_orientation=True), faces,
                              predictor.scheme, truth[index])
    text = json.dumps({"scheme": predictor.scheme.name, "num_landmarks": predictor.scheme.num_points,
                       "detector": args.detector, "images": results}, indent=1)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    print(f"{count} faces in {len(images)} images" + (f"; drawings in {draw}" if draw else ""),
          file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# demo.


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from ..schemes import SCHEMES

    parser.add_argument("--steps", type=int, default=600, help="training steps per model (default: 600)")
    parser.add_argument("--out", default="landmark-graph-demo", help="folder for the PNGs and results.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; the demo's layers are too small to gain much "
                             "from more, and a shared machine slows down badly with them)")
    parser.add_argument("--scheme", default="wflw98", choices=SCHEMES.names())
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")


def demo_config(args: argparse.Namespace, head: str):
    """The demo's training run for one head: a small CNN, Soft Wing, Adam with a cosine schedule.

    The demo compares the heads alone, so it keeps the relative location loss off
    (``relative_weight=0``; ``train`` defaults to the paper's 1).
    """
    from .training import TrainConfig

    return TrainConfig(
        scheme=args.scheme, image_size=args.image_size, train_size=args.train_size,
        test_size=args.test_size, backbone="small", backbone_width=24, head=head,
        hidden_features=64, num_blocks=2, head_channels=128, loss="softwing", relative_weight=0.0, lr=2e-3,
        epochs=1, steps_per_epoch=args.steps, batch_size=args.batch_size, seed=args.seed,
        eval_every=1, progress=True,
    )


def _run_demo(args: argparse.Namespace) -> int:
    """Train a small CNN with LGRLHead and with FCHead on synthetic faces; compare them."""
    from .drawing import pyplot
    from .training import DATASETS, CachedDataset, train

    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    _set_threads(args.threads)
    started = time.perf_counter()
    configs = {head: demo_config(args, head) for head in ("lgrl", "fc")}
    train_set, test_sets = DATASETS["synthetic"].build(configs["lgrl"])
    train_set = CachedDataset(train_set, progress=True, description="render train")
    test_sets = {name: CachedDataset(ds, progress=True, description=f"render {name}")
                 for name, ds in test_sets.items()}
    print(f"rendered {len(train_set)} training and {sum(map(len, test_sets.values()))} test faces "
          f"({args.image_size}x{args.image_size}) in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    results = {head: train(config, train_set=train_set, test_sets=test_sets)
               for head, config in configs.items()}
    print(_demo_table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {head: {"metrics": r["metrics"], "seconds": r["seconds"]} for head, r in results.items()}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    if not args.no_plots and (plt := pyplot(required=False)) is not None:
        _plot_predictions(plt, results, test_sets, out / "predictions.png")
        _plot_adjacency(plt, results["lgrl"]["model"], test_sets["occluded"], out / "adjacency.png")
        print(f"wrote {out / 'predictions.png'} and {out / 'adjacency.png'}")
    print(f"total {time.perf_counter() - started:.0f}s; results in {out / 'results.json'}")
    return 0


def _demo_table(results: dict) -> str:
    sets = list(next(iter(results.values()))["metrics"])
    head_row = f"{'':8}" + "".join(f"{name:^30}" for name in sets)
    sub_row = f"{'head':8}" + "".join(f"{'NME':>10}{'FR@0.1':>10}{'AUC@0.1':>10}" for _ in sets)
    rows = [head_row, sub_row]
    for head, r in results.items():
        cells = "".join(f"{m['nme']:>10.4f}{m['fr']:>10.2%}{m['auc']:>10.4f}" for m in r["metrics"].values())
        rows.append(f"{head.upper():8}{cells}")
    return "\n".join(rows)


@torch.no_grad()
def _plot_predictions(plt, results: dict, test_sets: dict, path: Path, per_set: int = 4) -> None:
    colours = {"lgrl": "lime", "fc": "red"}
    fig, axes = plt.subplots(len(test_sets), per_set, figsize=(2.6 * per_set, 2.8 * len(test_sets)),
                             squeeze=False)
    for row, (name, ds) in enumerate(test_sets.items()):
        batch = ds[list(range(per_set))]
        for head, r in results.items():
            pred = r["model"].eval()(batch["image"])
            for col in range(per_set):
                axes[row, col].scatter(pred[col, :, 0], pred[col, :, 1], s=3, c=colours.get(head), label=head)
        for col in range(per_set):
            ax = axes[row, col]
            ax.imshow(batch["image"][col].permute(1, 2, 0).numpy(), zorder=0)
            truth = batch["landmarks"][col]
            ax.scatter(truth[:, 0], truth[:, 1], s=2, c="white", label="truth")
            ax.set_title(f"{name} #{col}", fontsize=8)
            ax.axis("off")
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def _plot_adjacency(plt, model, test_set, path: Path, count: int = 64) -> None:
    head = model.eval().head
    images = test_set[list(range(min(count, len(test_set))))]["image"]
    weights = head.dense_edge_weights(model.backbone(images)).mean(0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].imshow(head.adjacency.cpu().numpy(), cmap="Greys")
    axes[0].set_title("neighbourhood (correlation, eq. 1-2)")
    shown = axes[1].imshow(weights.cpu().numpy(), cmap="viridis")
    axes[1].set_title("learned edge weights, mean over occluded test images")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_xlabel("sender")
        ax.set_ylabel("receiver")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


register_subcommand("demo", _demo_arguments, _run_demo)
register_subcommand("train", _train_arguments, _run_train)
register_subcommand("evaluate", _evaluate_arguments, _run_evaluate)
register_subcommand("predict", _predict_arguments, _run_predict)
register_subcommand("export", add_export_arguments, run_export_command)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="landmark-graph", description="Structure-coherent face alignment: train, "
                     "evaluate and run landmark-graph models.")
    parser.add_argument("--plugin", action="append", metavar="MODULE",
                        help=f"import MODULE (or a .py file) first, for the schemes, backbones, heads, ... "
                             f"it registers (repeatable; also ${PLUGINS_ENV}, comma-separated)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    for name, (add_arguments, run) in SUBCOMMANDS.items():
        summary = (run.__doc__ or "").strip().splitlines()
        sub = commands.add_parser(name, help=summary[0] if summary else None)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``landmark-graph``; returns the exit code."""
    from ..data import AnnotationError
    from .training import CheckpointError

    user_errors = (UsageError, ValueError, FileNotFoundError, ImportError, CheckpointError, AnnotationError)
    try:
        import_plugins(_plugins(sys.argv[1:] if argv is None else argv))
        args = build_parser().parse_args(argv)
        return args.run(args)
    except user_errors as error:
        message = " ".join(str(error).split())
        if isinstance(error, UnknownNameError):  # e.g. a checkpoint trained with a plugin's scheme
            message += " (registered by a plugin? give it with --plugin MODULE)"
        print(f"landmark-graph: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
