"""Shared test helpers; the one per-dtype tolerance table (kornia's ``BaseTester`` idea)."""

from __future__ import annotations

import importlib

import torch

# Two computations of one quantity in a dtype (other kernels, another summation order) agree
# this well: the strictest entries of the tables the test files kept before. A test whose
# computation sums more roundings states its ``factor``.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-12, "rtol": 1e-12},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
}


def tolerance(dtype: torch.dtype, factor: float = 1.0, scale: float = 1.0) -> dict[str, float]:
    """``TOLERANCES[dtype]`` times ``factor``; ``atol`` also times ``scale`` (the values' size)."""
    tol = TOLERANCES[dtype]
    return {"atol": tol["atol"] * factor * scale, "rtol": tol["rtol"] * factor}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, *,
                 factor: float = 1.0, scale: float = 1.0, msg: str | None = None) -> None:
    """``actual`` equals ``expected`` (cast to ``actual``'s dtype) within :func:`tolerance` of
    ``dtype``, the dtype the computation ran in (default: ``actual``'s)."""
    torch.testing.assert_close(actual, expected.to(actual.dtype), msg=msg,
                               **tolerance(dtype or actual.dtype, factor, scale))


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
