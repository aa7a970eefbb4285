"""Quality metrics on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from embedder import Granularity, agreement, neighbours, pair_correlation, recall_at_k, recommend, spearman


def test_neighbours_are_nearest_first_and_exclude_self():
    # points on a line (as 2-D directions): the neighbours of each are its angular neighbours
    angles = np.array([0.0, 0.1, 0.3, 0.7, 1.5])
    vecs = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1.0], [3.0], [0.5], [2.0], [1.0]])
    nn = neighbours(vecs, 2)
    assert nn.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]]
    assert all(i not in row for i, row in enumerate(nn))
    with pytest.raises(ValueError, match="k must be in 1..4"):
        neighbours(vecs, 5)


def test_neighbours_in_blocks_match_the_whole_matrix(monkeypatch):
    import embedder._quality as quality

    vecs = np.random.default_rng(3).normal(size=(300, 16))
    whole = neighbours(vecs, 5)
    monkeypatch.setattr(quality, "_BLOCK", 64)
    assert np.array_equal(neighbours(vecs, 5), whole)


def test_identical_vectors_agree_completely():
    vecs = np.random.default_rng(0).normal(size=(400, 32)).astype(np.float32)
    assert agreement(vecs, vecs.copy(), 10) == 1.0
    # a positive rescaling of rows changes no cosine
    assert agreement(vecs * 7.5, vecs, 10) == 1.0


def test_shuffled_rows_agree_at_about_chance():
    rng = np.random.default_rng(1)
    n, k = 1000, 10
    reference = rng.normal(size=(n, 32))
    shuffled = reference[rng.permutation(n)]  # every row's vector belongs to some other row now
    chance = k / (n - 1)
    recalls = [agreement(shuffled[rng.permutation(n)], reference, k) for _ in range(5)]
    assert abs(np.mean(recalls) - chance) < 0.004, (recalls, chance)
    # and far from a genuine but noisy copy
    noisy = reference + 0.3 * rng.normal(size=reference.shape)
    assert agreement(noisy, reference, k) > 0.3


def test_recall_at_k_counts_the_overlap_ignoring_order():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [7, 8, 0]])
    assert recall_at_k(found, truth) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="one shape"):
        recall_at_k(found[:, :2], truth)


def test_spearman_of_monotone_transforms_is_one_and_of_reversed_minus_one():
    x = np.random.default_rng(2).normal(size=200)
    assert spearman(x, np.exp(3 * x) + 5) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones_like(x)))
    with pytest.raises(ValueError, match="finite"):
        spearman([1.0, np.nan, 2.0], [1.0, 2.0, 3.0])


def test_spearman_averages_ties_like_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    x = rng.integers(0, 6, size=300).astype(float)  # many ties
    y = x + rng.integers(0, 4, size=300)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_pair_correlation_of_cosines_against_scores():
    angles = np.linspace(0.0, 1.5, 8)
    vecs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    pairs = np.array([(0, j) for j in range(1, 8)])
    gap = angles[pairs[:, 1]] - angles[pairs[:, 0]]
    assert pair_correlation(vecs, pairs, 1.0 - gap) == pytest.approx(1.0)  # closer pairs scored higher
    assert pair_correlation(vecs, pairs, gap) == pytest.approx(-1.0)


def _grid():
    g = Granularity
    quality = {
        g(1, 32): 0.40,
        g(1, 64): 0.55,
        g(2, 32): 0.80,
        g(2, 64): 0.93,
        g(2, 128): 0.97,
        g(3, 32): 0.90,
        g(3, 64): 0.96,
        g(3, 128): 1.00,
    }
    cost = {1: 0.34, 2: 0.67, 3: 1.0}
    return quality, cost


def test_recommend_picks_the_cheapest_layer_then_the_fewest_dims():
    quality, cost = _grid()
    assert recommend(quality, cost, 0.95) == Granularity(2, 128)  # layer 2 is cheaper than l3_d64
    assert recommend(quality, cost, 0.90) == Granularity(2, 64)
    assert recommend(quality, cost, 0.5) == Granularity(1, 64)
    assert recommend(quality, cost, 1.0) == Granularity(3, 128)  # only the reference itself
    # a layer measured as dearer is passed over even when shallower
    assert recommend(quality, {1: 0.34, 2: 1.2, 3: 1.0}, 0.95) == Granularity(3, 64)
    # None / NaN cells are not candidates
    assert recommend({**quality, Granularity(2, 128): None}, cost, 0.95) == Granularity(3, 64)
    # relative to a given reference
    assert recommend(quality, cost, 0.95, reference=Granularity(2, 128)) == Granularity(2, 64)  # 0.93 >= 0.9215


@pytest.mark.parametrize("budget", [0, -0.5, 1.01, 95, float("nan"), "0.9", True])
def test_recommend_refuses_a_budget_outside_0_1(budget):
    quality, cost = _grid()
    with pytest.raises(ValueError, match=r"in \(0, 1\], e.g. 0.95; got"):
        recommend(quality, cost, budget)


def test_recommend_needs_a_positive_reference_and_every_layer_cost():
    quality, cost = _grid()
    with pytest.raises(ValueError, match="reference granularity l3_d128 has quality -0.1"):
        recommend({**quality, Granularity(3, 128): -0.1}, cost, 0.9)
    with pytest.raises(ValueError, match="no encode cost for layer"):
        recommend(quality, {1: 0.3, 3: 1.0}, 0.9)
