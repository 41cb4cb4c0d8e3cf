"""The aggregation and its weight gradient in plain PyTorch ops (CPU, and any device without Triton).

Three formulations of ``y[b,i] = sum_k w[b,i,k] x[b, idx[i,k]]`` (and of its weight gradient
``e[b,i,k] = <a[b,i], x[b, idx[i,k]]>``), chosen per shape by :func:`choose_formulation`:

- ``"dense"``: scatter the weights into a ``(B, N, N)`` matrix, then one ``bmm``. ``N / K`` times
  more arithmetic than needed, but a BLAS call is hard to beat at the sizes of a landmark graph.
- ``"sparse"``: the ``B`` graphs as one block-diagonal CSR matrix, multiplied as embedding
  bags (``F.embedding_bag`` with per-sample weights: each output row is a weighted bag of ``x``'s
  rows; FBGEMM's kernel on CPU, 7x faster than ``torch.sparse.mm`` on the same matrix at
  ``(B, N, K, D) = (64, 68, 7, 128)``, one thread); for
  the weight gradient ``torch.sparse.sampled_addmm``. The least arithmetic: wins from a few
  images up.
- ``"gather"``: ``index_select`` the neighbours, then a batched ``(1, K) @ (K, D)`` product: the
  weight gradient of narrow features (the ``F -> 2`` output layer), where the other two waste
  their setup; the aggregation itself only when pinned (the dense product or the bags beat it at
  every measured shape).

With logits instead of weights, :class:`FusedSoftmaxAggregate` runs the dense formulation
fused: the logits added into a matrix of 0 on the edges and ``-inf`` elsewhere, one softmax,
one ``bmm``. It, :class:`DenseAggregate` and :class:`BagAggregate` are also the eager call
plans of the two public functions (``aggregate.py``): :func:`aggregate_plan`.

All three give the same numbers up to float rounding. Padding slots (``idx = -1``) are masked
to weight 0 and read node 0, so they add nothing (a non-finite feature is the exception: the
dense product multiplies every feature by a weight, zero or not). Each formulation is
deterministic.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from .._env import getenv

__all__ = [
    "FORMULATIONS",
    "BagAggregate",
    "BagSoftmaxAggregate",
    "DenseAggregate",
    "FusedSoftmaxAggregate",
    "aggregate_plan",
    "aggregate_reference",
    "aggregate_torch",
    "autograd_native",
    "choose_formulation",
    "edge_dot_reference",
    "edge_dot_torch",
    "softmax_aggregate_plan",
    "without_autocast",
]

FORMULATIONS = ("dense", "sparse", "gather")

# Benchmarks (and curious users) can pin one formulation; "auto" picks per shape.
_FORCE_ENV = "LANDMARK_GRAPH_CPU_FORMULATION"


def _forced() -> str | None:
    value = getenv(_FORCE_ENV)
    if value is None:
        return None
    value = value.strip().lower()
    if value in ("", "auto"):
        return None
    if value not in FORMULATIONS:
        raise ValueError(f"{_FORCE_ENV} must be 'auto' or one of {FORMULATIONS}, got {value!r}")
    return value


class _Crossover(NamedTuple):
    """Where the embedding bags overtake the dense product for one kind of call: at
    ``B*N*N*(D + offset) >= work`` (the dense product's multiply-adds, plus its per-image costs
    that do not grow with ``D`` in units of ``D``), from ``nodes`` nodes and ``features``
    features up."""

    offset: int
    work: float
    nodes: int = 0
    features: int = 0


# Keyed by (op, backward, shared). Fitted to dense/bags time ratios measured on 2 threads of a
# 2-core x86 CPU (MKL, FBGEMM) for N in {29, 48, 68, 98}, K in {4, 7}, D in {2, 128, 256},
# B in {1, 4, 16, 64, 256}; on one thread the forward crossovers sit ~1.5-2x higher. With a
# backward, the bags run an autograd Function (~50 us of Python) against autograd's own
# record of the dense ATen calls. A softmax before them runs fused with the dense product, or
# without a backward slot-major with the bags (BagSoftmaxAggregate), else as edge_softmax.
_CROSSOVERS = {
    ("aggregate", False, False): _Crossover(32, 2e6),
    ("aggregate", True, False): _Crossover(8, 16e6, nodes=48),
    ("aggregate", False, True): _Crossover(8, 4e6),
    ("aggregate", True, True): _Crossover(8, 5e6, features=9),
    ("softmax_aggregate", False, False): _Crossover(128, 3.6e6),
    ("softmax_aggregate", True, False): _Crossover(8, 20e6, nodes=64),
    ("softmax_aggregate", False, True): _Crossover(64, 30e6),
    ("softmax_aggregate", True, True): _Crossover(8, 5e6, features=9),
}


def choose_formulation(batch: int, nodes: int, degree: int, features: int, *, tracing: bool,
                       device: torch.device, op: str = "aggregate", shared: bool = False,
                       backward: bool = False) -> str:
    """The formulation for one call; ``tracing`` (fake tensors, compile, export) forces ``"dense"``.

    ``op``: ``"aggregate"``, ``"softmax_aggregate"`` (the fused softmax is the dense
    formulation) or ``"edge_dot"``. ``shared``: the weights are ``(N, K)``. ``backward``: a
    backward pass will follow; the dense matrix autograd saved then makes ``dx = A^T dy`` one
    ``bmm`` with no Python backward.

    The dense formulation builds a ``B x N x N`` matrix (one ``N x N`` when shared) and runs
    ``B*N*N*D`` multiply-adds, the embedding bags ``B*N*K*D``: the bags win from some amount of
    dense work up (``_CROSSOVERS``, measured; near a crossover the two are within the 10-20 %
    noise of the machine).
    """
    if tracing:
        return "dense"
    forced = _forced()
    if forced is not None:
        return forced
    if device.type != "cpu":
        # cuSPARSE and friends were not measured: the dense product is a safe GPU default.
        return "dense"
    if op == "edge_dot":
        if features <= 8:  # narrow features (the F -> 2 output layer): setup dominates
            return "gather" if nodes > 48 else "dense"
        # sampled_addmm computes only the B*N*K needed dots, the dense bmm all B*N*N.
        return "sparse" if batch * nodes >= 1024 else "dense"
    at = _CROSSOVERS[op, backward, shared]
    bags = (batch * nodes * nodes * (features + at.offset) >= at.work and nodes >= at.nodes
            and features >= at.features)
    return "sparse" if bags else "dense"


def _masked(weight: Tensor, valid: Tensor) -> Tensor:
    return weight.masked_fill(~valid, 0) if weight.dim() == 2 else weight.masked_fill(~valid[None], 0)


def _is_tracing(t: Tensor) -> bool:
    return bool(is_fake(t)) or torch.compiler.is_compiling() or torch.compiler.is_exporting()


class _TableInfo:
    """Tensors derived from one neighbour table, cached on the table tensor in eager mode."""

    __slots__ = ("_score_layout", "_used_slots", "csr", "distinct", "edges", "has_padding", "padded_to",
                 "safe", "valid", "version")

    def __init__(self, index: Tensor, n: int, tracing: bool) -> None:
        self.version = index._version
        self.valid = index >= 0
        self.safe = index.clamp(min=0)
        # Padding slots scatter into an extra column ``n`` that the dense product drops.
        self.padded_to = torch.where(self.valid, index, n)
        self.has_padding = True if tracing else bool((~self.valid).any())
        self.edges = -1 if tracing else int(self.valid.sum())  # used slots, for the CSR paths
        # No row lists a sender twice (always so in a NeighborTable): each edge has one column.
        self.distinct = False
        if not tracing:
            ordered = self.padded_to.sort(dim=1).values
            self.distinct = not bool(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] < n)).any())
        self.csr: dict[int, tuple[Tensor, Tensor]] = {}
        self._score_layout: tuple[Tensor, Tensor] | None = None
        self._used_slots: Tensor | None = None

    def score_layout(self) -> tuple[Tensor, Tensor]:
        """``(edges, target)``: the table as a ``BoolTensor[N, N]``, and a ``LongTensor[N, K]``
        of columns for per-slot scores that has each padding slot on a column of its row outside
        the graph (a padded row has fewer than ``K <= N`` neighbours, so one exists)."""
        if self._score_layout is None:
            n = self.valid.shape[0]
            edges = torch.zeros(n, n + 1, dtype=torch.bool, device=self.valid.device)
            edges = edges.scatter_(1, self.padded_to, True)[:, :n]
            outside = (~edges).to(torch.uint8).argmax(dim=1, keepdim=True)  # a row's first non-edge
            self._score_layout = edges, torch.where(self.valid, self.padded_to, outside)
        return self._score_layout

    def block_structure(self, batch: int) -> tuple[Tensor, Tensor]:
        """``(crow, cols)``: the ``B`` graphs as one ``(B*N, B*N)`` block-diagonal CSR pattern."""
        if batch not in self.csr:
            n = self.valid.shape[0]
            cols = self.safe[self.valid]  # row-major: each row's neighbours in table order
            offsets = torch.arange(batch, device=cols.device) * n
            crow = torch.zeros(batch * n + 1, dtype=torch.long, device=cols.device)
            torch.cumsum(self.valid.sum(dim=1).repeat(batch), 0, out=crow[1:])
            if len(self.csr) >= 8:
                self.csr.pop(next(iter(self.csr)))
            self.csr[batch] = (crow, (cols[None, :] + offsets[:, None]).reshape(-1))
        return self.csr[batch]

    def block_csr(self, batch: int, values: Tensor) -> Tensor:
        """The ``B`` graphs as one ``(B*N, B*N)`` block-diagonal CSR matrix."""
        crow, cols = self.block_structure(batch)
        size = crow.numel() - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(crow, cols, values, (size, size), check_invariants=False)

    def used_slots(self) -> Tensor:
        """``LongTensor[E]``: the flat positions ``i * K + k`` of the used slots, row-major (the
        order of a CSR row's values)."""
        if self._used_slots is None:
            self._used_slots = self.valid.reshape(-1).nonzero().squeeze(1)
        return self._used_slots

    def edge_values(self, weight: Tensor, batch: int) -> Tensor:
        """The weights of the used slots, image by image, row-major: CSR ``values``."""
        if not self.has_padding:
            return weight.reshape(-1).repeat(batch) if weight.dim() == 2 else weight.reshape(-1)
        # index_select with the slots' positions: half the time of a boolean mask, which
        # looks the positions up again at every call.
        if weight.dim() == 2:
            return weight.reshape(-1).index_select(0, self.used_slots()).repeat(batch)
        return weight.reshape(weight.shape[0], -1).index_select(1, self.used_slots()).reshape(-1)


def _table_info(index: Tensor, n: int, tracing: bool) -> _TableInfo:
    if tracing:
        return _TableInfo(index, n, tracing=True)
    info = getattr(index, "_landmark_graph_info", None)
    if info is None or info.version != index._version or info.valid.shape[0] != n:
        info = _TableInfo(index, n, tracing=False)
        index._landmark_graph_info = info
    return info


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta, ...)
        return False


