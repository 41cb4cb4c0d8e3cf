"""The PyTorch path of ``y[b,i] = sum_k w[b,i,k] x[b, idx[i,k]]``: CPU, and any device without Triton.

Two formulations, chosen per call by the dense work ``B·N²·D`` (:func:`formulation`):

- ``"dense"``: the weights scattered into an ``N x N`` matrix per image, then one ``bmm``: ``N / K``
  times the arithmetic in few calls, all ATen ops that autograd differentiates.
- ``"sparse"``: the ``B`` graphs as one block-diagonal CSR matrix, multiplied as embedding bags
  (``F.embedding_bag`` with per-sample weights). With a backward to follow, an autograd Function
  whose backward is the bags over the reverse table (``dx``) and ``torch.sparse.sampled_addmm``
  (``dw``), both made of these functions again: double backward works, and no atomics run.

With logits, the dense formulation takes the softmax fused (the logits added into an ``N x N``
matrix of 0 on the edges and ``-inf`` elsewhere), the sparse one for inference over a slot-major
copy. Measurements behind each choice: docs/benchmarks.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .edge_softmax import edge_softmax

FORMULATIONS = ("dense", "sparse")
pinned = "auto"  # or one of FORMULATIONS: set by landmark_graph.ops.set_cpu_formulation
# Dense multiply-adds B·N²·D from which the bags beat the dense product, without and with a backward
# to follow (the bags' Python backward against autograd's own record of the dense ATen ops).
_SPARSE_FROM = (1 << 21, 1 << 25)


def formulation(b: int, n: int, d: int, on_cpu: bool, backward: bool) -> str:
    """``"dense"`` or ``"sparse"`` for ``x`` ``(B, N, D)``; off CPU always dense (the bags were
    measured on CPU only)."""
    if pinned == "auto":
        return "sparse" if on_cpu and b * n * n * d >= _SPARSE_FROM[backward] else "dense"
    return pinned if on_cpu and b * n * d else "dense"


def _choose(x: Tensor, weight: Tensor) -> str:
    return formulation(*x.shape, x.is_cpu, _backward(x, weight))


def _backward(x: Tensor, weight: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


class Layout:
    """A neighbour table ``index`` ``(N, K)`` (``-1`` pads) with its reverse tables, and what the
    formulations derive from them, each built at its first use."""

    def __init__(self, index: Tensor, reverse_index: Tensor, reverse_slot: Tensor, forward_slot: Tensor):
        self.tables = (index, reverse_index, reverse_slot, forward_slot)
        self.index = index
        self.on_cpu = index.is_cpu
        self.n, self.k = index.shape
        self._per_batch: dict[str, tuple[int, tuple[Tensor, ...]]] = {}
        self._bases: dict[torch.dtype, Tensor] = {}

    @cached_property
    def reverse(self) -> Layout:
        """The transposed graph: each node's readers, with the forward table as its reverse."""
        index, reverse_index, reverse_slot, forward_slot = self.tables
        return Layout(reverse_index, index, forward_slot, reverse_slot)

    @cached_property
    def valid(self) -> Tensor:
        return self.index >= 0

    @cached_property
    def padded(self) -> bool:
        return not bool(self.valid.all())

    @cached_property
    def safe(self) -> Tensor:
        return self.index.clamp(min=0)

    @cached_property
    def target(self) -> tuple[Tensor, Tensor]:
        """Each slot's column of the dense matrix, ``(N, K)`` and ``(1, N, K)`` (a view made once,
        not at every call); padding slots go to an extra column ``N``."""
        target = torch.where(self.valid, self.index, self.n)
        return target, target[None]

    @cached_property
    def used(self) -> Tensor:
        """The flat positions ``i * K + k`` of the slots that hold an edge: CSR order."""
        return self.valid.reshape(-1).nonzero().squeeze(1)

    @cached_property
    def scores(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(edges, target, target[None])`` for the fused softmax: the graph as a
        ``BoolTensor[N, N]``, and each slot's column with padding slots on a non-edge of their row
        (one exists when ``K <= N``); ``None`` where a row lists a sender twice or ``K > N``."""
        n = self.n
        edges = self.valid.new_zeros(n, n + 1).scatter_(1, self.target[0], True)[:, :n]
        if self.k > n or int(edges.sum()) != int(self.valid.sum()):
            return None
        outside = (~edges).to(torch.uint8).argmax(dim=1, keepdim=True)
        target = torch.where(self.valid, self.index, outside)
        return edges, target, target[None]

    def base(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``Tensor[N, N]`` and ``Tensor[1, N, N]``: 0 on the edges, ``-inf`` elsewhere (requires
        :attr:`scores`)."""
        base = self._bases.get(dtype)
        if base is None:
            edges = self.scores[0]  # type: ignore[index]
            plane = torch.zeros(edges.shape, dtype=dtype, device=edges.device).masked_fill_(~edges, float("-inf"))
            base = self._bases[dtype] = (plane, plane[None])
        return base

    def _grown(self, kind: str, b: int, build: Callable[[int], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        # Built for the largest batch yet (doubling): a smaller batch's tensors are its prefix.
        capacity, parts = self._per_batch.get(kind, (0, ()))
        if b > capacity:
            capacity = max(b, 2 * capacity)
            parts = build(capacity)
            self._per_batch[kind] = (capacity, parts)
        return parts

    def block(self, b: int) -> tuple[Tensor, Tensor]:
        """``(crow, cols)``: ``b`` copies of the graph on the diagonal of a ``(bN, bN)`` CSR pattern."""
        crow, cols = self._grown("block", b, self._build_block)
        return crow[: b * self.n + 1], cols[: b * self.used.numel()]

    def _build_block(self, capacity: int) -> tuple[Tensor, Tensor]:
        crow = F.pad(self.valid.sum(1).repeat(capacity).cumsum(0), (1, 0))
        offsets = torch.arange(capacity, device=self.index.device)[:, None] * self.n
        return crow, (self.index.reshape(-1)[self.used] + offsets).reshape(-1)

    def slot_major(self, b: int) -> tuple[Tensor, Tensor]:
        """``(gather, values_at)``: where each entry of a ``(b, K, N)`` copy of the logits is read
        in the logits with one ``-inf`` prepended (padding reads it), and where the CSR values lie
        in that copy."""
        gather, values_at = self._grown("slot_major", b, self._build_slot_major)
        return gather[: b * self.k * self.n], values_at[: b * self.used.numel()]

    def _build_slot_major(self, capacity: int) -> tuple[Tensor, Tensor]:
        n, k, device = self.n, self.k, self.index.device
        images = torch.arange(capacity, device=device)[:, None, None] * (n * k)
        slot = torch.arange(n * k, device=device).view(n, k).t()
        gather = torch.where(self.valid.t(), slot + 1 + images, 0).reshape(-1)
        at = (self.used % k) * n + self.used // k
        return gather, (images.view(-1, 1) + at).reshape(-1)


def layout(table: Any) -> Layout:
    """The :class:`Layout` kept on a ``NeighborTable`` while its index buffer is the same tensor
    (a new graph, a load or ``.to()`` replaces it)."""
    lay = table._layout
    if lay is None or lay.index is not table._buffers["index"]:
        lay = table._layout = Layout(*table.tables)
    return lay


def _values(weight: Tensor, lay: Layout, b: int) -> Tensor:
    """The used slots' weights, image by image, row-major: the block matrix's CSR values."""
    if weight.dim() == 2:
        flat = weight.reshape(-1)
        return (flat.index_select(0, lay.used) if lay.padded else flat).repeat(b)
    flat = weight.reshape(b, -1)
    return (flat.index_select(1, lay.used) if lay.padded else flat).reshape(-1)


def _bags(x: Tensor, values: Tensor, lay: Layout) -> Tensor:
    b, n, d = x.shape
    crow, cols = lay.block(b)
    return F.embedding_bag(cols, x.reshape(b * n, d), crow, mode="sum", per_sample_weights=values,
                           include_last_offset=True).view(b, n, d)


def _dense(x: Tensor, weight: Tensor, lay: Layout) -> Tensor:
    b, n, _ = x.shape
    columns = n + lay.padded
    target, target1 = lay.target
    if weight.dim() == 2:
        a = x.new_zeros(n, columns).scatter_add_(1, target, weight)
    else:
        index = target1 if b == 1 else target.expand(b, n, lay.k)
        a = x.new_zeros(b, n, columns).scatter_add_(2, index, weight)
    if lay.padded:
        a = a.narrow(-1, 0, n)
    return torch.matmul(a, x) if weight.dim() == 2 else torch.bmm(a, x)


def aggregate(x: Tensor, weight: Tensor, lay: Layout, form: str = "") -> Tensor:
    """``y = A x``, differentiable; ``weight`` ``(B, N, K)`` or ``(N, K)`` in ``x``'s dtype;
    ``form``: the :func:`formulation`, when the caller knows it."""
    if (form or _choose(x, weight)) == "dense":
        return _dense(x, weight, lay)
    if _backward(x, weight):
        return _Bags.apply(x, weight, lay)
    return _bags(x, _values(weight, lay, x.shape[0]), lay)


def softmax_aggregate(x: Tensor, logits: Tensor, lay: Layout, form: str = "") -> Tensor:
    """``aggregate(x, edge_softmax(logits, valid), lay)``, fused where that pays."""
    form = form or _choose(x, logits)
    scores = lay.scores if form == "dense" else None
    if scores is not None:
        base, base1 = lay.base(x.dtype)
        if logits.dim() == 2:
            return torch.matmul(base.scatter_add(1, scores[1], logits).softmax(-1), x)
        if x.size(0) == 1:
            return torch.bmm(base1.scatter_add(2, scores[2], logits).softmax(-1), x)
        b, n, _ = x.shape
        weights = base.expand(b, n, n).scatter_add(2, scores[1].expand(b, n, lay.k), logits).softmax(-1)
        return torch.bmm(weights, x)
    b, n, _ = x.shape
    if form == "sparse" and logits.dim() == 3 and not _backward(x, logits):
        # PyTorch's CPU softmax over a last dimension of 4-8 runs row by row: take it over K in a
        # (B, K, N) copy, which also drops the padding, then pick the CSR values out of it.
        gather, values_at = lay.slot_major(b)
        padded = F.pad(logits.reshape(-1), (1, 0), value=float("-inf"))
        weights = padded.index_select(0, gather).view(b, lay.k, n).softmax(dim=1)
        return _bags(x, weights.view(-1).index_select(0, values_at), lay)
    return aggregate(x, edge_softmax(logits, lay.valid), lay)


def edge_dot(a: Tensor, x: Tensor, lay: Layout) -> Tensor:
    """``e[b,i,k] = <a[b,i], x[b, idx[i,k]]>``, 0 on padding slots: ``(B, N, K)``."""
    b, n, d = x.shape
    # sampled_addmm computes only the B·N·K dots, but has no half-precision CPU kernel.
    if formulation(b, n, d, x.is_cpu, False) == "dense" or x.dtype not in (torch.float32, torch.float64):
        out = torch.bmm(a, x.transpose(1, 2)).gather(2, lay.safe.expand(b, n, lay.k))
        return out.masked_fill(~lay.valid, 0) if lay.padded else out
    crow, cols = lay.block(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR tensor support is in beta"
        pattern = torch.sparse_csr_tensor(crow, cols, x.new_ones(cols.numel()), (b * n, b * n),
                                          check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, a.reshape(b * n, d), x.reshape(b * n, d).t(),
                                          beta=0.0).values()
    if not lay.padded:
        return dots.view(b, n, lay.k)
    return x.new_zeros(b, n * lay.k).index_copy_(1, lay.used, dots.view(b, -1)).view(b, n, lay.k)


def to_reverse(values: Tensor, lay: Layout) -> Tensor:
    """Per-slot values ``(..., N, K)`` laid out along the reverse table: ``(..., N, R)``, 0 on padding."""
    slot = lay.tables[2]
    flat = F.pad(values.flatten(-2), (0, 1))
    if flat.is_cpu and not torch.compiler.is_compiling():  # index_select: the fastest gather on CPU
        return flat.index_select(-1, slot.reshape(-1)).view(*flat.shape[:-1], *slot.shape)
    return flat[..., slot]  # its backward (index_put with accumulate) is deterministic on GPU too


AggregateFn = Callable[[Tensor, Tensor, Layout], Tensor]


def aggregate_grads(aggregate_fn: AggregateFn, edge_dot_fn: AggregateFn, lay: Layout, x: Tensor,
                    weight: Tensor, grad: Tensor, needs: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None]:
    """``(dx, dw)`` of ``y = A x``: ``dx = A^T dy`` (the aggregation over the reverse table) and
    ``dw`` the table's entries of ``dy x^T``, made of the two given functions."""
    dx = aggregate_fn(grad, to_reverse(weight, lay), lay.reverse) if needs[0] else None
    dw = None
    if needs[1]:
        dw = edge_dot_fn(grad, x, lay)
        dw = (dw.sum(dim=0) if weight.dim() == 2 else dw).to(weight.dtype)
    return dx, dw


def edge_dot_grads(aggregate_fn: AggregateFn, lay: Layout, a: Tensor, x: Tensor, grad: Tensor,
                   needs: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None]:
    """``(da, dx)`` of ``e = <a_i, x_j>`` on the edges: ``da = G x``, ``dx = G^T a``."""
    da = aggregate_fn(x, grad, lay).to(a.dtype) if needs[0] else None
    dx = aggregate_fn(a, to_reverse(grad, lay), lay.reverse).to(x.dtype) if needs[1] else None
    return da, dx


class _Bags(torch.autograd.Function):
    """The bags with the op's backward, which beats embedding_bag's own."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, lay: Layout) -> Tensor:
        ctx.lay = lay
        ctx.save_for_backward(x, weight)
        return _bags(x, _values(weight, lay, x.shape[0]), lay)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        return *aggregate_grads(aggregate, _EdgeDot.apply, ctx.lay, x, weight, grad, ctx.needs_input_grad), None


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: Tensor, x: Tensor, lay: Layout) -> Tensor:
        ctx.lay = lay
        ctx.save_for_backward(a, x)
        return edge_dot(a, x, lay)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, x = ctx.saved_tensors
        return *edge_dot_grads(aggregate, ctx.lay, a, x, grad, ctx.needs_input_grad), None
