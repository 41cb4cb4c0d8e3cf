"""The fixed neighbour table of a landmark graph, kept as module buffers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..adjacency import check_adjacency

__all__ = ["NeighborTable", "mask_to_index"]


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


class NeighborTable(nn.Module):
    """A graph's ``(N, K)`` neighbour table, built once and moved with the model.

    The boolean mask is the persistent state (it is saved in ``state_dict``); the index table is
    derived from it, so it is rebuilt, not stored.

    Args:
        adjacency: ``BoolTensor[N, N]`` (or any tensor whose nonzeros are edges), rows are
            receivers. Self loops are added where missing.

    Attributes:
        adjacency: ``BoolTensor[N, N]``.
        index: ``LongTensor[N, K]``, row ``i`` lists the senders of node ``i`` in ascending
            order, ``-1`` pads rows of lower degree.

    Example:
        >>> table = NeighborTable(torch.eye(3, dtype=torch.bool) | torch.eye(3, dtype=torch.bool).roll(1, 1))
        >>> table.index.tolist()
        [[0, 1], [1, 2], [0, 2]]
    """

    adjacency: Tensor
    index: Tensor

    def __init__(self, adjacency: Tensor) -> None:
        super().__init__()
        mask = check_adjacency(adjacency)
        self.register_buffer("adjacency", mask)
        self.register_buffer("index", mask_to_index(mask), persistent=False)

    @property
    def num_nodes(self) -> int:
        return self.index.shape[0]

    @property
    def max_degree(self) -> int:
        return self.index.shape[1]

    @property
    def valid(self) -> Tensor:
        """``BoolTensor[N, K]``: which slots of :attr:`index` hold a neighbour."""
        return self.index >= 0

    def set_adjacency(self, adjacency: Tensor) -> None:
        """Replace the graph (same number of nodes); ``K`` may change."""
        mask = check_adjacency(adjacency)
        if mask.shape != self.adjacency.shape:
            raise ValueError(
                f"adjacency must keep N={self.num_nodes} nodes, got shape {tuple(mask.shape)}"
            )
        device = self.adjacency.device
        self.adjacency = mask.to(device)
        self.index = mask_to_index(self.adjacency)

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
        self.index = mask_to_index(self.adjacency)

    def extra_repr(self) -> str:
        return f"num_nodes={self.num_nodes}, max_degree={self.max_degree}, edges={int(self.valid.sum())}"