def without_autocast(fn: Any, first: Tensor, *args: Any) -> Tensor:
    """``fn(first, *args)`` in the dtype of its inputs: autocast would otherwise recast a ``bmm``."""
    if not _autocast_on(first.device.type):
        return fn(first, *args)
    with torch.autocast(first.device.type, enabled=False):
        return fn(first, *args)


def _no_autocast(fn):
    """Decorator: :func:`without_autocast`."""

    def wrapper(first: Tensor, *args: Any) -> Tensor:
        return without_autocast(fn, first, *args)

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


@_no_autocast
def aggregate_torch(x: Tensor, weight: Tensor, index: Tensor, backward: bool = False) -> Tensor:
    """``y[b,i] = sum_k w[b,i,k] x[b, idx[i,k]]`` with ``weight`` ``(B,N,K)`` or ``(N,K)``.

    ``backward``: a backward pass will follow, so the choice of formulation counts its cost.
    Every formulation is made of differentiable ATen ops.
    """
    b, n, d = x.shape
    k = index.shape[1]
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
    if b == 0 or n == 0 or d == 0 or k == 0:
        return x.new_zeros(b, n, d)
    tracing = _is_tracing(x)
    shared = weight.dim() == 2
    form = choose_formulation(b, n, k, d, tracing=tracing, device=x.device, shared=shared, backward=backward)
    info = _table_info(index, n, tracing)
    if form == "dense":
        return DenseAggregate(info, x, k, shared)(x, weight)
    if form == "sparse":
        return BagAggregate(info, x)(x, weight)
    # gather
    w = _masked(weight, info.valid) if info.has_padding else weight
    gathered = x.index_select(1, info.safe.reshape(-1)).view(b * n, k, d)
    wb = w.expand(b, n, k) if shared else w
    return torch.bmm(wb.reshape(b * n, 1, k), gathered).view(b, n, d)


