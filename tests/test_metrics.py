import math

import numpy as np
import pytest
import torch
from scipy import stats

from landmark_graph.metrics import (
    OCCLUSION_EDGES,
    WFLW_ATTRIBUTES,
    LandmarkEvaluator,
    attribute_subsets,
    auc,
    auroc,
    ced,
    failure_rate,
    laplace_interval_coverage,
    nme,
    nme_by_occlusion,
    normalizing_distance,
    occlusion_bins,
    occlusion_rise,
    scale_error_spearman,
)
from landmark_graph.schemes import get_scheme


def _faces(name: str, batch: int, scale: float = 50.0) -> torch.Tensor:
    """Templates scaled to ``scale`` pixels between the outer eye corners, shifted per image."""
    t = torch.as_tensor(get_scheme(name).template)
    return t * scale + torch.arange(batch, dtype=torch.float64)[:, None, None] * 10 + 100


def test_nme_hand_computed_inter_ocular():
    target = _faces("300w68", 2)
    pred = target.clone()
    pred[0] += torch.tensor([3.0, 4.0])  # every point 5 px off, inter-ocular 50 px
    pred[1, :34] += torch.tensor([0.0, 10.0])  # half the points 10 px off
    torch.testing.assert_close(nme(pred, target), torch.tensor([0.1, 0.1], dtype=torch.float64))


def test_nme_mask_averages_over_visible_points_only():
    target = _faces("wflw98", 1)
    pred = target.clone()
    pred[0, :10] += torch.tensor([6.0, 8.0])
    mask = torch.zeros(1, 98, dtype=torch.bool)
    mask[0, :20] = True
    expected = torch.tensor([10.0 * 10 / 20 / 50], dtype=torch.float64)
    torch.testing.assert_close(nme(pred, target, mask=mask), expected)
    with pytest.raises(ValueError, match=r"images \[0\]"):
        nme(pred, target, mask=torch.zeros(1, 98))


@pytest.mark.parametrize("name", ["wflw98", "cofw29"])
def test_inter_pupil_uses_the_pupil_points(name):
    s = get_scheme(name)
    target = _faces(name, 1)
    pred = target + torch.tensor([0.0, 2.0])
    pupils = target[0, list(s.inter_pupil)]
    expected = 2.0 / torch.linalg.vector_norm(pupils[0] - pupils[1])
    torch.testing.assert_close(nme(pred, target, normalization="inter_pupil"), expected.reshape(1))


def test_inter_pupil_without_pupils_uses_eye_centroids():
    target = _faces("300w68", 1)[0].numpy()
    expected = np.linalg.norm(target[36:42].mean(0) - target[42:48].mean(0))
    got = normalizing_distance(target[None], "inter_pupil")
    assert float(got) == pytest.approx(expected)


def test_bbox_and_user_distance_and_numpy_inputs():
    target = np.array([[[0.0, 0.0], [4.0, 1.0], [2.0, 9.0]], [[0.0, 0.0], [1.0, 1.0], [0.0, 4.0]]])
    pred = target + np.array([0.0, 3.0])
    # No scheme has 3 points: bbox sqrt(4*9)=6 and sqrt(1*4)=2.
    def f64(*values):
        return torch.tensor(values, dtype=torch.float64)

    torch.testing.assert_close(nme(pred, target, normalization="bbox"), f64(0.5, 1.5))
    torch.testing.assert_close(nme(pred, target, normalization=torch.tensor([3.0, 1.0])), f64(1.0, 3.0))
    torch.testing.assert_close(nme(pred, target, normalization=2.0), f64(1.5, 1.5))
    mask = np.array([[1, 1, 0], [1, 1, 1]])  # bbox of the visible points only: sqrt(4 * 1) = 2
    assert float(normalizing_distance(target, "bbox", mask=mask)[0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="needs a scheme"):
        nme(pred, target)


def test_nme_dtype_and_explicit_scheme():
    target = _faces("cofw29", 3).float()
    out = nme(target + 1, target, scheme="cofw29")
    assert out.dtype == torch.float32 and out.shape == (3,)
    with pytest.raises(ValueError, match="has 98 points"):
        nme(target, target, scheme="wflw98")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(pred=torch.zeros(2, 68, 2), target=torch.zeros(2, 68, 3)), ValueError, "target must have"),
        (dict(pred=torch.zeros(1, 68, 2), target=torch.zeros(2, 68, 2)), ValueError, "pred must have shape"),
        (dict(pred=torch.zeros(2, 68, 2), target=torch.zeros(2, 68, 2)), ValueError, "finite and > 0"),
        (dict(pred=[[0.0]], target=torch.zeros(2, 68, 2)), TypeError, "pred must be"),
        (dict(pred=_faces("300w68", 2), target=_faces("300w68", 2), normalization="eyes"), ValueError,
         "normalization must be one of"),
        (dict(pred=_faces("300w68", 2), target=_faces("300w68", 2), normalization=torch.ones(3)), ValueError,
         "B=2"),
    ],
)
def test_nme_errors_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        nme(**kwargs)


