r"""Deployment: ONNX and ``torch.export`` of landmark models, and the ``landmark-graph export`` command.

Every graph layer reduces to gathers, ``einsum`` and dense layers over a neighbour table that is
a constant of the model, so a model with :class:`~landmark_graph.LGRLHead` (dynamic, static or
binary edge weights) exports to standard ONNX operators; ONNX Runtime reproduces PyTorch's
landmarks to float32 rounding, about ``1e-7`` to ``1e-6`` of the output's scale on CPU
(docs/deployment.md).

Exporting puts the model in ``eval()`` mode for the trace (BatchNorm uses its running
statistics) and restores the previous mode afterwards. Lazy layers (``in_channels=None``) are
materialised by one call on the example input first. The batch dimension is dynamic by default.

Example:
    >>> import torch
    >>> from landmark_graph import LGRLHead
    >>> head = LGRLHead(5, k=2, in_channels=4, hidden_features=8, num_blocks=1, hidden_channels=8)
    >>> program = export_program(head, torch.randn(2, 4, 3, 3))
    >>> program.module()(torch.randn(3, 4, 3, 3)).shape
    torch.Size([3, 5, 2])
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_floating

__all__ = [
    "ExportCheckError",
    "LandmarkOutputs",
    "add_export_arguments",
    "export_checkpoint",
    "export_onnx",
    "export_program",
    "load_checkpoint_model",
    "onnx_max_error",
    "run_export_command",
    "run_onnx",
]

#: The lowest opset accepted: the ``torch.export``-based exporter writes 18 and up natively, and
#: its down-conversion to 17 silently keeps 18 for LGRLHead graphs (torch 2.13, onnxscript 0.7).
MIN_OPSET = 18
DEFAULT_OPSET = 18


def _require(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs {module}, which is not installed: pip install 'landmark-graph[export]'"
        ) from error


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block, the previous mode of every submodule after it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _example(example_input: Tensor, dynamic_batch: bool) -> Tensor:
    """Check the example input; with a dynamic batch, give it two rows.

    ``torch.export`` specialises a dimension whose example size is 0 or 1, so a batch of one
    would freeze the batch size into the graph.
    """
    check_floating("example_input", example_input)
    if example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ValueError(
            f"example_input must be a batch (B, ...) with B >= 1, got shape {tuple(example_input.shape)}"
        )
    if dynamic_batch and example_input.shape[0] == 1:
        example_input = example_input.expand(2, *example_input.shape[1:])
    return example_input.contiguous()


def _materialize(model: nn.Module, example: Tensor) -> None:
    """One call initialises lazy layers, which cannot be traced before (in eval mode, no state changes)."""
    with torch.no_grad():
        model(example)


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch")


def export_program(
    model: nn.Module, example_input: Tensor, *, dynamic_batch: bool = True, strict: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` on ``example_input``, in eval mode.

    Args:
        model: maps ``Tensor[B, ...]`` to a tensor, e.g. a backbone + :class:`LGRLHead`.
        example_input: ``Tensor[B, ...]``, ``B >= 1``; sizes other than ``B`` are fixed in the
            exported graph.
        dynamic_batch: export ``B`` as a symbolic dimension.
        strict: forwarded to :func:`torch.export.export`.

    Returns:
        The :class:`torch.export.ExportedProgram`; ``.module()`` runs it.
    """
    example = _example(example_input, dynamic_batch)
    shapes = ({0: _batch_dim()},) if dynamic_batch else None
    with _eval_mode(model):
        _materialize(model, example)
        return torch.export.export(model, (example,), dynamic_shapes=shapes, strict=strict)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: Tensor,
    *,
    opset_version: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str | Sequence[str] = "landmarks",
) -> Path:
    """Write ``model`` as one self-contained ONNX file (weights inside), in eval mode.

    Uses the ``torch.export``-based exporter (``torch.onnx.export(dynamo=True)``, which needs
    ``onnxscript``): while it traces, the fused op emits its decomposition into standard ops. The
    legacy TorchScript exporter, deprecated by PyTorch, is not supported.

    Args:
        model: maps ``Tensor[B, ...]`` to one tensor or a tuple of tensors.
        path: output ``.onnx`` file; its folder is created.
        example_input: ``Tensor[B, ...]``, ``B >= 1``; sizes other than ``B`` are fixed.
        opset_version: ONNX opset, ``>= 18``.
        dynamic_batch: keep ``B`` symbolic (ONNX dimension named ``"batch"``).
        input_name, output_name: names of the graph's input and output (a sequence of names
            for a model with several outputs).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if isinstance(opset_version, bool) or not isinstance(opset_version, int) or opset_version < MIN_OPSET:
        raise ValueError(f"opset_version must be an int >= {MIN_OPSET}, got {opset_version!r}")
    _require("onnxscript", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example(example_input, dynamic_batch)
    with _eval_mode(model), warnings.catch_warnings(), _quiet_onnx_log():
        _materialize(model, example)
        # PyTorch's own exporter internals, nothing the caller can act on.
        warnings.filterwarnings("ignore", r".*LeafSpec", FutureWarning)
        # external_data=False: one file, the weights inside (ONNX's protobuf limit is 2 GiB).
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, opset_version=opset_version,
            input_names=[input_name],
            output_names=[output_name] if isinstance(output_name, str) else list(output_name),
            dynamic_shapes=({0: _batch_dim()},) if dynamic_batch else None,
            external_data=False, verbose=False,
        )
    return path


@contextlib.contextmanager
def _quiet_onnx_log() -> Iterator[None]:
    """Mute the exporter's log below errors: it lists torchvision ops it skips when torchvision is
    missing (a model cannot hold those then), a line each."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(level)


