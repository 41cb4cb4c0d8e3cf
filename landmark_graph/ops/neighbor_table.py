"""The fixed neighbour table of a landmark graph, kept as module buffers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_adjacency

__all__ = ["NeighborTable", "as_neighbor_table", "mask_to_index", "reverse_table"]


def mask_to_index(mask: Tensor) -> Tensor:
    """``BoolTensor[N, N]`` -> ``LongTensor[N, K]`` of each row's columns, ascending, ``-1`` padded.

    ``K`` is the largest row degree.
    """
    degree = mask.sum(dim=1)
    k = int(degree.max())
    # Sorting the columns by (not in row, column) puts a row's neighbours first, ascending.
    n = mask.shape[1]
    key = (~mask).long() * n + torch.arange(n, device=mask.device)
    cols = key.argsort(dim=1)[:, :k]
    slot = torch.arange(k, device=mask.device)
    return torch.where(slot < degree[:, None], cols, torch.full_like(cols, -1))


def reverse_table(index: Tensor, num_nodes: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The transpose of a neighbour table, as needed by the backward pass of the aggregation.

    With ``index`` an ``(N, K)`` table (``-1`` pads) and ``R`` the largest number of times any node
    appears in it (at least 1):

    - ``reverse_index`` ``LongTensor[N, R]``: row ``j`` lists the receivers ``i`` that read node
      ``j``, in ascending order of the slot ``i * K + k`` that holds ``j``; ``-1`` pads.
    - ``reverse_slot`` ``LongTensor[N, R]``: that slot ``i * K + k`` of ``index`` (``N * K`` pads),
      so ``pad(w.flatten(-2), (0, 1))[..., reverse_slot]`` lays per-edge weights out along
      ``reverse_index``.
    - ``forward_slot`` ``LongTensor[N, K]``: the inverse map, slot ``j * R + r`` of the reverse table
      for each slot of ``index`` (``N * R`` pads).

    Every edge appears once in each table, so the backward pass needs no atomics.

    Example:
        >>> idx = torch.tensor([[0, 1], [1, -1], [0, 2]])
        >>> rev, slot, fwd = reverse_table(idx)
        >>> rev.tolist(), slot.tolist(), fwd.tolist()
        ([[0, 2], [0, 1], [2, -1]], [[0, 4], [1, 2], [5, 6]], [[0, 2], [3, 6], [1, 4]])
    """
    n_rows, k = index.shape
    n = n_rows if num_nodes is None else num_nodes
    device = index.device
    flat = index.reshape(-1)
    valid = flat >= 0
    pos = torch.arange(flat.numel(), device=device)[valid]
    target = flat[valid]
    # A stable sort by target keeps each node's readers in ascending slot order.
    order = torch.sort(target, stable=True).indices
    target, pos = target[order], pos[order]
    counts = torch.bincount(target, minlength=n)
    r_max = max(int(counts.max()) if counts.numel() else 0, 1)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(target.numel(), device=device) - starts[target]
    reverse_index = torch.full((n, r_max), -1, dtype=torch.long, device=device)
    reverse_slot = torch.full((n, r_max), n_rows * k, dtype=torch.long, device=device)
    reverse_index[target, rank] = pos // max(k, 1)
    reverse_slot[target, rank] = pos
    forward_slot = torch.full((n_rows * k,), n * r_max, dtype=torch.long, device=device)
    forward_slot[pos] = target * r_max + rank
    return reverse_index, reverse_slot, forward_slot.view(n_rows, k)


def _derived(mask: Tensor) -> dict[str, Tensor]:
    """The tables built from a mask: not saved, rebuilt on load, moved with the module."""
    index = mask_to_index(mask)
    reverse = dict(zip(("reverse_index", "reverse_slot", "forward_slot"), reverse_table(index), strict=True))
    return {"index": index, "valid": index >= 0, **reverse}


