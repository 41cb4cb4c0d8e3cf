r"""``neighbor_aggregate`` (SPEC §5) and ``neighbor_softmax_aggregate``: the registered ops
``landmark_graph::aggregate`` / ``edge_dot`` with their autograd, and the routes that run them.

**Triton** (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1`` with the ``"triton"``
backend) runs the registered ops; a kernel that fails warns once and the PyTorch path takes over.
**PyTorch**, everywhere else, calls :mod:`._cpu` directly (a dispatcher round trip costs more
than the op at ``B = 1``), except under ``torch.compile`` or a dispatch mode, which see the
registered op, and ``torch.export``, which sees :func:`aggregate_reference`. Settings are read
from ``LANDMARK_GRAPH_BACKEND`` and ``LANDMARK_GRAPH_CPU_FORMULATION`` at import, then set with
:func:`set_backend` and :func:`set_cpu_formulation`. Design and timings: docs/benchmarks.md.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from . import _cpu
from .edge_softmax import edge_softmax
from .neighbor_table import NeighborTable, reverse_table

__all__ = ["BACKENDS", "CPU_FORMULATIONS", "backend", "cpu_formulation", "export_decompositions",
           "neighbor_aggregate", "neighbor_softmax_aggregate", "set_backend", "set_cpu_formulation"]

BACKENDS = ("auto", "torch", "triton")
CPU_FORMULATIONS = ("auto", *_cpu.FORMULATIONS)


def _choice(value: str, choices: tuple[str, ...], name: str) -> str:
    value = str(value).strip().lower() or "auto"
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


_backend = _choice(os.environ.get("LANDMARK_GRAPH_BACKEND", ""), BACKENDS, "LANDMARK_GRAPH_BACKEND")
_cpu.pinned = _choice(os.environ.get("LANDMARK_GRAPH_CPU_FORMULATION", ""), CPU_FORMULATIONS,
                      "LANDMARK_GRAPH_CPU_FORMULATION")
_triton: dict[str, Any] = {}  # device type -> the kernel module, or None where Triton does not serve


def backend() -> str:
    """The kernels in use: ``"auto"`` (Triton for CUDA tensors when it imports, else PyTorch),
    ``"torch"`` or ``"triton"``."""
    return _backend


def set_backend(name: str) -> None:
    """Choose the kernels (see :func:`backend`); ``"triton"`` also runs CPU tensors under
    ``TRITON_INTERPRET=1``, and warns once where it cannot run. Resets a failed kernel's fallback.

    Example:
        >>> previous = backend()
        >>> set_backend("torch")
        >>> backend()
        'torch'
        >>> set_backend(previous)
    """
    global _backend
    _backend = _choice(name, BACKENDS, "backend")
    _triton.clear()


def cpu_formulation() -> str:
    """The CPU formulation in use: ``"auto"`` (chosen per call by size), ``"dense"`` or ``"sparse"``."""
    return _cpu.pinned


def set_cpu_formulation(name: str) -> None:
    """Pin the PyTorch path's formulation (for benchmarks; see :func:`cpu_formulation`)."""
    _cpu.pinned = _choice(name, CPU_FORMULATIONS, "formulation")


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _load_kernels(device: str) -> Any:
    try:
        from . import _triton_kernels as kernels
    except ImportError as err:  # no triton, or a broken one
        kernels, problem = None, f"triton cannot be imported ({err})"
    else:
        if kernels.INTERPRETED == (device == "cpu"):
            return kernels
        problem = ("CPU tensors run on Triton only under its interpreter (TRITON_INTERPRET=1, set before "
                   "triton is imported)" if device == "cpu" else
                   "the Triton kernels were built for the interpreter (TRITON_INTERPRET=1), which cannot "
                   "run CUDA tensors")
    if kernels is not None or _backend == "triton":
        _warn(f"{problem}; using the PyTorch path")
    return None


def _kernels_on(x: Tensor) -> Any:
    """The Triton kernel module when it serves ``x``'s device, else ``None``."""
    if _backend == "torch":
        return None
    if x.is_cuda:
        device = "cuda"
    elif x.is_cpu and _backend == "triton":
        device = "cpu"
    else:
        return None
    if device not in _triton:
        _triton[device] = _load_kernels(device)
    return _triton[device]


