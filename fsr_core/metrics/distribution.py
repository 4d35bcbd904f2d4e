"""Distribution distances between two sets of image features: FID's Fréchet distance and KID.

These are functions of feature vectors, not of images: which network made the features decides
what the number is called. FID and KID proper use Inception-v3's 2048-d pool features (weights
from a configured location; none can be obtained in this build environment); a distance computed
on any other network's features carries that network in its name (``fid_dlib128`` for dlib's
128-d face descriptor), never ``fid``.

Conventions (those of pytorch-fid, clean-fid and torch-fidelity):

- statistics: the mean and the **unbiased** covariance (``ddof=1``, as ``np.cov``) of the
  features, in float64;
- Fréchet distance ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace of the
  matrix square root is computed from the symmetric form ``tr((S1^(1/2) S2 S1^(1/2))^(1/2))``
  (the same eigenvalues as ``S1 S2``, which is similar to it): two symmetric eigendecompositions
  in float64 with tiny negative eigenvalues of these positive semi-definite matrices clipped to 0.
  That is stable where ``scipy.linalg.sqrtm(S1 @ S2)`` returns complex parts or NaN on singular
  covariances (fewer samples than dimensions), which pytorch-fid patches with an ``eps`` offset;
- KID: the unbiased estimator of the squared MMD with the polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3`` (``d`` the feature dimension), averaged over ``subsets`` random
  subsets of ``subset_size`` features of each set (drawn without replacement, seeded), reported as
  mean and standard deviation over the subsets (torch-fidelity's defaults: 100 subsets of 1000).
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_statistics", "frechet_distance", "fid_from_features", "kid_from_features"]


def _features(name: str, features: np.ndarray, *, minimum: int = 2) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < minimum:
        raise ValueError(f"{name}: expected [N, D] features with N >= {minimum}, got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name}: features hold NaN or infinity")
    return features


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [D], unbiased covariance [D, D])`` of ``[N, D]`` features, float64."""
    features = _features("features", features)
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    trace_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None))))
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)  # rounding can leave -1e-12 for identical sets


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (name it after the network)."""
    features1, features2 = _features("features1", features1), _features("features2", features2)
    if features1.shape[1] != features2.shape[1]:
        raise ValueError(f"feature dimensions differ: {features1.shape[1]} and {features2.shape[1]}")
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid_from_features(features1: np.ndarray, features2: np.ndarray, *, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of the unbiased polynomial-kernel MMD^2 over random subsets (see the module
    docstring). ``subset_size`` larger than a set is reduced to its size (at least 2)."""
    features1, features2 = _features("features1", features1), _features("features2", features2)
    if features1.shape[1] != features2.shape[1]:
        raise ValueError(f"feature dimensions differ: {features1.shape[1]} and {features2.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    size = min(subset_size, len(features1), len(features2))
    rng = np.random.default_rng(seed)
    values = np.array([
        _mmd2_unbiased(features1[rng.choice(len(features1), size, replace=False)],
                       features2[rng.choice(len(features2), size, replace=False)])
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std())
