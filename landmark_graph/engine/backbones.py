"""Backbones by name: images ``(B, 3, H, W)`` to a feature map ``(B, C, h, w)`` for a landmark head.

The registry :data:`BACKBONES` maps a name to a builder ``(pretrained) -> (module, channels)``:

- ``"small"``: a tiny built-in CNN, fast enough to train on CPU in the demo;
- ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"mobilenet_v2"``, ``"efficientnet_b0"``:
  torchvision models without their pooling and classifier (torchvision needed, the release
  built for the installed torch: :func:`torchvision_install_command`);
- ``"timm:<name>"``: any timm model that supports ``features_only`` (timm needed); its last
  feature map is used.

Register more with :func:`register_backbone`, as a decorator or a call (a plugin module that
does so makes the name usable from ``landmark-graph --plugin MODULE train --backbone NAME``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable

from torch import Tensor, nn

from ..registry import Registry

__all__ = [
    "BACKBONES",
    "SmallCNN",
    "available_backbones",
    "build_backbone",
    "register_backbone",
    "torchvision_install_command",
]

Builder = Callable[[bool], tuple[nn.Module, int]]
#: The registered backbone builders by name.
BACKBONES: Registry[Builder] = Registry("backbone")


def register_backbone(name: str, builder: Builder | None = None, *, overwrite: bool = False):
    """Add ``builder(pretrained) -> (module, channels)`` under ``name`` and return it; without
    ``builder``, a decorator that does so.

    Example:
        >>> @register_backbone("tiny")
        ... def tiny(pretrained: bool):
        ...     return SmallCNN(width=4, depth=2), 8
        >>> build_backbone("tiny")[1]
        8
        >>> BACKBONES.unregister("tiny")
    """
    return BACKBONES.register(name, builder, overwrite=overwrite)


def _optional(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this backbone needs {module}, which is not installed: pip install 'landmark-graph[{extra}]'"
        ) from error


class SmallCNN(nn.Sequential):
    r"""A plain CNN: ``depth`` blocks of conv3x3(stride 2)-BN-ReLU, widths doubling from ``width``.

    Shape:
        - Input: ``Tensor[B, 3, H, W]``.
        - Output: ``Tensor[B, width * 2^(depth-1), H / 2^depth, W / 2^depth]``.

    Example:
        >>> import torch
        >>> SmallCNN(width=8, depth=3)(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(self, width: int = 32, depth: int = 4) -> None:
        if not isinstance(width, int) or width < 1 or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"width and depth must be positive ints, got width={width!r}, depth={depth!r}")
        layers: list[nn.Module] = []
        channels = 3
        for level in range(depth):
            out = width * 2**level
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        super().__init__(*layers)
        self.out_channels = channels


def torchvision_install_command(torch_version: str | None = None) -> str:
    """The pip command installing the torchvision release built for ``torch_version`` (default:
    the installed torch).

    torch ``2.M.P`` pairs with torchvision ``0.(M+15).P``; a local build tag (``+cpu``,
    ``+cu126``) selects PyTorch's index of that build, since PyPI's Linux torchvision wheels are
    CUDA builds that fail to import beside a CPU torch.

    Example:
        >>> torchvision_install_command("2.13.0+cpu")
        'python -m pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu'
        >>> torchvision_install_command("2.13.0")
        'python -m pip install torchvision==0.28.0'
    """
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    release, _, build = str(torch_version).partition("+")
    parts = release.split(".")
    if len(parts) < 3 or parts[0] != "2" or not (parts[1].isdigit() and parts[2].isdigit()):
        return f"python -m pip install the torchvision release built for torch {torch_version}"
    command = f"python -m pip install torchvision==0.{int(parts[1]) + 15}.{int(parts[2])}"
    return command + (f" --index-url https://download.pytorch.org/whl/{build}" if build else "")


def _torchvision_models():
    """``torchvision.models``, or an ``ImportError`` whose one line says how to get a working one."""
    try:
        return importlib.import_module("torchvision.models")
    except ModuleNotFoundError as error:
        if error.name not in ("torchvision", "torchvision.models"):
            raise _broken_torchvision(error) from error
        raise ImportError(
            f"this backbone needs torchvision, which is not installed: {torchvision_install_command()} "
            "(the build matching the installed torch; a plain 'pip install torchvision' or "
            "'landmark-graph[vision]' may replace torch with another one)"
        ) from error
    except (ImportError, RuntimeError, OSError) as error:  # installed, but built for another torch
        raise _broken_torchvision(error) from error


def _broken_torchvision(error: BaseException) -> ImportError:
    import torch

    try:
        version = " " + importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return ImportError(
        f"torchvision{version} does not import beside torch {torch.__version__} ({reason}): it was built "
        f"for another torch; install the matching build: {torchvision_install_command()}"
    )


def _torchvision(name: str, trunk: Callable[[nn.Module], nn.Module], channels: int) -> Builder:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        models = _torchvision_models()
        model = models.get_model(name, weights="DEFAULT" if pretrained else None)
        return trunk(model), channels

    return build


def _resnet_trunk(model: nn.Module) -> nn.Module:
    return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc


def _features_trunk(model: nn.Module) -> nn.Module:
    return model.features


class _LastFeatureMap(nn.Module):
    """Wraps a timm ``features_only`` model to return its last feature map only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)[-1]


def _timm(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    timm = _optional("timm", "timm")
    try:
        model = timm.create_model(name, pretrained=pretrained, features_only=True)
    except RuntimeError as error:  # timm raises RuntimeError for unknown names
        raise ValueError(f"timm cannot build a features_only model {name!r}: {error}") from error
    return _LastFeatureMap(model), int(model.feature_info.channels()[-1])


@register_backbone("small")
def _small(pretrained: bool) -> tuple[nn.Module, int]:
    module = SmallCNN()
    return module, module.out_channels


for _name, _channels in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)):
    register_backbone(_name, _torchvision(_name, _resnet_trunk, _channels))
register_backbone("mobilenet_v2", _torchvision("mobilenet_v2", _features_trunk, 1280))
register_backbone("efficientnet_b0", _torchvision("efficientnet_b0", _features_trunk, 1280))


def available_backbones() -> list[str]:
    """Registered names (``"timm:<name>"`` is accepted on top of these)."""
    return BACKBONES.names()


def build_backbone(name: str, pretrained: bool = False) -> tuple[nn.Module, int]:
    """``(module, channels)`` for a backbone name; see the module docstring for the names.

    Raises:
        ValueError: unknown name.
        ImportError: the backbone's library (torchvision, timm) is not installed or, for
            torchvision, was built for another torch; the message names the install command.

    Example:
        >>> import torch
        >>> net, channels = build_backbone("small")
        >>> net(torch.randn(1, 3, 64, 64)).shape[1] == channels
        True
    """
    if isinstance(name, str) and name.startswith("timm:"):
        return _timm(name[len("timm:"):], pretrained)
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {available_backbones()} or 'timm:<name>', got {name!r}")
    if pretrained and name == "small":
        raise ValueError("backbone 'small' has no pretrained weights; drop pretrained")
    return BACKBONES.get(name)(pretrained)
