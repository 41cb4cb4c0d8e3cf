"""Sparse graph ops: the neighbour table and the fused neighbour aggregation."""

from .aggregate import neighbor_aggregate
from .neighbor_table import NeighborTable, mask_to_index

__all__ = ["NeighborTable", "mask_to_index", "neighbor_aggregate"]
