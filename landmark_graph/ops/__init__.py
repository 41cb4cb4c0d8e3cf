"""Sparse graph ops: the neighbour table, the edge softmax and the fused neighbour aggregation."""

from .aggregate import (
    BACKENDS,
    backend,
    export_decompositions,
    neighbor_aggregate,
    neighbor_softmax_aggregate,
)
from .edge_softmax import edge_softmax
from .neighbor_table import NeighborTable, mask_to_index, reverse_table

__all__ = [
    "BACKENDS",
    "NeighborTable",
    "backend",
    "edge_softmax",
    "export_decompositions",
    "mask_to_index",
    "neighbor_aggregate",
    "neighbor_softmax_aggregate",
    "reverse_table",
]
