r"""``neighbor_aggregate``: the one sparse op every graph layer runs (SPEC §5), and
``neighbor_softmax_aggregate``: the same after a softmax over each row's edge logits.

Two operators are registered with :mod:`torch.library` under the ``landmark_graph`` namespace:

- ``landmark_graph::aggregate(x, weight, index, reverse_index, reverse_slot, forward_slot)``:
  :math:`y_{b,i} = \sum_k w_{b,i,k}\, x_{b,\mathrm{idx}_{i,k}}`.
- ``landmark_graph::edge_dot(a, x, index, reverse_index, reverse_slot, forward_slot)``:
  :math:`e_{b,i,k} = \langle a_{b,i}, x_{b,\mathrm{idx}_{i,k}} \rangle` (the weight gradient).

Both are :func:`torch.library.triton_op` s: on CUDA (and on CPU tensors under
``TRITON_INTERPRET=1`` with ``LANDMARK_GRAPH_BACKEND=triton``) they launch the Triton kernels of
:mod:`._triton_kernels` through :func:`torch.library.wrap_triton`, elsewhere they run the PyTorch
formulations of :mod:`._torch_impl`. Their backward passes (:func:`torch.library.register_autograd`)
are made of the two ops again, so double backward works:

.. math::
    \partial x = \mathrm{aggregate}(\partial y,\ w^{\top},\ \mathrm{idx}^{\top}), \qquad
    \partial w = \mathrm{edge\_dot}(\partial y,\ x,\ \mathrm{idx})

with :math:`\mathrm{idx}^{\top}` the precomputed reverse table
(:func:`~landmark_graph.ops.neighbor_table.reverse_table`): every gradient element is written by
one program, with no atomics, so the backward pass is bitwise deterministic.

Eager fast path: a call through the ``torch.library`` dispatcher costs 50-100 us of Python, more
than the whole aggregation at ``B = 1`` on CPU. When nothing traces or intercepts (no
``torch.compile``, export, fake tensors or dispatch mode), :func:`neighbor_aggregate` runs the same
kernels through a :class:`torch.autograd.Function` with the same backward formulas; otherwise it
calls the registered op. Where the CPU formulation for training is the dense product
(:func:`~._torch_impl.autograd_native`), even the Function is skipped: autograd records the
product's ATen ops, whose backward is the same maths (``dx = A^T dy``) with no Python in it.

Call plans: the checks and decisions of an eager call on a :class:`NeighborTable` are kept on
the table, keyed by the call's shapes, dtypes, devices, grad mode and environment variables.
A repeated call looks its plan up (~2 us) and runs it. A new graph, ``.to()``, or an in-place
edit of the table drops the plans. Tracing, autocast, tensor subclasses and raw index tensors
always take the full path.

Backend: the environment variable ``LANDMARK_GRAPH_BACKEND`` (read at each call):
``auto`` (default: Triton for CUDA tensors when Triton imports, else PyTorch), ``torch`` or
``triton`` (falls back to PyTorch, with one warning, when Triton is missing or the tensors are
on CPU without ``TRITON_INTERPRET=1``).

Export: while :func:`torch.export.export` (and so ``torch.onnx.export(..., dynamo=True)``) traces,
:func:`neighbor_aggregate` emits the plain decomposition (:func:`aggregate_reference`: gather,
multiply, sum) instead of the op, so exported programs hold standard ops only. A program that
holds the op anyway (from a direct ``torch.ops.landmark_graph.aggregate`` call) decomposes with
``ep.run_decompositions(export_decompositions())``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._library.triton import set_wrap_triton_enabled
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op
from torch.utils.flop_counter import register_flop_formula

from .._env import getenv
from ._torch_impl import (
    _FORCE_ENV,
    _autocast_on,
    aggregate_plan,
    aggregate_reference,
    aggregate_torch,
    autograd_native,
    edge_dot_reference,
    edge_dot_torch,
    softmax_aggregate_plan,
    without_autocast,
)
from .edge_softmax import edge_softmax
from .neighbor_table import NeighborTable, reverse_table

__all__ = ["BACKENDS", "backend", "export_decompositions", "neighbor_aggregate", "neighbor_softmax_aggregate"]

BACKENDS = ("auto", "torch", "triton")
_BACKEND_ENV = "LANDMARK_GRAPH_BACKEND"
_warned: set[str] = set()
_triton_state: dict[str, Any] = {}


def backend() -> str:
    """The requested backend, from ``LANDMARK_GRAPH_BACKEND`` (``auto`` when unset)."""
    value = getenv(_BACKEND_ENV)
    if value is None:
        return "auto"
    value = value.strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{_BACKEND_ENV} must be one of {BACKENDS}, got {value!r}")
    return value


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _kernels() -> Any:
    """The Triton kernel module, or ``None`` when Triton cannot be imported (cached)."""
    if "module" not in _triton_state:
        try:
            from . import _triton_kernels
        except ImportError as err:  # no triton, or a broken one
            _triton_state["module"] = None
            _triton_state["error"] = err
        else:
            _triton_state["module"] = _triton_kernels
    return _triton_state["module"]


def _use_triton(x: Tensor, choice: str | None = None) -> bool:
    """Whether ``x`` runs on the Triton kernels; ``choice``: :func:`backend`, when already read."""
    choice = choice or backend()
    if choice == "torch":
        return False
    device = x.device.type
    if device != "cuda" and (choice == "auto" or device != "cpu"):
        return False
    kernels = _kernels()
    if kernels is None:
        if choice == "triton":
            _warn_once("missing", f"{_BACKEND_ENV}=triton but triton cannot be imported "
                       f"({_triton_state['error']}); using the PyTorch backend")
        return False
    if x.device.type == "cpu":
        if getenv("TRITON_INTERPRET") == "1" and kernels.INTERPRETED:
            # The interpreter runs real CPU tensors only; fake ones trace the torch formulation.
            return not is_fake(x)
        _warn_once("cpu", f"{_BACKEND_ENV}=triton runs CPU tensors only under the Triton "
                   "interpreter (TRITON_INTERPRET=1, set before triton is imported); using the "
                   "PyTorch backend")
        return False
    if kernels.INTERPRETED:
        _warn_once("interp", "the Triton kernels were built for the interpreter "
                   "(TRITON_INTERPRET=1), which cannot run CUDA tensors; using the PyTorch backend")
        return False
    return True


# --------------------------------------------------------------------------------------------
# The operators.


@triton_op("landmark_graph::aggregate", mutates_args=())
def _aggregate_op(
    x: Tensor, weight: Tensor, index: Tensor,
    reverse_index: Tensor, reverse_slot: Tensor, forward_slot: Tensor,
) -> Tensor:
    if _use_triton(x):
        return _kernels().aggregate(x, weight.to(x.dtype), index)
    return aggregate_torch(x, weight, index)


@triton_op("landmark_graph::edge_dot", mutates_args=())
def _edge_dot_op(
    a: Tensor, x: Tensor, index: Tensor,
    reverse_index: Tensor, reverse_slot: Tensor, forward_slot: Tensor,
) -> Tensor:
    if _use_triton(x):
        return _kernels().edge_dot(a.to(x.dtype), x, index)
    return edge_dot_torch(a, x, index)


# Eager fast path. A call through the torch.library op costs ~50-100 us of Python dispatch
# (autograd wrapper, dynamo guard, HOP bypass), more than the whole aggregation at B = 1. In
# plain eager mode the same kernels run through a torch.autograd.Function with the same backward
# formulas instead; whenever something traces or intercepts (torch.compile, export, fake tensors,
# a dispatch mode such as FlopCounterMode), the registered op runs, so tracers see it.


_dispatch_modes = torch._C._len_torch_dispatch_stack  # what _get_current_dispatch_mode() reads


def _eager(x: Tensor) -> bool:
    return not (
        torch.compiler.is_compiling()
        or (type(x) is not Tensor and is_fake(x))  # a plain Tensor is not fake: skip the 1.5 us test
        or _dispatch_modes()
        or torch._is_functional_tensor(x)
    )


def _aggregate_direct(x: Tensor, weight: Tensor, index: Tensor) -> Tensor:
    if _use_triton(x):
        with set_wrap_triton_enabled(False):
            return _kernels().aggregate(x, weight.to(x.dtype), index)
    return aggregate_torch(x, weight, index)


def _edge_dot_direct(a: Tensor, x: Tensor, index: Tensor) -> Tensor:
    if _use_triton(x):
        with set_wrap_triton_enabled(False):
            return _kernels().edge_dot(a.to(x.dtype), x, index)
    return edge_dot_torch(a, x, index)


class _AggregateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, *tables: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, *tables)
        if _use_triton(x):
            with set_wrap_triton_enabled(False):
                return _kernels().aggregate(x, weight.to(x.dtype), tables[0])
        return aggregate_torch(x, weight, tables[0], True)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return _aggregate_backward(ctx, grad)


class _EdgeDotFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: Tensor, x: Tensor, *tables: Tensor) -> Tensor:
        ctx.save_for_backward(a, x, *tables)
        return _edge_dot_direct(a, x, tables[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return _edge_dot_backward(ctx, grad)


def _needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _aggregate(x: Tensor, weight: Tensor, *tables: Tensor) -> Tensor:
    """The ``aggregate`` op, through the eager fast path when nothing traces."""
    if not _eager(x):
        return _aggregate_op(x, weight, *tables)
    if not _needs_graph(x, weight):
        return _aggregate_direct(x, weight, tables[0])
    if not _use_triton(x) and autograd_native(x, weight, tables[0]):
        # The dense formulation's ATen ops, recorded by autograd: the op's backward maths
        # without a Python backward, whose overhead is most of the time at B = 1.
        return aggregate_torch(x, weight, tables[0], True)
    return _AggregateFn.apply(x, weight, *tables)


def _edge_dot(a: Tensor, x: Tensor, *tables: Tensor) -> Tensor:
    """The ``edge_dot`` op, through the eager fast path when nothing traces."""
    if not _eager(x):
        return _edge_dot_op(a, x, *tables)
    if _needs_graph(a, x):
        return _EdgeDotFn.apply(a, x, *tables)
    return _edge_dot_direct(a, x, tables[0])


def _to_reverse(weight: Tensor, reverse_slot: Tensor) -> Tensor:
    """Per-edge values ``(..., N, K)`` laid out along the reverse table: ``(..., N, R)``, 0 pads."""
    flat = F.pad(weight.flatten(-2), (0, 1))
    if flat.device.type == "cpu" and not torch.compiler.is_compiling():
        # index_select is several times faster than advanced indexing on CPU.
        return flat.index_select(-1, reverse_slot.reshape(-1)).view(*flat.shape[:-1], *reverse_slot.shape)
    # Elsewhere advanced indexing: its backward (index_put with accumulate) is deterministic.
    return flat[..., reverse_slot]


def _setup(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _aggregate_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, weight, index, rev_index, rev_slot, fwd_slot = ctx.saved_tensors
    dx = dw = None
    if ctx.needs_input_grad[0]:
        dx = _aggregate(grad, _to_reverse(weight, rev_slot), rev_index, index, fwd_slot, rev_slot)
    if ctx.needs_input_grad[1]:
        dw = _edge_dot(grad, x, index, rev_index, rev_slot, fwd_slot)
        if weight.dim() == 2:
            dw = dw.sum(dim=0)
        dw = dw.to(weight.dtype)
    return dx, dw, None, None, None, None


def _edge_dot_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    a, x, index, rev_index, rev_slot, fwd_slot = ctx.saved_tensors
    da = dx = None
    if ctx.needs_input_grad[0]:
        da = _aggregate(x, grad, index, rev_index, rev_slot, fwd_slot).to(a.dtype)
    if ctx.needs_input_grad[1]:
        dx = _aggregate(a, _to_reverse(grad, rev_slot), rev_index, index, fwd_slot, rev_slot)
        dx = dx.to(x.dtype)
    return da, dx, None, None, None, None


_aggregate_op.register_autograd(_aggregate_backward, setup_context=_setup)
_edge_dot_op.register_autograd(_edge_dot_backward, setup_context=_setup)


@register_flop_formula([torch.ops.landmark_graph.aggregate, torch.ops.landmark_graph.edge_dot])
def _flops(first_shape: Any, x_shape: Any, index_shape: Any, *_: Any, **__: Any) -> int:
    """``2 B N K D`` for both ops (a multiply and an add per table slot and feature), so that
    :class:`torch.utils.flop_counter.FlopCounterMode` counts the sparse work, not the dense
    product a CPU formulation may run."""
    b, n, d = first_shape
    return 2 * b * n * index_shape[1] * d


def _aggregate_decomposition(x: Tensor, weight: Tensor, index: Tensor, *_: Tensor) -> Tensor:
    return aggregate_reference(x, weight, index)


def _edge_dot_decomposition(a: Tensor, x: Tensor, index: Tensor, *_: Tensor) -> Tensor:
    return edge_dot_reference(a, x, index)


def export_decompositions() -> dict[Any, Callable[..., Tensor]]:
    """Decompositions of the two ops into standard ops, for ``ExportedProgram.run_decompositions``.

    Example:
        >>> sorted(op.__name__ for op in export_decompositions())
        ['aggregate.default', 'edge_dot.default']

    Use: ``torch.export.export(module, args).run_decompositions(export_decompositions())``.
    """
    return {
        torch.ops.landmark_graph.aggregate.default: _aggregate_decomposition,
        torch.ops.landmark_graph.edge_dot.default: _edge_dot_decomposition,
    }


# --------------------------------------------------------------------------------------------
# Call plans. A NeighborTable call whose signature (shapes, dtypes, devices, grad, environment)
# was checked before skips the checks and decisions: at B = 1 they were ~9 us of a ~20 us call.


class _Plan(NamedTuple):
    table: Tensor  # the index buffer the plan was checked against,
    version: int  # and its version then: a replaced or edited table invalidates the plan
    run: Callable[[Tensor, Tensor], Tensor]


_PLANS_PER_TABLE = 16  # signatures per table: in practice a few batch sizes × grad modes
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None) or (
    lambda: torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


def _signature(op: str, x: object, weight: object, index: object) -> tuple | None:
    """The key of an eager call on a :class:`NeighborTable` with plain tensors, or ``None`` when
    the call must take the full path (tracing, autocast, subclasses, a raw index). Export traces
    with dynamo (compiling) or under a dispatch mode: either ends here."""
    if (type(index) is not NeighborTable or type(x) is not Tensor or type(weight) is not Tensor
            or _any_autocast() or not _eager(x)):
        return None
    return (op, x.shape, weight.shape, x.dtype, weight.dtype, x.device, weight.device,
            torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad),
            getenv(_BACKEND_ENV), getenv(_FORCE_ENV))


def _planned(op: str, x: Tensor, weight: Tensor, index: Tensor | NeighborTable
             ) -> Callable[[Tensor, Tensor], Tensor] | None:
    """The plan of an earlier call with this one's signature, while its table is unchanged."""
    key = _signature(op, x, weight, index)
    plan = None if key is None else index._call_plans.get(key)  # type: ignore[union-attr]
    if plan is None:
        return None
    table = index._buffers["index"]  # type: ignore[union-attr]
    return plan.run if plan.table is table and plan.version == table._version else None


