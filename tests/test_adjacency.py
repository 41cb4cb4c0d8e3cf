import numpy as np
import pytest
import torch

from landmark_graph import build_correlation_adjacency, index_order_adjacency
from landmark_graph.adjacency import check_adjacency


def _constructed_shapes(m: int = 400) -> np.ndarray:
    """Five landmarks whose correlations are known by construction.

    Points 0 and 1 follow one latent factor, 2 and 3 another, 4 is independent noise; x and y
    behave alike. Pearson |corr| within a pair is ~0.99, across pairs ~0.
    """
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, m, 1, 2))
    noise = 0.1 * rng.normal(size=(m, 5, 2))
    shapes = np.concatenate([a, a, b, -b, rng.normal(size=(m, 1, 2))], axis=1)
    return shapes + noise


def test_constructed_correlations_pick_the_partner():
    mask = build_correlation_adjacency(_constructed_shapes(), k=1)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in [(0, 1), (1, 0), (2, 3), (3, 2)]:
        expected[i, j] = True
    expected |= torch.eye(5, dtype=torch.bool)
    # Node 4 correlates with nobody; its one neighbour is whichever noise is largest, so only
    # its row size is fixed.
    assert torch.equal(mask[:4], expected[:4])
    assert mask[4, 4] and mask[4].sum() == 2


def test_negative_correlation_counts_through_the_absolute_value():
    # Point 3 is the mirror image of point 2 (corr = -1): |C| makes them neighbours.
    mask = build_correlation_adjacency(_constructed_shapes(), k=1)
    assert mask[2, 3] and mask[3, 2]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_exactly_k_plus_one_per_row_with_self(k):
    rng = np.random.default_rng(1)
    mask = build_correlation_adjacency(rng.normal(size=(30, 5, 2)), k=k)
    assert mask.dtype == torch.bool and mask.shape == (5, 5)
    assert mask.sum(dim=1).tolist() == [k + 1] * 5
    assert mask.diagonal().all()


def test_matches_numpy_corrcoef_definition():
    rng = np.random.default_rng(2)
    shapes = rng.normal(size=(40, 7, 2)) @ rng.normal(size=(2, 2)) + rng.normal(size=(1, 7, 2))
    cx = np.corrcoef(shapes[..., 0].T)
    cy = np.corrcoef(shapes[..., 1].T)
    c = 0.5 * (np.abs(cx) + np.abs(cy))
    np.fill_diagonal(c, np.inf)
    expected = np.zeros((7, 7), bool)
    for i in range(7):
        expected[i, np.argsort(-c[i], kind="stable")[:3]] = True
    assert np.array_equal(build_correlation_adjacency(shapes, k=2).numpy(), expected)


def test_ties_go_to_the_lower_index():
    # All four points move identically: every correlation is 1, so row i keeps itself + lowest others.
    base = np.random.default_rng(3).normal(size=(20, 1, 2))
    mask = build_correlation_adjacency(np.repeat(base, 4, axis=1), k=1)
    assert mask.nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 2], [3, 0], [3, 3]]


def test_symmetric_is_union_with_transpose():
    rng = np.random.default_rng(4)
    shapes = rng.normal(size=(50, 9, 2))
    directed = build_correlation_adjacency(shapes, k=2)
    sym = build_correlation_adjacency(shapes, k=2, symmetric=True)
    assert torch.equal(sym, directed | directed.T)
    assert (sym.sum(1) >= 3).all()


def test_tensor_and_numpy_inputs_agree():
    shapes = np.random.default_rng(5).normal(size=(25, 6, 2))
    assert torch.equal(
        build_correlation_adjacency(shapes, k=2),
        build_correlation_adjacency(torch.from_numpy(shapes).float(), k=2),
    )


@pytest.mark.parametrize(
    ("shapes", "k", "message"),
    [
        (np.zeros((1, 5, 2)) + np.arange(5)[None, :, None], 2, "M >= 2"),
        (np.random.default_rng(0).normal(size=(10, 5, 3)), 2, r"shape \(M, N, 2\)"),
        (np.random.default_rng(0).normal(size=(10, 5)), 2, r"shape \(M, N, 2\)"),
        (np.random.default_rng(0).normal(size=(10, 1, 2)), 1, "N >= 2"),
        (np.random.default_rng(0).normal(size=(10, 5, 2)), 5, "k must be"),
        (np.random.default_rng(0).normal(size=(10, 5, 2)), 0, "k must be"),
    ],
)
def test_bad_input_raises_value_error(shapes, k, message):
    with pytest.raises(ValueError, match=message):
        build_correlation_adjacency(shapes, k=k)


def test_nan_and_inf_are_rejected():
    shapes = np.random.default_rng(0).normal(size=(10, 5, 2))
    for bad in (np.nan, np.inf):
        corrupt = shapes.copy()
        corrupt[3, 2, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            build_correlation_adjacency(corrupt)


def test_zero_variance_landmark_is_named():
    shapes = np.random.default_rng(0).normal(size=(10, 5, 2))
    shapes[:, 3, 0] = 7.0
    with pytest.raises(ValueError, match="landmark 3 has zero variance in x"):
        build_correlation_adjacency(shapes)


def test_non_numeric_input_is_a_type_error():
    with pytest.raises(TypeError, match="landmarks"):
        build_correlation_adjacency([[[0.0, 1.0]]])


@pytest.mark.parametrize(("n", "k"), [(2, 1), (5, 1), (5, 3), (98, 1), (98, 3)])
def test_index_order_neighbours_are_nearest_in_order(n, k):
    mask = index_order_adjacency(n, k)
    assert mask.sum(1).tolist() == [k + 1] * n
    for i in range(n):
        cols = mask[i].nonzero().flatten()
        # No unselected index is strictly closer than the farthest selected one.
        farthest = (cols - i).abs().max()
        closer = [j for j in range(n) if abs(j - i) < farthest and not mask[i, j]]
        assert closer == []


def test_check_adjacency_errors_and_self_loops():
    with pytest.raises(ValueError, match=r"adjacency must be a square \(N, N\) mask, got shape \(2, 3\)"):
        check_adjacency(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"empty rows \[1\]"):
        check_adjacency(torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(TypeError, match=r"adjacency must be a torch\.Tensor"):
        check_adjacency([[1]])
    mask = check_adjacency(np.array([[0, 1], [1, 0]]))
    assert mask.dtype == torch.bool and mask.all()
