import numpy as np
import pytest
import torch

from landmark_graph import LGRLHead, index_order_adjacency
from landmark_graph.heads import default_adjacency
from landmark_graph.schemes import (
    BUILTIN_SCHEMES,
    PART_NAMES,
    SCHEMES,
    LandmarkScheme,
    get_scheme,
    register_scheme,
    scheme_for_num_landmarks,
)


def _kwargs(scheme: LandmarkScheme) -> dict:
    return dict(
        name="custom", num_points=scheme.num_points, parts=dict(scheme.parts), mirror=scheme.mirror,
        inter_ocular=scheme.inter_ocular, inter_pupil=scheme.inter_pupil, template=scheme.template.copy(),
    )


@pytest.mark.parametrize("name", BUILTIN_SCHEMES)
def test_builtin_scheme_is_consistent(name):
    s = get_scheme(name)
    assert s.validate() is s
    owners = sorted(i for idx in s.parts.values() for i in idx)
    assert owners == list(range(s.num_points))
    mirror = np.asarray(s.mirror)
    assert (mirror[mirror] == np.arange(s.num_points)).all()
    # Template convention: centred, inter-ocular distance 1, exactly mirror-symmetric.
    np.testing.assert_allclose(s.template.mean(0), 0, atol=1e-12)
    a, b = s.template[list(s.inter_ocular)]
    assert np.linalg.norm(a - b) == pytest.approx(1.0)
    np.testing.assert_allclose(s.flip(s.template), s.template, atol=1e-12)


@pytest.mark.parametrize("name", BUILTIN_SCHEMES)
def test_template_is_an_upright_face_with_left_parts_on_the_image_left(name):
    s = get_scheme(name)
    y = {part: s.template[list(idx), 1].mean() for part, idx in s.parts.items()}
    # y grows downwards: brows above eyes above nose above mouth.
    assert y["left_brow"] < y["left_eye"] < y["nose"] < y["outer_mouth"]
    for part, idx in s.parts.items():
        if part.startswith("left_"):
            assert (s.template[list(idx), 0] < 0).all(), part
    assert s.template[s.inter_ocular[0], 0] < s.template[s.inter_ocular[1], 0]


@pytest.mark.parametrize(
    ("name", "pairs", "fixed"),
    [
        # Published orderings: WFLW contour 0-32 and eyes 60-75, iBUG 68 eyes 36-47, COFW pairs.
        ("wflw98", [(0, 32), (33, 46), (38, 50), (60, 72), (64, 68), (65, 75), (76, 82), (96, 97)],
         [16, 51, 54, 57, 79, 85, 90, 94]),
        ("300w68", [(0, 16), (17, 26), (31, 35), (36, 45), (39, 42), (40, 47), (48, 54), (60, 64)],
         [8, 27, 30, 33, 51, 57, 62, 66]),
        ("cofw29", [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (12, 14), (16, 17), (22, 23)],
         [20, 21, 24, 25, 26, 27, 28]),
    ],
)
def test_mirror_tables_follow_the_dataset_orderings(name, pairs, fixed):
    s = get_scheme(name)
    for a, b in pairs:
        assert (s.mirror[a], s.mirror[b]) == (b, a)
    assert all(s.mirror[i] == i for i in fixed)


def test_normalising_pairs():
    assert get_scheme("wflw98").inter_ocular == (60, 72) and get_scheme("wflw98").inter_pupil == (96, 97)
    assert get_scheme("300w68").inter_ocular == (36, 45) and get_scheme("300w68").inter_pupil is None
    assert get_scheme("cofw29").inter_ocular == (8, 9) and get_scheme("cofw29").inter_pupil == (16, 17)


@pytest.mark.parametrize("name", BUILTIN_SCHEMES)
def test_adjacency_is_deterministic_cached_and_a_copy(name):
    s = get_scheme(name)
    first = s.adjacency(3)
    assert first.dtype == torch.bool and first.shape == (s.num_points, s.num_points)
    assert (first.sum(1) == 4).all() and first.diagonal().all()
    first[0] = False
    assert torch.equal(s.adjacency(3), LandmarkScheme(**{**_kwargs(s), "name": "again"}).adjacency(3))
    assert s.adjacency(3)[0].sum() == 4


# Facial regions: the lips move together, a pupil moves with its eye.
_REGION = {
    "inner_mouth": "mouth", "outer_mouth": "mouth", "left_pupil": "left_eye", "right_pupil": "right_eye",
}


# COFW's chin is a region of one point, so at least 3 of its 87 edges must leave their region.
@pytest.mark.parametrize(("name", "share"), [("wflw98", 0.85), ("300w68", 0.85), ("cofw29", 0.7)])
def test_adjacency_links_points_of_the_same_region(name, share):
    s = get_scheme(name)
    mask = s.adjacency(3) & ~torch.eye(s.num_points, dtype=torch.bool)
    names = sorted({_REGION.get(p, p) for p in s.parts})
    region = torch.empty(s.num_points, dtype=torch.long)
    for part, idx in s.parts.items():
        region[list(idx)] = names.index(_REGION.get(part, part))
    rows, cols = mask.nonzero().T
    same = (region[rows] == region[cols]).double().mean()
    assert same > share, float(same)