def _remember(op: str, x: Tensor, weight: Tensor, index: Tensor | NeighborTable,
              plan: Callable[[], Callable[[Tensor, Tensor], Tensor]]) -> None:
    """Keep ``plan()`` as the plan of calls with this one's signature (it passed the checks)."""
    key = _signature(op, x, weight, index)
    if key is None:
        return
    plans = index._call_plans  # type: ignore[union-attr]
    if len(plans) >= _PLANS_PER_TABLE:
        plans.clear()  # one atomic call: threads may share the table
    table = index._buffers["index"]  # type: ignore[union-attr]
    plans[key] = _Plan(table, table._version, plan())


def _aggregate_plan(x: Tensor, weight: Tensor, tables: tuple[Tensor, ...]
                    ) -> Callable[[Tensor, Tensor], Tensor]:
    """What :func:`_aggregate` runs for eager calls like this one: the PyTorch formulation's ATen
    calls where they need no autograd Function (:func:`aggregate_plan`), else :func:`_aggregate`."""
    if not _use_triton(x):
        plan = aggregate_plan(x, weight.dim() == 2, tables[0], _needs_graph(x, weight))
        if plan is not None:
            return plan
    return functools.partial(_aggregate_on, tables)


def _aggregate_on(tables: tuple[Tensor, ...], x: Tensor, weight: Tensor) -> Tensor:
    return _aggregate(x, weight, *tables)


