"""Triton kernels of the aggregation (GPU, or CPU tensors under ``TRITON_INTERPRET=1``).

Imported at the first tensor that takes the Triton route: a CPU install never imports triton.
Each program owns a tile of receivers of one image and writes each output once (no atomics,
deterministic); accumulation is in float32 (float64 for float64), tensors are read through their
strides (no copies).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["INTERPRETED", "aggregate", "edge_dot"]


@triton.jit
def _aggregate_kernel(
    x_ptr, w_ptr, idx_ptr, y_ptr,
    N, K, D,
    sxb, sxn, sxd,
    swb, swn, swk,
    sin, sik,
    syb, syn, syd,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IS_FP64: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    n_blocks = tl.cdiv(N, BLOCK_N)
    b = (pid // n_blocks).to(tl.int64)
    rows = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < N
    col_ok = cols < D
    if IS_FP64:
        acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    x_base = x_ptr + b * sxb
    w_base = w_ptr + b * swb
    for k in range(0, K):
        j = tl.load(idx_ptr + rows * sin + k * sik, mask=row_ok, other=-1)
        ok = j >= 0
        w = tl.load(w_base + rows * swn + k * swk, mask=ok, other=0.0).to(acc.dtype)
        src = x_base + j.to(tl.int64)[:, None] * sxn + cols[None, :] * sxd
        xv = tl.load(src, mask=ok[:, None] & col_ok[None, :], other=0.0).to(acc.dtype)
        acc += w[:, None] * xv
    dst = y_ptr + b * syb + rows[:, None] * syn + cols[None, :] * syd
    tl.store(dst, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _edge_dot_kernel(
    a_ptr, x_ptr, idx_ptr, out_ptr,
    N, K, D,
    sab, san, sad,
    sxb, sxn, sxd,
    sin, sik,
    sob, son, sok,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, IS_FP64: tl.constexpr,
):
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(N, BLOCK_N)
    b = (pid // n_blocks).to(tl.int64)
    rows = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    slots = tl.arange(0, BLOCK_K)
    row_ok = rows < N
    slot_ok = row_ok[:, None] & (slots < K)[None, :]
    j = tl.load(idx_ptr + rows[:, None] * sin + slots[None, :] * sik, mask=slot_ok, other=-1)
    ok = j >= 0
    j = j.to(tl.int64)
    if IS_FP64:
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    a_base = a_ptr + b * sab
    x_base = x_ptr + b * sxb
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        av = tl.load(a_base + rows[:, None] * san + cols[None, :] * sad,
                     mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(acc.dtype)
        src = x_base + j[:, :, None] * sxn + cols[None, None, :] * sxd
        xv = tl.load(src, mask=ok[:, :, None] & col_ok[None, None, :], other=0.0).to(acc.dtype)
        acc += tl.sum(av[:, None, :] * xv, axis=2)
    dst = out_ptr + b * sob + rows[:, None] * son + slots[None, :] * sok
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=slot_ok)


def _interpreted() -> bool:
    """Whether the kernels above were defined for Triton's interpreter (they run CPU tensors)."""
    knobs = getattr(triton, "knobs", None)  # public from triton 3.4; earlier, the variable itself
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


INTERPRETED = _interpreted()


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def aggregate(x: Tensor, weight: Tensor, index: Tensor) -> Tensor:
    """``y[b,i] = sum_k w[b,i,k] x[b, idx[i,k]]``: ``(B, N, D)``; ``weight`` ``(B, N, K)`` or ``(N, K)``.

    Also the backward to ``x``, over the reverse table.
    """
    b, n, d = x.shape
    k = index.shape[1]
    y = torch.empty((b, n, d), dtype=x.dtype, device=x.device)
    if b == 0 or n == 0 or d == 0:
        return y
    if weight.dim() == 2:
        swb, (swn, swk) = 0, weight.stride()
    else:
        swb, swn, swk = weight.stride()
    block_d = min(_pow2(d), 64 if INTERPRETED else 128)
    block_n = 32 if INTERPRETED else max(1, min(_pow2(n), 4096 // block_d, 32))
    grid = (b * triton.cdiv(n, block_n), triton.cdiv(d, block_d))
    _aggregate_kernel[grid](
        x, weight, index, y,
        n, k, d,
        x.stride(0), x.stride(1), x.stride(2),
        swb, swn, swk,
        index.stride(0), index.stride(1),
        y.stride(0), y.stride(1), y.stride(2),
        BLOCK_N=block_n, BLOCK_D=block_d, IS_FP64=x.dtype == torch.float64,
    )
    return y


def edge_dot(a: Tensor, x: Tensor, index: Tensor) -> Tensor:
    """``(B, N, K)``: ``<a[b,i], x[b, idx[i,k]]>``, zero on padding slots (the weight gradient)."""
    b, n, d = x.shape
    k = index.shape[1]
    out = torch.empty((b, n, k), dtype=x.dtype, device=x.device)
    if b == 0 or n == 0 or k == 0:
        return out
    if d == 0:
        return out.zero_()
    block_k = _pow2(k)
    block_d = min(_pow2(d), 64)
    block_n = max(1, min(_pow2(n), 8192 // (block_k * block_d), 32))
    grid = (b * triton.cdiv(n, block_n),)
    _edge_dot_kernel[grid](
        a, x, index, out,
        n, k, d,
        a.stride(0), a.stride(1), a.stride(2),
        x.stride(0), x.stride(1), x.stride(2),
        index.stride(0), index.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, IS_FP64=x.dtype == torch.float64,
    )
    return out
