r"""Landmark schemes: point orderings of the public data sets and their geometry.

A :class:`LandmarkScheme` says what each index of a ``(N, 2)`` landmark array means: which face
part it belongs to, which point it becomes after a horizontal flip, which pair normalises the
error, and where it sits on a frontal face (the template). The built-in schemes follow the
orderings of the released annotation files:

- ``"wflw98"``: WFLW, 98 points (contour 0-32, brows 33-50, nose 51-59, eyes 60-75,
  mouth 76-95, pupils 96-97).
- ``"300w68"``: 300W / iBUG, 68 points (contour 0-16, brows 17-26, nose 27-35, eyes 36-47,
  mouth 48-67).
- ``"cofw29"``: COFW (LFPW ordering), 29 points (brows 0-7, eyes 8-15, pupils 16-17,
  nose 18-21, mouth 22-27, chin 28).

"Left" in part names means the image's left (the subject's right), as in the data sets, whose
first index of every symmetric pair lies on the image's left.

Template convention: image axes (``x`` to the right, ``y`` down), the mean of the points at the
origin, and the inter-ocular distance (outer eye corners) equal to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from .adjacency import build_correlation_adjacency
from .registry import Registry

__all__ = [
    "BUILTIN_SCHEMES",
    "PART_NAMES",
    "SCHEMES",
    "WFLW_ATTRIBUTES",
    "LandmarkScheme",
    "get_scheme",
    "register_scheme",
    "scheme_for_num_landmarks",
]

PART_NAMES: tuple[str, ...] = (
    "contour", "left_brow", "right_brow", "nose", "left_eye", "right_eye",
    "outer_mouth", "inner_mouth", "left_pupil", "right_pupil",
)
# The part each part becomes under a horizontal flip.
_MIRROR_PART = {
    name: name.replace("left_", "right_") if name.startswith("left_") else name.replace("right_", "left_")
    for name in PART_NAMES
}
#: WFLW's six attribute flags, in the order of the annotation files.
WFLW_ATTRIBUTES: tuple[str, ...] = ("pose", "expression", "illumination", "make-up", "occlusion", "blur")
# Number of shapes sampled around the template for the default neighbourhood.
_ADJACENCY_SAMPLES = 2000
_ADJACENCY_SEED = 0


@dataclass(frozen=True, eq=False)
class LandmarkScheme:
    r"""A landmark ordering: parts, flip table, normalising pairs and a template shape.

    Args:
        name: registry key, e.g. ``"wflw98"``.
        num_points: ``N``.
        parts: part name (one of :data:`PART_NAMES`) -> indices in drawing order; every index
            ``0..N-1`` belongs to exactly one part.
        mirror: ``N`` indices, an involution: after negating ``x``, point ``i`` takes the label
            of point ``mirror[i]`` (see :meth:`flip`).
        inter_ocular: the outer eye corners ``(left, right)``.
        inter_pupil: the pupil (or eye-centre) points, or ``None`` when the scheme has none;
            :func:`~landmark_graph.metrics.nme` then uses the centroids of the eye parts.
        template: ``ndarray[N, 2]`` frontal face, ``y`` down, centred, inter-ocular distance 1.
        closed: parts drawn as closed loops (the last point joins the first).

    The constructor checks all of this (:meth:`validate`) and stores a float64 copy of the
    template (shared by every user of the registered scheme: copy it before editing).

    Example:
        >>> scheme = get_scheme("300w68")
        >>> scheme.num_points, scheme.inter_ocular, scheme.mirror[36]
        (68, (36, 45), 45)
        >>> round(float(np.linalg.norm(scheme.template[36] - scheme.template[45])), 6)
        1.0
    """

    name: str
    num_points: int
    parts: Mapping[str, tuple[int, ...]]
    mirror: tuple[int, ...]
    inter_ocular: tuple[int, int]
    inter_pupil: tuple[int, int] | None
    template: np.ndarray
    closed: tuple[str, ...] = ()
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "parts", {key: tuple(int(i) for i in idx) for key, idx in dict(self.parts).items()})
        set_(self, "mirror", tuple(int(i) for i in self.mirror))
        set_(self, "inter_ocular", tuple(int(i) for i in self.inter_ocular))
        if self.inter_pupil is not None:
            set_(self, "inter_pupil", tuple(int(i) for i in self.inter_pupil))
        set_(self, "closed", tuple(self.closed))
        set_(self, "template", np.array(self.template, dtype=np.float64))
        self.validate()

    def validate(self) -> LandmarkScheme:
        """Check the scheme for consistency; return it, or raise ``ValueError`` naming the field.

        Checks: every index in exactly one known part; ``mirror`` an involution that maps each
        part onto its mirror part; the index pairs in range and distinct; the template finite,
        of shape ``(N, 2)`` and symmetric under the flip up to a quarter of the inter-ocular
        distance (which catches a wrong mirror table).
        """
        n = self.num_points
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"num_points must be an int >= 2, got {n!r}")
        unknown = sorted(set(self.parts) - set(PART_NAMES))
        if unknown:
            raise ValueError(f"parts has unknown names {unknown}; expected names among {PART_NAMES}")
        owners = np.zeros(n, dtype=int)
        for key, idx in self.parts.items():
            _check_indices(f"parts[{key!r}]", idx, n)
            np.add.at(owners, list(idx), 1)
        if (owners != 1).any():
            bad = np.flatnonzero(owners != 1).tolist()
            raise ValueError(f"parts must hold each index 0..{n - 1} exactly once; {bad[:10]} do not")
        _check_indices("mirror", self.mirror, n)
        mirror = np.asarray(self.mirror)
        if len(mirror) != n or (mirror[mirror] != np.arange(n)).any():
            raise ValueError(f"mirror must be an involution of length N={n} (mirror[mirror[i]] == i)")
        for key, idx in self.parts.items():
            image = _MIRROR_PART[key]
            if sorted(mirror[list(idx)].tolist()) != sorted(self.parts.get(image, ())):
                raise ValueError(f"mirror must map part {key!r} onto part {image!r}")
        for attr in ("inter_ocular", "inter_pupil"):
            pair = getattr(self, attr)
            if pair is None and attr == "inter_pupil":
                continue
            _check_indices(attr, pair, n)
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"{attr} must be two distinct indices, got {pair}")
        bad_closed = sorted(set(self.closed) - set(self.parts))
        if bad_closed:
            raise ValueError(f"closed names parts {bad_closed} that the scheme does not have")
        if self.template.shape != (n, 2) or not np.isfinite(self.template).all():
            raise ValueError(f"template must be a finite ({n}, 2) array, got shape {self.template.shape}")
        left, right = self.template[list(self.inter_ocular)]
        ocular = float(np.linalg.norm(left - right))
        if ocular <= 0:
            raise ValueError("template must place the inter_ocular points apart")
        asym = float(np.abs(self.flip(self.template) - self.template).max())
        if asym > 0.25 * ocular:
            raise ValueError(
                f"template flipped with mirror must match itself (max gap {asym / ocular:.3f} inter-ocular "
                "distances, allowed 0.25): check the mirror table"
            )
        return self

    def flip(self, landmarks: Tensor | np.ndarray, width: float | None = None) -> Tensor | np.ndarray:
        r"""Mirror landmarks horizontally and relabel them: :math:`p'_i = (W - x_{m(i)}, y_{m(i)})`.

        Args:
            landmarks: ``Tensor[..., N, 2]`` or array.
            width: ``W``; ``None`` mirrors about the mean ``x`` of each shape. For pixel
                coordinates of an image ``w`` pixels wide, pixel centres at integers, use
                ``W = w - 1``.

        Returns:
            the same type and shape as ``landmarks``.

        Example:
            >>> s = get_scheme("cofw29")
            >>> bool(np.allclose(s.flip(s.flip(s.template)), s.template))
            True
        """
        if landmarks.shape[-2:] != (self.num_points, 2):
            raise ValueError(
                f"landmarks must have shape (..., {self.num_points}, 2) for scheme {self.name!r}, "
                f"got {tuple(landmarks.shape)}"
            )
        out = landmarks[..., list(self.mirror), :]
        out = out.clone() if isinstance(out, Tensor) else out.copy()
        x = out[..., 0]
        axis = 2 * x.mean(-1, keepdims=True) if width is None else width
        out[..., 0] = axis - x
        return out

    def adjacency(self, k: int = 3) -> Tensor:
        r"""Neighbourhood of eq. 1-2 on shapes sampled around the template.

        Draws 2000 shapes (fixed seed): the template deformed by one expression per shape
        (mouth opening with the jaw, smile, brow raise, eye closing), turned in 3-D (yaw ±35°,
        pitch ±20°, on a face-shaped depth map), moved by a random similarity (roll ±30°, scale
        ±10%, shift) and jittered by 1% of the inter-ocular distance per point, then applies
        :func:`~landmark_graph.build_correlation_adjacency`. Deterministic and cached per ``k``.

        Returns:
            ``BoolTensor[N, N]`` with ``k + 1`` ``True`` per row (a copy; edit freely).

        Example:
            >>> get_scheme("wflw98").adjacency(3).sum(1).unique().tolist()
            [4]
        """
        if k not in self._cache:
            shapes = self.sample_shapes(_ADJACENCY_SAMPLES, _ADJACENCY_SEED)
            self._cache[k] = build_correlation_adjacency(shapes, k)
        return self._cache[k].clone()

    def sample_shapes(self, num: int, seed: int = 0) -> np.ndarray:
        """``ndarray[num, N, 2]`` plausible shapes around the template (see :meth:`adjacency`)."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be an int >= 1, got {num!r}")
        rng = np.random.default_rng(seed)
        shapes = np.repeat(self.template[None], num, axis=0)
        coefficients = _expression(num, rng)
        for part, move in _PART_MOTION.items():
            idx = list(self.parts.get(part, ()))
            if idx:
                shapes[:, idx] = move(shapes[:, idx], self.template, coefficients, rng)
        shapes = _turn_in_depth(shapes, rng)
        angle = np.deg2rad(rng.uniform(-30, 30, num))
        scale = rng.uniform(0.9, 1.1, num)
        rot = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], -1).reshape(num, 2, 2)
        shapes = np.einsum("mij,mnj->mni", rot * scale[:, None, None], shapes)
        shapes += rng.uniform(-0.2, 0.2, (num, 1, 2)) + rng.normal(0, 0.01, shapes.shape)
        return shapes