def run_onnx(path: str | Path, inputs: Tensor, *, all_outputs: bool = False) -> Tensor | dict[str, Tensor]:
    """Run an exported file with ONNX Runtime on CPU: ``Tensor[B, ...]`` in, the first output out
    (``all_outputs``: ``{name: Tensor}`` of every output, in the graph's order)."""
    ort = _require("onnxruntime", "running an ONNX file")
    check_floating("inputs", inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: inputs.detach().cpu().contiguous().numpy()}
    outputs = [torch.from_numpy(value) for value in session.run(None, feed)]
    if not all_outputs:
        return outputs[0]
    return {o.name: value for o, value in zip(session.get_outputs(), outputs, strict=True)}


def onnx_max_error(model: nn.Module, path: str | Path, inputs: Tensor) -> float:
    r""":math:`\max |f_\text{ONNX}(x) - f_\text{torch}(x)|` over ``inputs`` and every output, the
    model in eval mode."""
    with _eval_mode(model), torch.no_grad():
        expected = model(inputs)
    expected = (expected,) if isinstance(expected, Tensor) else tuple(expected)
    got = list(run_onnx(path, inputs, all_outputs=True).values())
    if len(got) != len(expected):
        raise RuntimeError(f"{path} has {len(got)} outputs, the model {len(expected)}")
    return max(float((g - e.cpu()).abs().max()) for g, e in zip(got, expected, strict=True))


class LandmarkOutputs(nn.Module):
    """A :class:`~landmark_graph.training.LandmarkModel` with the extra outputs of its head as a
    flat tuple, for export: ``landmarks`` ``Tensor[B, N, 2]``, then ``visibility_logits``
    ``Tensor[B, N]`` and ``log_scale`` ``Tensor[B, N, 2]`` (pixels) where the head has them.

    Example:
        >>> from landmark_graph.training import TrainConfig, build_model
        >>> config = TrainConfig(image_size=32, scheme="cofw29", hidden_features=8, num_blocks=1,
        ...                      backbone_width=8, embedding="attention", head_channels=8, visibility=True)
        >>> wrapped = LandmarkOutputs(build_model(config).eval())
        >>> wrapped.output_names, [tuple(t.shape) for t in wrapped(torch.zeros(2, 3, 32, 32))]
        (('landmarks', 'visibility_logits'), [(2, 29, 2), (2, 29)])
    """

    FIELDS = ("landmarks", "visibility_logits", "log_scale")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = model.head
        present = {"landmarks": True, "visibility_logits": getattr(head, "visibility_head", None) is not None,
                   "log_scale": getattr(head, "scale_head", None) is not None}
        self.output_names = tuple(name for name in self.FIELDS if present[name])

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images, return_details=True)
        return tuple(getattr(out, name) for name in self.output_names)


