r"""Evaluation metrics of face alignment (paper §IV-A): NME, failure rate, CED and its AUC.

Per image, with prediction :math:`\hat p_i`, target :math:`p_i` and normalising distance
:math:`d`,

.. math::
    \mathrm{NME} = \frac{1}{N} \sum_{i=1}^{N} \frac{\lVert \hat p_i - p_i \rVert_2}{d}.

Over a set of :math:`n` per-image errors :math:`e_j` and a threshold :math:`T` (0.1 by default),
the cumulative error distribution is :math:`F(e) = \frac1n \#\{j : e_j \le e\}`, the failure
rate is :math:`1 - F(T)` and the AUC is :math:`\frac1T \int_0^T F(e)\,de`.

Occlusion and confidence (for heads with ``visibility``/``uncertainty``): the visible-only NME
per occluded-share bin (:func:`occlusion_bins`, :func:`nme_by_occlusion`) and its rise with
occlusion (:func:`occlusion_rise`), the rank AUROC of visibility scores (:func:`auroc`), and the
calibration of Laplace scales (:func:`scale_error_spearman`, :func:`laplace_interval_coverage`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from ._checks import check_shape
from .registry import Registry
from .schemes import WFLW_ATTRIBUTES, LandmarkScheme, get_scheme, scheme_for_num_landmarks

__all__ = [
    "NORMALIZATIONS",
    "OCCLUSION_EDGES",
    "OCCLUSION_GROUPS",
    "WFLW_ATTRIBUTES",
    "LandmarkEvaluator",
    "attribute_subsets",
    "auc",
    "auroc",
    "ced",
    "failure_rate",
    "laplace_interval_coverage",
    "nme",
    "nme_by_occlusion",
    "normalizing_distance",
    "occlusion_bins",
    "occlusion_report",
    "occlusion_rise",
    "scale_error_spearman",
]


def _as_tensor(name: str, value: object) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    return value if value.is_floating_point() else value.double()


def _as_mask(mask: Tensor | np.ndarray | None, target: Tensor) -> Tensor | None:
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=target.device)
    check_shape("mask", mask, tuple(target.shape[:2]), "(B, N)")
    if mask.is_complex() or (mask.is_floating_point() and not bool(torch.isfinite(mask).all())):
        raise ValueError("mask must be bool or finite real numbers")
    return mask


def _eye_groups(scheme: LandmarkScheme, normalization: str) -> tuple[Sequence[int], Sequence[int]]:
    if normalization == "inter_ocular":
        return (scheme.inter_ocular[0],), (scheme.inter_ocular[1],)
    if scheme.inter_pupil is not None:
        return (scheme.inter_pupil[0],), (scheme.inter_pupil[1],)
    if "left_eye" not in scheme.parts or "right_eye" not in scheme.parts:
        raise ValueError(f"scheme {scheme.name!r} has neither pupils nor eye parts for inter_pupil")
    # No pupil points (300W): the eye centroids stand in for the pupils, the usual convention.
    return scheme.parts["left_eye"], scheme.parts["right_eye"]


def _eye_distance(normalization: str) -> Callable[[Tensor, Tensor | None, LandmarkScheme | None], Tensor]:
    def distance(target: Tensor, mask: Tensor | None, scheme: LandmarkScheme | None) -> Tensor:
        if scheme is None:
            raise ValueError(
                f"normalization={normalization!r} needs a scheme: none is registered for "
                f"N={target.shape[1]} landmarks; pass scheme= or use 'bbox' or a distance tensor"
            )
        left, right = _eye_groups(scheme, normalization)
        centre_left = target[:, list(left)].mean(dim=1)
        centre_right = target[:, list(right)].mean(dim=1)
        return torch.linalg.vector_norm(centre_left - centre_right, dim=-1)

    return distance


def _bbox_distance(target: Tensor, mask: Tensor | None, scheme: LandmarkScheme | None) -> Tensor:
    inf = torch.tensor(float("inf"), dtype=target.dtype, device=target.device)
    visible = torch.ones_like(target[..., 0], dtype=torch.bool) if mask is None else mask.bool()
    low = torch.where(visible[..., None], target, inf).amin(dim=1)
    high = torch.where(visible[..., None], target, -inf).amax(dim=1)
    size = (high - low).clamp(min=0)
    return (size[:, 0] * size[:, 1]).sqrt()


#: How a normalising distance ``Tensor[B]`` comes from the targets ``Tensor[B, N, 2]``.
NORMALIZATIONS: Registry[Callable[[Tensor, Tensor | None, LandmarkScheme | None], Tensor]] = Registry(
    "normalization")
NORMALIZATIONS.register("inter_ocular", _eye_distance("inter_ocular"))
NORMALIZATIONS.register("inter_pupil", _eye_distance("inter_pupil"))
NORMALIZATIONS.register("bbox", _bbox_distance)


def normalizing_distance(
    target: Tensor | np.ndarray,
    normalization: str = "inter_ocular",
    *,
    scheme: LandmarkScheme | str | None = None,
    mask: Tensor | np.ndarray | None = None,
) -> Tensor:
    r"""The distance :math:`d` of each image: ``Tensor[B]``.

    - ``"inter_ocular"``: between the scheme's outer eye corners.
    - ``"inter_pupil"``: between the pupils, or the eye centroids when the scheme has no
      pupils (300W).
    - ``"bbox"``: :math:`\sqrt{wh}` of the box around the (visible) target points.

    Example:
        >>> t = torch.tensor([[[0.0, 0.0], [4.0, 1.0], [2.0, 9.0]]])
        >>> normalizing_distance(t, "bbox")
        tensor([6.])
    """
    target = _as_tensor("target", target)
    check_shape("target", target, (None, None, 2), "(B, N, 2)")
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {sorted(NORMALIZATIONS)} or a Tensor[B], got {normalization!r}"
        )
    scheme = scheme_for_num_landmarks(target.shape[1]) if scheme is None else get_scheme(scheme)
    if scheme is not None and scheme.num_points != target.shape[1]:
        raise ValueError(
            f"scheme {scheme.name!r} has {scheme.num_points} points, target has N={target.shape[1]}"
        )
    return NORMALIZATIONS[normalization](target, _as_mask(mask, target), scheme)


def nme(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    *,
    normalization: str | Tensor | np.ndarray | float = "inter_ocular",
    scheme: LandmarkScheme | str | None = None,
    mask: Tensor | np.ndarray | None = None,
) -> Tensor:
    r"""Normalised mean error of each image.

    .. math::
        \mathrm{NME}_b = \frac{\sum_i m_{bi} \lVert \hat p_{bi} - p_{bi} \rVert_2}{d_b \sum_i m_{bi}}

    Args:
        pred: ``Tensor[B, N, 2]`` predicted landmarks (numpy accepted).
        target: ``Tensor[B, N, 2]`` ground truth, same units.
        normalization: ``"inter_ocular"``, ``"inter_pupil"``, ``"bbox"`` (see
            :func:`normalizing_distance`), or the distances themselves, ``Tensor[B]`` or a number.
        scheme: the landmark scheme (name or object); ``None`` takes the registered one with
            ``N`` points (:func:`~landmark_graph.schemes.scheme_for_num_landmarks`).
        mask: optional ``Tensor[B, N]``, nonzero where a landmark counts (e.g. annotated);
            every image needs one.

    Returns:
        ``Tensor[B]`` in the floating dtype of the inputs (integers become float64).

    Raises:
        ValueError: shapes disagree, a counted landmark is NaN or inf, a distance is zero or
            not finite, or an image has no landmark left by ``mask``.

    Example:
        >>> from landmark_graph.schemes import get_scheme
        >>> t = torch.as_tensor(get_scheme("300w68").template)[None]
        >>> nme(t + torch.tensor([0.03, 0.04]), t)  # every point 0.05 off, inter-ocular 1
        tensor([0.0500], dtype=torch.float64)
    """
    pred, target = _as_tensor("pred", pred), _as_tensor("target", target)
    check_shape("target", target, (None, None, 2), "(B, N, 2)")
    check_shape("pred", pred, tuple(target.shape), "(B, N, 2) like target")
    mask = _as_mask(mask, target)
    for name, points in (("pred", pred), ("target", target)):
        bad = ~torch.isfinite(points).all(dim=-1)  # (B, N)
        if mask is not None:
            bad &= mask != 0
        if bool(bad.any()):
            image, landmark = bad.nonzero()[0].tolist()
            raise ValueError(f"{name} must be finite at counted landmarks; image {image} landmark "
                             f"{landmark} is NaN or inf (mask it out if it is missing)")
    if isinstance(normalization, str):
        distance = normalizing_distance(target, normalization, scheme=scheme, mask=mask)
    else:
        distance = torch.as_tensor(normalization, dtype=target.dtype, device=target.device)
        if distance.dim() > 1 or distance.numel() not in (1, target.shape[0]):
            raise ValueError(
                f"normalization as distances must be a number or Tensor[B] with B={target.shape[0]}, "
                f"got shape {tuple(distance.shape)}"
            )
    distance = distance.to(torch.promote_types(pred.dtype, target.dtype)).expand(target.shape[0])
    bad = (~torch.isfinite(distance) | (distance <= 0)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"normalising distance must be finite and > 0; images {bad[:10]} have "
                         f"{distance[bad[:10]].tolist()}")
    error = torch.linalg.vector_norm(pred - target, dim=-1)  # (B, N)
    if mask is None:
        return error.mean(dim=1) / distance
    weight = mask.to(error.dtype)
    error = torch.where(weight > 0, error, error.new_zeros(()))  # uncounted points may be NaN
    count = weight.sum(dim=1)
    empty = (count <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mask leaves no landmark in images {empty[:10]}")
    return (error * weight).sum(dim=1) / count / distance


def _errors(errors: Tensor | np.ndarray | Sequence[float], threshold: float) -> Tensor:
    """Validate a set of per-image errors and a threshold; return a float64 CPU ``Tensor[n]``."""
    if not isinstance(errors, Tensor):
        errors = torch.as_tensor(np.asarray(errors, dtype=np.float64))
    errors = errors.detach().to("cpu", torch.float64).flatten()
    if errors.numel() == 0:
        raise ValueError("errors must hold at least one value, got none")
    if not bool(torch.isfinite(errors).all()) or bool((errors < 0).any()):
        raise ValueError("errors must be finite and >= 0")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"threshold must be a number > 0, got {threshold!r}")
    return errors


def failure_rate(errors: Tensor | np.ndarray | Sequence[float], threshold: float = 0.1) -> float:
    r"""Share of images whose error exceeds ``threshold``: :math:`\frac1n \#\{j : e_j > T\}`.

    Args:
        errors: ``Tensor[B]`` per-image errors; arrays and sequences too.
        threshold: :math:`T`.

    Example:
        >>> failure_rate([0.02, 0.1, 0.15, 0.3])
        0.5
    """
    errors = _errors(errors, threshold)
    return float((errors > threshold).double().mean())


def auc(errors: Tensor | np.ndarray | Sequence[float], threshold: float = 0.1) -> float:
    r"""Area under the cumulative error distribution on :math:`[0, T]`, divided by :math:`T`.

    Exact, not binned: :math:`F` steps up by :math:`1/n` at each error, so each error
    :math:`e_j < T` adds the strip :math:`[e_j, T]` of height :math:`1/n`,

    .. math::
        \mathrm{AUC}_T = \frac{1}{nT} \sum_{j} \max(0,\, T - e_j).

    Ties need no care, errors at or above :math:`T` add nothing, and a perfect set scores 1.

    Args:
        errors: ``Tensor[B]`` per-image errors (for example :func:`nme`); arrays and sequences too.
        threshold: :math:`T`.

    Example:
        >>> round(auc([0.0, 0.05, 0.2]), 12)  # (0.1 + 0.05 + 0) / (3 * 0.1)
        0.5
    """
    errors = _errors(errors, threshold)
    return float((threshold - errors).clamp(min=0).mean() / threshold)


def ced(
    errors: Tensor | np.ndarray | Sequence[float], threshold: float = 0.1, steps: int | None = 101
) -> tuple[Tensor, Tensor]:
    r"""Cumulative error distribution :math:`F(e) = \frac1n \#\{j : e_j \le e\}` on :math:`[0, T]`.

    Args:
        errors: per-image errors, any shape.
        threshold: :math:`T`, the right end of the curve.
        steps: number of evenly spaced thresholds from 0 to :math:`T`; ``None`` gives the exact
            step curve instead: ``0``, each distinct error below :math:`T`, and :math:`T` (plot it
            with ``drawstyle="steps-post"``).

    Returns:
        ``(thresholds, fractions)``, two float64 ``Tensor[S]``.

    Example:
        >>> x, f = ced([0.02, 0.02, 0.06, 0.5], steps=None)
        >>> x.tolist(), f.tolist()
        ([0.0, 0.02, 0.06, 0.1], [0.0, 0.5, 0.75, 0.75])
    """
    errors = _errors(errors, threshold)
    if steps is None:
        inside = errors[errors < threshold].unique()
        thresholds = torch.cat([errors.new_zeros(1), inside[inside > 0], errors.new_tensor([threshold])])
    elif isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2 or None, got {steps!r}")
    else:
        thresholds = torch.linspace(0, threshold, steps, dtype=torch.float64)
    ranked = errors.sort().values
    fractions = torch.searchsorted(ranked, thresholds, right=True).double() / errors.numel()
    return thresholds, fractions


def attribute_subsets(
    flags: Tensor | np.ndarray, names: Sequence[str] = WFLW_ATTRIBUTES
) -> dict[str, Tensor]:
    """Turn attribute flags ``Tensor[B, A]`` into subsets ``{name: BoolTensor[B]}`` for the evaluator.

    Example:
        >>> attribute_subsets(torch.tensor([[1, 0, 0, 0, 0, 1]]))["blur"]
        tensor([True])
    """
    flags = torch.as_tensor(flags)
    check_shape("flags", flags, (None, len(names)), f"(B, A) with A={len(names)} attribute names")
    return {name: flags[:, i] != 0 for i, name in enumerate(names)}


#: Bin edges of the occluded share of an image's landmarks (the occlusion curve of docs/results.md).
OCCLUSION_EDGES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
_SHARE_SLACK = 1e-9  # a share of exactly an edge (3 of 30 points) belongs to the bin it closes


def _occluded_share(occluded: Tensor | np.ndarray) -> Tensor:
    """``Tensor[B]`` float64: the share of each image's landmarks flagged occluded."""
    flags = torch.as_tensor(occluded)
    check_shape("occluded", flags, (None, None), "(B, N)")
    if flags.is_floating_point() and not bool(((flags == 0) | (flags == 1)).all()):
        raise ValueError("occluded must hold bool or 0/1 flags")
    return (flags != 0).double().mean(dim=1).cpu()