class DenseAggregate:
    """``y = A x``, ``A`` the weights scattered into an ``N x N`` matrix per image (one matrix for
    shared ``(N, K)`` weights), for calls shaped like ``x``: ``scatter_add`` into zeros (padding
    slots into an extra column ``N``, cut off), then ``bmm`` (a broadcast ``matmul`` when shared).
    Weights cannot take :class:`FusedSoftmaxAggregate`'s column outside the graph: a padding
    weight there would enter the product. ATen ops only, which autograd differentiates;
    ``weight`` in ``x``'s dtype."""

    __slots__ = ("nodes", "padded", "shape", "target")

    def __init__(self, info: _TableInfo, x: Tensor, k: int, shared: bool) -> None:
        b, n, _ = x.shape
        self.nodes, self.padded = n, info.has_padding
        columns = n + info.has_padding
        self.shape = (n, columns) if shared else (b, n, columns)
        self.target = info.padded_to if shared else info.padded_to.expand(b, n, k)

    def __call__(self, x: Tensor, weight: Tensor) -> Tensor:
        dense = x.new_zeros(self.shape).scatter_add_(-1, self.target, weight)
        if self.padded:
            dense = dense.narrow(-1, 0, self.nodes)
        return torch.matmul(dense, x) if len(self.shape) == 2 else torch.bmm(dense, x)