# --- checkpoints and the command line ------------------------------------------------------

ModelBuilder = Callable[[dict[str, Any]], nn.Module]


class ExportCheckError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance (nothing was written)."""


def _load(checkpoint: str | Path, build_model: ModelBuilder | None, trust: bool):
    """``(model, input shape or None, TrainConfig or None)`` of a checkpoint file."""
    from ._checkpoint_io import read_torch_file

    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"checkpoint must be an existing file, got {str(path)!r}")
    obj = read_torch_file(path, trust=trust)
    if isinstance(obj, dict) and "config" in obj and isinstance(obj.get("model"), dict):
        from .training import model_from_checkpoint  # lazy: training pulls in the data sets

        model, config = model_from_checkpoint(path)
        return model, (3, config.image_size, config.image_size), config
    if isinstance(obj, nn.Module):
        return obj, None, None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a model or a dict")
    shape = tuple(int(s) for s in obj["input_shape"]) if "input_shape" in obj else None
    if isinstance(obj.get("model"), nn.Module):
        return obj["model"], shape, None
    weights = obj.get("state_dict", obj.get("model"))
    if build_model is None or not isinstance(weights, dict):
        raise ValueError(
            f"checkpoint {str(path)!r} has keys {sorted(obj)}: expected a saved module, a dict with a "
            "module under 'model', or weights under 'state_dict' plus a model builder"
        )
    model = build_model(obj)
    model.load_state_dict(weights)
    return model, shape, None


def load_checkpoint_model(
    checkpoint: str | Path, build_model: ModelBuilder | None = None, *, trust: bool = False
) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The model in a checkpoint file, and the input shape ``(C, H, W)`` it records if any.

    Accepted layouts: a checkpoint of ``landmark-graph train`` (``"config"`` + ``"model"``
    weights; the input is ``(3, S, S)`` images); a dict with the weights in ``"state_dict"`` (or
    ``"model"``) that ``build_model(checkpoint_dict)`` turns back into a module; with ``trust``,
    also a whole module saved with ``torch.save(model)`` or a dict whose ``"model"`` is a module.
    ``"input_shape"`` in a dict gives the input shape without the batch.

    Files are read with ``weights_only=True`` (tensors and plain containers, no code runs). A
    pickled module needs full unpickling, which runs code from the file: it is refused with a
    :class:`~landmark_graph.training.CheckpointError` unless ``trust=True``.
    """
    model, shape, _ = _load(checkpoint, build_model, trust)
    return model, shape


