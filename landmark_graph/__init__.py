"""landmark-graph: drop-in layers for structure-coherent face alignment (SDFL).

The package holds the layers, losses, metrics and schemes; :mod:`landmark_graph.data` the data
sets; :mod:`landmark_graph.engine` the applications built on them (training, the command line,
checkpoint export, inference).
"""

from . import _aliases
from .adjacency import build_correlation_adjacency, index_order_adjacency
from .attention import AttentionToNode, NodeEdgeWeights
from .edge_weights import DynamicAdjacency
from .graph_conv import GraphConv, GraphResidualBlock
from .heads import FCHead, HeadOutput, LGRLHead
from .losses import AttentionHeatmapLoss, LaplaceNLLLoss, RelativeLocationLoss, SoftWingLoss, WingLoss
from .map_to_node import MapToNode
from .metrics import LandmarkEvaluator, auc, ced, failure_rate, nme
from .ops import NeighborTable, neighbor_aggregate, neighbor_softmax_aggregate
from .schemes import LandmarkScheme, get_scheme, register_scheme

_aliases.install()  # landmark_graph.training and the other modules moved into engine/

__version__ = "0.1.0"

__all__ = [
    "AttentionHeatmapLoss",
    "AttentionToNode",
    "DynamicAdjacency",
    "FCHead",
    "GraphConv",
    "GraphResidualBlock",
    "HeadOutput",
    "LGRLHead",
    "LandmarkEvaluator",
    "LandmarkScheme",
    "LaplaceNLLLoss",
    "MapToNode",
    "NeighborTable",
    "NodeEdgeWeights",
    "RelativeLocationLoss",
    "SoftWingLoss",
    "WingLoss",
    "auc",
    "build_correlation_adjacency",
    "ced",
    "failure_rate",
    "get_scheme",
    "index_order_adjacency",
    "neighbor_aggregate",
    "neighbor_softmax_aggregate",
    "nme",
    "register_scheme",
]