# The one private torch API here: whether a TorchDispatchMode (FlopCounterMode, ...) is active has
# no public test. Where torch lacks it, such modes see the PyTorch path's ATen ops instead of the
# op: the same numbers (tested), another flop count. Fake tensors reach the op by their type.
_dispatch_modes: Callable[[], int] = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)


def _autocast_on(x: Tensor) -> bool:
    if x.is_cpu:
        return torch.is_autocast_enabled("cpu")
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta, ...)
        return False


def _eager(fn: Callable[..., Tensor], p: Tensor, *args: Any) -> Tensor:
    """``fn(p, *args)`` of the PyTorch path in the inputs' dtype: autocast would recast its ``bmm``."""
    if not _autocast_on(p):  # a context per call costs as much as the B = 1 work
        return fn(p, *args)
    with torch.autocast(p.device.type, enabled=False):
        return fn(p, *args)


def _run(name: str, p: Tensor, q: Tensor, tables: tuple[Tensor, ...]) -> Tensor:
    """Op ``name`` (``aggregate(x, w)`` or ``edge_dot(a, x)``) on its Triton kernel, or on the
    PyTorch path where Triton does not serve or has failed."""
    x = p if name == "aggregate" else q
    p, q = p.to(x.dtype), q.to(x.dtype)
    kernels = _kernels_on(x)
    if kernels is not None:
        try:
            return getattr(kernels, name)(p, q, tables[0])
        except Exception as err:  # a kernel that fails to compile or launch
            _triton["cuda" if x.is_cuda else "cpu"] = None
            _warn(f"the Triton kernel failed ({type(err).__name__}: {err}); the aggregation runs on the "
                  "PyTorch path from now on")
    return _eager(getattr(_cpu, name), p, q, _cpu.Layout(*tables))


@torch.library.custom_op("landmark_graph::aggregate", mutates_args=())
def _aggregate_op(x: Tensor, weight: Tensor, index: Tensor, reverse_index: Tensor, reverse_slot: Tensor,
                  forward_slot: Tensor) -> Tensor:
    return _run("aggregate", x, weight, (index, reverse_index, reverse_slot, forward_slot))


@torch.library.custom_op("landmark_graph::edge_dot", mutates_args=())
def _edge_dot_op(a: Tensor, x: Tensor, index: Tensor, reverse_index: Tensor, reverse_slot: Tensor,
                 forward_slot: Tensor) -> Tensor:
    return _run("edge_dot", a, x, (index, reverse_index, reverse_slot, forward_slot))


@_aggregate_op.register_fake
def _(x: Tensor, *_: Tensor) -> Tensor:
    return x.new_empty(x.shape)


@_edge_dot_op.register_fake
def _(a: Tensor, x: Tensor, index: Tensor, *_: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:2], index.shape[1])


