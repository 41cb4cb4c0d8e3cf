"""The ``landmark-graph export`` command: a checkpoint of ``train`` (or a saved module) to one
ONNX file, checked against PyTorch with ONNX Runtime (:mod:`landmark_graph.onnx` does the export).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..onnx import DEFAULT_OPSET, MIN_OPSET, eval_mode, export_onnx, export_program, onnx_max_error, run_onnx

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


class LandmarkOutputs(nn.Module):
    """A :class:`~landmark_graph.engine.training.LandmarkModel` with the extra outputs of its head as a
    flat tuple, for export: ``landmarks`` ``Tensor[B, N, 2]``, then ``visibility_logits``
    ``Tensor[B, N]`` and ``log_scale`` ``Tensor[B, N, 2]`` (pixels) where the head has them.

    Example:
        >>> from landmark_graph.engine.training import TrainConfig, build_model
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
    from .checkpoints import read_torch_file

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
    :class:`~landmark_graph.engine.training.CheckpointError` unless ``trust=True``.
    """
    model, shape, _ = _load(checkpoint, build_model, trust)
    return model, shape


def _check_inputs(shape: tuple[int, ...], batch: int, config, dtype: torch.dtype) -> Tensor:
    """Inputs like the model's data: for a checkpoint of ``train``, synthetic faces of its scheme
    and size; otherwise images uniform in ``[0, 1]`` (random normal inputs drive a trained
    model far outside its range, where float32 rounding alone exceeds any useful tolerance)."""
    if config is not None:
        from ..data.synthetic import SyntheticFaces

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
    from .checkpoints import replacing

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
        with eval_mode(model), torch.no_grad():
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
