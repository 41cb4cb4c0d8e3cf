r"""Functional forms of the losses (paper §III-D, eq. 6-11).

Every loss takes ``pred`` and ``target`` ``Tensor[B, N, 2]`` and an optional visibility mask
``Tensor[B, N]`` (bool or 0/1); hidden landmarks contribute nothing. ``reduction`` is
``"mean"`` (over the visible coordinates; 0 when none is visible), ``"sum"`` or ``"none"``
(``Tensor[B, N, 2]`` with zeros where hidden).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_finite, check_floating, check_mask, check_ndim, check_positive, check_shape
from .adjacency import as_square_mask

__all__ = ["laplacian_matrix", "relative_location_loss", "soft_wing_loss", "wing_loss"]

REDUCTIONS = ("mean", "sum", "none")


def _check_pair(pred: Tensor, target: Tensor) -> None:
    check_floating("pred", pred)
    check_floating("target", target)
    check_ndim("pred", pred, 3, "(B, N, 2)")
    check_shape("pred", pred, (None, None, 2), "(B, N, 2)")
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")


def _reduce(loss: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """Zero the hidden landmarks of ``loss`` ``(B, N, 2)``, then reduce."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if mask is not None:
        loss = loss * mask.to(loss.dtype).unsqueeze(-1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = loss.new_tensor(loss.numel()) if mask is None else 2 * mask.to(loss.dtype).sum()
    return loss.sum() / count.clamp(min=1)


def _zero_hidden(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Hidden landmarks may hold NaN placeholders: zero them so no NaN reaches loss or gradient.

    Visible landmarks must be finite: a NaN there (bad labels, or a model fed NaN features,
    which the layers do not scan for) raises instead of turning the loss into NaN.
    """
    if mask is not None:
        visible = mask.unsqueeze(-1) != 0
        zero = pred.new_zeros(())
        pred, target = torch.where(visible, pred, zero), torch.where(visible, target, zero)
    check_finite(" at visible landmarks", pred=pred, target=target)
    return pred, target


def soft_wing_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    omega1: float = 2.0,
    omega2: float = 20.0,
    epsilon: float = 0.5,
    reduction: str = "mean",
) -> Tensor:
    r"""Soft Wing loss (eq. 9) on each coordinate error :math:`x = \hat p - p`.

    .. math::
        \mathrm{SoftWing}(x) =
        \begin{cases} |x| & |x| < \omega_1 \\
        \omega_2 \ln(1 + |x|/\epsilon) + B & \text{otherwise}\end{cases},
        \qquad B = \omega_1 - \omega_2 \ln(1 + \omega_1/\epsilon)

    Linear for small errors, logarithmic for medium and large ones. The defaults are tuned for
    pixel units of a 256x256 crop.

    Shape:
        ``pred``, ``target``: ``Tensor[B, N, 2]``; ``mask``: ``Tensor[B, N]`` or ``None``;
        output: scalar, or ``Tensor[B, N, 2]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> pred = torch.tensor([[[1.0, 0.0]]])
        >>> soft_wing_loss(pred, torch.zeros(1, 1, 2), reduction="none")
        tensor([[[1., 0.]]])
    """
    _check_pair(pred, target)
    check_positive(omega1=omega1, omega2=omega2, epsilon=epsilon)
    mask = check_mask(mask, pred.shape[0], pred.shape[1], pred.device)
    pred, target = _zero_hidden(pred, target, mask)
    err = (pred - target).abs()
    offset = omega1 - omega2 * math.log1p(omega1 / epsilon)
    loss = torch.where(err < omega1, err, omega2 * torch.log1p(err / epsilon) + offset)
    return _reduce(loss, mask, reduction)


def wing_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    omega: float = 10.0,
    epsilon: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Wing loss (eq. 11, Feng et al. 2018) on each coordinate error :math:`x = \hat p - p`.

    .. math::
        \mathrm{Wing}(x) =
        \begin{cases} \omega \ln(1 + |x|/\epsilon) & |x| < \omega \\
        |x| - C & \text{otherwise}\end{cases},
        \qquad C = \omega - \omega \ln(1 + \omega/\epsilon)

    Shape:
        ``pred``, ``target``: ``Tensor[B, N, 2]``; ``mask``: ``Tensor[B, N]`` or ``None``;
        output: scalar, or ``Tensor[B, N, 2]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> wing_loss(torch.tensor([[[20.0, 0.0]]]), torch.zeros(1, 1, 2), reduction="sum").item() > 0
        True
    """
    _check_pair(pred, target)
    check_positive(omega=omega, epsilon=epsilon)
    mask = check_mask(mask, pred.shape[0], pred.shape[1], pred.device)
    pred, target = _zero_hidden(pred, target, mask)
    err = (pred - target).abs()
    offset = omega - omega * math.log1p(omega / epsilon)
    loss = torch.where(err < omega, omega * torch.log1p(err / epsilon), err - offset)
    return _reduce(loss, mask, reduction)


def laplacian_matrix(adjacency: Tensor) -> Tensor:
    r"""Uniform graph Laplacian of eq. 7 over the neighbours without the self loop.

    .. math::
        L_{ii} = 1, \quad L_{ij} = -1/|\mathcal N_i| \ (j \in \mathcal N_i), \quad 0 \text{ otherwise}

    A node with no neighbour besides itself gets an all-zero row (it has no relative location).

    Args:
        adjacency: ``BoolTensor[N, N]`` (or any tensor or array whose nonzeros are edges).

    Returns:
        ``Tensor[N, N]`` float32.

    Example:
        >>> import torch
        >>> laplacian_matrix(torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool))
        tensor([[ 1.0000, -0.5000, -0.5000],
                [-1.0000,  1.0000,  0.0000],
                [ 0.0000,  0.0000,  0.0000]])
    """
    mask = as_square_mask(adjacency)
    mask = mask & ~torch.eye(mask.shape[0], dtype=torch.bool, device=mask.device)
    degree = mask.sum(dim=1, keepdim=True)
    lap = -mask.float() / degree.clamp(min=1)
    return lap + torch.diag((degree.squeeze(1) > 0).float())


def relative_location_loss(
    pred: Tensor,
    target: Tensor,
    laplacian: Tensor,
    mask: Tensor | None = None,
    *,
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Relative location loss (eq. 6-8): a loss on the Laplacian coordinates :math:`\Delta = L P`.

    .. math::
        \mathcal L_{\text{rel}} = \ell\big(L \hat P - L P\big)

    With a mask, a node's term is kept only when it and all its neighbours are visible, and
    nodes without neighbours (all-zero rows of ``L``) never count.

    Args:
        pred: ``Tensor[B, N, 2]``.
        target: ``Tensor[B, N, 2]``.
        laplacian: ``Tensor[N, N]`` from :func:`laplacian_matrix`.
        mask: optional ``Tensor[B, N]`` visibility.
        criterion: elementwise loss ``(pred, target) -> Tensor[B, N, 2]``; default
            :func:`soft_wing_loss` with ``reduction="none"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> lap = laplacian_matrix(torch.ones(3, 3, dtype=torch.bool))
        >>> p = torch.arange(12.0).view(2, 3, 2)  # integers: the check below is exact
        >>> relative_location_loss(p + 5.0, p, lap).item()  # a shift keeps the structure
        0.0
    """
    _check_pair(pred, target)
    n = pred.shape[1]
    check_floating("laplacian", laplacian)
    check_shape("laplacian", laplacian, (n, n), "(N, N)")
    check_finite("", laplacian=laplacian)
    mask = check_mask(mask, pred.shape[0], n, pred.device)
    lap = laplacian.to(pred.dtype)
    has_neighbours = (lap != 0).sum(dim=1) > 1  # (N,)
    keep = has_neighbours.expand(pred.shape[0], n)
    if mask is not None:
        hidden = (mask == 0).to(pred.dtype)
        # Node i counts only if no node its row touches is hidden.
        keep = keep & ((hidden @ (lap != 0).to(pred.dtype).T) == 0)
    pred, target = _zero_hidden(pred, target, mask)
    delta_pred = lap @ pred
    delta_target = lap @ target
    if criterion is None:
        loss = soft_wing_loss(delta_pred, delta_target, reduction="none")
    else:
        loss = criterion(delta_pred, delta_target)
        if loss.shape != delta_pred.shape:
            raise ValueError(
                f"criterion must return an elementwise loss of shape {tuple(delta_pred.shape)} "
                f"(reduction='none'), got shape {tuple(loss.shape)}"
            )
    return _reduce(loss, keep, reduction)