def _check_inputs(shape: tuple[int, ...], batch: int, config, dtype: torch.dtype) -> Tensor:
    """Inputs like the model's data: for a checkpoint of ``train``, synthetic faces of its scheme
    and size; otherwise images uniform in ``[0, 1]`` (random normal inputs drive a trained
    model far outside its range, where float32 rounding alone exceeds any useful tolerance)."""
    if config is not None:
        from .data.synthetic import SyntheticFaces

        faces = SyntheticFaces(config.scheme_name, batch, config.image_size, seed=2**31 - 1)
        images = torch.stack([faces[i]["image"] for i in range(batch)])
    else:
        images = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    return images.to(dtype)


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    *,
    input_shape: Sequence[int] | None = None,
    build_model: ModelBuilder | None = None,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    batch: int = 1,
    trust: bool = False,
    **onnx_options: Any,
) -> float | None:
    r"""Export the model of ``checkpoint`` to ``output`` (ONNX); see :func:`export_onnx`.

    ``input_shape`` ``(C, H, W)`` overrides the one recorded in the checkpoint; ``batch`` is the
    example's batch size, the graph's when ``dynamic_batch=False``. With ``check``, ONNX Runtime
    reruns realistic inputs (synthetic faces of a ``train`` checkpoint's scheme, else images in
    ``[0, 1]``) and the largest difference to PyTorch is returned; it must stay within

    .. math::
        \text{atol} + \text{rtol} \cdot \max |f_\text{torch}(x)|,

    otherwise :class:`ExportCheckError` is raised and ``output`` is left as it was: the file is
    written beside it under a temporary name and moved into place only once checked. ``trust``:
    see :func:`load_checkpoint_model`. Returns ``None`` without ``check``.
    """
    from ._checkpoint_io import replacing

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    model, saved_shape, config = _load(checkpoint, build_model, trust)
    shape = tuple(input_shape) if input_shape is not None else saved_shape
    if shape is None or len(shape) < 1 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"input_shape must be given as positive sizes without the batch, e.g. (3, 256, 256), "
            f"when the checkpoint does not record it; got {shape!r}"
        )
    if shape != saved_shape:
        config = None  # the synthetic faces of a training checkpoint come at its own size only
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    example = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    from .training import LandmarkModel  # lazy, as in load_checkpoint_model

    if isinstance(model, LandmarkModel):
        wrapped = LandmarkOutputs(model)
        if len(wrapped.output_names) > 1:  # visibility and scales become named outputs
            model = wrapped
            onnx_options.setdefault("output_name", wrapped.output_names)
    # Another batch size than the traced one, unless the graph fixes it.
    check_batch = batch if onnx_options.get("dynamic_batch") is False else batch + 2
    output = Path(output)
    with replacing(output) as tmp:
        export_onnx(model, tmp, example, **onnx_options)
        if not check:
            return None
        inputs = _check_inputs(shape, check_batch, config, dtype)
        with _eval_mode(model), torch.no_grad():
            outputs = model(inputs)
        outputs = (outputs,) if isinstance(outputs, Tensor) else outputs
        scale = max(float(t.abs().max()) for t in outputs)
        error = onnx_max_error(model, tmp, inputs)
        if not error <= atol + rtol * scale:
            inputs_name = "synthetic faces" if config is not None else "images in [0, 1]"
            raise ExportCheckError(
                f"ONNX Runtime differs from PyTorch by {error:.3g} > atol + rtol * max|output| = "
                f"{atol:g} + {rtol:g} * {scale:.4g} on {inputs_name}; {output} not written"
            )
    return error


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``landmark-graph export CHECKPOINT OUTPUT``."""
    parser.add_argument("checkpoint", type=Path, help="a checkpoint of train, or a saved model")
    parser.add_argument("output", type=Path, help="ONNX file to write")
    parser.add_argument(
        "--input-shape", type=int, nargs="+", metavar="SIZE",
        help="input size without the batch, e.g. 3 256 256 (default: recorded in the checkpoint)",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size to --batch")
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="batch size of the traced example, and of the graph with --static-batch "
                             "(default: 1)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="accepted ONNX Runtime error relative to max|output| (default: 1e-4)")
    parser.add_argument("--atol", type=float, default=1e-5,
                        help="accepted ONNX Runtime error on top of --rtol (default: 1e-5)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a checkpoint holding a pickled module: loading it runs code from the "
                             "file, so only for files you trust")
    return parser


def run_export_command(args: argparse.Namespace, build_model: ModelBuilder | None = None) -> int:
    """Export a checkpoint to ONNX, checked against PyTorch with ONNX Runtime.

    Runs ``landmark-graph export`` with parsed ``args``; prints one line, returns the exit code
    (1 when ONNX Runtime disagrees with PyTorch).
    """
    check = not args.no_check and importlib.util.find_spec("onnxruntime") is not None
    try:
        error = export_checkpoint(
            args.checkpoint, args.output, input_shape=args.input_shape, build_model=build_model,
            check=check, rtol=args.rtol, atol=args.atol, batch=args.batch, trust=args.trust_checkpoint,
            opset_version=args.opset, dynamic_batch=not args.static_batch,
        )
    except ExportCheckError as failure:
        print(f"landmark-graph: error: {failure}", file=sys.stderr)
        return 1
    verdict = (f"ONNX Runtime max abs error {error:.2e}" if error is not None
               else "not checked (--no-check or onnxruntime missing)")
    print(f"wrote {args.output}; {verdict}")
    return 0