def _check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] < 0 or edges[-1] > 1:
        raise ValueError(f"edges must be at least two increasing shares in [0, 1], got {edges}")
    return edges


def occlusion_bins(
    occluded: Tensor | np.ndarray, edges: Sequence[float] = OCCLUSION_EDGES, *, zero_bin: bool = True
) -> dict[str, Tensor]:
    r"""Images by the share :math:`s_b` of their landmarks that are occluded: ``{label: BoolTensor[B]}``.

    Bins are :math:`(e_j, e_{j+1}]`, labelled ``"10%-20%"``. With ``zero_bin`` an extra ``"0%"``
    bin holds the images with no occluded landmark and the first bin is :math:`(e_0, e_1]`;
    without it the first bin is closed, :math:`[e_0, e_1]`. Images above the last edge are in
    no bin. Pass the masks as ``subsets`` to :meth:`LandmarkEvaluator.update`.

    Args:
        occluded: ``Tensor[B, N]`` flags (bool or 0/1), e.g. a data set's ``"occluded"``.
        edges: increasing shares in :math:`[0, 1]`; default :data:`OCCLUSION_EDGES`.
        zero_bin: give unoccluded images a bin of their own.

    Example:
        >>> flags = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
        >>> {k: v.tolist() for k, v in occlusion_bins(flags, (0.0, 0.25, 0.5)).items()}
        {'0%': [True, False, False], '0%-25%': [False, True, False], '25%-50%': [False, False, False]}
    """
    share = _occluded_share(occluded)
    edges = _check_edges(edges)
    bins = {"0%": share == 0} if zero_bin else {}
    for j, (lo, hi) in enumerate(itertools.pairwise(edges)):
        above = share >= lo - _SHARE_SLACK if (j == 0 and not zero_bin) else share > lo + _SHARE_SLACK
        bins[f"{lo:.0%}-{hi:.0%}"] = above & (share <= hi + _SHARE_SLACK)
    return bins