class NeighborTable(nn.Module):
    """A graph's ``(N, K)`` neighbour table, built once and moved with the model.

    Only the boolean mask is saved in ``state_dict``; the index table and its reverse
    (:func:`reverse_table`) are rebuilt from it, and move with the module.

    Args:
        adjacency: ``BoolTensor[N, N]`` (or any tensor whose nonzeros are edges), rows are
            receivers. Self loops are added where missing.

    Attributes:
        adjacency: ``BoolTensor[N, N]``.
        index: ``LongTensor[N, K]``, row ``i`` lists the senders of node ``i`` in ascending
            order, ``-1`` pads rows of lower degree.
        valid: ``BoolTensor[N, K]``, which slots of ``index`` hold a neighbour.
        padded: whether any slot is padding (``False`` where every row has degree ``K``).
        reverse_index, reverse_slot, forward_slot: the reverse table (:func:`reverse_table`).

    Example:
        >>> table = NeighborTable(torch.eye(3, dtype=torch.bool) | torch.eye(3, dtype=torch.bool).roll(1, 1))
        >>> table.index.tolist()
        [[0, 1], [1, 2], [0, 2]]
    """

    adjacency: Tensor
    index: Tensor
    valid: Tensor
    reverse_index: Tensor
    reverse_slot: Tensor
    forward_slot: Tensor

    def __init__(self, adjacency: Tensor) -> None:
        super().__init__()
        mask = check_adjacency(adjacency)
        self.register_buffer("adjacency", mask)
        self._rebuild()
        # What the CPU formulations derive from the buffers (ops/_cpu.py); rebuilt when they change.
        self._layout: Any = None

    def _rebuild(self) -> None:
        for name, value in _derived(self.adjacency).items():
            self.register_buffer(name, value, persistent=False)
        self.padded = not bool(self.valid.all())  # a Python bool: asking the tensor would sync a GPU

    @property
    def tables(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(index, reverse_index, reverse_slot, forward_slot)``, the arguments of the op."""
        return self.index, self.reverse_index, self.reverse_slot, self.forward_slot

    @property
    def softmax_mask(self) -> Tensor | None:
        """The ``valid`` argument of :func:`~landmark_graph.ops.edge_softmax`: :attr:`valid`, or
        ``None`` where no slot is padding (the mask would change nothing)."""
        return self.valid if self.padded else None

    @property
    def num_nodes(self) -> int:
        return self.index.shape[0]

    @property
    def max_degree(self) -> int:
        return self.index.shape[1]

    def set_adjacency(self, adjacency: Tensor) -> None:
        """Replace the graph (same number of nodes); ``K`` may change."""
        mask = check_adjacency(adjacency)
        if mask.shape != self.adjacency.shape:
            raise ValueError(
                f"adjacency must keep N={self.num_nodes} nodes, got shape {tuple(mask.shape)}"
            )
        device = self.adjacency.device
        self.adjacency = mask.to(device)
        self._rebuild()

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        saved = state_dict.get(prefix + "adjacency")
        if saved is not None:
            if saved.shape != self.adjacency.shape:
                raise ValueError(
                    f"{prefix}adjacency: the checkpoint was saved for {saved.shape[0]} landmarks, "
                    f"this model has {self.num_nodes}; build the model with "
                    f"num_landmarks={saved.shape[0]}"
                )
            saved_k = int((saved != 0).sum(dim=1).max())
            if saved_k != self.max_degree:
                raise ValueError(
                    f"{prefix}adjacency: the checkpoint's graph has {saved_k} neighbours per node "
                    f"(k={saved_k - 1}), this model has {self.max_degree} (k={self.max_degree - 1}); "
                    "build the model with the same k"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._rebuild()

    def extra_repr(self) -> str:
        return f"num_nodes={self.num_nodes}, max_degree={self.max_degree}, edges={int(self.valid.sum())}"


def as_neighbor_table(adjacency: Tensor | NeighborTable) -> NeighborTable:
    """``adjacency`` itself when it is a :class:`NeighborTable` (layers share it), else a new one.

    Example:
        >>> table = as_neighbor_table(torch.eye(3, dtype=torch.bool))
        >>> as_neighbor_table(table) is table, table.max_degree
        (True, 1)
    """
    return adjacency if isinstance(adjacency, NeighborTable) else NeighborTable(adjacency)