def test_failure_rate_counts_strictly_above_threshold():
    assert failure_rate([0.05, 0.1, 0.1000001, 0.3]) == 0.5
    assert failure_rate(torch.tensor([0.2])) == 1.0
    assert failure_rate(np.array([0.01, 0.02]), threshold=0.015) == 0.5


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([0.03], 0.7),  # single image: F = 1 on [0.03, 0.1]
        ([0.0], 1.0),
        ([0.1], 0.0),  # at the threshold: no area
        ([0.25, 0.4], 0.0),  # all above the threshold
        ([0.02, 0.02, 0.06, 0.5], (0.08 + 0.08 + 0.04) / 0.4),  # ties and one failure
        ([0.01, 0.03, 0.05, 0.07, 0.09], (0.09 + 0.07 + 0.05 + 0.03 + 0.01) / 0.5),
    ],
)
def test_auc_hand_computed(errors, expected):
    assert auc(errors) == pytest.approx(expected, abs=1e-12)


def test_auc_equals_the_area_of_the_exact_ced():
    errors = torch.from_numpy(np.random.default_rng(3).gamma(2.0, 0.03, 200))
    x, f = ced(errors, steps=None)
    area = float(((x[1:] - x[:-1]) * f[:-1]).sum() / 0.1)  # step curve, right-continuous
    assert auc(errors) == pytest.approx(area, abs=1e-12)
    # A fine evenly spaced curve converges to the same value.
    x, f = ced(errors, steps=20001)
    assert auc(errors) == pytest.approx(float(torch.trapezoid(f, x) / 0.1), abs=1e-3)
    assert auc(errors, threshold=0.2) > auc(errors)


def test_ced_values_and_ties():
    x, f = ced([0.02, 0.02, 0.06, 0.5], steps=None)
    assert x.tolist() == [0.0, 0.02, 0.06, 0.1]
    assert f.tolist() == [0.0, 0.5, 0.75, 0.75]
    x, f = ced([0.0, 0.05], threshold=0.1, steps=3)
    assert x.tolist() == [0.0, 0.05, 0.1] and f.tolist() == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="steps"):
        ced([0.1], steps=1)


@pytest.mark.parametrize(
    ("errors", "threshold", "message"),
    [
        ([], 0.1, "at least one"),
        ([0.1, float("nan")], 0.1, "finite"),
        ([-0.1], 0.1, ">= 0"),
        ([0.1], 0.0, "threshold"),
    ],
)
def test_error_set_checks(errors, threshold, message):
    for fn in (auc, failure_rate, ced):
        with pytest.raises(ValueError, match=message):
            fn(errors, threshold)


