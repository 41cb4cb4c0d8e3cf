"""The public surface: every name documented with shapes and a runnable example, reprs informative."""

import inspect

import pytest
import torch

import landmark_graph as lg
from landmark_graph import functional

PUBLIC = [(lg, name) for name in lg.__all__] + [(functional, name) for name in functional.__all__]


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m.__name__}.{n}" for m, n in PUBLIC])
def test_public_names_have_typed_documented_signatures(module, name):
    obj = getattr(module, name)
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"{name}: no runnable example"
    assert "Tensor[" in doc or "shape" in doc.lower(), f"{name}: no shapes"
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = [p for p in inspect.signature(target).parameters.values() if p.name not in ("self", "cls")]
    untyped = [p.name for p in params if p.annotation is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not untyped, f"{name}: parameters without type hints {untyped}"


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (lg.LGRLHead(29, k=2, edge_weights="binary"), "num_landmarks=29, k=2, edge_weights='binary'"),
        (lg.FCHead(29, 64), "num_landmarks=29, in_channels=64"),
        (lg.MapToNode(29, 64), "num_landmarks=29, in_channels=64, expansion=4"),
        (lg.GraphConv(8, 4, torch.eye(3)), "in_features=8, out_features=4"),
        (lg.WingLoss(), "omega=10.0, epsilon=2.0, reduction='mean'"),
    ],
)
def test_repr_shows_configuration(module, expected):
    assert expected in repr(module)
