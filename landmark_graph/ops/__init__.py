"""Sparse graph ops: the neighbour table and the fused neighbour aggregation."""

from .aggregate import BACKENDS, backend, export_decompositions, neighbor_aggregate
from .neighbor_table import NeighborTable, mask_to_index, reverse_table

__all__ = [
    "BACKENDS",
    "NeighborTable",
    "backend",
    "export_decompositions",
    "mask_to_index",
    "neighbor_aggregate",
    "reverse_table",
]
