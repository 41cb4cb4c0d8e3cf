"""Loss modules: thin wrappers over :mod:`landmark_graph.functional` holding the settings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import Tensor, nn

from . import functional as LF
from ._checks import check_positive
from .adjacency import check_adjacency

__all__ = ["AttentionHeatmapLoss", "LaplaceNLLLoss", "RelativeLocationLoss", "SoftWingLoss", "WingLoss"]


def _check_reduction(reduction: str) -> str:
    if reduction not in LF.REDUCTIONS:
        raise ValueError(f"reduction must be one of {LF.REDUCTIONS}, got {reduction!r}")
    return reduction


class SoftWingLoss(nn.Module):
    r"""Soft Wing loss (eq. 9); see :func:`~landmark_graph.functional.soft_wing_loss`.

    .. math::
        \mathrm{SoftWing}(x) =
        \begin{cases} |x| & |x| < \omega_1 \\
        \omega_2 \ln(1 + |x|/\epsilon) + \omega_1 - \omega_2 \ln(1 + \omega_1/\epsilon)
        & \text{otherwise}\end{cases}

    Shape:
        - ``pred``, ``target``: ``Tensor[B, N, 2]``; ``mask``: ``Tensor[B, N]`` or ``None``.
        - Output: scalar, or ``Tensor[B, N, 2]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> loss = SoftWingLoss()
        >>> loss(torch.full((1, 2, 2), 3.0), torch.zeros(1, 2, 2)).item() > 3.0
        True
    """

    def __init__(
        self, omega1: float = 2.0, omega2: float = 20.0, epsilon: float = 0.5, reduction: str = "mean"
    ) -> None:
        super().__init__()
        check_positive(omega1=omega1, omega2=omega2, epsilon=epsilon)
        self.omega1, self.omega2, self.epsilon = omega1, omega2, epsilon
        self.reduction = _check_reduction(reduction)

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return LF.soft_wing_loss(
            pred, target, mask, omega1=self.omega1, omega2=self.omega2, epsilon=self.epsilon,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"omega1={self.omega1}, omega2={self.omega2}, epsilon={self.epsilon}, "
                f"reduction={self.reduction!r}")


class WingLoss(nn.Module):
    r"""Wing loss (eq. 11); see :func:`~landmark_graph.functional.wing_loss`.

    .. math::
        \mathrm{Wing}(x) =
        \begin{cases} \omega \ln(1 + |x|/\epsilon) & |x| < \omega \\
        |x| - \omega + \omega \ln(1 + \omega/\epsilon) & \text{otherwise}\end{cases}

    Defaults :math:`\omega = 10, \epsilon = 2` are those of Feng et al.

    Shape:
        - ``pred``, ``target``: ``Tensor[B, N, 2]``; ``mask``: ``Tensor[B, N]`` or ``None``.
        - Output: scalar, or ``Tensor[B, N, 2]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> WingLoss(reduction="sum")(torch.ones(1, 1, 2), torch.zeros(1, 1, 2)).item() > 0
        True
    """

    def __init__(self, omega: float = 10.0, epsilon: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        check_positive(omega=omega, epsilon=epsilon)
        self.omega, self.epsilon = omega, epsilon
        self.reduction = _check_reduction(reduction)

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return LF.wing_loss(
            pred, target, mask, omega=self.omega, epsilon=self.epsilon, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"omega={self.omega}, epsilon={self.epsilon}, reduction={self.reduction!r}"


class LaplaceNLLLoss(nn.Module):
    r"""Laplace negative log-likelihood per coordinate (:func:`~landmark_graph.functional.laplace_nll_loss`).

    .. math::
        \ell(x, s) = s + |x|\, e^{-s}\ \big(+ \ln 2\big), \qquad x = \hat p - p,\ s = \ln b

    Trains ``LGRLHead(uncertainty=True)``'s ``log_scale`` (and, through the centre, the
    landmarks); use it beside or instead of Soft Wing.

    Args:
        full: add the constant :math:`\ln 2`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        - ``pred``, ``target``, ``log_scale``: ``Tensor[B, N, 2]``; ``mask``: ``Tensor[B, N]`` or
          ``None``.
        - Output: scalar, or ``Tensor[B, N, 2]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> loss = LaplaceNLLLoss()
        >>> loss(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), torch.zeros(1, 2, 2)).item()
        1.0
    """

    def __init__(self, full: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        if not isinstance(full, bool):
            raise TypeError(f"full must be a bool, got {type(full).__name__}")
        self.full = full
        self.reduction = _check_reduction(reduction)

    def forward(self, pred: Tensor, target: Tensor, log_scale: Tensor, mask: Tensor | None = None) -> Tensor:
        return LF.laplace_nll_loss(pred, target, log_scale, mask, full=self.full, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"full={self.full}, reduction={self.reduction!r}"


class AttentionHeatmapLoss(nn.Module):
    r"""Cross-entropy of each landmark's attention against a Gaussian at its target.

    See :func:`~landmark_graph.functional.attention_heatmap_loss`:

    .. math::
        \ell_{bi} = -\sum_p T_{bip} \log \operatorname{softmax}_p(a_{bi})_p

    Args:
        sigma: the target Gaussian's standard deviation, in map cells.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        - ``logits``: ``Tensor[B, N, H, W]`` (``HeadOutput.attention_logits``); ``target``:
          ``Tensor[B, N, 2]`` in normalised map coordinates; ``mask``: ``Tensor[B, N]`` or ``None``.
        - Output: scalar, or ``Tensor[B, N]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> loss = AttentionHeatmapLoss()
        >>> round(loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2)).item(), 4)  # uniform: log 16
        2.7726
    """

    def __init__(self, sigma: float = 0.5, reduction: str = "mean") -> None:
        super().__init__()
        check_positive(sigma=sigma)
        self.sigma = sigma
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return LF.attention_heatmap_loss(logits, target, mask, sigma=self.sigma, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, reduction={self.reduction!r}"


class RelativeLocationLoss(nn.Module):
    r"""Relative location loss (eq. 6-8) over a neighbourhood.

    .. math::
        \mathcal L_{\text{rel}} = \ell(L\hat P - LP), \qquad
        L_{ii} = 1,\ L_{ij} = -\tfrac{1}{|\mathcal N_i|}\ (j \in \mathcal N_i)

    with the uniform Laplacian over each node's neighbours, self loop excluded.
    The paper's total loss is ``SoftWingLoss()(p, t) + lam * RelativeLocationLoss(adj)(p, t)``
    with ``lam = 1``.

    Args:
        adjacency: ``BoolTensor[N, N]`` neighbourhood (for example ``head.adjacency``).
        criterion: elementwise loss ``(pred, target) -> Tensor[B, N, 2]``, for example
            ``WingLoss(reduction="none")``; default Soft Wing.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        - ``pred``, ``target``: ``Tensor[B, N, 2]``; ``mask``: ``Tensor[B, N]`` or ``None``.
        - Output: scalar, or ``Tensor[B, N, 2]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> from landmark_graph import index_order_adjacency
        >>> loss = RelativeLocationLoss(index_order_adjacency(5, k=2))
        >>> p = torch.arange(20.0).view(2, 5, 2)  # integers: the check below is exact
        >>> loss(p + 1.0, p).item()  # translation does not change relative locations
        0.0
    """

    laplacian: Tensor

    def __init__(
        self,
        adjacency: Tensor | np.ndarray,
        criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if getattr(criterion, "reduction", "none") != "none":
            raise ValueError(
                "criterion must return an elementwise loss: build it with reduction='none', "
                f"got reduction={criterion.reduction!r}"
            )
        self.criterion = criterion
        self.reduction = _check_reduction(reduction)
        self.register_buffer("laplacian", LF.laplacian_matrix(check_adjacency(adjacency)))

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return LF.relative_location_loss(
            pred, target, self.laplacian, mask, criterion=self.criterion, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"num_landmarks={self.laplacian.shape[0]}, reduction={self.reduction!r}"
