"""Map-to-node embedding (paper §III-A): backbone feature map -> one feature vector per landmark."""

from __future__ import annotations

from torch import Tensor, nn

from ._checks import check_feature_map, check_param_dtype, materialized

__all__ = ["MapToNode"]


def _conv_bn_relu(in_channels: int | None, out_channels: int) -> nn.Sequential:
    conv = (
        nn.LazyConv2d(out_channels, 3, padding=1, bias=False)
        if in_channels is None
        else nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    )
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MapToNode(nn.Module):
    r"""Two conv3x3-BN-ReLU blocks, then a reshape into node features.

    .. math::
        H = \varphi(F) \in \mathbb{R}^{B \times Nn \times H \times W}
        \;\longrightarrow\; H_0 \in \mathbb{R}^{B \times N \times nHW}

    Node ``i`` owns channels ``n*i ... n*i + n - 1``.

    Args:
        num_landmarks: ``N``.
        in_channels: ``C`` of the backbone map; ``None`` infers it at the first call.
        expansion: ``n``, channels per node.
        hidden_channels: width of the first block (the authors' code uses 256).

    Shape:
        - Input: ``Tensor[B, C, H, W]``.
        - Output: ``Tensor[B, N, n * H * W]``.

    Example:
        >>> import torch
        >>> m = MapToNode(98, in_channels=512)
        >>> m(torch.randn(2, 512, 8, 8)).shape
        torch.Size([2, 98, 256])
    """

    def __init__(
        self,
        num_landmarks: int,
        in_channels: int | None = None,
        expansion: int = 4,
        hidden_channels: int = 256,
    ) -> None:
        super().__init__()
        for name, value in (("num_landmarks", num_landmarks), ("expansion", expansion),
                            ("hidden_channels", hidden_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if in_channels is not None and (not isinstance(in_channels, int) or in_channels < 1):
            raise ValueError(f"in_channels must be a positive int or None, got {in_channels!r}")
        self.num_landmarks = num_landmarks
        self.in_channels = in_channels
        self.expansion = expansion
        self.hidden_channels = hidden_channels
        self.embed = nn.Sequential(
            _conv_bn_relu(in_channels, hidden_channels),
            _conv_bn_relu(hidden_channels, num_landmarks * expansion),
        )

    def forward(self, features: Tensor) -> Tensor:
        conv = self.embed[0][0]
        check_feature_map("features", features, materialized(conv))
        check_param_dtype("features", features, self)
        b, _, h, w = features.shape
        return self.embed(features).reshape(b, self.num_landmarks, self.expansion * h * w)

    def extra_repr(self) -> str:
        return (f"num_landmarks={self.num_landmarks}, in_channels={self.in_channels}, "
                f"expansion={self.expansion}, hidden_channels={self.hidden_channels}")
