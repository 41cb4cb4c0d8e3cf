"""Shared test helpers: per-dtype tolerances in one place (kornia style)."""

from __future__ import annotations

import importlib

import torch

# Tolerances for comparing two computations of the same quantity in a given dtype.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-8},
    torch.float32: {"atol": 1e-5, "rtol": 1e-4},
    torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    tol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), **tol)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_grads_match_contiguous(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, index,
                                  grad: torch.Tensor) -> None:
    """Gradients of ``neighbor_aggregate`` on (non-contiguous) ``x``, ``w`` and ``grad`` equal those
    of the same values laid out contiguously."""
    from landmark_graph.ops import neighbor_aggregate

    gx, gw = torch.autograd.grad(out, (x, w), grad)
    xc, wc = x.detach().contiguous().requires_grad_(), w.detach().contiguous().requires_grad_()
    rx, rw = torch.autograd.grad(neighbor_aggregate(xc, wc, index), (xc, wc), grad.contiguous())
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def usable(module: str) -> bool:
    """Whether ``module`` imports: absent, or a wheel built for another torch (torchvision's
    CUDA wheel beside a CPU torch fails with a RuntimeError), both count as unusable."""
    try:
        importlib.import_module(module)
    except (ImportError, RuntimeError, OSError):
        return False
    return True