def test_adjacency_is_nearly_mirror_symmetric():
    s = get_scheme("wflw98")
    mask = s.adjacency(3)
    m = list(s.mirror)
    mirrored = mask[m][:, m]
    agree = (mask & mirrored).sum() / mask.sum()
    assert agree > 0.85, float(agree)


def test_default_adjacency_uses_schemes_for_their_sizes_and_index_order_otherwise():
    for name in BUILTIN_SCHEMES:
        s = get_scheme(name)
        assert torch.equal(default_adjacency(s.num_points, 2), s.adjacency(2))
    assert torch.equal(default_adjacency(10, 3), index_order_adjacency(10, 3))
    head = LGRLHead(num_landmarks=29, k=3, in_channels=8, hidden_features=8, num_blocks=1)
    assert torch.equal(head.adjacency, get_scheme("cofw29").adjacency(3))


def test_flip_with_width_and_types():
    s = get_scheme("300w68")
    pts = np.random.default_rng(0).uniform(0, 100, (2, 68, 2))
    flipped = s.flip(pts, width=99.0)
    assert flipped[0, 36, 0] == pytest.approx(99.0 - pts[0, 45, 0])
    assert flipped[1, 36, 1] == pts[1, 45, 1]
    np.testing.assert_allclose(s.flip(flipped, width=99.0), pts)
    torch.testing.assert_close(s.flip(torch.from_numpy(pts), width=99.0), torch.from_numpy(flipped))
    centred = torch.as_tensor(s.template) + 5  # width=None mirrors about each shape's mean x
    torch.testing.assert_close(s.flip(centred), centred)
    with pytest.raises(ValueError, match=r"\(\.\.\., 68, 2\)"):
        s.flip(pts[:, :10])


def test_sample_shapes_are_seeded():
    s = get_scheme("cofw29")
    a, b, c = s.sample_shapes(5, seed=1), s.sample_shapes(5, seed=1), s.sample_shapes(5, seed=2)
    assert a.shape == (5, 29, 2) and np.array_equal(a, b) and not np.allclose(a, c)


def test_registry_lookup_and_errors():
    assert scheme_for_num_landmarks(68) is get_scheme("300w68")
    assert scheme_for_num_landmarks(11) is None
    assert get_scheme(get_scheme("cofw29")) is get_scheme("cofw29")
    with pytest.raises(ValueError, match="wflw98"):
        get_scheme("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_scheme(get_scheme("wflw98"))
    with pytest.raises(ValueError, match="built-in"):
        register_scheme(LandmarkScheme(**{**_kwargs(get_scheme("cofw29")), "name": "cofw29"}), overwrite=True)
    with pytest.raises(TypeError, match="LandmarkScheme"):
        register_scheme("cofw29")


def test_custom_scheme_round_trip():
    three = LandmarkScheme(
        "tri", 3, {"left_eye": (0,), "right_eye": (1,), "nose": (2,)}, mirror=(1, 0, 2),
        inter_ocular=(0, 1), inter_pupil=None, template=[[-0.5, 0.0], [0.5, 0.0], [0.0, 0.4]],
    )
    try:
        register_scheme(three)
        assert get_scheme("tri") is three and scheme_for_num_landmarks(3) is three
        # Custom schemes do not change LGRLHead's default.
        assert torch.equal(default_adjacency(3, 1), index_order_adjacency(3, 1))
        assert three.adjacency(1).sum() == 6
    finally:
        if "tri" in SCHEMES:
            SCHEMES.unregister("tri")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda kw: kw["parts"].update(contour=(*kw["parts"]["contour"], 0)), "exactly once"),
        (lambda kw: kw["parts"].update(cheek=kw["parts"].pop("contour")), "unknown names"),
        (lambda kw: kw.update(mirror=(1, 2, 0, *kw["mirror"][3:])), "involution"),
        (lambda kw: kw.update(mirror=tuple(range(68))), "onto part 'right_brow'"),
        (lambda kw: kw.update(inter_ocular=(36, 68)), r"inter_ocular must hold indices in \[0, 68\)"),
        (lambda kw: kw.update(inter_ocular=(36, 36)), "two distinct"),
        (lambda kw: kw.update(template=kw["template"][:67]), r"\(68, 2\)"),
        (lambda kw: kw["template"].__setitem__((45, 0), 3.0), "check the mirror table"),
        (lambda kw: kw.update(num_points=True), "num_points"),
    ],
)
def test_invalid_schemes_name_the_problem(change, message):
    kw = _kwargs(get_scheme("300w68"))
    change(kw)
    with pytest.raises(ValueError, match=message):
        LandmarkScheme(**kw)


def test_part_names_cover_every_builtin_part():
    for name in BUILTIN_SCHEMES:
        assert set(get_scheme(name).parts) <= set(PART_NAMES)
        assert set(get_scheme(name).closed) <= set(get_scheme(name).parts)
