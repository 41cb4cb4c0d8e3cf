"""Synthetic faces: determinism, exact landmarks, occlusion that hides what it flags."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from landmark_graph.data.raster import fill_polygons, stroke_polylines
from landmark_graph.data.synthetic import (
    SyntheticConfig,
    SyntheticFaces,
    draw_face,
    sample_appearance,
    sample_geometry,
    sample_occluders,
    synthesize_face,
)
from landmark_graph.schemes import get_scheme

SCHEMES = ("wflw98", "300w68", "cofw29")
STILL = SyntheticConfig(blur=0.0, noise=0.0)


@pytest.mark.parametrize("name", SCHEMES)
def test_sample_layout(name):
    scheme = get_scheme(name)
    sample = synthesize_face(name, seed=1, index=4, image_size=48)
    assert sample["image"].shape == (3, 48, 48) and sample["image"].dtype == torch.float32
    assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    assert sample["landmarks"].shape == (scheme.num_points, 2)
    assert sample["occluded"].dtype == torch.bool and sample["occluded"].shape == (scheme.num_points,)
    assert torch.equal(sample["visible"], ~sample["occluded"])
    assert torch.equal(sample["transform"], torch.eye(2, 3)) and sample["index"].item() == 4
    # The face stays inside the image with the default ranges.
    assert (sample["landmarks"] >= 0).all() and (sample["landmarks"] <= 47).all()


def test_deterministic_per_seed_and_index():
    a = SyntheticFaces("300w68", length=5, image_size=32, seed=7)
    b = SyntheticFaces("300w68", length=5, image_size=32, seed=7)
    for key in ("image", "landmarks", "occluded"):
        assert torch.equal(a[3][key], b[3][key])
    assert not torch.equal(a[3]["landmarks"], a[2]["landmarks"])
    other = SyntheticFaces("300w68", length=5, image_size=32, seed=8)
    assert not torch.equal(a[3]["image"], other[3]["image"])
    assert torch.equal(a[-2]["image"], a[3]["image"])
    with pytest.raises(IndexError):
        a[5]


def test_landmarks_method_matches_samples():
    faces = SyntheticFaces("cofw29", length=6, image_size=40, seed=2)
    assert torch.equal(faces.landmarks(4), torch.stack([faces[i]["landmarks"] for i in range(4)]))
    assert faces.landmarks().shape == (6, 29, 2)


def test_landmarks_follow_the_template_ordering():
    # With no identity, expression, pose or jitter, the landmarks are the scaled template.
    config = SyntheticConfig(rotation=0, yaw=0, translation=0, identity=0, expression=0, scale=(0.5, 0.5))
    scheme = get_scheme("wflw98")
    points = synthesize_face(scheme, 0, 0, 100, config)["landmarks"].double()
    template = torch.as_tensor(scheme.template, dtype=torch.float64)
    lo, hi = template.min(0).values, template.max(0).values
    expected = (template - (lo + hi) / 2) / (hi - lo).max() * 50 + 49.5
    torch.testing.assert_close(points, expected, atol=1e-3, rtol=0)


def test_occlusion_probability_extremes():
    clean = SyntheticFaces("wflw98", length=12, image_size=32, occlusion=0.0)
    occluded = SyntheticFaces("wflw98", length=12, image_size=32, occlusion=1.0)
    assert not any(clean[i]["occluded"].any() for i in range(12))
    hit = sum(bool(occluded[i]["occluded"].any()) for i in range(12))
    assert hit >= 9  # occluders are centred on landmarks; a few may fall between them


def _controlled(index: int, scheme: str = "wflw98", size: int = 64):
    rng = [np.random.default_rng([5, index, k]) for k in range(3)]
    config = dataclasses.replace(STILL, occlusion=1.0)
    geometry = sample_geometry(get_scheme(scheme), rng[0], size, config)
    look = sample_appearance(rng[1], config, size)
    look = dataclasses.replace(look, light_strength=0.0, background_texture=0.0)
    return geometry, look, sample_occluders(geometry, rng[2], config)


@pytest.mark.parametrize("index", range(4))
def test_occluders_hide_the_face(index):
    geometry, look, occluders = _controlled(index)
    image, alpha = draw_face(geometry, look, occluders, 64)
    other_look = dataclasses.replace(look, skin=1 - look.skin, brow=1 - look.brow, iris=1 - look.iris,
                                     lips=1 - look.lips, sclera=1 - look.sclera)
    other, alpha2 = draw_face(geometry, other_look, occluders, 64)
    assert np.array_equal(alpha, alpha2)
    covered = alpha >= 1.0
    assert covered.any()
    # Under the occluders the pixels do not depend on the face at all...
    np.testing.assert_allclose(image[:, covered], other[:, covered], atol=1e-6, rtol=0)
    # ...while the visible face does.
    assert np.abs(image[:, ~covered] - other[:, ~covered]).max() > 0.3


def test_features_are_drawn_at_their_landmarks():
    geometry, look, _ = _controlled(1)
    image, _ = draw_face(geometry, look, [], 64)
    # Inside each WFLW brow: halfway between its upper edge's middle point and the lower edge.
    for upper, lower in ((35, (39, 40)), (44, (48, 49))):
        points = geometry.landmarks
        x, y = np.rint((points[upper] + points[list(lower)].mean(0)) / 2).astype(int)
        np.testing.assert_allclose(image[:, y, x], look.brow, atol=0.05)


def _pupils(name: str):
    """``(side, eye indices, pupil index)`` of a scheme with pupil landmarks."""
    scheme = get_scheme(name)
    parts = scheme.parts
    return [(side, list(parts[f"{side}_eye"]), parts[f"{side}_pupil"][0]) for side in ("left", "right")]


@pytest.mark.parametrize("index", range(3))
@pytest.mark.parametrize("name", ["wflw98", "cofw29"])
def test_iris_is_centred_on_the_pupil_landmark(name, index):
    geometry, look, _ = _controlled(index, name, size=256)
    points = geometry.landmarks.copy()
    for (_, eye, pupil), shift in zip(_pupils(name), (-0.12, 0.12), strict=True):  # a sideways gaze
        points[pupil] = points[eye].mean(0) + np.array([shift * np.ptp(points[eye, 0]), 0.0])
    geometry = dataclasses.replace(geometry, landmarks=points)
    # A pure blue iris and white sclera, colours nothing else near the eyes has.
    look = dataclasses.replace(look, iris=np.array([0.0, 0.0, 1.0]), sclera=np.ones(3), brow=np.full(3, 0.1),
                               skin=np.array([0.8, 0.6, 0.5]))
    image, _ = draw_face(geometry, look, [], 256)
    iris = (image[2] > 0.5) & (image[:2] < 0.5).all(0)
    sclera = image.min(0) > 0.9
    rows, cols = np.mgrid[:256, :256]
    for side, eye, pupil in _pupils(name):
        distance = np.hypot(cols - points[pupil, 0], rows - points[pupil, 1])
        near = distance < np.ptp(points[eye, 0])
        assert (iris & near).sum() > 20 and (sclera & near).sum() > 5, side
        # A disc around the pupil, clipped by the lids: every iris pixel is nearer to the pupil
        # than every white one, up to the anti-aliased edge. (An iris centred elsewhere, e.g. on
        # the eye's centre, puts iris pixels beyond the nearest white ones: 2.4 to 7.8 px here.)
        assert distance[iris & near].max() < distance[sclera & near].min() + 0.75, side


def _inside(point: np.ndarray, polygon: np.ndarray) -> bool:
    """Even-odd ray casting: is ``point`` inside the closed ``polygon``?"""
    (x, y), (xa, ya), (xb, yb) = point, polygon.T, np.roll(polygon, -1, axis=0).T
    crosses = ((ya > y) != (yb > y)) & (x < xa + (y - ya) * (xb - xa) / (yb - ya + 1e-12))
    return bool(crosses.sum() % 2)


@pytest.mark.parametrize("name", ["wflw98", "cofw29"])
def test_sampled_pupils_stay_inside_their_eyes(name):
    shapes = SyntheticFaces(name, 300, 128, seed=4).landmarks().numpy()
    for points in shapes:
        for side, eye, pupil in _pupils(name):
            assert _inside(points[pupil], points[eye]), side
    # The gaze moves them: they are not all at the eye's centre.
    offsets = [np.linalg.norm(p[pupil] - p[eye].mean(0)) for p in shapes for _, eye, pupil in _pupils(name)]
    assert np.percentile(offsets, 90) > 0.5


@pytest.mark.parametrize("name", SCHEMES)
def test_geometry_carries_the_schemes_closed_parts(name):
    geometry, _, _ = _controlled(0, name, size=128)
    assert geometry.closed == get_scheme(name).closed


@pytest.mark.parametrize("index", range(3))
def test_an_open_part_is_drawn_as_a_line(index):
    # 300W brows are open curves in the scheme: a line through them leaves skin between the
    # brow's arc and chord, where a closed loop is filled. Nothing else changes.
    scheme = get_scheme("300w68")
    assert "left_brow" not in scheme.closed
    geometry, look, _ = _controlled(index, "300w68", size=128)
    drawn, _ = draw_face(geometry, look, [], 128)
    looped, _ = draw_face(dataclasses.replace(geometry, closed=(*scheme.closed, "left_brow")), look, [], 128)
    brow = geometry.landmarks[list(scheme.parts["left_brow"])]
    x, y = np.rint(brow.mean(0)).astype(int)
    np.testing.assert_allclose(looped[:, y, x], look.brow, atol=0.05)
    assert np.abs(drawn[:, y, x] - look.brow).max() > 0.2
    rows, cols = np.nonzero(np.abs(looped - drawn).max(0) > 1e-6)
    assert brow[:, 0].min() - 3 <= cols.min() and cols.max() <= brow[:, 0].max() + 3
    assert brow[:, 1].min() - 3 <= rows.min() and rows.max() <= brow[:, 1].max() + 3


def test_polygon_fill_area_and_antialiasing():
    square = np.array([[10.25, 10.0], [30.25, 10.0], [30.25, 30.0], [10.25, 30.0]])
    cover = fill_polygons([square, square + 5], np.zeros((2, 2)), (48, 48))
    assert cover.shape == (2, 48, 48)
    assert cover[0].sum() == pytest.approx(20 * 20, abs=0.5)  # 20 rows of 20 px
    assert cover[0, 20, 10] == pytest.approx(0.25)  # a quarter of pixel 10 lies right of x = 10.25
    assert cover[0, 5].sum() == 0.0
    shifted = fill_polygons([square], np.array([[5.0, 5.0]]), (48, 48))[0]
    np.testing.assert_allclose(shifted[:38, :38], cover[1, 10:, 10:][:38, :38])


def test_stroke_width():
    line = np.array([[5.0, 20.0], [35.0, 20.0]])
    cover = stroke_polylines([(line, 2.0, False)], np.zeros((1, 2), np.float32), (40, 40))[0]
    column = cover[:, 20]
    np.testing.assert_allclose(column[18:23], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    assert cover[:, :2].sum() == 0.0 and cover[30:].sum() == 0.0


def test_strokes_keep_the_best_splat_of_every_sample():
    # Each pixel's coverage is the best splat clip(width / 2 + 0.5 - distance, 0, 1) over all
    # half-pixel samples of its line, however the window cuts the line: compare with the dense
    # maximum over every (pixel, sample) pair, for lines partly or wholly outside their window.
    rng = np.random.default_rng(0)
    lines = [(rng.uniform(-15, 45, (int(rng.integers(2, 6)), 2)).astype(np.float32),
              float(rng.uniform(0.5, 4.0)), bool(rng.random() < 0.5)) for _ in range(8)]
    # Dots (one sample each) inside the window show the whole disc of a single splat.
    lines += [(np.array([p, p + 0.01], np.float32), 4.0, False) for p in rng.uniform(3, 20, (12, 2))]
    lines.append((np.array([[200.0, 150.0], [260.0, 170.0]], np.float32), 3.0, False))
    origins = rng.integers(-5, 10, (len(lines), 2)).astype(np.float32)
    origins[8:20] = 0.0  # the dots sit in their windows
    cover = stroke_polylines(lines, origins, (24, 30))
    assert cover.shape == (len(lines), 24, 30) and cover[-1].max() == 0.0
    ys, xs = np.mgrid[:24, :30]
    for (points, width, closed), origin, got in zip(lines, origins, cover, strict=True):
        path = np.concatenate([points, points[:1]]) if closed else points
        samples = []
        for a, b in itertools.pairwise(path):
            steps = max(math.ceil(2 * np.hypot(*(b - a))), 1)
            samples += [a + (b - a) * (j / steps) for j in range(steps)]
        s = np.array(samples, np.float64) - origin
        dist = np.hypot(xs[..., None] - s[:, 0], ys[..., None] - s[:, 1])
        np.testing.assert_allclose(got, np.clip(width / 2 + 0.5 - dist, 0, 1).max(-1), atol=1e-5, rtol=0)


def test_bad_config():
    with pytest.raises(ValueError, match="occlusion"):
        SyntheticConfig(occlusion=1.5)
    with pytest.raises(ValueError, match="scale"):
        SyntheticConfig(scale=(0.8, 0.2))
    with pytest.raises(ValueError, match="image_size"):
        synthesize_face("cofw29", 0, 0, image_size=8)
    with pytest.raises(ValueError, match="length"):
        SyntheticFaces("cofw29", length=0)