def test_evaluator_accumulates_and_reports_subsets():
    target = _faces("wflw98", 4)
    ev = LandmarkEvaluator("wflw98")
    first = ev.update(target + torch.tensor([0.0, 1.0]), target, subsets={"pose": torch.tensor([1, 0, 0, 1])})
    torch.testing.assert_close(first, torch.full((4,), 0.02, dtype=torch.float64))
    flags = torch.zeros(4, 6, dtype=torch.long)
    flags[1:, 5] = 1
    ev.update(target + torch.tensor([10.0, 0.0]), target, subsets=attribute_subsets(flags))
    r = ev.compute()
    assert r["count"] == 8
    assert r["nme"] == pytest.approx(0.11) and r["fr"] == 0.5 and r["auc"] == pytest.approx(0.4)
    pose = r["subsets"]["pose"]
    assert pose == {"nme": pytest.approx(0.02), "fr": 0.0, "auc": pytest.approx(0.8), "count": 2}
    assert r["subsets"]["blur"]["count"] == 3 and r["subsets"]["blur"]["fr"] == 1.0
    assert r["subsets"]["expression"]["count"] == 0 and math.isnan(r["subsets"]["expression"]["nme"])
    table = ev.table()
    lines = table.splitlines()
    assert len(lines) == 2 + len(WFLW_ATTRIBUTES) and "FR@0.1" in lines[0]  # header, full, subsets
    assert lines[1].split()[:3] == ["full", "8", "11.00"]
    ev.reset()
    assert ev.compute()["count"] == 0 and ev.errors.numel() == 0


def test_evaluator_options_and_checks():
    target = _faces("300w68", 2)
    ev = LandmarkEvaluator(normalization="bbox", threshold=0.05)
    errors = ev.update(target + 1, target, distance=torch.tensor([10.0, 20.0]))
    torch.testing.assert_close(errors, torch.tensor([0.1, 0.05], dtype=torch.float64) * math.sqrt(2))
    with pytest.raises(ValueError, match=r"subsets\['a'\] must have B=2"):
        ev.update(target, target + 1, subsets={"a": torch.ones(3)})
    with pytest.raises(ValueError, match="normalization"):
        LandmarkEvaluator(normalization="box")
    with pytest.raises(ValueError, match="threshold"):
        LandmarkEvaluator(threshold=-1)


# --- occlusion and confidence metrics ---------------------------------------------------------


def _flags(counts, n=10):
    flags = torch.zeros(len(counts), n, dtype=torch.bool)
    for row, count in enumerate(counts):
        flags[row, :count] = True
    return flags


def test_occlusion_bins_partition_shares_like_the_study():
    flags = _flags([0, 1, 2, 3, 5, 6, 7, 10])
    bins = occlusion_bins(flags)
    assert list(bins) == ["0%", "0%-10%", "10%-20%", "20%-30%", "30%-40%", "40%-50%", "50%-60%"]
    member = torch.stack(list(bins.values())).int()
    # 3 of 10 is exactly an edge: it belongs to the bin it closes; 70 % and 100 % are in none.
    assert member.sum(0).tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert bins["20%-30%"].tolist() == [False, False, False, True, False, False, False, False]
    closed = occlusion_bins(flags, (0.0, 0.1, 0.3, 0.6), zero_bin=False)
    assert list(closed) == ["0%-10%", "10%-30%", "30%-60%"]
    assert closed["0%-10%"].tolist() == [True, True] + [False] * 6
    assert OCCLUSION_EDGES[-1] == 0.6
    with pytest.raises(ValueError, match="edges must be at least two increasing shares"):
        occlusion_bins(flags, (0.3, 0.1))
    with pytest.raises(ValueError, match=r"occluded must have shape \(B, N\)"):
        occlusion_bins(flags[0])


def test_nme_by_occlusion_and_rise_against_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(6, 10, 2, generator=g) * 10
    pred = target + torch.randn(6, 10, 2, generator=g)
    flags = _flags([0, 1, 4, 5, 10, 2])
    d = torch.full((6,), 2.0)
    errors = (pred - target).norm(dim=-1) / 2.0
    per_image_visible = torch.stack([errors[b][~flags[b]].mean() for b in range(6)])  # image 4: NaN
    by_bin = nme_by_occlusion(pred, target, flags, (0.0, 0.1, 0.3, 0.6), normalization=d)
    assert by_bin["0%"] == {"nme": pytest.approx(float(per_image_visible[0])), "count": 1}
    assert by_bin["10%-30%"]["nme"] == pytest.approx(float(per_image_visible[5]))
    assert by_bin["30%-60%"] == {"nme": pytest.approx(float(per_image_visible[[2, 3]].mean())), "count": 2}
    everything = nme_by_occlusion(pred, target, flags, (0.0, 1.0), zero_bin=False, visible_only=False,
                                  normalization=d)
    all_points = ((pred - target).norm(dim=-1).mean(1) / 2.0).mean()
    assert everything["0%-100%"] == {"nme": pytest.approx(float(all_points)), "count": 6}
    low = per_image_visible[[0, 1]].mean()
    high = per_image_visible[[2, 3]].mean()
    assert occlusion_rise(pred, target, flags, normalization=d) == pytest.approx(float(high / low - 1))
    with pytest.raises(ValueError, match=r"none in \['high'\]"):
        occlusion_rise(pred[:2], target[:2], flags[:2], normalization=2.0)