def _softmax_then(valid: Tensor, aggregate: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                  logits: Tensor) -> Tensor:
    return aggregate(x, edge_softmax(logits, valid))


# --------------------------------------------------------------------------------------------
# The public function.


_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_inputs(x: object, weight: object, index: object, name: str = "weight"
                  ) -> tuple[Tensor, Tensor, Tensor]:
    # Every attribute read costs ~0.1-0.3 us, and at B = 1 the whole op takes ~15 us: each is read once.
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if isinstance(index, NeighborTable):
        idx = index.tables[0]
    elif isinstance(index, Tensor):
        idx = index
    else:
        raise TypeError(f"index must be a LongTensor (N, K) or a NeighborTable, got {type(index).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got dtype {x.dtype}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {weight.dtype}")
    if idx.dtype not in _INDEX_DTYPES:
        raise TypeError(f"index must be an integer tensor (N, K), got dtype {idx.dtype}")
    x_shape, idx_shape, w_shape = x.shape, idx.shape, weight.shape
    if len(x_shape) != 3:
        raise ValueError(f"x must have 3 dimensions (B, N, D), got shape {tuple(x_shape)}")
    if len(idx_shape) != 2:
        raise ValueError(f"index must have 2 dimensions (N, K), got shape {tuple(idx_shape)}")
    b, n, _ = x_shape
    if idx_shape[0] != n:
        raise ValueError(f"index has {idx_shape[0]} rows (N, K) but x has N={n} nodes (B, N, D)")
    k = idx_shape[1]
    # Lengths first: comparing (N, K) with (B, N, K) item by item would guard B != N under export.
    if w_shape != ((n, k) if len(w_shape) == 2 else (b, n, k)):
        raise ValueError(f"{name} must have shape (B, N, K) = ({b}, {n}, {k}) or (N, K) = "
                         f"({n}, {k}), got {tuple(w_shape)}")
    device = x.device
    for label, t in ((name, weight), ("index", idx)):
        if t.device != device:
            raise ValueError(f"{label} is on {t.device} but x is on {device}; move them to one device"
                             + (" (NeighborTable moves with its module: call .to(device))"
                                if label == "index" and isinstance(index, NeighborTable) else ""))
    if weight.dtype != x.dtype:
        if not _autocast_on(device.type):
            raise TypeError(f"{name} has dtype {weight.dtype} but x has {x.dtype}; cast one of them "
                            "(under torch.autocast the op computes in x's dtype)")
        weight = weight.to(x.dtype)
    return x, weight, idx


