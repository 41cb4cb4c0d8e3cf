import math

import pytest
import torch
from helpers import assert_close

from landmark_graph import RelativeLocationLoss, SoftWingLoss, WingLoss, index_order_adjacency
from landmark_graph import functional as LF


def _errors(values, dtype=torch.float64):
    """Predictions whose x error takes each value, y error zero: (1, len, 2)."""
    pred = torch.zeros(1, len(values), 2, dtype=dtype)
    pred[0, :, 0] = torch.tensor(values, dtype=dtype)
    return pred, torch.zeros_like(pred)


def test_soft_wing_at_hand_computed_points():
    # omega1=2, omega2=20, eps=0.5: B = 2 - 20 ln 5.
    b = 2 - 20 * math.log(5.0)
    pred, target = _errors([0.0, 1.0, -1.5, 2.0, 3.0, -10.0])
    loss = SoftWingLoss(reduction="none")(pred, target)[0, :, 0]
    expected = [0.0, 1.0, 1.5, 20 * math.log(5) + b, 20 * math.log(7) + b, 20 * math.log(21) + b]
    assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    assert loss[3].item() == pytest.approx(2.0)  # B makes the two pieces meet at omega1


def test_soft_wing_is_continuous_at_omega1():
    for dtype in (torch.float32, torch.float64):
        eps = 1e-6 if dtype == torch.float64 else 1e-3
        pred, target = _errors([2.0 - eps, 2.0 + eps], dtype)
        below, above = SoftWingLoss(reduction="none")(pred, target)[0, :, 0]
        # Slopes are 1 and omega2/(eps+omega1) = 8 on either side.
        assert abs(above - below) <= 9 * eps * 1.01


def test_wing_at_hand_computed_points():
    omega, eps = 10.0, 2.0
    c = omega - omega * math.log(1 + omega / eps)
    pred, target = _errors([0.0, 1.0, 10.0, 12.0])
    loss = WingLoss(reduction="none")(pred, target)[0, :, 0]
    expected = [0.0, omega * math.log(1.5), omega * math.log(6.0), 12.0 - c]
    assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    below, above = WingLoss(reduction="none")(*_errors([10 - 1e-7, 10 + 1e-7]))[0, :, 0]
    assert abs(above - below) < 1e-6


def test_reductions_and_mask():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.5], [1.0, 1.0]]])
    target = torch.zeros_like(pred)
    loss = SoftWingLoss(omega1=100.0)  # linear regime: the loss is |x|
    assert loss(pred, target).item() == pytest.approx(pred.abs().mean().item())
    mask = torch.tensor([[True, False], [False, True]])
    assert loss(pred, target, mask).item() == pytest.approx((1 + 2 + 1 + 1) / 4)
    summed = SoftWingLoss(omega1=100.0, reduction="sum")(pred, target, mask.float())
    assert summed.item() == pytest.approx(5.0)
    none = SoftWingLoss(omega1=100.0, reduction="none")(pred, target, mask)
    assert none.shape == pred.shape and none[0, 1].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("loss", [SoftWingLoss(), WingLoss(), RelativeLocationLoss(torch.ones(3, 3))])
def test_all_hidden_mask_gives_zero_loss_and_zero_grad(loss):
    pred = torch.randn(2, 3, 2, requires_grad=True)
    target = torch.full((2, 3, 2), float("nan"))  # placeholders of missing landmarks
    out = loss(pred, target, torch.zeros(2, 3, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_nan_targets_of_hidden_landmarks_do_not_leak():
    pred = torch.randn(1, 4, 2, requires_grad=True)
    target = torch.randn(1, 4, 2)
    target[0, 2] = float("nan")
    mask = torch.tensor([[1, 1, 0, 1]])
    for loss in (SoftWingLoss(), WingLoss(), RelativeLocationLoss(torch.ones(4, 4))):
        pred.grad = None
        out = loss(pred, target, mask)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(pred.grad).all()


def test_laplacian_of_a_small_known_graph():
    # Path 0-1-2 plus an isolated node 3 (self loop only), rows are receivers.
    adj = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    expected = torch.tensor(
        [[1.0, -1.0, 0.0, 0.0], [-0.5, 1.0, -0.5, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    assert torch.equal(LF.laplacian_matrix(adj), expected)


def test_relative_location_loss_by_hand():
    adj = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    target = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]], dtype=torch.float64)
    pred = target.clone()
    pred[0, 1, 1] = 0.3  # lift the middle point
    # delta_hat - delta: node0 (0, -0.3), node1 (0, 0.3), node2 (0, -0.3); Soft Wing is |x| here.
    loss = RelativeLocationLoss(adj, reduction="sum")(pred, target)
    assert loss.item() == pytest.approx(0.9)
    mean = RelativeLocationLoss(adj)(pred, target)
    assert mean.item() == pytest.approx(0.9 / 6)


def test_relative_location_masks_nodes_touching_hidden_ones():
    adj = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    target = torch.zeros(1, 3, 2)
    pred = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.6]]])
    hide_0 = torch.tensor([[0, 1, 1]])
    # Node 0 hidden: nodes 0 and 1 drop (1 touches 0); only node 2 counts: |0.6 - 0| = 0.6.
    assert RelativeLocationLoss(adj, reduction="sum")(pred, target, hide_0).item() == pytest.approx(0.6)