def _pairwise_auroc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return float(wins.mean())


def test_auroc_equals_the_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (200,), generator=g).double()  # many ties
    labels = torch.rand(200, generator=g) < scores / 8
    assert auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels), abs=1e-12)
    assert auroc(scores.view(20, 10), labels.view(20, 10).numpy()) == pytest.approx(auroc(scores, labels))
    assert auroc([0.0, 1.0], [False, True]) == 1.0 and auroc([0.0, 1.0], [True, False]) == 0.0
    with pytest.raises(ValueError, match="auroc needs both classes, got 3 positive and 0 negative"):
        auroc([1.0, 2.0, 3.0], [1, 1, 1])
    with pytest.raises(ValueError, match="scores must not hold NaN"):
        auroc([float("nan"), 1.0], [0, 1])
    with pytest.raises(ValueError, match="as many values"):
        auroc([1.0, 2.0], [0, 1, 1])


def test_scale_error_spearman_matches_scipy_on_points():
    g = torch.Generator().manual_seed(2)
    target = torch.zeros(5, 8, 2)
    log_scale = torch.randn(5, 8, 2, generator=g)
    pred = torch.randn(5, 8, 2, generator=g) * log_scale.exp()  # error grows with the scale
    error = pred.norm(dim=-1).flatten()
    scale = log_scale.mean(-1).flatten()
    expected = stats.spearmanr(error.numpy(), scale.numpy()).statistic
    assert scale_error_spearman(pred, target, log_scale) == pytest.approx(expected)
    assert expected > 0.3
    mask = torch.rand(5, 8, generator=g) > 0.3
    expected = stats.spearmanr(error[mask.flatten()].numpy(), scale[mask.flatten()].numpy()).statistic
    assert scale_error_spearman(pred, target, log_scale, mask) == pytest.approx(expected)
    with pytest.raises(ValueError, match="not all equal"):
        scale_error_spearman(pred, target, torch.zeros(5, 8, 2))
    with pytest.raises(ValueError, match=r"log_scale must have shape \(B, N, 2\) like target"):
        scale_error_spearman(pred, target, log_scale[..., :1])


def test_laplace_interval_coverage_of_laplace_samples_is_the_level():
    g = torch.Generator().manual_seed(3)
    log_scale = torch.randn(200, 50, 2, generator=g) * 0.5
    u = torch.rand(200, 50, 2, generator=g) - 0.5  # inverse CDF of a Laplace of scale b
    errors = -log_scale.exp() * u.sign() * torch.log1p(-2 * u.abs())
    target = torch.zeros_like(errors)
    n = errors.numel()
    for level in (0.1, 0.5, 0.9):
        tolerance = 4 * (level * (1 - level) / n) ** 0.5  # four binomial standard deviations
        assert abs(laplace_interval_coverage(errors, target, log_scale, level) - level) < tolerance
    assert laplace_interval_coverage(errors, target, log_scale + 5.0) == 1.0
    nan_target = target.clone()
    nan_target[0, 0] = float("nan")
    mask = torch.ones(200, 50)
    mask[0, 0] = 0
    laplace_interval_coverage(errors, nan_target, log_scale, mask=mask)  # hidden NaN is fine
    with pytest.raises(ValueError, match="must be finite at counted landmarks"):
        laplace_interval_coverage(errors, nan_target, log_scale)
    with pytest.raises(ValueError, match=r"level must be a number in \(0, 1\)"):
        laplace_interval_coverage(errors, target, log_scale, 1.0)
