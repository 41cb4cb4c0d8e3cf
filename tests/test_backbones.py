import sys

import pytest
import torch
from helpers import usable

from landmark_graph.engine.backbones import BACKBONES, available_backbones, build_backbone, register_backbone

TORCHVISION_NAMES = ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_b0"]


needs_torchvision = pytest.mark.skipif(not usable("torchvision"), reason="needs a usable torchvision")
needs_timm = pytest.mark.skipif(not usable("timm"), reason="needs a usable timm")


def _feature_channels(module: torch.nn.Module, size: int = 64) -> tuple[int, ...]:
    module.eval()
    with torch.no_grad():
        return tuple(module(torch.randn(1, 3, size, size)).shape)


def test_registry_lists_every_builtin_name():
    assert set(TORCHVISION_NAMES) | {"small"} <= set(available_backbones())


def test_small_backbone_declares_its_channels():
    module, channels = build_backbone("small")
    assert _feature_channels(module) == (1, channels, 4, 4)


@needs_torchvision
@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_backbones_give_the_declared_channels(name):
    module, channels = build_backbone(name)
    shape = _feature_channels(module)
    assert shape[:2] == (1, channels) and shape[2:] == (2, 2)  # stride 32 on 64 px


@needs_timm
def test_timm_backbone_returns_its_last_feature_map():
    module, channels = build_backbone("timm:resnet18")
    assert _feature_channels(module) == (1, channels, 2, 2)
    with pytest.raises(ValueError, match="timm cannot build"):
        build_backbone("timm:no_such_model_xyz")


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.models", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"landmark-graph\[vision\]"):
        build_backbone("resnet18")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"landmark-graph\[timm\]"):
        build_backbone("timm:resnet18")


def test_bad_names_and_registrations():
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_backbone("vgg11")
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_backbone("small", pretrained=True)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("small", BACKBONES["small"])