def _tables(index: Tensor | NeighborTable, idx: Tensor, n: int) -> tuple[Tensor, ...] | None:
    """The op's table arguments: a :class:`NeighborTable`'s, or those of a raw index, checked and
    reversed here; ``None`` for a raw index under ``torch.compile`` (its reverse table is
    data-dependent: the caller traces the plain decomposition)."""
    if isinstance(index, NeighborTable):
        return index.tables
    if torch.compiler.is_compiling():
        return None
    if idx.numel() and (int(idx.min()) < -1 or int(idx.max()) >= n):
        bad = idx[(idx < -1) | (idx >= n)]
        raise ValueError(f"index values must lie in [-1, N) = [-1, {n}) (-1 pads), got {bad[:5].tolist()}")
    return idx, *reverse_table(idx, n)


def neighbor_aggregate(x: Tensor, weight: Tensor, index: Tensor | NeighborTable) -> Tensor:
    r"""Weighted sum over each node's neighbours.

    .. math::
        y_{b,i,:} = \sum_{k} w_{b,i,k}\, x_{b,\,\mathrm{idx}_{i,k},\,:}

    slots with :math:`\mathrm{idx}_{i,k} = -1` are skipped.

    Runs the ``landmark_graph::aggregate`` operator (Triton on CUDA, the fastest PyTorch
    formulation for the shape on CPU; see the module docs). Differentiable to ``x`` and
    ``weight``, twice; traceable by ``torch.compile(fullgraph=True)``; exportable.

    Args:
        x: ``Tensor[B, N, D]`` node features, floating point.
        weight: ``Tensor[B, N, K]`` per-image edge weights, or ``Tensor[N, K]`` shared by all
            (its gradient is then summed over the batch). Same dtype as ``x``; under
            ``torch.autocast`` it is cast to ``x``'s dtype, the dtype the op computes in.
        index: a :class:`NeighborTable` (its reverse table is precomputed: the fast path, and
            the one ``torch.compile`` needs), or a ``LongTensor[N, K]`` neighbour table
            (``-1`` pads), checked and reversed at each call.

    Returns:
        ``Tensor[B, N, D]`` in ``x``'s dtype.

    Raises:
        TypeError: non-tensor or integer ``x``/``weight``, non-integer ``index``, ``weight``
            of another floating dtype outside autocast.
        ValueError: wrong shapes, tensors on different devices, an index outside
            ``[-1, N)``, an unknown ``LANDMARK_GRAPH_BACKEND``.

    Example:
        >>> import torch
        >>> idx = torch.tensor([[0, 1], [1, -1]])
        >>> x = torch.tensor([[[1.0], [10.0]]])
        >>> neighbor_aggregate(x, torch.tensor([[0.5, 0.5], [2.0, 7.0]]), idx).tolist()
        [[[5.5], [20.0]]]
    """
    run = _planned("aggregate", x, weight, index)
    if run is not None:
        return run(x, weight)
    x, weight, idx = _check_inputs(x, weight, index)
    backend()  # a bad LANDMARK_GRAPH_BACKEND fails here, before any kernel
    if not isinstance(index, NeighborTable):
        idx = idx.long()
    tables = None if torch.compiler.is_exporting() else _tables(index, idx, x.shape[1])
    if tables is None:  # export, or compile with a raw index: the plain decomposition
        return aggregate_reference(x, weight, idx)
    _remember("aggregate", x, weight, index, lambda: _aggregate_plan(x, weight, tables))
    return _aggregate(x, weight, *tables)