def _visible_nme(
    pred, target, occluded, visible_only: bool, normalization, scheme
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image NME on the visible (or all) landmarks, the occluded share, and which images count."""
    pred, target = _as_tensor("pred", pred), _as_tensor("target", target)
    share = _occluded_share(occluded)
    if share.numel() != target.shape[0]:
        raise ValueError(f"occluded must have B={target.shape[0]} rows, got {share.numel()}")
    visible = ~torch.as_tensor(occluded).bool().to(target.device)
    # An image with every landmark occluded has no visible NME: it counts in no bin.
    counted = share < 1 if visible_only else torch.ones_like(share, dtype=torch.bool)
    errors = torch.full_like(share, float("nan"))
    if bool(counted.any()):
        keep = counted.to(target.device)
        if not isinstance(normalization, str):  # per-image distances follow the images kept
            distance = torch.as_tensor(normalization, device=target.device)
            normalization = distance[keep] if distance.numel() == keep.numel() > 1 else distance
        mask = visible[keep] if visible_only else None
        errors[counted] = nme(pred[keep], target[keep], mask=mask, normalization=normalization,
                              scheme=scheme).double().cpu()
    return errors, share, counted


def nme_by_occlusion(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    occluded: Tensor | np.ndarray,
    edges: Sequence[float] = OCCLUSION_EDGES,
    *,
    visible_only: bool = True,
    zero_bin: bool = True,
    normalization: str | Tensor | np.ndarray | float = "inter_ocular",
    scheme: LandmarkScheme | str | None = None,
) -> dict[str, dict[str, float | int]]:
    r"""Mean NME of the images in each occluded-share bin (:func:`occlusion_bins`).

    With ``visible_only`` (the paper's Fig. 2 claim) each image's NME is over its unoccluded
    landmarks only, :math:`\mathrm{NME}_b` with mask :math:`1 - o_b`; images with every landmark
    occluded count in no bin. The normalising distance is the full target's either way.

    Args:
        pred, target: ``Tensor[B, N, 2]``.
        occluded: ``Tensor[B, N]`` flags.
        edges, zero_bin: the bins, as in :func:`occlusion_bins`.
        visible_only: NME over the visible landmarks; ``False``: over all of them.
        normalization, scheme: as in :func:`nme`.

    Returns:
        ``{label: {"nme": mean over the bin's images (NaN when empty), "count": images}}``.

    Example:
        >>> from landmark_graph.schemes import get_scheme
        >>> t = torch.as_tensor(get_scheme("300w68").template).expand(2, -1, -1)
        >>> p = t.clone(); p[1, :34, 0] += 0.5  # image 1: its occluded half is 0.5 off (inter-ocular 1)
        >>> occ = torch.zeros(2, 68, dtype=torch.bool); occ[1, :34] = True
        >>> nme_by_occlusion(p, t, occ, (0.0, 0.5))
        {'0%': {'nme': 0.0, 'count': 1}, '0%-50%': {'nme': 0.0, 'count': 1}}
        >>> nme_by_occlusion(p, t, occ, (0.0, 0.5), visible_only=False)["0%-50%"]["nme"]
        0.25
    """
    errors, _, counted = _visible_nme(pred, target, occluded, visible_only,
                                      normalization=normalization, scheme=scheme)
    out = {}
    for label, member in occlusion_bins(occluded, edges, zero_bin=zero_bin).items():
        member = member & counted
        count = int(member.sum())
        out[label] = {"nme": float(errors[member].mean()) if count else float("nan"), "count": count}
    return out


def occlusion_rise(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    occluded: Tensor | np.ndarray,
    *,
    low: float = 0.1,
    high: tuple[float, float] = (0.3, 0.6),
    normalization: str | Tensor | np.ndarray | float = "inter_ocular",
    scheme: LandmarkScheme | str | None = None,
) -> float:
    r"""How much the visible-only NME grows from lightly to heavily occluded faces: ratio − 1.

    .. math::
        \frac{\overline{\mathrm{NME}}_{\text{vis}}\{b : h_0 < s_b \le h_1\}}
             {\overline{\mathrm{NME}}_{\text{vis}}\{b : s_b \le \ell\}} - 1

    with :math:`s_b` the occluded share of image :math:`b`, :math:`\ell` = ``low`` and
    :math:`(h_0, h_1]` = ``high``. 0 means the visible landmarks do not suffer from the
    occluded ones (the paper's Fig. 2 claim); the paper head's rise on our synthetic faces is
    positive (docs/results.md).

    Raises:
        ValueError: either group has no image.

    Example:
        >>> from landmark_graph.schemes import get_scheme
        >>> t = torch.as_tensor(get_scheme("cofw29").template).expand(2, -1, -1)
        >>> occ = torch.zeros(2, 29, dtype=torch.bool); occ[1, :12] = True  # 41 % occluded
        >>> p = t + torch.tensor([[[0.01, 0.0]], [[0.03, 0.0]]])  # the occluded face is 3x as far off
        >>> round(occlusion_rise(p, t, occ, normalization=1.0), 6)
        2.0
    """
    errors, share, counted = _visible_nme(pred, target, occluded, True,
                                          normalization=normalization, scheme=scheme)
    groups = {"low": counted & (share <= low + _SHARE_SLACK),
              "high": counted & (share > high[0] + _SHARE_SLACK) & (share <= high[1] + _SHARE_SLACK)}
    empty = [name for name, member in groups.items() if not bool(member.any())]
    if empty:
        raise ValueError(f"occlusion_rise needs images in both groups; none in {empty} "
                         f"(low: share <= {low}, high: share in ({high[0]}, {high[1]}])")
    return float(errors[groups["high"]].mean() / errors[groups["low"]].mean() - 1)


def _flat_numpy(name: str, value: object) -> np.ndarray:
    array = (value.detach().cpu().double().numpy() if isinstance(value, Tensor)
             else np.asarray(value, dtype=np.float64))
    return array.reshape(-1)


def auroc(
    scores: Tensor | np.ndarray | Sequence[float], labels: Tensor | np.ndarray | Sequence[float]
) -> float:
    r"""Area under the ROC curve of ``scores`` for the positive ``labels``, from ranks (Mann-Whitney U).

    .. math::
        \mathrm{AUROC} = \frac{R_+ - n_+ (n_+ + 1)/2}{n_+\, n_-}

    with :math:`R_+` the sum of the positives' ranks among all scores, ties given their average
    rank (a tie between a positive and a negative counts one half). For visibility: ``scores``
    the visibility logits ``Tensor[B, N]``, ``labels`` the ``visible`` flags; 1 is perfect, 0.5
    chance.

    Args:
        scores: any shape; flattened.
        labels: the same number of bool or 0/1 values.

    Raises:
        ValueError: sizes differ, a score is NaN, or one class is absent.

    Example:
        >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
        >>> auroc([1.0, 1.0, 0.0], [1, 0, 0])  # the tie counts one half
        0.75
    """
    scores, labels = _flat_numpy("scores", scores), _flat_numpy("labels", labels)
    if scores.size != labels.size:
        raise ValueError(f"scores and labels must have as many values, got {scores.size} and {labels.size}")
    if np.isnan(scores).any():
        raise ValueError("scores must not hold NaN")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be bool or 0/1")
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs both classes, got {n_pos} positive and {n_neg} negative labels")
    rank_sum = float(rankdata(scores)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _laplace_inputs(pred, target, log_scale, mask) -> tuple[Tensor, Tensor, Tensor | None]:
    """``|pred - target|`` and ``log_scale`` as float64 CPU ``Tensor[B, N, 2]``, and the mask ``[B, N]``."""
    pred, target = _as_tensor("pred", pred), _as_tensor("target", target)
    log_scale = _as_tensor("log_scale", log_scale)
    check_shape("target", target, (None, None, 2), "(B, N, 2)")
    for name, value in (("pred", pred), ("log_scale", log_scale)):
        check_shape(name, value, tuple(target.shape), "(B, N, 2) like target")
    mask = _as_mask(mask, target)
    error = (pred.double() - target.double()).abs().cpu()
    log_scale = log_scale.detach().double().cpu()
    keep = None if mask is None else (mask != 0).cpu()
    counted = (error if keep is None else error[keep]), (log_scale if keep is None else log_scale[keep])
    if any(not bool(torch.isfinite(t).all()) for t in counted):
        raise ValueError("pred, target and log_scale must be finite at counted landmarks")
    if counted[0].numel() == 0:
        raise ValueError("mask leaves no landmark")
    return error, log_scale, keep


def scale_error_spearman(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    log_scale: Tensor | np.ndarray,
    mask: Tensor | np.ndarray | None = None,
) -> float:
    r"""Spearman's rank correlation, over points, of the predicted scale with the actual error.

    Per point :math:`(b, i)`: the error :math:`\lVert \hat p_{bi} - p_{bi} \rVert_2` and the
    scale :math:`\sqrt{b_x b_y}`, the geometric mean of the two coordinates' Laplace scales
    (ranked through its logarithm, the mean of ``log_scale``). Ties get their average rank.
    1: the scales order the points exactly as their errors do.

    Args:
        pred, target, log_scale: ``Tensor[B, N, 2]``.
        mask: optional ``Tensor[B, N]``: only these points count.

    Raises:
        ValueError: shapes differ, a counted value is not finite, or errors or scales are all equal.

    Example:
        >>> t = torch.zeros(1, 3, 2)
        >>> p = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]]])
        >>> scale_error_spearman(p, t, torch.tensor([[[0.0, 0.0], [2.0, 2.0], [1.0, 1.0]]]))
        1.0
    """
    error, log_scale, keep = _laplace_inputs(pred, target, log_scale, mask)
    point_error = error.square().sum(-1).sqrt()
    point_scale = log_scale.mean(-1)
    if keep is not None:
        point_error, point_scale = point_error[keep], point_scale[keep]
    ranks = [rankdata(v.numpy().reshape(-1)) for v in (point_error, point_scale)]
    if any(np.ptp(r) == 0 for r in ranks):
        raise ValueError("scale_error_spearman needs errors and scales that are not all equal")
    return float(np.corrcoef(*ranks)[0, 1])


def laplace_interval_coverage(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    log_scale: Tensor | np.ndarray,
    level: float = 0.9,
    mask: Tensor | np.ndarray | None = None,
) -> float:
    r"""Share of coordinates inside the predicted central interval of probability ``level``.

    Per coordinate, under the Laplace distribution of scale :math:`b = e^{s}` centred on the
    prediction, :math:`P(|x| \le t) = 1 - e^{-t/b}`, so the central interval of probability
    :math:`q` is :math:`|x| \le b \ln\frac{1}{1 - q}` (:math:`b \ln 10` for 90 %). A calibrated
    model scores ``level``; evaluate several levels for a reliability plot.

    Args:
        pred, target, log_scale: ``Tensor[B, N, 2]``.
        level: :math:`q \in (0, 1)`.
        mask: optional ``Tensor[B, N]``: only these points count (both coordinates).

    Example:
        >>> t = torch.zeros(1, 2, 2)
        >>> p = torch.tensor([[[1.0, 3.0], [0.5, -2.0]]])
        >>> laplace_interval_coverage(p, t, torch.zeros(1, 2, 2))  # t = ln 10 = 2.30
        0.75
    """
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    error, log_scale, keep = _laplace_inputs(pred, target, log_scale, mask)
    inside = error <= log_scale.exp() * math.log(1 / (1 - level))
    if keep is not None:
        inside = inside[keep]
    return float(inside.double().mean())


#: The lightly, moderately and heavily occluded groups of :func:`occlusion_report` (shares 0-10-30-60 %).
OCCLUSION_GROUPS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.6)
#: The interval probabilities :func:`occlusion_report` checks the Laplace scales at (a reliability curve).
COVERAGE_LEVELS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)


def occlusion_report(
    pred: Tensor,
    target: Tensor,
    visible: Tensor,
    visibility_logits: Tensor | None = None,
    log_scale: Tensor | None = None,
    *,
    edges: Sequence[float] = OCCLUSION_GROUPS,
    scheme: LandmarkScheme | str | None = None,
) -> dict:
    r"""What a set with visibility flags says about occlusion robustness, visibility and uncertainty.

    Args:
        pred, target: ``Tensor[B, N, 2]``.
        visible: ``BoolTensor[B, N]``, the data's flags.
        visibility_logits: ``Tensor[B, N]`` of a head with ``visibility=True``, or ``None``.
        log_scale: ``Tensor[B, N, 2]`` of a head with ``uncertainty=True``, in the units of
            ``pred``, or ``None``.
        edges: the occluded-share groups, closed first bin (:func:`occlusion_bins` without
            the zero bin).
        scheme: for the inter-ocular normalisation, as in :func:`nme`.

    Returns:
        ``{"visible_nme": {group: {"nme", "count"}}, "all_nme": {...}}`` (:func:`nme_by_occlusion`),
        ``"rise"`` (:func:`occlusion_rise` between the first group and the last; ``None`` when
        either is empty), with logits ``"visibility_auroc"`` (:func:`auroc` of the logits for the
        visible flags, ``None`` with one class only), with scales ``"scale_spearman"``
        (:func:`scale_error_spearman`) and ``"coverage"`` ``{level: share}``
        (:func:`laplace_interval_coverage` at :data:`COVERAGE_LEVELS`).

    Example:
        >>> t = torch.as_tensor(get_scheme("cofw29").template).expand(2, -1, -1)
        >>> visible = torch.ones(2, 29, dtype=torch.bool); visible[1, :12] = False
        >>> r = occlusion_report(t + 0.01, t, visible, visible.float() - 0.5, scheme="cofw29")
        >>> sorted(r), r["visibility_auroc"], [g["count"] for g in r["visible_nme"].values()]
        (['all_nme', 'rise', 'visibility_auroc', 'visible_nme'], 1.0, [1, 0, 1])
    """
    occluded = ~torch.as_tensor(visible).bool()
    edges = _check_edges(edges)
    report: dict = {
        which: nme_by_occlusion(pred, target, occluded, edges, visible_only=which == "visible_nme",
                                zero_bin=False, scheme=scheme)
        for which in ("visible_nme", "all_nme")
    }
    try:
        report["rise"] = occlusion_rise(pred, target, occluded, low=edges[1], high=(edges[-2], edges[-1]),
                                        scheme=scheme)
    except ValueError:  # a group without images: no rise to report
        report["rise"] = None
    if visibility_logits is not None:
        both = bool(occluded.any()) and not bool(occluded.all())
        report["visibility_auroc"] = auroc(visibility_logits, ~occluded) if both else None
    if log_scale is not None:
        report["scale_spearman"] = scale_error_spearman(pred, target, log_scale)
        report["coverage"] = {f"{q:g}": laplace_interval_coverage(pred, target, log_scale, q)
                              for q in COVERAGE_LEVELS}
    return report


class LandmarkEvaluator:
    r"""Accumulates per-image NME over a validation loop; reports NME, FR and AUC per subset.

    Args:
        scheme: scheme (name or object) for the normalising points, or ``None`` to pick it
            from ``N`` at each update.
        normalization: ``"inter_ocular"``, ``"inter_pupil"`` or ``"bbox"``.
        threshold: :math:`T` of the failure rate and AUC.

    Subsets are named boolean masks over each batch (WFLW attributes, say); a subset missing
    from an update counts those images as outside it.

    Shape:
        - ``update(pred, target, subsets=None)``: ``Tensor[B, N, 2]`` each, subsets
          ``{name: BoolTensor[B]}``.

    Example:
        >>> from landmark_graph.schemes import get_scheme
        >>> t = torch.as_tensor(get_scheme("wflw98").template).expand(4, -1, -1)
        >>> ev = LandmarkEvaluator("wflw98")
        >>> _ = ev.update(t + torch.tensor([0.0, 0.02]), t, subsets={"pose": torch.tensor([1, 0, 0, 1]) > 0})
        >>> _ = ev.update(t + torch.tensor([0.0, 0.2]), t)
        >>> r = ev.compute()
        >>> round(r["nme"], 4), r["fr"], round(r["subsets"]["pose"]["auc"], 4), r["subsets"]["pose"]["count"]
        (0.11, 0.5, 0.8, 2)
    """

    def __init__(
        self,
        scheme: LandmarkScheme | str | None = None,
        normalization: str = "inter_ocular",
        threshold: float = 0.1,
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
        _errors([0.0], threshold)  # validates threshold
        self.scheme = None if scheme is None else get_scheme(scheme)
        self.normalization = normalization
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        self._errors: list[Tensor] = []
        self._subsets: dict[str, list[tuple[int, Tensor]]] = {}
        self._count = 0

    @torch.no_grad()
    def update(
        self,
        pred: Tensor | np.ndarray,
        target: Tensor | np.ndarray,
        subsets: Mapping[str, Tensor | np.ndarray] | None = None,
        *,
        mask: Tensor | np.ndarray | None = None,
        distance: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """Add a batch; return its per-image NME ``Tensor[B]``.

        Args:
            pred, target: ``Tensor[B, N, 2]``.
            subsets: ``{name: BoolTensor[B]}``, e.g. from :func:`attribute_subsets`.
            mask: optional ``Tensor[B, N]`` of landmarks that count.
            distance: optional ``Tensor[B]`` normalising distances overriding ``normalization``.
        """
        errors = nme(pred, target, normalization=self.normalization if distance is None else distance,
                     scheme=self.scheme, mask=mask).detach().to("cpu", torch.float64)
        batch = errors.numel()
        for name, member in (subsets or {}).items():
            member = torch.as_tensor(member).detach().to("cpu").flatten()
            if member.numel() != batch:
                raise ValueError(f"subsets[{name!r}] must have B={batch} entries, got {member.numel()}")
            self._subsets.setdefault(str(name), []).append((self._count, member != 0))
        self._errors.append(errors)
        self._count += batch
        return errors

    @property
    def errors(self) -> Tensor:
        """``Tensor[n]`` float64: the per-image NME of every image seen, in order."""
        return torch.cat(self._errors) if self._errors else torch.zeros(0, dtype=torch.float64)

    def _membership(self, name: str) -> Tensor:
        member = torch.zeros(self._count, dtype=torch.bool)
        for start, part in self._subsets[name]:
            member[start : start + part.numel()] = part
        return member

    def _summary(self, errors: Tensor) -> dict[str, float | int]:
        if errors.numel() == 0:
            return {"nme": float("nan"), "fr": float("nan"), "auc": float("nan"), "count": 0}
        return {
            "nme": float(errors.mean()),
            "fr": failure_rate(errors, self.threshold),
            "auc": auc(errors, self.threshold),
            "count": errors.numel(),
        }

    def compute(self) -> dict:
        """``{"nme", "fr", "auc", "count", "subsets": {name: {"nme", "fr", "auc", "count"}}}``.

        NME is the mean per-image NME; an empty set reports NaN and count 0.
        """
        errors = self.errors
        result: dict = self._summary(errors)
        result["subsets"] = {name: self._summary(errors[self._membership(name)]) for name in self._subsets}
        return result

    def table(self) -> str:
        """The results as a plain-text table: one row for all images, one per subset."""
        result = self.compute()
        t = f"{self.threshold:g}"
        header = ("subset", "images", "NME (%)", f"FR@{t} (%)", f"AUC@{t}")
        rows = [("full", result), *result["subsets"].items()]
        lines = [f"{header[0]:<14}{header[1]:>8}{header[2]:>10}{header[3]:>13}{header[4]:>10}"]
        for name, r in rows:
            cells = f"{100 * r['nme']:>10.2f}{100 * r['fr']:>13.2f}{r['auc']:>10.4f}"
            lines.append(f"{name:<14}{r['count']:>8d}{cells}")
        return "\n".join(lines)
