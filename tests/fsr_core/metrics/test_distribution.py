"""Fréchet distance and KID against closed forms and independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg

from fsr_core.metrics.distribution import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
)


def _random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_a_set_against_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16))
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-9)
    assert fid_from_features(features, features.copy()) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipys_matrix_square_root():
    """The textbook formula with scipy.linalg.sqrtm of S1 S2 (well conditioned here) as the reference."""
    rng = np.random.default_rng(1)
    for d in (1, 3, 32):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_covariance(rng, d), _random_covariance(rng, d)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        reference = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean))
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9, abs=1e-9)


def test_closed_form_of_two_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    closed = float(np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2)))  # = 7.25 + 4 + 1
    assert closed == pytest.approx(12.25)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(closed, rel=1e-12)


def test_sampled_gaussians_approach_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = np.zeros(4), np.array([0.5, 0.0, -0.5, 1.0])
    s1, s2 = _random_covariance(rng, 4), _random_covariance(rng, 4)
    x = rng.multivariate_normal(mu1, s1, size=40000)
    y = rng.multivariate_normal(mu2, s2, size=40000)
    mean, cov = feature_statistics(x)
    assert np.allclose(cov, np.cov(x.T)) and np.allclose(mean, x.mean(0))
    assert fid_from_features(x, y) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=0.03)


def test_singular_covariances_stay_finite_and_non_negative():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5  # fewer samples than dimensions
    value = fid_from_features(x, y)
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="feature dimensions differ"):
        fid_from_features(x, y[:, :10])
    with pytest.raises(ValueError, match="NaN or infinity"):
        fid_from_features(np.full((4, 2), np.nan), y[:4, :2])


def _mmd2_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    k = lambda a, b: (float(a @ b) / len(a) + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.3
    mean, std = kid_from_features(x, y, subsets=1, subset_size=12)
    assert mean == pytest.approx(_mmd2_by_loops(x, y), rel=1e-12) and std == 0.0


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, same_std = kid_from_features(a, b, subsets=50, subset_size=200)
    shifted, _ = kid_from_features(a, b + 0.5, subsets=50, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * max(abs(same), same_std)