def _check_indices(name: str, idx: tuple[int, ...], n: int) -> None:
    if any(not 0 <= i < n for i in idx):
        raise ValueError(f"{name} must hold indices in [0, {n}), got {list(idx)}")


# --- shape variation used by LandmarkScheme.sample_shapes --------------------------------------
# One expression per sample, shared by the parts it moves (the jaw drops with the lower lips);
# each part function maps its points (M, P, 2) in template units (inter-ocular distance 1).

Coefficients = dict[str, np.ndarray]
Generator = np.random.Generator


def _expression(num: int, rng: Generator) -> Coefficients:
    """Per-sample ``(M, 1)`` coefficients: mouth opening (half the faces), smile, brow raise, eye openness."""
    return {
        "open": rng.uniform(0, 0.25, (num, 1)) * (rng.random((num, 1)) < 0.5),
        "smile": rng.normal(0, 0.04, (num, 1)),
        "raise": rng.normal(0, 0.04, (num, 1)),
        "eyes": rng.uniform(0.2, 1.2, (num, 1)),
    }


def _lower(points: np.ndarray) -> np.ndarray:
    """``(M, P)`` weight in [0, 1]: how far below the part's vertical middle a point lies."""
    y = points[..., 1]
    mid = 0.5 * (y.max(-1, keepdims=True) + y.min(-1, keepdims=True))
    span = np.maximum(y.max(-1, keepdims=True) - mid, 1e-9)
    return np.clip((y - mid) / span, 0, 1)


