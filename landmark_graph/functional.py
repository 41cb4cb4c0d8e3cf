r"""Functional forms of the losses (paper §III-D, eq. 6-11, and the Laplace NLL) and of the edge gating.

Every landmark loss takes ``pred`` and ``target`` ``Tensor[B, N, 2]`` and an optional visibility mask
``Tensor[B, N]`` (bool or 0/1); hidden landmarks contribute nothing, and may hold NaN
placeholders (in any input of the loss); a NaN or inf at a counted landmark raises. ``reduction``
is ``"mean"`` (over the visible coordinates; 0 when none is visible), ``"sum"`` or ``"none"``
(``Tensor[B, N, 2]`` with zeros where hidden). :func:`attention_heatmap_loss` trains the
attention of ``LGRLHead(embedding="attention")``, one term per landmark.

:func:`gate_edge_weights` is the occlusion gating of ``LGRLHead(gate_edges=True)``: it acts on the
edge weights before the aggregation, so the aggregation op stays as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import (
    check_finite,
    check_floating,
    check_mask,
    check_ndim,
    check_positive,
    check_shape,
    check_tensor,
)
from .adjacency import as_square_mask
from .attention import grid_coordinates
from .ops import NeighborTable

__all__ = [
    "attention_heatmap_loss",
    "gate_edge_weights",
    "laplace_nll_loss",
    "laplacian_matrix",
    "relative_location_loss",
    "soft_wing_loss",
    "wing_loss",
]

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


def _zero_hidden(mask: Tensor | None, **tensors: Tensor) -> list[Tensor]:
    """Hidden landmarks may hold NaN placeholders: zero them so no NaN reaches loss or gradient.

    Visible landmarks must be finite: a NaN there (bad labels, or a model fed NaN features,
    which the layers do not scan for) raises instead of turning the loss into NaN. The tensors
    ``(B, N, ...)`` come back in the order given.
    """
    if mask is not None:
        visible = mask.unsqueeze(-1) != 0
        tensors = {name: torch.where(visible, t, t.new_zeros(())) for name, t in tensors.items()}
    check_finite(" at visible landmarks", **tensors)
    return list(tensors.values())


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
    pred, target = _zero_hidden(mask, pred=pred, target=target)
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
    pred, target = _zero_hidden(mask, pred=pred, target=target)
    err = (pred - target).abs()
    offset = omega - omega * math.log1p(omega / epsilon)
    loss = torch.where(err < omega, omega * torch.log1p(err / epsilon), err - offset)
    return _reduce(loss, mask, reduction)


def laplace_nll_loss(
    pred: Tensor,
    target: Tensor,
    log_scale: Tensor,
    mask: Tensor | None = None,
    *,
    full: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""Negative log-likelihood of the target under a Laplace distribution per coordinate.

    With :math:`x = \hat p - p` and :math:`s = \ln b` the predicted log-scale of the same
    coordinate,

    .. math::
        \ell(x, s) = s + |x|\, e^{-s} \;\big(+ \ln 2 \text{ with } \texttt{full}\big)
        = -\ln \frac{1}{2b} e^{-|x|/b} \;\big(- \ln 2 \text{ without}\big)

    For a fixed error the minimum is at :math:`b = |x|`: the model learns to predict its own
    error, and :math:`|x| \le b \ln 10` is the central 90 % interval of its prediction. The
    scale is in the units of ``pred``. Without ``full`` the constant :math:`\ln 2` is left out
    (as :class:`torch.nn.GaussianNLLLoss` leaves out its constant).

    Args:
        pred: ``Tensor[B, N, 2]`` predicted locations (the distribution's centres).
        target: ``Tensor[B, N, 2]``.
        log_scale: ``Tensor[B, N, 2]`` predicted :math:`\ln b` per coordinate.
        mask: optional ``Tensor[B, N]`` visibility; hidden landmarks may hold NaN in any input.
        full: add the constant :math:`\ln 2`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> pred, target = torch.zeros(1, 1, 2), torch.tensor([[[1.0, -2.0]]])
        >>> laplace_nll_loss(pred, target, torch.zeros(1, 1, 2), reduction="none")
        tensor([[[1., 2.]]])
        >>> laplace_nll_loss(pred, target, target.abs().log(), reduction="none")  # b = |x|: 1 + ln b
        tensor([[[1.0000, 1.6931]]])
    """
    _check_pair(pred, target)
    check_floating("log_scale", log_scale)
    if log_scale.shape != pred.shape:
        raise ValueError(
            f"log_scale must have the shape of pred (B, N, 2) = {tuple(pred.shape)}, "
            f"got {tuple(log_scale.shape)}"
        )
    if not isinstance(full, bool):
        raise TypeError(f"full must be a bool, got {type(full).__name__}")
    mask = check_mask(mask, pred.shape[0], pred.shape[1], pred.device)
    pred, target, log_scale = _zero_hidden(mask, pred=pred, target=target, log_scale=log_scale)
    loss = log_scale + (pred - target).abs() * torch.exp(-log_scale)
    if full:
        loss = loss + math.log(2.0)
    return _reduce(loss, mask, reduction)