def test_isolated_nodes_contribute_nothing():
    adj = torch.eye(3, dtype=torch.bool)
    pred = torch.randn(2, 3, 2)
    assert RelativeLocationLoss(adj)(pred, torch.zeros_like(pred)).item() == 0.0


def test_relative_location_is_translation_invariant_and_custom_criterion():
    adj = index_order_adjacency(6, k=2)
    target = torch.randn(3, 6, 2)
    shifted = target + torch.tensor([4.0, -2.0])
    assert RelativeLocationLoss(adj)(shifted, target).item() == pytest.approx(0.0, abs=1e-6)
    loss = RelativeLocationLoss(adj, criterion=torch.nn.L1Loss(reduction="none"))
    assert loss(target * 2, target).item() > 0
    with pytest.raises(ValueError, match="reduction='none'"):
        RelativeLocationLoss(adj, criterion=SoftWingLoss())


@pytest.mark.parametrize(
    "loss", [SoftWingLoss(), WingLoss(), RelativeLocationLoss(index_order_adjacency(5, k=2))]
)
def test_gradcheck(loss):
    g = torch.Generator().manual_seed(0)
    # Errors spread across all pieces, away from the kinks at 0 and omega.
    pred = (torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * 30 + 0.1).requires_grad_()
    target = torch.zeros(2, 5, 2, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: loss(p, target, mask), (pred,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_agree_with_float64(dtype):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(4, 7, 2, generator=g, dtype=torch.float64) * 10
    target = torch.randn(4, 7, 2, generator=g, dtype=torch.float64) * 10
    for loss in (SoftWingLoss(), WingLoss(), RelativeLocationLoss(index_order_adjacency(7, k=3))):
        ref = loss(pred, target)
        out = loss(pred.to(dtype), target.to(dtype))
        assert out.dtype == dtype
        assert_close(out.double(), ref, dtype)


def test_bad_arguments():
    pred = torch.zeros(2, 5, 2)
    with pytest.raises(ValueError, match=r"target must have the shape of pred \(2, 5, 2\), got \(2, 4, 2\)"):
        SoftWingLoss()(pred, torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, N\) = \(2, 5\), got \(2, 4\)"):
        SoftWingLoss()(pred, pred, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"pred must have shape \(B, N, 2\)"):
        WingLoss()(torch.zeros(2, 5, 3), torch.zeros(2, 5, 3))
    with pytest.raises(TypeError, match="pred must be a floating point tensor"):
        SoftWingLoss()(pred.long(), pred.long())
    with pytest.raises(ValueError, match="reduction must be one of"):
        SoftWingLoss(reduction="avg")
    with pytest.raises(ValueError, match="omega2 must be a finite number > 0"):
        SoftWingLoss(omega2=-1.0)
    with pytest.raises(ValueError, match=r"laplacian must have shape \(N, N\)"):
        LF.relative_location_loss(pred, pred, torch.eye(4))


def test_repr_shows_configuration():
    assert repr(SoftWingLoss()) == "SoftWingLoss(omega1=2.0, omega2=20.0, epsilon=0.5, reduction='mean')"
    assert "num_landmarks=5" in repr(RelativeLocationLoss(index_order_adjacency(5)))