def _move_mouth(points: np.ndarray, template: np.ndarray, c: Coefficients, rng: Generator) -> np.ndarray:
    centre_x = points[..., 0].mean(-1, keepdims=True)
    half_width = np.maximum(np.abs(points[..., 0] - centre_x).max(-1, keepdims=True), 1e-9)
    rel = (points[..., 0] - centre_x) / half_width
    out = points.copy()
    out[..., 0] += c["smile"] * rel
    out[..., 1] += c["open"] * _lower(points) - c["smile"] * rel**2
    return out


def _move_jaw(points: np.ndarray, template: np.ndarray, c: Coefficients, rng: Generator) -> np.ndarray:
    # Points far below the eyes follow the opening mouth most.
    depth = np.clip(points[..., 1] - template[:, 1].mean(), 0, None)
    out = points.copy()
    out[..., 1] += 0.6 * c["open"] * depth / max(float(depth.max()), 1e-9)
    return out


def _move_brow(points: np.ndarray, template: np.ndarray, c: Coefficients, rng: Generator) -> np.ndarray:
    out = points.copy()
    out[..., 1] -= c["raise"] + rng.normal(0, 0.015, (len(points), 1))  # shared raise, one side a bit more
    return out


def _move_eye(points: np.ndarray, template: np.ndarray, c: Coefficients, rng: Generator) -> np.ndarray:
    openness = np.clip(c["eyes"] + rng.normal(0, 0.1, (len(points), 1)), 0.1, None)
    centre = points[..., 1].mean(-1, keepdims=True)
    out = points.copy()
    out[..., 1] = centre + (points[..., 1] - centre) * openness
    return out