def attention_heatmap_loss(
    logits: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    sigma: float = 0.5,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy of each landmark's spatial attention against a Gaussian at its target.

    .. math::
        \ell_{bi} = -\sum_p T_{bip} \log \operatorname{softmax}_p(a_{bi})_p, \qquad
        T_{bip} \propto \exp\Big(-\tfrac12 \big\lVert (g_p - u_{bi}) \oslash \varsigma \big\rVert^2\Big)

    with :math:`g_p` the cell centres in :math:`[-1, 1]`
    (:func:`~landmark_graph.attention.grid_coordinates`), :math:`u_{bi}` the target in the same
    normalised map coordinates and :math:`\varsigma = (2\sigma / W, 2\sigma / H)`: ``sigma``
    cells. It teaches ``LGRLHead(embedding="attention")``'s attention to look at its landmark
    and nowhere else, which is what keeps an occluder far from a landmark from moving it. Pass
    the visibility as ``mask``: an occluded landmark cannot be seen, so its attention is left
    free.

    Args:
        logits: ``Tensor[B, N, H, W]`` attention logits (``HeadOutput.attention_logits``).
        target: ``Tensor[B, N, 2]`` landmarks in normalised map coordinates, x right, y down:
            :math:`-1` and :math:`1` are the image's outer edges (with pixel targets of an
            ``S x S`` image, :math:`u = (p + 0.5) / (S / 2) - 1`).
        mask: optional ``Tensor[B, N]``; hidden landmarks may hold NaN.
        sigma: the target's standard deviation, in map cells.
        reduction: ``"mean"`` (over counted landmarks), ``"sum"`` or ``"none"``
            (``Tensor[B, N]``, zeros where hidden).

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 1, 4, 4)
        >>> logits[0, 0, 1, 2] = 8.0  # attention on the cell centred at x = 0.25, y = -0.25
        >>> near = attention_heatmap_loss(logits, torch.tensor([[[0.25, -0.25]]]))
        >>> far = attention_heatmap_loss(logits, torch.tensor([[[-0.75, 0.75]]]))
        >>> bool(near < far)
        True
    """
    check_floating("logits", logits)
    check_floating("target", target)
    check_ndim("logits", logits, 4, "(B, N, H, W)")
    check_shape("target", target, (*logits.shape[:2], 2), "(B, N, 2) matching logits (B, N, H, W)")
    check_positive(sigma=sigma)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    b, n, height, width = logits.shape
    mask = check_mask(mask, b, n, logits.device)
    flat, target = _zero_hidden(mask, logits=logits.flatten(2), target=target)
    grid = grid_coordinates(height, width, dtype=flat.dtype, device=flat.device)  # (HW, 2)
    spread = torch.tensor([2 * sigma / width, 2 * sigma / height], dtype=flat.dtype, device=flat.device)
    z = (grid - target.to(flat.dtype).unsqueeze(2)) / spread  # (B, N, HW, 2)
    heat = (-0.5 * z.square().sum(-1)).softmax(dim=-1)
    loss = -(heat * flat.log_softmax(dim=-1)).sum(dim=-1)  # (B, N)
    if mask is not None:
        loss = loss * mask.to(loss.dtype)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = loss.new_tensor(loss.numel()) if mask is None else mask.to(loss.dtype).sum()
    return loss.sum() / count.clamp(min=1)


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
    pred, target = _zero_hidden(mask, pred=pred, target=target)
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


def gate_edge_weights(weights: Tensor, visibility: Tensor, index: Tensor | NeighborTable) -> Tensor:
    r"""Scale each edge by its sender's visibility and renormalise each receiver's row.

    .. math::
        \tilde w_{bik} = \frac{w_{bik}\, \gamma_{bik}}{\sum_{k'} w_{bik'}\, \gamma_{bik'}},
        \qquad
        \gamma_{bik} = \begin{cases} 1 & \mathrm{idx}_{ik} = i \ \text{(the self edge)} \\
        v_{b,\,\mathrm{idx}_{ik}} & \text{otherwise} \end{cases}

    so a receiver stops listening to senders it believes occluded and keeps its own features:
    the self edge is never gated, so a row with a positive self weight never vanishes, and
    :math:`\tilde w` stays row-stochastic. Padded slots (``-1``) come out 0. Differentiable in
    ``weights`` and ``visibility``, twice. A row without a self slot is renormalised among its
    senders; if all of them underflow to 0 the row is 0 (not NaN).

    Args:
        weights: ``Tensor[B, N, K]`` per-image or ``Tensor[N, K]`` shared edge weights, rows
            summing to 1 (e.g. from :func:`~landmark_graph.ops.edge_softmax`).
        visibility: ``Tensor[B, N]`` in :math:`[0, 1]`, each node's probability of being visible
            (``sigmoid`` of the head's visibility logits).
        index: a :class:`~landmark_graph.NeighborTable` or its ``LongTensor[N, K]`` neighbour
            table (``-1`` pads).

    Returns:
        ``Tensor[B, N, K]`` in the promoted dtype of ``weights`` and ``visibility``.

    Example:
        >>> import torch
        >>> index = torch.tensor([[0, 1, 2], [1, 0, -1], [2, 0, -1]])
        >>> weights = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
        >>> gate_edge_weights(weights, torch.tensor([[0.0, 1.0, 0.0]]), index)[0]
        tensor([[0.5000, 0.5000, 0.0000],
                [1.0000, 0.0000, 0.0000],
                [1.0000, 0.0000, 0.0000]])
    """
    idx = index.index if isinstance(index, NeighborTable) else check_tensor("index", index)
    check_floating("weights", weights)
    check_floating("visibility", visibility)
    if idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(
            f"index must be an integer table (N, K), got shape {tuple(idx.shape)} dtype {idx.dtype}"
        )
    n, k = idx.shape
    check_ndim("visibility", visibility, 2, "(B, N)")
    check_shape("visibility", visibility, (None, n), "(B, N)")
    if weights.dim() == 2:
        check_shape("weights", weights, (n, k), "(N, K)")
    else:
        check_shape("weights", weights, (visibility.shape[0], n, k), "(B, N, K)")
    slots = idx.clamp(min=0)
    is_self = idx == torch.arange(n, device=idx.device).unsqueeze(1)
    sender = visibility[:, slots]  # (B, N, K)
    gate = torch.where(is_self, sender.new_ones(()), sender)
    gated = torch.where(idx >= 0, weights * gate, sender.new_zeros(()))
    total = gated.sum(dim=-1, keepdim=True)
    return gated / total.clamp(min=torch.finfo(total.dtype).tiny)
