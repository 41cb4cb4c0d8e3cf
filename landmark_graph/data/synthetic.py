"""Procedural face-like images with exact landmarks, generated on the fly (no files).

Each sample is drawn from a scheme's template (:func:`landmark_graph.schemes.get_scheme`):
a random identity (part sizes and offsets, face aspect), an expression (mouth opening, raised
brows, gaze), a pose (in-plane rotation, yaw-like foreshortening, scale, translation), an appearance
(skin tone, feature colours, textured background, illumination gradient, blur, noise) and
opaque occluders (bars, blobs, textured patches) drawn *over* the face, so that an occluded
landmark cannot be read off the pixels: it has to be inferred from the visible ones.

Sampling is split into three independent random streams, seeded by ``(seed, index, stream)``:
geometry, appearance and occluders. A sample is therefore a pure function of
``(scheme, seed, index, config)``.

Each feature is drawn through its landmarks in the scheme's order, as a closed loop where the
scheme says so (:attr:`~landmark_graph.schemes.LandmarkScheme.closed`), else as a line; the iris
is centred on the scheme's pupil landmark (the eye's centre in schemes without pupils).

Rasterisation is vectorised numpy, batched over the shapes of a face: polygons by a signed
scanline fill with horizontal anti-aliasing, strokes by splatting discs along the line, textures
and blur by small matrix products. Items have the keys of
:class:`~landmark_graph.data.LandmarkDataset` plus ``"occluded"``/``"visible"``, so the two mix
in the same training code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..schemes import LandmarkScheme, get_scheme
from .raster import fill_polygons, stroke_polylines

__all__ = [
    "Appearance",
    "FaceGeometry",
    "Occluder",
    "SyntheticConfig",
    "SyntheticFaces",
    "draw_face",
    "paste_occluders",
    "sample_appearance",
    "sample_geometry",
    "sample_occluders",
    "synthesize_face",
]

_GEOMETRY, _APPEARANCE, _OCCLUDERS = 0, 1, 2
_OCCLUDER_KINDS = ("bar", "blob", "patch")
_BLUR_BLOCK = 32  # rows per block of the banded blur products
# The facial features, back to front; each is drawn as a closed loop when its scheme says so
# (``LandmarkScheme.closed``), else as a line through its points in the scheme's order.
_FEATURES = ("nose", "left_brow", "right_brow", "left_eye", "right_eye", "outer_mouth", "inner_mouth")
# Largest gaze shift of the pupils from their eye's centre, as a fraction of the eye's width (x, y).
_GAZE = (0.15, 0.04)


@dataclass(frozen=True)
class SyntheticConfig:
    """Ranges of the random factors; every range is sampled uniformly.

    Args:
        rotation: maximum in-plane rotation, degrees.
        yaw: maximum yaw-like foreshortening angle, degrees.
        scale: face size (template extent) as a fraction of the image side, ``(low, high)``.
        translation: maximum shift of the face centre, fraction of the image side.
        identity: strength of the per-part shape changes (0 = the template).
        expression: strength of mouth opening, brow raising and gaze (0 = neutral, pupils at
            their eye's centre).
        occlusion: probability that an image has occluders.
        max_occluders: occluders per occluded image, 1 to this many.
        occluder_size: occluder size as a fraction of the face size, ``(low, high)``.
        blur: maximum Gaussian blur sigma, pixels at 128x128 (scaled with the image size).
        noise: maximum standard deviation of the additive pixel noise (images in ``[0, 1]``).
    """

    rotation: float = 25.0
    yaw: float = 35.0
    scale: tuple[float, float] = (0.55, 0.72)
    translation: float = 0.06
    identity: float = 1.0
    expression: float = 1.0
    occlusion: float = 0.5
    max_occluders: int = 2
    occluder_size: tuple[float, float] = (0.18, 0.4)
    blur: float = 1.0
    noise: float = 0.04

    def __post_init__(self) -> None:
        for name in ("rotation", "yaw", "translation", "identity", "expression", "blur", "noise"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.occlusion <= 1.0:
            raise ValueError(f"occlusion must be a probability in [0, 1], got {self.occlusion!r}")
        if not isinstance(self.max_occluders, int) or self.max_occluders < 1:
            raise ValueError(f"max_occluders must be an int >= 1, got {self.max_occluders!r}")
        for name in ("scale", "occluder_size"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range (low, high), 0 < low <= high, got {(low, high)}")


@dataclass
class FaceGeometry:
    """Landmarks and the face outline of one sample, in pixels (x right, y down).

    Attributes:
        landmarks: ``float32[N, 2]`` in the scheme's ordering.
        outline: ``float32[P, 2]`` closed polygon of the face region.
        parts: the scheme's part groups (indices into ``landmarks``, in drawing order).
        face_size: the face's extent in pixels, the unit for feature and occluder sizes.
        closed: the parts drawn as closed loops, the scheme's
            (:attr:`~landmark_graph.schemes.LandmarkScheme.closed`); the others are drawn as lines.
    """

    landmarks: np.ndarray
    outline: np.ndarray
    parts: dict[str, tuple[int, ...]]
    face_size: float
    closed: tuple[str, ...]


@dataclass
class Appearance:
    """Colours (RGB in ``[0, 1]``) and photometric factors of one sample."""

    skin: np.ndarray
    brow: np.ndarray
    lips: np.ndarray
    iris: np.ndarray
    sclera: np.ndarray
    background: np.ndarray
    background_texture: float
    light_direction: float
    light_strength: float
    blur: float
    noise: float
    texture_seed: int = 0


@dataclass
class Occluder:
    """An opaque polygon drawn over the face, filled with a colour and optionally a texture."""

    polygon: np.ndarray
    color: np.ndarray
    texture: float = 0.0
    stripes: tuple[float, float] = field(default=(0.0, 0.0))  # (period px, angle); period 0 = none


@functools.lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """``float32[S, cells + 1]`` linear interpolation weights from a coarse grid to ``S`` pixels.

    Cached (it depends on the sizes only), hence read-only.
    """
    pos = np.linspace(0, cells, size)
    left = np.minimum(np.floor(pos).astype(int), cells - 1)
    frac = pos - left
    m = np.zeros((size, cells + 1), np.float32)
    m[np.arange(size), left] = 1 - frac
    m[np.arange(size), left + 1] = frac
    m.flags.writeable = False
    return m


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Band-limited noise ``float32[C, S, S]``, roughly unit variance: a bilinearly upsampled grid."""
    m = _interp_matrix(size, cells)
    grid = rng.standard_normal((channels, cells + 1, cells + 1)).astype(np.float32)
    return m @ grid @ m.T


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``float32[C, S, S]``: ``k @ image @ k.T`` (border: renormalised).

    The kernel is cut where it falls below 1e-4, so ``k`` is banded: each block of rows is
    multiplied with its band only, a fraction of the full products at 128 pixels.
    """
    if sigma < 0.3:
        return image
    size = image.shape[-1]
    g = np.exp(-0.5 * (np.arange(1 - size, size, dtype=np.float32) / sigma) ** 2)  # offsets 1 - S .. S - 1
    g[g < 1e-4] = 0.0
    k = np.lib.stride_tricks.sliding_window_view(g, size)[::-1]  # k[i, j] = g(i - j)
    k = k / k.sum(1, keepdims=True)
    reach = int(np.count_nonzero(g[size:]))
    bands = [(i, max(i - reach, 0), min(i + _BLUR_BLOCK + reach, size)) for i in range(0, size, _BLUR_BLOCK)]
    rows = np.empty_like(image)
    for i, lo, hi in bands:  # rows = k @ image
        np.matmul(k[i:i + _BLUR_BLOCK, lo:hi], image[:, lo:hi], out=rows[:, i:i + _BLUR_BLOCK])
    rows = rows.reshape(-1, size)
    out = np.empty_like(rows)
    for i, lo, hi in bands:  # out = rows @ k.T
        np.matmul(rows[:, lo:hi], k[i:i + _BLUR_BLOCK, lo:hi].T, out=out[:, i:i + _BLUR_BLOCK])
    return out.reshape(image.shape)


def _blend(canvas: np.ndarray, alpha: np.ndarray, origin: np.ndarray, color: np.ndarray) -> None:
    """``canvas <- canvas (1 - alpha) + color alpha`` in place, ``alpha`` placed at ``origin = (x0, y0)``.

    ``color`` is RGB ``[3]`` or an image ``[3, h, w]`` on the window of ``alpha``. The part of
    the window outside the image is dropped.
    """
    size = canvas.shape[-1]
    x0, y0 = int(origin[0]), int(origin[1])
    h, w = alpha.shape
    r0, r1, c0, c1 = max(y0, 0), min(y0 + h, size), max(x0, 0), min(x0 + w, size)
    if r0 >= r1 or c0 >= c1:
        return
    window = np.s_[..., r0 - y0:r1 - y0, c0 - x0:c1 - x0]
    color = np.asarray(color, np.float32)
    color = color[:, None, None] if color.ndim == 1 else color[window]
    region = canvas[:, r0:r1, c0:c1]
    region += alpha[window] * (color - region)


def _sort_by_angle(points: np.ndarray) -> np.ndarray:
    """Order points around their centroid, so any ordering of a closed part draws as a polygon."""
    d = points - points.mean(0)
    return points[np.argsort(np.arctan2(d[:, 1], d[:, 0]), kind="stable")]


# ---------------------------------------------------------------------------------------------
# Sampling.


def _normalised_template(scheme: LandmarkScheme) -> np.ndarray:
    """The scheme's template centred on its bounding box, largest extent 1."""
    t = np.asarray(scheme.template, np.float64)
    lo, hi = t.min(0), t.max(0)
    return (t - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-6)


def _outline_in_template(template: np.ndarray, parts: dict[str, tuple[int, ...]]) -> np.ndarray:
    """Face region in template space: the contour closed by a forehead arc, else an ellipse."""
    top = template[:, 1].min()
    if "contour" in parts and len(parts["contour"]) >= 3:
        contour = template[list(parts["contour"])]
        left, right = contour[:, 0].min(), contour[:, 0].max()
        cx, cy = (left + right) / 2, contour[[0, -1], 1].mean()
        angle = np.linspace(math.pi, 2 * math.pi, 13)[1:-1]
        height = cy - top + 0.12
        arc = np.stack([cx + (right - left) / 2 * np.cos(angle), cy + height * np.sin(angle)], 1)
        return _sort_by_angle(np.concatenate([contour, arc]))
    lo, hi = template.min(0), template.max(0)
    angle = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    centre, radius = (lo + hi) / 2, (hi - lo) / 2 * np.array([1.3, 1.35])
    return centre + radius * np.stack([np.cos(angle), np.sin(angle)], 1)


class _Layout(NamedTuple):
    """What :func:`sample_geometry` needs from a scheme; the arrays are read-only."""

    parts: dict[str, tuple[int, ...]]  # the scheme's parts, as int tuples
    points: np.ndarray  # the normalised template followed by the face outline
    groups: list[np.ndarray]  # indices of each part that moves: all but the contour, pupils with their eye
    member: np.ndarray  # the groups concatenated
    owner: np.ndarray  # the group of each member
    mouth: np.ndarray
    brows: np.ndarray
    nose: np.ndarray
    pupils: list[tuple[np.ndarray, np.ndarray]]  # (pupil indices, their eye's indices) per side


@functools.lru_cache(maxsize=32)
def _scheme_layout(scheme: LandmarkScheme) -> _Layout:
    """The :class:`_Layout` of a scheme, computed once per scheme."""
    parts = {name: tuple(int(i) for i in idx) for name, idx in scheme.parts.items()}
    template = _normalised_template(scheme)
    # A pupil moves with its eye (one group), so that it keeps its place in the eye.
    pupil_of = {f"{side}_eye": f"{side}_pupil" for side in ("left", "right")
                if parts.get(f"{side}_eye") and parts.get(f"{side}_pupil")}
    moving = [name for name, idx in parts.items()
              if name != "contour" and idx and name not in pupil_of.values()]
    groups = [np.array(parts[name] + parts.get(pupil_of.get(name, ""), ())) for name in moving]
    pupils = [(np.array(parts[pupil]), np.array(parts[eye])) for eye, pupil in pupil_of.items()]

    def indices(*names: str) -> np.ndarray:
        return np.array([i for name in names for i in parts.get(name, ())], int)

    arrays = dict(
        points=np.concatenate([template, _outline_in_template(template, parts)]),
        member=np.concatenate(groups) if groups else np.zeros(0, int),
        owner=np.repeat(np.arange(len(groups)), [len(idx) for idx in groups]),
        mouth=indices("outer_mouth", "inner_mouth"),
        brows=indices("left_brow", "right_brow"),
        nose=indices("nose"),
    )
    for array in (*arrays.values(), *groups, *(a for pair in pupils for a in pair)):
        array.flags.writeable = False
    return _Layout(parts=parts, groups=groups, pupils=pupils, **arrays)


def sample_geometry(
    scheme: LandmarkScheme, rng: np.random.Generator, image_size: int, config: SyntheticConfig
) -> FaceGeometry:
    r"""A random face shape and pose in pixels.

    Identity and expression act in template space; then yaw foreshortening on an ellipsoidal
    depth :math:`z`, :math:`x' = x\cos\gamma + z\sin\gamma`; then rotation, scale and translation.
    The face outline undergoes the same transform, so the drawn contour matches the landmarks.
    """
    layout = _scheme_layout(scheme)
    n = scheme.num_points
    points, member, owner, mouth = layout.points.copy(), layout.member, layout.owner, layout.mouth
    s_id, s_ex = config.identity, config.expression
    # Identity: each part scaled and shifted about its centroid (per part, in order: x and y
    # scale, x and y shift); global aspect ratio.
    jitter = rng.uniform([-0.15, -0.15, -0.02, -0.02], [0.15, 0.15, 0.02, 0.02], (len(layout.groups), 4))
    if layout.groups:
        centre = np.array([points[idx].mean(0) for idx in layout.groups])[owner]
        scale, shift = 1 + s_id * jitter[:, :2], s_id * jitter[:, 2:]
        points[member] = centre + shift[owner] + (points[member] - centre) * scale[owner]
    points[:n] += s_id * rng.normal(0, 0.004, (n, 2))
    points[:, 0] *= 1 + s_id * rng.uniform(-0.1, 0.1)
    # Expression: the gaze (both pupils shifted alike within their eyes), open the mouth (lower
    # lip points go down), raise the brows.
    if layout.pupils:
        gaze = s_ex * rng.uniform(-1, 1, 2) * _GAZE
        for pupil, eye in layout.pupils:
            points[pupil] += gaze * np.ptp(points[eye, 0])
    if len(mouth):
        lower = mouth[points[mouth, 1] > points[mouth, 1].mean()]
        opening = s_ex * rng.uniform(0, 0.1) * (rng.random() < 0.6)
        points[lower, 1] += opening
    points[layout.brows, 1] -= s_ex * rng.uniform(0, 0.04)
    # Yaw on an ellipsoid; the nose sticks out.
    lo, hi = points.min(0), points.max(0)
    half = (hi - lo) / 2
    rel = (points - (lo + hi) / 2) / half
    depth = 0.5 * np.sqrt(np.clip(1 - rel[:, 0] ** 2 - 0.5 * rel[:, 1] ** 2, 0, 1)) * half[0]
    depth[layout.nose] += 0.08
    yaw = math.radians(config.yaw) * rng.uniform(-1, 1)
    points[:, 0] = points[:, 0] * math.cos(yaw) + depth * math.sin(yaw)
    # In-plane similarity.
    angle = math.radians(config.rotation) * rng.uniform(-1, 1)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    face_size = image_size * rng.uniform(*config.scale)
    centre = image_size * (0.5 + config.translation * rng.uniform(-1, 1, 2)) - 0.5
    points = centre + face_size * points @ rot.T
    points = points.astype(np.float32)
    return FaceGeometry(points[:n], points[n:], dict(layout.parts), float(face_size), scheme.closed)


def sample_appearance(rng: np.random.Generator, config: SyntheticConfig, image_size: int) -> Appearance:
    """Random colours and photometric factors."""
    tone = rng.uniform(0.25, 0.95)
    skin = np.array([tone, tone * rng.uniform(0.7, 0.85), tone * rng.uniform(0.55, 0.75)])
    background = rng.uniform(0.05, 0.95, 3)
    # Keep the face edge visible: push the background away from the skin colour if too close.
    if np.abs(background - skin).mean() < 0.15:
        background = np.clip(background + np.where(background > skin, 0.25, -0.25), 0, 1)
    pixel = image_size / 128
    return Appearance(
        skin=skin,
        brow=rng.uniform(0.02, 0.3) * np.array([1.0, 0.85, 0.7]) * rng.uniform(0.6, 1.0),
        lips=np.clip(skin * np.array([0.95, 0.55, 0.55]) * rng.uniform(0.7, 1.0), 0, 1),
        iris=rng.uniform(0.05, 0.45, 3),
        sclera=np.full(3, rng.uniform(0.75, 1.0)),
        background=background,
        background_texture=rng.uniform(0.0, 0.15),
        light_direction=rng.uniform(0, 2 * math.pi),
        light_strength=rng.uniform(0.0, 0.45),
        blur=config.blur * pixel * rng.uniform(0, 1),
        noise=config.noise * rng.uniform(0, 1),
        texture_seed=int(rng.integers(2**31)),
    )


@functools.lru_cache(maxsize=8)
def _unit_polygon(corners: int) -> np.ndarray:
    """The unit circle sampled at ``corners`` points, or the square ``[-1, 1]^2`` when ``corners == 4``."""
    if corners == 4:
        unit = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    else:
        t = np.linspace(0, 2 * math.pi, corners, endpoint=False)
        unit = np.stack([np.cos(t), np.sin(t)], 1)
    unit.flags.writeable = False
    return unit


def _regular_polygon(centre: np.ndarray, radii: np.ndarray, angle: float, corners: int) -> np.ndarray:
    """Rotated ellipse sampled at ``corners`` points, or a rectangle when ``corners == 4``."""
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (centre + (_unit_polygon(corners) * radii) @ rot.T).astype(np.float32)


def sample_occluders(
    geometry: FaceGeometry, rng: np.random.Generator, config: SyntheticConfig
) -> list[Occluder]:
    """Occluders centred near random landmarks, so that they hide facial features."""
    if rng.random() >= config.occlusion:
        return []
    occluders = []
    for _ in range(int(rng.integers(1, config.max_occluders + 1))):
        kind = _OCCLUDER_KINDS[int(rng.integers(len(_OCCLUDER_KINDS)))]
        centre = geometry.landmarks[int(rng.integers(len(geometry.landmarks)))].astype(np.float64)
        centre = centre + rng.normal(0, 0.05 * geometry.face_size, 2)
        size = geometry.face_size * rng.uniform(*config.occluder_size)
        angle = rng.uniform(0, math.pi)
        if kind == "bar":
            polygon = _regular_polygon(centre, np.array([1.2 * geometry.face_size, size / 3]), angle, 4)
        elif kind == "blob":
            polygon = _regular_polygon(centre, size / 2 * rng.uniform(0.6, 1.0, 2), angle, 24)
        else:
            polygon = _regular_polygon(centre, size / 2 * rng.uniform(0.7, 1.0, 2), angle, 4)
        stripes = (rng.uniform(2, 8), rng.uniform(0, math.pi)) if kind == "patch" else (0.0, 0.0)
        occluders.append(Occluder(polygon, rng.uniform(0, 1, 3), rng.uniform(0, 0.3), stripes))
    return occluders


# ---------------------------------------------------------------------------------------------
# Drawing.


# How a feature layer's alpha comes from the rasterised fills and strokes.
_COMBINE = {
    "fill": lambda f, s, slot: f[slot],
    "stroke": lambda f, s, slot: s[slot],
    "fill|stroke": lambda f, s, slot: np.maximum(f[slot[0]], s[slot[1]]),
    "fill*fill": lambda f, s, slot: f[slot[0]] * f[slot[1]],
}


class _Shapes:
    """Polygons and polylines collected for batched rasterisation: all polygons in windows of
    one shape, all polylines in windows of another.

    Each ``fill``/``line`` call returns the shape's slot; after :meth:`render`, ``fills[slot]``
    and ``strokes[slot]`` hold its coverage and ``origins`` the top-left pixel of each window.
    """

    def __init__(self) -> None:
        self.polygons: list[np.ndarray] = []
        self.lines: list[tuple[np.ndarray, float, bool]] = []
        self.polygon_origins: list[np.ndarray] = []
        self.line_origins: list[np.ndarray] = []

    def fill(self, polygon: np.ndarray, origin: np.ndarray) -> int:
        self.polygons.append(polygon)
        self.polygon_origins.append(origin)
        return len(self.polygons) - 1

    def line(self, points: np.ndarray, width: float, origin: np.ndarray, closed: bool = False) -> int:
        self.lines.append((points, width, closed))
        self.line_origins.append(origin)
        return len(self.lines) - 1

    def render(self, fill_shape: tuple[int, int], line_shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
        fills = (fill_polygons(self.polygons, np.array(self.polygon_origins, np.float64), fill_shape)
                 if self.polygons else np.zeros((0, *fill_shape), np.float32))
        strokes = (stroke_polylines(self.lines, np.array(self.line_origins, np.float32), line_shape)
                   if self.lines else np.zeros((0, *line_shape), np.float32))
        return fills, strokes


def _box(points: np.ndarray, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-left and bottom-right pixels ``(x, y)`` of the box around ``points``, ``pad`` pixels wider."""
    return np.floor(points.min(0) - pad), np.ceil(points.max(0) + pad)


def _window_shape(boxes: list[np.ndarray]) -> tuple[int, int]:
    """``(h, w)`` of the smallest window that holds each box ``(w, h)``."""
    return tuple(int(v) for v in np.max(boxes, 0)[::-1]) if boxes else (1, 1)


def _face_layers(geometry: FaceGeometry, look: Appearance, skin_texture: np.ndarray, size: int):
    """Rasterise the face and return its layers ``(alpha, origin, color)``, back to front.

    The face region has its own window, its box cut to the image. The features' polygons share
    one window shape (the largest feature's box) and all lines another (the contour line's
    window being the face's), so each batch rasterises in a single pass; each layer keeps only
    its own box. The skin colour is modulated by ``skin_texture`` ``[S, S]``.
    """
    pts, parts, unit = geometry.landmarks, geometry.parts, geometry.face_size / 100
    pad = 2 * unit + 2
    contour = pts[list(parts["contour"])] if len(parts.get("contour", ())) >= 2 else None
    face = geometry.outline if contour is None else np.concatenate([geometry.outline, contour])
    lo, hi = (np.clip(corner, 0, size - 1) for corner in _box(face, pad))
    face_box = (hi - lo + 1).astype(int)
    (x0, y0), (x1, y1) = lo.astype(int), hi.astype(int) + 1
    skin = look.skin.astype(np.float32)[:, None, None] * (1 + 0.05 * skin_texture[y0:y1, x0:x1])
    layers = [(fill_polygons([geometry.outline], lo[None], (y1 - y0, x1 - x0))[0], lo, skin)]
    shapes, plan = _Shapes(), []  # plan: (op, slot, color, box[, strength]) of each later layer
    shade = look.skin * 0.7
    if contour is not None:
        plan.append(("stroke", shapes.line(contour, 1.0 * unit, lo), shade, face_box, 0.6))
    # All features at once: their boxes, their points in the scheme's drawing order.
    names = [name for name in _FEATURES if len(parts.get(name, ())) >= 2]
    counts = np.array([len(parts[name]) for name in names], int)
    starts = np.cumsum(counts) - counts
    points = pts[[i for name in names for i in parts[name]]]
    if names:
        low, high = np.minimum.reduceat(points, starts), np.maximum.reduceat(points, starts)
        corners = np.floor(low - pad)  # each feature's window origin
        boxes = list((np.ceil(high + pad) - corners + 1).astype(int))
    else:
        boxes = []
    for k, name in enumerate(names):
        part, origin, box = slice(starts[k], starts[k] + counts[k]), corners[k], boxes[k]
        line, closed, kind = points[part], name in geometry.closed, name.rpartition("_")[2]
        color, width = {"nose": (shade * 0.8, 1.6), "brow": (look.brow, 2.0), "eye": (look.brow, 1.2),
                        "mouth": (look.lips * (0.25 if name == "inner_mouth" else 1.0), 1.0)}[kind]
        if name == "nose" or not closed:  # a line through the points; an open brow is a thick one
            width *= 1.5 if kind == "brow" else 1.0
            plan.append(("stroke", shapes.line(line, width * unit, origin, closed), color, box))
            continue
        i = shapes.fill(line, origin)
        if kind == "eye":
            # The iris is centred on the eye's pupil landmark (else on the eye's centre), clipped by the lids.
            pupil = parts.get(name.replace("eye", "pupil"), ())
            centre = pts[list(pupil)].mean(0) if pupil else line.mean(0)
            iris = _regular_polygon(centre, np.full(2, 0.3 * (high[k] - low[k]).max()), 0.0, 16)
            j = shapes.fill(iris, origin)
            plan += [("fill", i, look.sclera, box), ("fill*fill", (i, j), look.iris, box),
                     ("stroke", shapes.line(line, width * unit, origin, True), color, box)]
        elif name == "outer_mouth":
            plan.append(("fill", i, color, box))
        else:  # a brow, the inner mouth (dark opening): filled, with its outline
            plan.append(("fill|stroke", (i, shapes.line(line, width * unit, origin, True)), color, box))
    lined = boxes if contour is None else [face_box, *boxes]
    fills, strokes = shapes.render(_window_shape(boxes), _window_shape(lined))
    for op, slot, color, (w, h), *strength in plan:
        alpha = _COMBINE[op](fills[:, :h, :w], strokes[:, :h, :w], slot)
        if strength:
            alpha = alpha * strength[0]
        origins = shapes.polygon_origins if op.startswith("fill") else shapes.line_origins
        layers.append((alpha, origins[slot[0] if isinstance(slot, tuple) else slot], color))
    return layers


def draw_face(
    geometry: FaceGeometry, look: Appearance, occluders: list[Occluder], image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render one sample.

    Returns:
        ``(image, occluder_alpha)``: ``float32[3, S, S]`` in ``[0, 1]`` and ``float32[S, S]``, the
        occluders' coverage. Blur and noise are applied last, to everything.
    """
    size = image_size
    tex = np.random.default_rng(look.texture_seed)
    canvas = look.background_texture * _smooth_noise(tex, size, 6, 3)
    canvas += np.asarray(look.background, np.float32)[:, None, None]
    for alpha, origin, color in _face_layers(geometry, look, _smooth_noise(tex, size, 4)[0], size):
        _blend(canvas, alpha, origin, color)
    # Illumination: a linear ramp across the image (after the face, before the occluders).
    coord = look.light_strength * (np.arange(size, dtype=np.float32) / size - 0.5)
    canvas *= (1 + math.cos(look.light_direction) * coord) + math.sin(look.light_direction) * coord[:, None]
    alpha = np.zeros((size, size), np.float32)
    if occluders:
        # All occluders share one window, their box cut to the image.
        polygons = [occ.polygon for occ in occluders]
        lo, hi = (np.clip(corner, 0, size - 1).astype(int) for corner in _box(np.concatenate(polygons), 1))
        (x0, y0), (x1, y1) = lo, hi + 1
        covers = fill_polygons(polygons, np.tile(lo, (len(polygons), 1)), (y1 - y0, x1 - x0))
        grid = np.arange(size, dtype=np.float32)
        for occ, cover in zip(occluders, covers, strict=True):
            texture = 1 + occ.texture * _smooth_noise(tex, size, 12)[0, y0:y1, x0:x1]
            period, angle = occ.stripes
            if period > 0:
                phase = math.cos(angle) * grid[None, x0:x1] + math.sin(angle) * grid[y0:y1, None]
                texture *= 0.75 + 0.25 * np.sign(np.sin(2 * math.pi * phase / period))
            _blend(canvas, cover, lo, occ.color.astype(np.float32)[:, None, None] * texture)
        alpha[y0:y1, x0:x1] = covers.max(0)
    canvas = _blur(canvas, look.blur)
    if look.noise > 0:
        noise = tex.standard_normal(canvas.shape, dtype=np.float32)
        noise *= look.noise
        canvas += noise
    return np.clip(canvas, 0.0, 1.0, out=canvas), alpha


def _occluded(alpha: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """``bool[N]``: a landmark is occluded when the occluder covers at least half its pixel."""
    size = alpha.shape[0]
    ij = np.clip(np.rint(landmarks).astype(int), 0, size - 1)
    return alpha[ij[:, 1], ij[:, 0]] >= 0.5


#: The occluders :func:`paste_occluders` draws by default: always 1-3, 15-55 % of the face.
PASTE_CONFIG = SyntheticConfig(occlusion=1.0, max_occluders=3, occluder_size=(0.15, 0.55))


def paste_occluders(
    images: Tensor, landmarks: Tensor, rng: np.random.Generator, config: SyntheticConfig = PASTE_CONFIG
) -> tuple[Tensor, Tensor]:
    """The generator's occluders drawn over existing images: an occlusion augmentation.

    Per image, :func:`sample_occluders` places occluders near random landmarks (the face size
    taken as the landmarks' extent) and paints them over the pixels, textured like
    :func:`draw_face`'s; a landmark is covered when an occluder covers at least half its pixel.
    Works on any face crop (synthetic or real) with pixels in ``[0, 1]``.

    Args:
        images: ``Tensor[B, C, S, S]`` in ``[0, 1]``, ``C`` 1 or 3.
        landmarks: ``Tensor[B, N, 2]`` in pixels (x, y).
        rng: the random stream of the occluders.
        config: their ranges (``occlusion`` the probability that an image gets any).

    Returns:
        ``(pasted, covered)``: a new ``Tensor[B, C, S, S]`` and ``BoolTensor[B, N]``.

    Example:
        >>> s = synthesize_face("cofw29", seed=0, index=0, image_size=32, config=SyntheticConfig(occlusion=0))
        >>> rng = np.random.default_rng(0)
        >>> pasted, covered = paste_occluders(s["image"][None], s["landmarks"][None], rng)
        >>> pasted.shape, covered.shape, bool(covered.any()), bool((pasted != s["image"]).any())
        (torch.Size([1, 3, 32, 32]), torch.Size([1, 29]), True, True)
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2] or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, C, S, S) with C 1 or 3, got shape {tuple(images.shape)}")
    if landmarks.shape[:1] != images.shape[:1] or landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be (B, N, 2) with B={images.shape[0]}, "
                         f"got {tuple(landmarks.shape)}")
    size = images.shape[-1]
    pasted = images.detach().to("cpu", torch.float32).numpy().copy()
    points = landmarks.detach().to("cpu", torch.float32).numpy()
    covered = np.zeros(points.shape[:2], bool)
    for b, (image, pts) in enumerate(zip(pasted, points, strict=True)):
        extent = float((pts.max(0) - pts.min(0)).max())
        occluders = sample_occluders(FaceGeometry(pts, pts, {}, extent, ()), rng, config)
        if not occluders:
            continue
        covers = fill_polygons([o.polygon for o in occluders], np.zeros((len(occluders), 2)), (size, size))
        noise = _smooth_noise(np.random.default_rng(rng.integers(2**32)), size, 12)[0]
        for occ, cover in zip(occluders, covers, strict=True):
            color = occ.color.astype(np.float32)[: image.shape[0], None, None] * (1 + occ.texture * noise)
            image += cover * (color - image)
        np.clip(image, 0.0, 1.0, out=image)
        covered[b] = _occluded(covers.max(0), pts)
    return torch.from_numpy(pasted).to(images), torch.from_numpy(covered).to(landmarks.device)


def synthesize_face(
    scheme: LandmarkScheme | str,
    seed: int,
    index: int,
    image_size: int = 128,
    config: SyntheticConfig | None = None,
) -> dict[str, Tensor]:
    """One synthetic sample, a pure function of its arguments.

    Args:
        scheme: a scheme name (``"wflw98"``, ``"300w68"``, ``"cofw29"``) or a ``LandmarkScheme``.
        seed, index: select the sample; each of the geometry, appearance and occluder streams is
            seeded by ``(seed, index, stream)``.
        image_size: side ``S`` of the square image.
        config: ranges of the random factors (:class:`SyntheticConfig`).

    Returns:
        A dict with ``"image"`` ``Tensor[3, S, S]`` in ``[0, 1]``, ``"landmarks"``
        ``Tensor[N, 2]`` in pixels (x, y; pixel centres at integers), ``"visible"`` and
        ``"occluded"`` ``BoolTensor[N]``, ``"transform"`` ``Tensor[2, 3]`` (the identity affine
        map: the image is its own crop) and ``"index"``.

    Example:
        >>> s = synthesize_face("300w68", seed=0, index=3, image_size=64)
        >>> s["image"].shape, s["landmarks"].shape, s["occluded"].dtype
        (torch.Size([3, 64, 64]), torch.Size([68, 2]), torch.bool)
    """
    scheme = get_scheme(scheme)
    config = config or SyntheticConfig()
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
    streams = [np.random.default_rng([seed, index, k]) for k in (_GEOMETRY, _APPEARANCE, _OCCLUDERS)]
    geometry = sample_geometry(scheme, streams[_GEOMETRY], image_size, config)
    look = sample_appearance(streams[_APPEARANCE], config, image_size)
    occluders = sample_occluders(geometry, streams[_OCCLUDERS], config)
    image, alpha = draw_face(geometry, look, occluders, image_size)
    occluded = torch.from_numpy(_occluded(alpha, geometry.landmarks))
    return {
        "image": torch.from_numpy(image),
        "landmarks": torch.from_numpy(geometry.landmarks),
        "visible": ~occluded,
        "occluded": occluded,
        "transform": torch.eye(2, 3),
        "index": torch.tensor(index),
    }


class SyntheticFaces(Dataset):
    """A map-style data set of :func:`synthesize_face` samples ``0 .. length - 1``.

    Samples are generated on access (no files, no cache) and are identical across processes
    and epochs for the same ``seed``: give the training and test sets different seeds.

    Args:
        scheme: scheme name or ``LandmarkScheme``.
        length: number of samples.
        image_size: side ``S``.
        seed: data set seed.
        config: :class:`SyntheticConfig`; keyword overrides in ``**overrides`` (for example
            ``occlusion=1.0``) replace its fields.

    Example:
        >>> ds = SyntheticFaces("cofw29", length=4, image_size=32, occlusion=1.0)
        >>> len(ds), ds[0]["image"].shape, bool(ds[1]["occluded"].any())
        (4, torch.Size([3, 32, 32]), True)
    """

    def __init__(
        self,
        scheme: LandmarkScheme | str = "wflw98",
        length: int = 1000,
        image_size: int = 128,
        seed: int = 0,
        config: SyntheticConfig | None = None,
        **overrides,
    ) -> None:
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.scheme = get_scheme(scheme)
        self.length, self.image_size, self.seed = length, image_size, seed
        self.config = dataclasses.replace(config or SyntheticConfig(), **overrides)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index must be in [0, {self.length}), got {index}")
        return synthesize_face(self.scheme, self.seed, index % self.length, self.image_size, self.config)

    def landmarks(self, count: int | None = None) -> Tensor:
        """``Tensor[M, N, 2]``: the landmarks of the first ``count`` samples, without rendering.

        Useful to build a correlation adjacency (:func:`~landmark_graph.build_correlation_adjacency`)
        or a mean shape from the training set cheaply.
        """
        count = self.length if count is None else min(count, self.length)
        shapes = [
            sample_geometry(
                self.scheme, np.random.default_rng([self.seed, i, _GEOMETRY]), self.image_size, self.config
            ).landmarks
            for i in range(count)
        ]
        return torch.from_numpy(np.stack(shapes))

    def __repr__(self) -> str:
        return (f"SyntheticFaces(scheme={self.scheme.name!r}, length={self.length}, "
                f"image_size={self.image_size}, seed={self.seed})")