def _save_inputs(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(kind: str) -> Callable[..., tuple[Tensor | None, ...]]:
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        p, q, *tables = ctx.saved_tensors
        grads = _cpu.grads(kind, lambda x, w, lay: _aggregate_op(x, w, *lay.tables),
                           lambda a, x, lay: _edge_dot_op(a, x, *lay.tables), _cpu.Layout(*tables), p, q,
                           grad, ctx.needs_input_grad)
        return *grads, None, None, None, None

    return backward


_aggregate_op.register_autograd(_backward("aggregate"), setup_context=_save_inputs)
_edge_dot_op.register_autograd(_backward("edge_dot"), setup_context=_save_inputs)


@register_flop_formula([torch.ops.landmark_graph.aggregate, torch.ops.landmark_graph.edge_dot])
def _flops(first_shape: Any, x_shape: Any, index_shape: Any, *_: Any, **__: Any) -> int:
    """``2 B N K D`` for both ops: ``FlopCounterMode`` counts the sparse work, not a dense product."""
    b, n, d = first_shape
    return 2 * b * n * index_shape[1] * d


def aggregate_reference(x: Tensor, weight: Tensor, index: Tensor) -> Tensor:
    """The op in the plainest standard ops (gather, multiply, sum): what export emits."""
    w = weight.to(x.dtype).masked_fill(index < 0, 0)
    return (w.unsqueeze(-1) * x[:, index.clamp(min=0)]).sum(dim=2)


def _edge_dot_reference(a: Tensor, x: Tensor, index: Tensor, *_: Tensor) -> Tensor:
    return (x[:, index.clamp(min=0)] * a.to(x.dtype).unsqueeze(2)).sum(dim=-1).masked_fill(index < 0, 0)


def export_decompositions() -> dict[Any, Callable[..., Tensor]]:
    """Decompositions of the two ops into standard ops, for ``ExportedProgram.run_decompositions``.

    Example:
        >>> sorted(op.__name__ for op in export_decompositions())
        ['aggregate.default', 'edge_dot.default']

    Use: ``torch.export.export(module, args).run_decompositions(export_decompositions())``.
    """
    return {
        torch.ops.landmark_graph.aggregate.default: lambda x, w, index, *_: aggregate_reference(x, w, index),
        torch.ops.landmark_graph.edge_dot.default: _edge_dot_reference,
    }


_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _what(value: object) -> str:
    return f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__


def _prepare(x: object, weight: object, index: object, name: str) -> tuple[str, Tensor, Any, str]:
    """Check the inputs; return the route and what it takes, ``weight`` in ``x``'s dtype:
    ``("eager", weight, Layout, formulation)``, ``("op", weight, tables, "")`` (tracing, dispatch
    modes, tensor subclasses, meta tensors, Triton) or ``("reference", weight, index, "")``
    (export, or compile with a raw index, whose reverse table is data-dependent)."""
    x_dtype = x.dtype if isinstance(x, Tensor) else None
    if x_dtype is None or not x_dtype.is_floating_point:
        raise TypeError(f"x must be a floating point torch.Tensor, got {_what(x)}")
    w_dtype = weight.dtype if isinstance(weight, Tensor) else None
    if w_dtype is None or not w_dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating point torch.Tensor, got {_what(weight)}")
    compiling = torch.compiler.is_compiling()
    if isinstance(index, NeighborTable):
        lay = None if compiling else _cpu.layout(index)  # eager state: tracing must not capture it
        tables = index.tables if lay is None else lay.tables
        idx = tables[0]
    elif isinstance(index, Tensor) and index.dtype in _INDEX_DTYPES:
        lay, tables, idx = None, None, index
        if idx.dim() != 2:
            raise ValueError(f"index must have 2 dimensions (N, K), got shape {tuple(idx.shape)}")
    else:
        raise TypeError(f"index must be a NeighborTable or an integer tensor (N, K), got {_what(index)}")
    shape = x.shape
    if len(shape) != 3:
        raise ValueError(f"x must have 3 dimensions (B, N, D), got shape {tuple(shape)}")
    b, n, d = shape
    rows, k = idx.shape if lay is None else (lay.n, lay.k)
    if rows != n:
        raise ValueError(f"index has {rows} rows (N, K) but x has N={n} nodes (B, N, D)")
    w_shape = weight.shape  # lengths first: comparing item by item would guard B != N under export
    if w_shape != ((n, k) if len(w_shape) == 2 else (b, n, k)):
        raise ValueError(f"{name} must have shape (B, N, K) = ({b}, {n}, {k}) or (N, K) = ({n}, {k}), "
                         f"got {tuple(w_shape)}")
    on_cpu = x.is_cpu  # all on CPU: no device objects to build
    if not (on_cpu and weight.is_cpu and (idx.is_cpu if lay is None else lay.on_cpu)):
        for label, t in ((name, weight), ("index", idx)):
            if t.device != x.device:
                raise ValueError(f"{label} is on {t.device} but x is on {x.device}; move them to one device"
                                 + (" (NeighborTable moves with its module: call .to(device))"
                                    if label == "index" and tables is not None else ""))
    if w_dtype != x_dtype:
        if not _autocast_on(x):
            raise TypeError(f"{name} has dtype {w_dtype} but x has {x_dtype}; cast one of them "
                            "(under torch.autocast the op computes in x's dtype)")
        weight = weight.to(x_dtype)
    if tables is None:
        idx = idx.long()
        if compiling:
            return "reference", weight, idx, ""
        if idx.numel() and (int(idx.min()) < -1 or int(idx.max()) >= n):
            bad = idx[(idx < -1) | (idx >= n)]
            raise ValueError(f"index values must lie in [-1, N) = [-1, {n}) (-1 pads), got "
                             f"{bad[:5].tolist()}")
        empty = (idx < 0).all(dim=1) if name == "logits" and k else None
        if empty is not None and bool(empty.any()):
            raise ValueError(f"index row {int(empty.nonzero()[0])} has no neighbour: the softmax over its "
                             "slots is undefined")
        lay = _cpu.Layout(idx, *reverse_table(idx, n))
        tables = lay.tables
    if compiling:
        return ("reference", weight, idx, "") if torch.compiler.is_exporting() else ("op", weight, tables, "")
    if (type(x) is not Tensor or _dispatch_modes()
            or ((not on_cpu or _backend == "triton") and (x.is_meta or _kernels_on(x) is not None))):
        return "op", weight, tables, ""
    return "eager", weight, lay, _cpu.formulation(b, n, d, on_cpu, _cpu.needs_backward(x, weight))


def neighbor_aggregate(x: Tensor, weight: Tensor, index: Tensor | NeighborTable) -> Tensor:
    r"""Weighted sum over each node's neighbours.

    .. math::
        y_{b,i,:} = \sum_{k} w_{b,i,k}\, x_{b,\,\mathrm{idx}_{i,k},\,:}

    slots with :math:`\mathrm{idx}_{i,k} = -1` are skipped. Differentiable to ``x`` and ``weight``,
    twice; traceable by ``torch.compile(fullgraph=True)``; exportable.

    Args:
        x: ``Tensor[B, N, D]`` node features, floating point.
        weight: ``Tensor[B, N, K]`` per-image edge weights, or ``Tensor[N, K]`` shared by all.
            ``x``'s dtype (under ``torch.autocast`` it is cast to it).
        index: a :class:`NeighborTable` (reversed once: the fast path, and the one
            ``torch.compile`` needs), or an integer ``Tensor[N, K]`` (``-1`` pads), checked and
            reversed at each call.

    Returns:
        ``Tensor[B, N, D]`` in ``x``'s dtype.

    Raises:
        TypeError: non-tensor or integer ``x``/``weight``, non-integer ``index``, ``weight``
            of another floating dtype outside autocast.
        ValueError: wrong shapes, tensors on different devices, an index outside ``[-1, N)``.

    Example:
        >>> import torch
        >>> idx = torch.tensor([[0, 1], [1, -1]])
        >>> x = torch.tensor([[[1.0], [10.0]]])
        >>> neighbor_aggregate(x, torch.tensor([[0.5, 0.5], [2.0, 7.0]]), idx).tolist()
        [[[5.5], [20.0]]]
    """
    route, weight, it, form = _prepare(x, weight, index, "weight")
    if route == "eager":
        return _eager(_cpu.aggregate, x, weight, it, form)
    if route == "op":
        return _aggregate_op(x, weight, *it)
    return aggregate_reference(x, weight, it)


def neighbor_softmax_aggregate(x: Tensor, logits: Tensor, index: Tensor | NeighborTable) -> Tensor:
    r"""Softmax over each node's neighbours, then the weighted sum: attention-style aggregation.

    .. math::
        y_{b,i,:} = \sum_{k} \frac{e^{a_{b,i,k}}}{\sum_{k'} e^{a_{b,i,k'}}}\,
        x_{b,\,\mathrm{idx}_{i,k},\,:}

    over the slots with :math:`\mathrm{idx}_{i,k} \neq -1`: the numbers of
    ``neighbor_aggregate(x, edge_softmax(logits, valid), index)``, fused on CPU where that pays.

    Args:
        x: ``Tensor[B, N, D]`` node features, floating point.
        logits: ``Tensor[B, N, K]`` or ``Tensor[N, K]``. Padding slots do not count, whatever
            finite value (or ``-inf``) they hold; ``+inf`` or NaN there is not allowed.
        index: as :func:`neighbor_aggregate`; every row needs a neighbour.

    Returns:
        ``Tensor[B, N, D]`` in ``x``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`neighbor_aggregate`; also a row without neighbour.

    Example:
        >>> import torch
        >>> idx = torch.tensor([[0, 1], [1, -1]])
        >>> x = torch.tensor([[[1.0], [10.0]]])
        >>> neighbor_softmax_aggregate(x, torch.zeros(2, 2), idx).tolist()
        [[[5.5], [10.0]]]
    """
    route, logits, it, form = _prepare(x, logits, index, "logits")
    if route == "eager":
        return _eager(_cpu.softmax_aggregate, x, logits, it, form)
    weight = edge_softmax(logits, (it[0] if route == "op" else it) >= 0)
    if route == "op":
        return _aggregate_op(x, weight, *it)
    return aggregate_reference(x, weight, it)