class BagAggregate:
    """``y = A x``, ``A`` the ``B`` graphs as one block-diagonal CSR matrix, for calls shaped like
    ``x``: each output row an embedding bag of ``x``'s rows weighted by the row's values
    (``F.embedding_bag``; on CPU FBGEMM's kernel, 7x faster than ``torch.sparse.mm`` on the
    same matrix). Forward only: the op's backward (bags again, and ``sampled_addmm``) beats the
    bags' own."""

    __slots__ = ("batch", "cols", "crow", "info", "rows")

    def __init__(self, info: _TableInfo, x: Tensor) -> None:
        b, n, d = x.shape
        self.crow, self.cols = info.block_structure(b)
        self.info, self.batch, self.rows = info, b, (b * n, d)

    def __call__(self, x: Tensor, weight: Tensor) -> Tensor:
        return self.product(x, self.info.edge_values(weight, self.batch))

    def product(self, x: Tensor, values: Tensor) -> Tensor:
        """``A x`` for the CSR ``values`` (the used slots' weights, image by image, row-major)."""
        return F.embedding_bag(self.cols, x.reshape(self.rows), self.crow, mode="sum",
                               per_sample_weights=values, include_last_offset=True).view(x.shape)


class BagSoftmaxAggregate:
    """The softmax over each row's edge logits, then :class:`BagAggregate`, for per-image logits
    and no backward. The softmax runs over the leading dimension of a ``(K, B*N)`` copy of the
    logits, taken with one ``index_select`` that also reads an appended ``-inf`` for every
    padding slot; a second ``index_select`` takes the CSR values out of it. PyTorch's CPU
    softmax over a last dimension of 4-8 is slow (see :func:`~.edge_softmax.edge_softmax`), and
    a transposing copy of the logits cost more than both gathers: the CSR values took 0.35 ms
    this way against 0.58 ms through ``edge_softmax`` at ``(256, 68, 7)``, one thread."""

    __slots__ = ("bags", "slot_major", "values_at")

    def __init__(self, info: _TableInfo, x: Tensor, k: int) -> None:
        b, n, _ = x.shape
        device = info.valid.device
        self.bags = BagAggregate(info, x)
        slots = b * n * k
        # slot_major[k, r]: the flat position of row r's slot k in the logits, or the -inf after them.
        source = torch.arange(slots, device=device).view(b * n, k).t()
        self.slot_major = torch.where(info.valid.t().repeat(1, b), source, slots).reshape(-1)
        # The used slots in CSR order (image, row, slot), as positions k * B*N + r.
        used = info.used_slots()
        row = (torch.arange(b, device=device)[:, None] * n + used // k).reshape(-1)
        self.values_at = (used % k).repeat(b) * (b * n) + row

    def __call__(self, x: Tensor, logits: Tensor) -> Tensor:
        padded = F.pad(logits.reshape(-1), (0, 1), value=float("-inf"))
        weights = padded.index_select(0, self.slot_major).view(logits.shape[-1], -1).softmax(dim=0)
        return self.bags.product(x, weights.view(-1).index_select(0, self.values_at))


def _formulation(x: Tensor, k: int, shared: bool, backward: bool, op: str = "aggregate") -> str | None:
    """The formulation of an eager call shaped like ``x`` (``None`` when empty)."""
    b, n, d = x.shape
    if b * n * d * k == 0:
        return None
    return choose_formulation(b, n, k, d, tracing=False, device=x.device, op=op, shared=shared,
                              backward=backward)


def aggregate_plan(x: Tensor, shared: bool, index: Tensor,
                   backward: bool = False) -> DenseAggregate | BagAggregate | None:
    """The ATen calls that eager calls shaped like this one run: the dense formulation's (which
    autograd differentiates), or with no ``backward`` to follow the embedding bags; ``None``
    elsewhere (the op's autograd Function, or an empty result). ``shared``: weights ``(N, K)``."""
    k = index.shape[1]
    form = _formulation(x, k, shared, backward)
    if form == "dense":
        return DenseAggregate(_table_info(index, x.shape[1], tracing=False), x, k, shared)
    if form == "sparse" and not backward:
        return BagAggregate(_table_info(index, x.shape[1], tracing=False), x)
    return None


# Beyond this many N x N scores the two-step path's (B, N, K) softmax costs less than the fused
# path's N x N one. Measured on 2 threads: fused ahead of two-step at B = 1 and at 29 nodes up to
# B = 256 (its three ops use both threads, the two-step's small ones barely); behind at 64 x 98 x 98.
_FUSED_SCORES_MAX = 262144


class FusedSoftmaxAggregate:
    """``y[b,i] = sum_k softmax_k(logits[b,i])_k x[b, idx[i,k]]`` in the dense formulation, for
    one call signature (batch, features, dtype, device, shared or per-image logits).

    The logits are added into an ``N x N`` matrix that holds 0 on the graph's edges and
    ``-inf`` elsewhere; a padding slot adds to a ``-inf`` of its row and stays ``-inf``. Then one
    row softmax and one product: the authors' three ops (for their masking, a ``scatter_add``),
    which autograd differentiates. A padding slot must hold a finite logit or ``-inf`` (``+inf``
    or NaN there would turn its row NaN): that is what saves the view and copy of dropping an
    extra padding column, ~30 % of the call at ``B = 1``. Call it with autocast off
    (:func:`without_autocast`): it computes in ``x``'s dtype, which the logits must share.
    """

    __slots__ = ("base", "shared", "target")

    def __init__(self, info: _TableInfo, x: Tensor, k: int, shared: bool) -> None:
        b, n, _ = x.shape
        edges, target = info.score_layout()
        base = x.new_zeros(n, n).masked_fill_(~edges, float("-inf"))
        # Shared logits stay 2-D (N x N scores, then a broadcast matmul): no per-call views.
        self.base = base if shared else base.expand(b, n, n)
        self.target = target if shared else target.expand(b, n, k)
        self.shared = shared

    def __call__(self, x: Tensor, logits: Tensor) -> Tensor:
        weights = self.base.scatter_add(-1, self.target, logits).softmax(dim=-1)
        return torch.matmul(weights, x) if self.shared else torch.bmm(weights, x)


def softmax_aggregate_plan(x: Tensor, shared: bool, index: Tensor, backward: bool = False
                           ) -> FusedSoftmaxAggregate | BagSoftmaxAggregate | None:
    """The softmax-aggregation's own ATen calls for eager calls shaped like this one: fused in the
    dense formulation, or with per-image logits and no ``backward`` to follow the embedding
    bags; ``None`` elsewhere (the caller then runs ``edge_softmax`` and the aggregation): the
    dense formulation with too many ``N x N`` scores, a row listing a sender twice, or ``K > N``.

    ``shared``: the logits are ``(N, K)``; ``backward``: a backward pass will follow.
    """
    b, n, _ = x.shape
    k = index.shape[1]
    form = _formulation(x, k, shared, backward, op="softmax_aggregate")
    info = _table_info(index, n, tracing=False)
    if form == "sparse" and not (shared or backward):
        return BagSoftmaxAggregate(info, x, k)
    # k > n: a row might have padding and no column outside the graph (score_layout).
    if form != "dense" or (1 if shared else b) * n * n > _FUSED_SCORES_MAX or k > n or not info.distinct:
        return None
    return FusedSoftmaxAggregate(info, x, k, shared)


def autograd_native(x: Tensor, weight: Tensor, index: Tensor) -> bool:
    """Whether a call with a backward to come is best left to ATen's autograd: when it runs the
    dense formulation, whose ``bmm`` and ``scatter_add`` autograd differentiates with the op's
    own maths (``dx = A^T dy``; ``dw`` = the table's entries of ``dy x^T``) and no Python
    backward (most of the time at ``B = 1``). Only asked in eager mode; an empty call keeps
    the op, whose empty result still needs a place in the graph."""
    return _formulation(x, index.shape[1], weight.dim() == 2, backward=True) == "dense"


@_no_autocast
def edge_dot_torch(a: Tensor, x: Tensor, index: Tensor) -> Tensor:
    """``e[b,i,k] = <a[b,i], x[b, idx[i,k]]>``, zero on padding slots; ``(B, N, K)``."""
    b, n, d = x.shape
    k = index.shape[1]
    if a.dtype != x.dtype:
        a = a.to(x.dtype)
    if b == 0 or n == 0 or d == 0 or k == 0:
        return x.new_zeros(b, n, k)
    tracing = _is_tracing(x)
    form = choose_formulation(b, n, k, d, tracing=tracing, device=x.device, op="edge_dot")
    if form == "sparse" and x.dtype not in (torch.float32, torch.float64):
        form = "dense"  # sampled_addmm has no half-precision CPU kernel
    info = _table_info(index, n, tracing)
    if form == "dense":
        scores = torch.bmm(a, x.transpose(1, 2))  # (B, N, N)
        out = scores.gather(2, info.safe.expand(b, n, k))
    elif form == "sparse":
        pattern = info.block_csr(b, x.new_ones(b * info.edges))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampled = torch.sparse.sampled_addmm(
                pattern, a.reshape(b * n, d), x.reshape(b * n, d).t(), beta=0.0
            ).values()
        if not info.has_padding:
            return sampled.view(b, n, k)
        out = x.new_zeros(b, n, k)
        out[:, info.valid] = sampled.view(b, -1)
        return out
    else:
        gathered = x.index_select(1, info.safe.reshape(-1)).view(b * n, k, d)
        out = torch.bmm(gathered, a.reshape(b * n, d, 1)).view(b, n, k)
    return out.masked_fill(~info.valid[None], 0) if info.has_padding else out


def aggregate_reference(x: Tensor, weight: Tensor, index: Tensor) -> Tensor:
    """The op in the plainest standard ops (gather, multiply, sum): the export decomposition."""
    valid = index >= 0
    w = _masked(weight.to(x.dtype), valid)
    gathered = x[:, index.clamp(min=0)]  # (B, N, K, D)
    return (w.unsqueeze(-1) * gathered).sum(dim=2)


def edge_dot_reference(a: Tensor, x: Tensor, index: Tensor) -> Tensor:
    """:func:`edge_dot_torch` in the plainest standard ops."""
    valid = index >= 0
    gathered = x[:, index.clamp(min=0)]  # (B, N, K, D)
    out = (gathered * a.to(x.dtype).unsqueeze(2)).sum(dim=-1)
    return out.masked_fill(~valid, 0)
