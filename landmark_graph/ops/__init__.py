"""Sparse graph ops: the neighbour table, the edge softmax and the fused neighbour aggregation."""

from .aggregate import (
    BACKENDS,
    CPU_FORMULATIONS,
    backend,
    cpu_formulation,
    export_decompositions,
    neighbor_aggregate,
    neighbor_softmax_aggregate,
    set_backend,
    set_cpu_formulation,
)
from .edge_softmax import edge_softmax
from .neighbor_table import NeighborTable, as_neighbor_table, mask_to_index, reverse_table

__all__ = ["BACKENDS", "CPU_FORMULATIONS", "NeighborTable", "as_neighbor_table", "backend", "cpu_formulation",
           "edge_softmax", "export_decompositions", "mask_to_index", "neighbor_aggregate",
           "neighbor_softmax_aggregate", "reverse_table", "set_backend", "set_cpu_formulation"]