def neighbor_softmax_aggregate(x: Tensor, logits: Tensor, index: Tensor | NeighborTable) -> Tensor:
    r"""Softmax over each node's neighbours, then the weighted sum: attention-style aggregation.

    .. math::
        y_{b,i,:} = \sum_{k} \frac{e^{a_{b,i,k}}}{\sum_{k'} e^{a_{b,i,k'}}}\,
        x_{b,\,\mathrm{idx}_{i,k},\,:}

    over the slots with :math:`\mathrm{idx}_{i,k} \neq -1`. The same numbers as
    ``neighbor_aggregate(x, edge_softmax(logits, valid), index)``, and that is what runs on
    GPU, while tracing, and for large graphs and batches in training. On CPU, where the dense
    formulation is chosen (small graphs and batches), it runs fused instead: the logits are
    added into an ``N x N`` matrix of 0 on the edges and ``-inf`` elsewhere, which is
    softmaxed and multiplied, three ATen ops that autograd differentiates, as many as the
    authors' masked softmax and ``bmm``. For inference with per-image logits where the
    embedding bags are chosen, the softmax runs over a slot-major copy of the logits that
    feeds the bags directly. Repeated calls on a :class:`NeighborTable` with the same shapes,
    dtypes and devices skip the input checks (see the module docs).

    Args:
        x: ``Tensor[B, N, D]`` node features, floating point.
        logits: ``Tensor[B, N, K]`` per-image edge logits, or ``Tensor[N, K]`` shared by all.
            Padding slots do not count, whatever finite value (or ``-inf``) they hold;
            ``+inf`` or NaN there is not allowed (on the fused path it turns the row NaN).
        index: a :class:`NeighborTable`, or a ``LongTensor[N, K]`` table (``-1`` pads) in
            which every row has at least one neighbour.

    Returns:
        ``Tensor[B, N, D]`` in ``x``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`neighbor_aggregate`; also a row of ``index`` with no
            neighbour (its softmax would be 0 / 0).

    Example:
        >>> import torch
        >>> idx = torch.tensor([[0, 1], [1, -1]])
        >>> x = torch.tensor([[[1.0], [10.0]]])
        >>> neighbor_softmax_aggregate(x, torch.zeros(2, 2), idx).tolist()
        [[[5.5], [10.0]]]
    """
    run = _planned("softmax_aggregate", x, logits, index)
    if run is not None:
        return run(x, logits)
    x, logits, idx = _check_inputs(x, logits, index, "logits")
    choice = backend()
    if not isinstance(index, NeighborTable):
        idx = idx.long()
        if idx.shape[1] and bool((idx < 0).all(dim=1).any()):
            row = int((idx < 0).all(dim=1).nonzero()[0])
            raise ValueError(f"index row {row} has no neighbour: the softmax over its slots is undefined")
    tables = None if torch.compiler.is_exporting() else _tables(index, idx, x.shape[1])
    if tables is None:  # export, or compile with a raw index: the plain decomposition
        return aggregate_reference(x, edge_softmax(logits, idx >= 0), idx)
    if _eager(x) and not _use_triton(x, choice):
        plan = softmax_aggregate_plan(x, logits.dim() == 2, tables[0], _needs_graph(x, logits))
        if plan is not None:
            _remember("softmax_aggregate", x, logits, index, lambda: plan)
            return without_autocast(plan, x, logits)
    valid = index.valid if isinstance(index, NeighborTable) else tables[0] >= 0
    _remember("softmax_aggregate", x, logits, index,
              lambda: functools.partial(_softmax_then, valid, _aggregate_plan(x, logits, tables)))
    return _aggregate(x, edge_softmax(logits, valid), *tables)
