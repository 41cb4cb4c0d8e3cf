"""Input checks shared by every public entry point.

Each check raises a ``ValueError`` (wrong value or shape) or ``TypeError`` (wrong type or
dtype) whose message names the argument, what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_floating", "check_mask", "check_ndim", "check_shape", "check_tensor"]


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
    """Validate an optional ``(B, N)`` visibility mask and return it as a float tensor."""
    if mask is None:
        return None
    check_tensor("mask", mask)
    check_shape("mask", mask, (batch, num_nodes), "(B, N)")
    if mask.device != device:
        raise ValueError(f"mask must be on {device}, got {mask.device}")
    if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
        raise ValueError("mask must be finite, got NaN or inf")
    if mask.is_complex():
        raise TypeError(f"mask must be bool or real, got dtype {mask.dtype}")
    return mask
