"""The PyTorch path of ``y[b,i] = sum_k w[b,i,k] x[b, idx[i,k]]``: CPU, and devices without Triton.

Two formulations, chosen by the dense work ``B·N²·D`` (:func:`formulation`): ``"dense"``, the
weights scattered into an ``N x N`` matrix per image and one ``bmm`` (fused with the softmax for
logits), which autograd differentiates; ``"sparse"``, the ``B`` graphs as one block-diagonal CSR
matrix multiplied as embedding bags, trained through :class:`_Function` (backward: the bags over
the reverse table and ``sampled_addmm``). Why each: docs/benchmarks.md, "How the op runs".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .edge_softmax import SMALL_SOFTMAX, edge_softmax

FORMULATIONS = ("dense", "sparse")
pinned = "auto"  # or one of FORMULATIONS: set by landmark_graph.ops.set_cpu_formulation
# The one threshold: dense multiply-adds B·N²·D from which the bags win, without and with a backward
# (theirs is a Python Function); docs/benchmarks.md, "Which one runs".
_SPARSE_FROM = (1 << 21, 1 << 25)


def formulation(b: int, n: int, d: int, on_cpu: bool, backward: bool) -> str:
    """The formulation for ``x`` ``(B, N, D)``; off CPU always dense (the bags were measured on CPU)."""
    if pinned == "auto":
        return "sparse" if on_cpu and b * n * n * d >= _SPARSE_FROM[backward] else "dense"
    return pinned if on_cpu and b * n * d else "dense"


def needs_backward(x: Tensor, weight: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


class Layout:
    """A neighbour table ``index`` ``(N, K)`` (``-1`` pads) and its reverse tables, with what the
    formulations derive from them, each built at first use."""

    def __init__(self, index: Tensor, reverse_index: Tensor, reverse_slot: Tensor, forward_slot: Tensor):
        self.tables = (index, reverse_index, reverse_slot, forward_slot)
        self.index, self.on_cpu = index, index.is_cpu
        self.n, self.k = index.shape
        self._batch: tuple[int, tuple[Tensor, ...]] = (0, ())
        self._sliced: tuple[int, tuple[Tensor, ...]] = (0, ())
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
    def target(self) -> Tensor:
        """``(1, N, K)``: each slot's column in the dense matrix (padding: an extra column ``N``);
        one image's view made once, since a view per call costs as much as the B = 1 scatter."""
        return torch.where(self.valid, self.index, self.n)[None]

    @cached_property
    def used(self) -> Tensor:
        """The flat positions ``i * K + k`` of the slots that hold an edge, in CSR order."""
        return self.valid.reshape(-1).nonzero().squeeze(1)

    @cached_property
    def scores(self) -> tuple[Tensor, Tensor] | None:
        """``(edges, target)`` for the fused softmax: the graph as ``BoolTensor[N, N]`` and each
        slot's column ``(1, N, K)``, padding on a non-edge of its row (one exists while ``K <= N``); ``None``
        where a row lists a sender twice or ``K > N``."""
        n = self.n
        edges = self.valid.new_zeros(n, n + 1).scatter_(1, self.target[0], True)[:, :n]
        if self.k > n or int(edges.sum()) != int(self.valid.sum()):
            return None
        outside = (~edges).to(torch.uint8).argmax(dim=1, keepdim=True)
        return edges, torch.where(self.valid, self.index, outside)[None]

    def base(self, dtype: torch.dtype) -> Tensor:
        """``(1, N, N)``: 0 on the edges, ``-inf`` elsewhere (needs :attr:`scores`)."""
        base = self._bases.get(dtype)
        if base is None:
            edges = self.scores[0]  # type: ignore[index]
            base = edges.new_zeros(1, *edges.shape, dtype=dtype).masked_fill_(~edges, -torch.inf)
            self._bases[dtype] = base
        return base

    def batch(self, b: int) -> tuple[Tensor, ...]:
        """For ``b`` images: ``(crow, cols)``, the graph repeated on the diagonal of a ``(bN, bN)``
        CSR pattern; ``(gather, values_at)``, where each entry of a ``(b, K, N)`` copy of the logits
        lies in them with one ``-inf`` prepended (padding reads it), and where the CSR values lie in
        that copy. Built for the largest batch yet, doubling: a smaller batch's are a prefix,
        kept for the last ``b`` (slicing four tensors per call costs as much as a B = 1 product)."""
        last, sliced = self._sliced
        if last == b:
            return sliced
        capacity, parts = self._batch
        if b > capacity:
            capacity = max(b, 2 * capacity)
            n, k, device = self.n, self.k, self.index.device
            images = torch.arange(capacity, device=device)
            slot = torch.arange(n * k, device=device).view(n, k).t() + 1
            parts = (F.pad(self.valid.sum(1).repeat(capacity).cumsum(0), (1, 0)),
                     (self.index.reshape(-1)[self.used] + images[:, None] * n).reshape(-1),
                     torch.where(self.valid.t(), slot + images[:, None, None] * (n * k), 0).reshape(-1),
                     ((self.used % k) * n + self.used // k + images[:, None] * (n * k)).reshape(-1))
            self._batch = (capacity, parts)  # one assignment: threads may share the layout
        e = self.used.numel()
        crow, cols, gather, values_at = parts
        sliced = crow[: b * self.n + 1], cols[: b * e], gather[: b * self.k * self.n], values_at[: b * e]
        self._sliced = (b, sliced)
        return sliced


def layout(table: Any) -> Layout:
    """The :class:`Layout` kept on a ``NeighborTable`` while its index buffer is the same tensor
    (a new graph, a load or ``.to()`` replaces it)."""
    lay = table._layout
    if lay is None or lay.index is not table._buffers["index"]:  # not Module.__getattr__: per call
        lay = table._layout = Layout(*table.tables)
    return lay


def _values(weight: Tensor, lay: Layout, b: int) -> Tensor:
    """The used slots' weights, image by image, row-major: the block matrix's CSR values."""
    flat = weight.reshape(1 if weight.dim() == 2 else b, -1)
    values = (flat.index_select(1, lay.used) if lay.padded else flat).reshape(-1)
    return values.repeat(b) if weight.dim() == 2 else values


def _bags(x: Tensor, values: Tensor, lay: Layout) -> Tensor:
    b, n, d = x.shape
    crow, cols, _, _ = lay.batch(b)
    return F.embedding_bag(cols, x.reshape(b * n, d), crow, mode="sum", per_sample_weights=values,
                           include_last_offset=True).view(b, n, d)


def _images(t: Tensor, b: int) -> Tensor:
    """A cached one-image ``t`` ``(1, ...)`` for ``b`` images: ``t`` itself at ``b = 1``, else a view."""
    return t if b == 1 else t.expand(b, *t.shape[1:])


def _dense(x: Tensor, weight: Tensor, lay: Layout) -> Tensor:
    b, n, _ = x.shape
    if weight.dim() == 2:
        a = x.new_zeros(n, n + lay.padded).scatter_add_(1, lay.target[0], weight)
    else:
        a = x.new_zeros(b, n, n + lay.padded).scatter_add_(2, _images(lay.target, b), weight)
    if lay.padded:
        a = a.narrow(-1, 0, n)
    return torch.matmul(a, x) if weight.dim() == 2 else torch.bmm(a, x)


def aggregate(x: Tensor, weight: Tensor, lay: Layout, form: str = "") -> Tensor:
    """``y = A x``, differentiable; ``weight`` ``(B, N, K)`` or ``(N, K)`` in ``x``'s dtype;
    ``form``: the :func:`formulation`, where the caller knows it."""
    if (form or formulation(*x.shape, x.is_cpu, needs_backward(x, weight))) == "dense":
        return _dense(x, weight, lay)
    if needs_backward(x, weight):
        return _Function.apply("aggregate", x, weight, lay)
    return _bags(x, _values(weight, lay, x.shape[0]), lay)


def softmax_aggregate(x: Tensor, logits: Tensor, lay: Layout, form: str = "") -> Tensor:
    """``aggregate(x, edge_softmax(logits, valid), lay)``, fused where that pays."""
    form = form or formulation(*x.shape, x.is_cpu, needs_backward(x, logits))
    scores = lay.scores if form == "dense" else None
    if scores is not None:
        base, target = lay.base(x.dtype), scores[1]
        if logits.dim() == 2:
            return torch.matmul(base[0].scatter_add(1, target[0], logits).softmax(-1), x)
        b = x.shape[0]
        return torch.bmm(_images(base, b).scatter_add(2, _images(target, b), logits).softmax(-1), x)
    if (form == "sparse" and logits.dim() == 3 and logits.numel() > SMALL_SOFTMAX
            and not needs_backward(x, logits)):
        # PyTorch's CPU softmax over a last dimension of 4-8 runs row by row: take it over K in a
        # (B, K, N) copy, which also drops the padding, then pick the CSR values out of it.
        b, n, _ = x.shape
        _, _, gather, values_at = lay.batch(b)
        padded = F.pad(logits.reshape(-1), (1, 0), value=-torch.inf)
        weights = padded.index_select(0, gather).view(b, lay.k, n).softmax(dim=1)
        return _bags(x, weights.view(-1).index_select(0, values_at), lay)
    return aggregate(x, edge_softmax(logits, lay.valid if lay.padded else None), lay, form)


def edge_dot(a: Tensor, x: Tensor, lay: Layout) -> Tensor:
    """``e[b,i,k] = <a[b,i], x[b, idx[i,k]]>``, 0 on padding slots: ``(B, N, K)``."""
    b, n, d = x.shape
    # sampled_addmm computes only the B·N·K dots, but has no half-precision CPU kernel.
    if formulation(b, n, d, x.is_cpu, False) == "dense" or x.dtype not in (torch.float32, torch.float64):
        out = torch.bmm(a, x.transpose(1, 2)).gather(2, _images(lay.target.clamp(max=n - 1), b))
        return out.masked_fill(~lay.valid, 0) if lay.padded else out
    crow, cols, _, _ = lay.batch(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR tensor support is in beta"
        pattern = torch.sparse_csr_tensor(crow, cols, x.new_ones(cols.numel()), (b * n, b * n),
                                          check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, a.reshape(b * n, d), x.reshape(b * n, d).t(), beta=0.0)
    if not lay.padded:
        return dots.values().view(b, n, lay.k)
    return x.new_zeros(b, n * lay.k).index_copy_(1, lay.used, dots.values().view(b, -1)).view(b, n, lay.k)


def to_reverse(values: Tensor, lay: Layout) -> Tensor:
    """Per-slot values ``(..., N, K)`` laid out along the reverse table: ``(..., N, R)``, 0 on padding."""
    slot = lay.tables[2]
    flat = F.pad(values.flatten(-2), (0, 1))
    if flat.is_cpu and not torch.compiler.is_compiling():  # index_select: the fastest gather on CPU
        return flat.index_select(-1, slot.reshape(-1)).view(*flat.shape[:-1], *slot.shape)
    return flat[..., slot]  # its backward (index_put with accumulate) is deterministic on GPU too


Op = Callable[[Tensor, Tensor, Layout], Tensor]


def grads(kind: str, aggregate_fn: Op, edge_dot_fn: Op, lay: Layout, p: Tensor, q: Tensor, grad: Tensor,
          needs: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None]:
    """The gradients to ``(p, q)`` of ``aggregate(x=p, w=q)`` (``dx = A^T dy`` over the reverse
    table, ``dw`` the table's entries of ``dy x^T``) or of ``edge_dot(a=p, x=q)`` (``da = G x``,
    ``dx = G^T a``), made of the two given functions."""
    if kind == "aggregate":
        dp = aggregate_fn(grad, to_reverse(q, lay), lay.reverse) if needs[0] else None
        dq = edge_dot_fn(grad, p, lay) if needs[1] else None
        return dp, None if dq is None else (dq.sum(dim=0) if q.dim() == 2 else dq).to(q.dtype)
    dp = aggregate_fn(q, grad, lay).to(p.dtype) if needs[0] else None
    return dp, aggregate_fn(p, to_reverse(grad, lay), lay.reverse).to(q.dtype) if needs[1] else None


class _Function(torch.autograd.Function):
    """The bags (``"aggregate"``) or the sampled dots (``"edge_dot"``) with the op's backward,
    which beats embedding_bag's own."""

    @staticmethod
    def forward(ctx: Any, kind: str, p: Tensor, q: Tensor, lay: Layout) -> Tensor:
        ctx.kind, ctx.lay = kind, lay
        ctx.save_for_backward(p, q)
        return _bags(p, _values(q, lay, p.shape[0]), lay) if kind == "aggregate" else edge_dot(p, q, lay)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        edge_dot_fn: Op = lambda a, x, lay: _Function.apply("edge_dot", a, x, lay)  # noqa: E731
        return None, *grads(ctx.kind, aggregate, edge_dot_fn, ctx.lay, *ctx.saved_tensors, grad,
                            ctx.needs_input_grad[1:3]), None