_PART_MOTION: dict[str, Callable[[np.ndarray, np.ndarray, Coefficients, Generator], np.ndarray]] = {
    "outer_mouth": _move_mouth,
    "inner_mouth": _move_mouth,
    "contour": _move_jaw,
    "left_brow": _move_brow,
    "right_brow": _move_brow,
    "left_eye": _move_eye,
    "right_eye": _move_eye,
}


def _turn_in_depth(shapes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate ``(M, N, 2)`` shapes on a face-like depth map (yaw, pitch), project orthographically."""
    x, y = shapes[..., 0], shapes[..., 1]
    # An ellipsoid cap for the head plus a bump for the nose, in template units.
    z = 0.8 * np.sqrt(np.clip(1 - (x / 1.1) ** 2 - ((y - 0.3) / 1.6) ** 2, 0, None))
    z += 0.3 * np.exp(-(x**2 + (y - 0.35) ** 2) / 0.03)
    m = len(shapes)
    yaw = np.deg2rad(rng.uniform(-35, 35, (m, 1)))
    pitch = np.deg2rad(rng.uniform(-20, 20, (m, 1)))
    x1 = x * np.cos(yaw) + z * np.sin(yaw)
    z1 = -x * np.sin(yaw) + z * np.cos(yaw)
    y1 = y * np.cos(pitch) - z1 * np.sin(pitch)
    return np.stack([x1, y1], -1)


# --- templates -------------------------------------------------------------------------------
# The library's own frontal face, drawn on the image's left half (x < 0) and the midline; the
# right half follows from the mirror table. Units: outer eye corners at x = -0.5 and +0.5.

Point = tuple[float, float]


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _jaw(t: float) -> Point:
    """Contour: ``t = 0`` left temple, 0.5 chin, 1 right temple."""
    return -0.8 * math.cos(math.pi * t), -0.15 + 1.25 * math.sin(math.pi * t)


def _brow(s: float, lower: bool = False) -> Point:
    """Left brow: ``s = 0`` outer end, 1 inner end; upper edge, or lower edge when ``lower``."""
    arch = math.sin(math.pi * s)
    y = _lerp(-0.2, -0.26, s) - 0.07 * arch + (0.05 * arch if lower else 0.0)
    return _lerp(-0.58, -0.1, s), y


def _eye_outline(t: float) -> Point:
    """Left eye: ``t = 0`` outer corner, upper lid, 0.5 inner corner, lower lid back."""
    angle = math.pi * (1 + 2 * t)
    return -0.35 + 0.15 * math.cos(angle), 0.06 * math.sin(angle)


_PUPIL: Point = (-0.35, 0.0)


def _nose_bridge(t: float) -> Point:
    """``t = 0`` between the eyes, 1 the tip."""
    return 0.0, _lerp(0.0, 0.36, t)


def _nose_base(s: float) -> Point:
    """``s = 0`` left wing, 1 under the tip."""
    return _lerp(-0.14, 0.0, s), _lerp(0.42, 0.47, s)


def _lip(s: float, *, upper: bool, inner: bool = False) -> Point:
    """Lip line from the left corner (``s = 0``) to the midline (``s = 1``)."""
    width, height = (0.21, 0.015) if inner else (0.26, 0.09)
    sign = -1.0 if upper else 1.0
    return -width * (1 - s), 0.75 + sign * height * math.sin(0.5 * math.pi * s)


def _mirror_from_pairs(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    mirror = list(range(n))
    for a, b in pairs:
        mirror[a], mirror[b] = b, a
    return tuple(mirror)


def _template(mirror: tuple[int, ...], drawn: dict[int, Point], inter_ocular: tuple[int, int]) -> np.ndarray:
    """Complete the left-half drawing by the flip, centre it and scale the inter-ocular distance to 1."""
    points = np.full((len(mirror), 2), np.nan)
    for i, xy in drawn.items():
        points[i] = xy
        points[mirror[i]] = (-xy[0], xy[1])
    if np.isnan(points).any():
        raise ValueError(f"template drawing misses points {np.flatnonzero(np.isnan(points[:, 0])).tolist()}")
    points -= points.mean(axis=0)
    return points / np.linalg.norm(points[inter_ocular[0]] - points[inter_ocular[1]])


def _spread(indices: range | list[int], curve: Callable[[float], Point], ts: list[float]) -> dict[int, Point]:
    return {i: curve(t) for i, t in zip(indices, ts, strict=True)}


def _steps(count: int, stop: float = 1.0, start: float = 0.0) -> list[float]:
    return np.linspace(start, stop, count).tolist()


def _wflw98() -> LandmarkScheme:
    pairs = [(i, 32 - i) for i in range(16)]
    pairs += [(33 + i, 46 - i) for i in range(5)] + [(38 + i, 50 - i) for i in range(4)]
    pairs += [(55, 59), (56, 58)] + [(60 + i, 72 - i) for i in range(5)] + [(65, 75), (66, 74), (67, 73)]
    pairs += [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95), (96, 97)]
    mirror = _mirror_from_pairs(98, pairs)
    thirds = [1 / 3, 2 / 3, 1.0]
    drawn = {
        **_spread(range(17), _jaw, _steps(17, 0.5)),
        **_spread(range(33, 38), _brow, _steps(5)),
        **_spread(range(38, 42), lambda s: _brow(s, lower=True), [0.8, 0.6, 0.4, 0.2]),
        **_spread(range(51, 55), _nose_bridge, _steps(4)),
        **_spread(range(55, 58), _nose_base, _steps(3)),
        **_spread(range(60, 68), _eye_outline, _steps(8, 7 / 8)),
        76: _lip(0, upper=True),
        **_spread([77, 78, 79], lambda s: _lip(s, upper=True), thirds),
        **_spread([87, 86, 85], lambda s: _lip(s, upper=False), thirds),
        88: _lip(0, upper=True, inner=True),
        **_spread([89, 90], lambda s: _lip(s, upper=True, inner=True), [0.5, 1.0]),
        **_spread([95, 94], lambda s: _lip(s, upper=False, inner=True), [0.5, 1.0]),
        96: _PUPIL,
    }
    parts = {
        "contour": range(33), "left_brow": range(33, 42), "right_brow": range(42, 51),
        "nose": range(51, 60), "left_eye": range(60, 68), "right_eye": range(68, 76),
        "outer_mouth": range(76, 88), "inner_mouth": range(88, 96), "left_pupil": (96,), "right_pupil": (97,),
    }
    return LandmarkScheme(
        "wflw98", 98, parts, mirror, (60, 72), (96, 97), _template(mirror, drawn, (60, 72)),
        closed=("left_brow", "right_brow", "left_eye", "right_eye", "outer_mouth", "inner_mouth"),
    )


def _300w68() -> LandmarkScheme:
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)] + [(31, 35), (32, 34)]
    pairs += [(36 + i, 45 - i) for i in range(4)] + [(40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    mirror = _mirror_from_pairs(68, pairs)
    thirds = [1 / 3, 2 / 3, 1.0]
    drawn = {
        **_spread(range(9), _jaw, _steps(9, 0.5)),
        **_spread(range(17, 22), _brow, _steps(5)),
        **_spread(range(27, 31), _nose_bridge, _steps(4)),
        **_spread(range(31, 34), _nose_base, _steps(3)),
        **_spread(range(36, 42), _eye_outline, _steps(6, 5 / 6)),
        48: _lip(0, upper=True),
        **_spread([49, 50, 51], lambda s: _lip(s, upper=True), thirds),
        **_spread([59, 58, 57], lambda s: _lip(s, upper=False), thirds),
        60: _lip(0, upper=True, inner=True),
        **_spread([61, 62], lambda s: _lip(s, upper=True, inner=True), [0.5, 1.0]),
        **_spread([67, 66], lambda s: _lip(s, upper=False, inner=True), [0.5, 1.0]),
    }
    parts = {
        "contour": range(17), "left_brow": range(17, 22), "right_brow": range(22, 27), "nose": range(27, 36),
        "left_eye": range(36, 42), "right_eye": range(42, 48), "outer_mouth": range(48, 60),
        "inner_mouth": range(60, 68),
    }
    return LandmarkScheme(
        "300w68", 68, parts, mirror, (36, 45), None, _template(mirror, drawn, (36, 45)),
        closed=("left_eye", "right_eye", "outer_mouth", "inner_mouth"),
    )


def _cofw29() -> LandmarkScheme:
    pairs = [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19)]
    pairs.append((22, 23))
    mirror = _mirror_from_pairs(29, pairs)
    drawn = {
        0: _brow(0), 4: _brow(0.5), 2: _brow(1), 5: _brow(0.5, lower=True),
        8: _eye_outline(0), 12: _eye_outline(0.25), 10: _eye_outline(0.5), 13: _eye_outline(0.75), 16: _PUPIL,
        18: _nose_base(0), 20: _nose_bridge(1), 21: _nose_base(1),
        22: _lip(0, upper=True), 24: _lip(1, upper=True), 25: _lip(1, upper=True, inner=True),
        26: _lip(1, upper=False, inner=True), 27: _lip(1, upper=False), 28: _jaw(0.5),
    }
    parts = {
        "left_brow": (0, 4, 2, 5), "right_brow": (1, 6, 3, 7), "left_eye": (8, 12, 10, 13),
        "right_eye": (9, 14, 11, 15), "left_pupil": (16,), "right_pupil": (17,), "nose": (18, 20, 19, 21),
        "outer_mouth": (22, 24, 23, 27), "inner_mouth": (25, 26), "contour": (28,),
    }
    return LandmarkScheme(
        "cofw29", 29, parts, mirror, (8, 9), (16, 17), _template(mirror, drawn, (8, 9)),
        closed=("left_brow", "right_brow", "left_eye", "right_eye", "nose", "outer_mouth"),
    )


# --- registry ----------------------------------------------------------------------------------

#: The registered schemes by name (built-ins first); add one with :func:`register_scheme`.
SCHEMES: Registry[LandmarkScheme] = Registry("landmark scheme")
BUILTIN_SCHEMES: tuple[str, ...] = ("wflw98", "300w68", "cofw29")


def register_scheme(scheme: LandmarkScheme, *, overwrite: bool = False) -> LandmarkScheme:
    """Add a custom scheme to :data:`SCHEMES` (validated); return it.

    The scheme's ``template`` has shape ``(N, 2)``, its ``mirror`` is a permutation of ``range(N)``.

    Raises:
        ValueError: the name is taken and ``overwrite`` is false, or it names a built-in scheme.

    Example:
        >>> import numpy as np
        >>> five = LandmarkScheme(
        ...     "five", 5, {"left_eye": (0,), "right_eye": (1,), "nose": (2,), "outer_mouth": (3, 4)},
        ...     mirror=(1, 0, 2, 4, 3), inter_ocular=(0, 1), inter_pupil=None,
        ...     template=[[-0.5, -0.3], [0.5, -0.3], [0, 0.1], [-0.35, 0.5], [0.35, 0.5]])
        >>> register_scheme(five).name, scheme_for_num_landmarks(5).name
        ('five', 'five')
        >>> SCHEMES.unregister("five")
    """
    if not isinstance(scheme, LandmarkScheme):
        raise TypeError(f"scheme must be a LandmarkScheme, got {type(scheme).__name__}")
    if scheme.name in SCHEMES and overwrite and scheme.name in BUILTIN_SCHEMES:
        raise ValueError(f"scheme {scheme.name!r} is built in: built-in schemes cannot be replaced")
    return SCHEMES.register(scheme.name, scheme.validate(), overwrite=overwrite)


def get_scheme(name: str | LandmarkScheme) -> LandmarkScheme:
    """The registered scheme called ``name`` (a scheme passes through).

    Raises:
        ValueError: unknown name; the message lists the registered ones.
        TypeError: ``name`` is neither a string nor a scheme.

    Example:
        >>> scheme = get_scheme("wflw98")
        >>> scheme.num_points, scheme.inter_ocular, scheme.template.shape
        (98, (60, 72), (98, 2))
    """
    if isinstance(name, LandmarkScheme):
        return name
    if not isinstance(name, str):
        raise TypeError(f"scheme must be a name or a LandmarkScheme, got {type(name).__name__}")
    return SCHEMES.get(name)


def scheme_for_num_landmarks(num_landmarks: int) -> LandmarkScheme | None:
    """The first registered scheme with ``num_landmarks`` points (built-ins come first), or ``None``.

    Example:
        >>> scheme_for_num_landmarks(98).name, scheme_for_num_landmarks(7)
        ('wflw98', None)
    """
    return next((s for _, s in SCHEMES.items() if s.num_points == num_landmarks), None)


for _build in (_wflw98, _300w68, _cofw29):
    register_scheme(_build())
del _build
