r"""Evaluation metrics of face alignment (paper §IV-A): NME, failure rate, CED and its AUC.

Per image, with prediction :math:`\hat p_i`, target :math:`p_i` and normalising distance
:math:`d`,

.. math::
    \mathrm{NME} = \frac{1}{N} \sum_{i=1}^{N} \frac{\lVert \hat p_i - p_i \rVert_2}{d}.

Over a set of :math:`n` per-image errors :math:`e_j` and a threshold :math:`T` (0.1 by default),
the cumulative error distribution is :math:`F(e) = \frac1n \#\{j : e_j \le e\}`, the failure
rate is :math:`1 - F(T)` and the AUC is :math:`\frac1T \int_0^T F(e)\,de`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ._checks import check_shape
from .registry import Registry
from .schemes import WFLW_ATTRIBUTES, LandmarkScheme, get_scheme, scheme_for_num_landmarks

__all__ = [
    "NORMALIZATIONS",
    "WFLW_ATTRIBUTES",
    "LandmarkEvaluator",
    "attribute_subsets",
    "auc",
    "ced",
    "failure_rate",
    "nme",
    "normalizing_distance",
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
