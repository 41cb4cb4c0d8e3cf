"""landmark-graph: drop-in layers for structure-coherent face alignment (SDFL)."""

from .adjacency import build_correlation_adjacency, index_order_adjacency
from .edge_weights import DynamicAdjacency
from .graph_conv import GraphConv, GraphResidualBlock
from .heads import FCHead, LGRLHead
from .losses import RelativeLocationLoss, SoftWingLoss, WingLoss
from .map_to_node import MapToNode
from .ops import NeighborTable, neighbor_aggregate

__version__ = "0.1.0"

__all__ = [
    "DynamicAdjacency",
    "FCHead",
    "GraphConv",
    "GraphResidualBlock",
    "LGRLHead",
    "MapToNode",
    "NeighborTable",
    "RelativeLocationLoss",
    "SoftWingLoss",
    "WingLoss",
    "build_correlation_adjacency",
    "index_order_adjacency",
    "neighbor_aggregate",
]
