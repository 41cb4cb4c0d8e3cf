r"""Deployment of any module: ONNX and ``torch.export``, and ONNX Runtime to run and check the file.

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

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_floating

__all__ = ["eval_mode", "export_onnx", "export_program", "onnx_max_error", "run_onnx"]

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
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
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
    with eval_mode(model):
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
    with eval_mode(model), warnings.catch_warnings(), _quiet_onnx_log():
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
    with eval_mode(model), torch.no_grad():
        expected = model(inputs)
    expected = (expected,) if isinstance(expected, Tensor) else tuple(expected)
    got = list(run_onnx(path, inputs, all_outputs=True).values())
    if len(got) != len(expected):
        raise RuntimeError(f"{path} has {len(got)} outputs, the model {len(expected)}")
    return max(float((g - e.cpu()).abs().max()) for g, e in zip(got, expected, strict=True))
