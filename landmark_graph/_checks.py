"""Input checks shared by every public entry point.

Each check raises a ``ValueError`` (wrong value or shape) or ``TypeError`` (wrong type or
dtype) whose message names the argument, what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter

__all__ = [
    "as_square_mask",
    "check_adjacency",
    "check_boxes",
    "check_feature_map",
    "check_finite",
    "check_floating",
    "check_mask",
    "check_ndim",
    "check_param_dtype",
    "check_positive",
    "check_shape",
    "check_tensor",
    "materialized",
]


def check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating(name: str, value: object) -> Tensor:
    tensor = check_tensor(name, value)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {tensor.dtype}")
    return tensor


def check_ndim(name: str, tensor: Tensor, ndim: int, layout: str) -> None:
    if tensor.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions {layout}, got shape {tuple(tensor.shape)}"
        )


def check_shape(name: str, tensor: Tensor, expected: Sequence[int | None], layout: str) -> None:
    """Check ``tensor.shape`` against ``expected``, where ``None`` matches any size."""
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(
        e is not None and s != e for s, e in zip(shape, expected, strict=True)
    ):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {layout} = {want}, got {shape}")


def check_mask(mask: Tensor | None, batch: int, num_nodes: int, device: torch.device) -> Tensor | None:
    """Validate an optional ``(B, N)`` visibility mask: bool, or numbers in ``[0, 1]``."""
    if mask is None:
        return None
    check_tensor("mask", mask)
    check_shape("mask", mask, (batch, num_nodes), "(B, N)")
    if mask.device != device:
        raise ValueError(f"mask must be on {device}, got {mask.device}")
    if mask.is_complex():
        raise TypeError(f"mask must be bool or real, got dtype {mask.dtype}")
    # One comparison catches NaN, inf and negative values (a negative weight would flip the loss).
    if mask.dtype != torch.bool and not bool(((mask >= 0) & (mask <= 1)).all()):
        raise ValueError("mask must hold 0/1 or weights in [0, 1], got NaN, inf or values outside [0, 1]")
    return mask


def check_positive(**values: float) -> None:
    """Each keyword is a finite real number > 0 (a bool is not)."""
    for name, value in values.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_finite(where: str = "", /, **tensors: Tensor) -> None:
    """Raise if any of the named tensors holds NaN or inf; one host sync for all of them."""
    flags = [torch.isfinite(t).all() for t in tensors.values()]
    if bool(torch.stack(flags).all()):
        return
    bad = [name for name, ok in zip(tensors, flags, strict=True) if not bool(ok)]
    raise ValueError(f"{', '.join(bad)} must be finite{where}, got NaN or inf")


def check_feature_map(name: str, features: object, channels: int | None) -> Tensor:
    """A floating ``(B, C, H, W)`` map with ``C == channels`` (when known) and ``H, W >= 1``."""
    tensor = check_floating(name, features)
    check_ndim(name, tensor, 4, "(B, C, H, W)")
    if channels is not None and tensor.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channels (B, C, H, W), got shape {tuple(tensor.shape)}"
        )
    if min(tensor.shape[1:]) < 1:
        raise ValueError(f"{name} must have C, H, W >= 1 (B, C, H, W), got shape {tuple(tensor.shape)}")
    return tensor


def materialized(layer: nn.Module) -> int | None:
    """Input size of a Linear (features) or ungrouped Conv (channels), ``None`` while lazy.

    Read from the weight, which a lazy layer loaded from a ``state_dict`` already has while its
    ``in_features`` attribute is still 0 until the first call.
    """
    # isinstance, not torch.nn.parameter.is_lazy, which torch.compile cannot trace.
    return None if isinstance(layer.weight, UninitializedParameter) else layer.weight.shape[1]


def check_param_dtype(name: str, tensor: Tensor, module: nn.Module) -> None:
    """Outside autocast, an input must have the dtype of the module's (initialised) parameters."""
    param = next((p for p in module.parameters() if not isinstance(p, UninitializedParameter)), None)
    if param is None or tensor.dtype == param.dtype or torch.is_autocast_enabled(tensor.device.type):
        return
    raise TypeError(
        f"{name} must have the dtype of the module's parameters {param.dtype}, got {tensor.dtype}; "
        "convert the module (module.to(dtype)) or run under torch.autocast"
    )


def check_boxes(name: str, boxes: object) -> np.ndarray:
    """``ndarray[F, 4]`` float64 boxes ``(x_min, y_min, x_max, y_max)`` from one box or a list of
    them (``F`` may be 0), checked finite with positive sides."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.shape == (4,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (F, 4) = (x_min, y_min, x_max, y_max), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or inf: {array.tolist()}")
    if not ((array[:, 2] > array[:, 0]) & (array[:, 3] > array[:, 1])).all():
        raise ValueError(f"{name} needs x_max > x_min and y_max > y_min, got {array.tolist()}")
    return array


def as_square_mask(adjacency: object, name: str = "adjacency") -> Tensor:
    """A bool, integer or floating tensor or array ``(N, N)`` -> ``BoolTensor[N, N]`` of its nonzeros.

    Keeps the device; raises on another type or shape, ``N = 0``, NaN or inf.
    """
    if isinstance(adjacency, np.ndarray):
        adjacency = torch.from_numpy(adjacency)
    if not isinstance(adjacency, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(adjacency).__name__}")
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) mask, got shape {tuple(adjacency.shape)}")
    if adjacency.shape[0] < 1:
        raise ValueError(f"{name} must have at least one node, got shape {tuple(adjacency.shape)}")
    if adjacency.is_complex():
        raise TypeError(f"{name} must be bool or real, got dtype {adjacency.dtype}")
    if adjacency.is_floating_point() and not bool(torch.isfinite(adjacency).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return adjacency.detach() != 0


def check_adjacency(adjacency: object, name: str = "adjacency") -> Tensor:
    """Validate a neighbourhood mask and return it as a CPU ``BoolTensor[N, N]``.

    Accepts what :func:`as_square_mask` does. A row with no edge at all is an error; self loops
    are added where missing, since every formula of the paper keeps them.
    """
    mask = as_square_mask(adjacency, name).cpu()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{name} has empty rows {empty[:10]}: every node needs at least one edge")
    return mask | torch.eye(mask.shape[0], dtype=torch.bool)


def check_window(name: str, value: object, embedding: str = "attention") -> None:
    """Raise unless ``value`` is ``None``, or an odd positive int (the side of an attention
    window) with ``embedding="attention"``."""
    if value is None:
        return
    if embedding != "attention":
        raise ValueError(f"{name} needs embedding='attention', got embedding={embedding!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be None or an odd positive int (the side of the square of "
                         f"cells kept around the attention's peak), got {value!r}")
