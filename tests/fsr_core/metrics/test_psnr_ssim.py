"""PSNR / SSIM on Y with BasicSR conventions, on cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fsr_core.metrics.psnr_ssim import psnr_y, rgb_to_y, ssim_y

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


def gray(value: float, size: int = 16, dtype: type = np.uint8) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=dtype)


def y_of_gray(value: float) -> float:
    """For R = G = B = v: Y = 16 + (65.481 + 128.553 + 24.966) v / 255 = 16 + 219 v / 255."""
    return 16 + 219 * value / 255


def textured(size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    base = 120 + 60 * np.sin(rows / 3.0) * np.cos(cols / 5.0)
    return np.clip(base[..., None] + rng.normal(0, 10, (size, size, 3)), 0, 255)


def test_rgb_to_y_hand_values() -> None:
    image = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 255], [100, 100, 100]]], np.uint8)
    y = rgb_to_y(image)
    assert y.dtype == np.float64 and y.shape == (2, 3)
    expected = [[235.0, 16.0, 81.481], [16 + 128.553, 16 + 24.966, y_of_gray(100)]]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rgb_to_y(image.astype(np.float32)), y)  # same scale for floats


def test_psnr_of_a_constant_y_difference() -> None:
    # Gray 100 vs gray 110: every Y differs by d = 219 * 10 / 255, so MSE = d^2.
    d = 219 * 10 / 255
    expected = 10 * math.log10(255**2 / d**2)
    assert psnr_y(gray(110), gray(100)) == pytest.approx(expected, rel=1e-12)
    assert psnr_y(gray(110), gray(100)) == pytest.approx(20 * math.log10(255**2 / 2190), rel=1e-12)


def test_psnr_of_a_single_differing_pixel() -> None:
    # 4x4 black vs the same with one white pixel: Y differs by 219 in 1 of 16 pixels.
    hr = np.zeros((4, 4, 3), np.uint8)
    sr = hr.copy()
    sr[1, 2] = 255
    assert psnr_y(sr, hr) == pytest.approx(10 * math.log10(255**2 / (219**2 / 16)), rel=1e-12)


def test_identical_images() -> None:
    image = textured().astype(np.uint8)
    assert psnr_y(image, image) == math.inf
    assert ssim_y(image, image) == pytest.approx(1.0, abs=1e-12)


def test_crop_border_removes_border_differences() -> None:
    hr = gray(100, size=16)
    sr = hr.copy()
    sr[:2, :] = sr[-2:, :] = sr[:, :2] = sr[:, -2:] = 110  # a frame 2 pixels wide
    d = 219 * 10 / 255
    frame_pixels = 16 * 16 - 12 * 12
    assert psnr_y(sr, hr) == pytest.approx(10 * math.log10(255**2 / (frame_pixels * d**2 / 256)), rel=1e-12)
    assert psnr_y(sr, hr, crop_border=1) == pytest.approx(
        10 * math.log10(255**2 / ((14 * 14 - 12 * 12) * d**2 / 196)), rel=1e-12
    )
    assert psnr_y(sr, hr, crop_border=2) == math.inf


def test_ssim_of_two_constant_images_by_hand() -> None:
    # Constant images: variances and covariance are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = y_of_gray(100), y_of_gray(140)
    expected = (2 * a * b + C1) / (a**2 + b**2 + C1)
    assert ssim_y(gray(100), gray(140)) == pytest.approx(expected, rel=1e-10)
    assert ssim_y(gray(140, dtype=np.float64), gray(100, dtype=np.float64)) == pytest.approx(expected, rel=1e-10)


def test_ssim_is_symmetric() -> None:
    first, second = textured(seed=1), textured(seed=2)
    assert ssim_y(first, second) == pytest.approx(ssim_y(second, first), abs=1e-12)


def test_more_noise_lowers_ssim_and_psnr_monotonically() -> None:
    clean = textured(seed=3)
    noise = np.random.default_rng(4).normal(0, 1, clean.shape)
    sigmas = [1.0, 3.0, 6.0, 12.0, 24.0]
    ssims = [ssim_y(clean + sigma * noise, clean) for sigma in sigmas]
    psnrs = [psnr_y(clean + sigma * noise, clean) for sigma in sigmas]
    assert all(later < earlier for earlier, later in zip(ssims, ssims[1:]))
    assert all(later < earlier for earlier, later in zip(psnrs, psnrs[1:]))
    assert 0 < ssims[-1] < ssims[0] < 1


def test_agrees_with_scikit_image_on_y() -> None:
    """skimage's Gaussian SSIM (sigma 1.5, truncate 3.5 -> 11 taps, population covariance) also
    averages the map with 5 pixels dropped per side: the same definition, an independent code path."""
    sr, hr = textured(seed=5), textured(seed=6)
    sr_y, hr_y = rgb_to_y(sr), rgb_to_y(hr)
    expected_ssim = structural_similarity(
        sr_y, hr_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim_y(sr, hr) == pytest.approx(expected_ssim, abs=1e-9)
    assert psnr_y(sr, hr) == pytest.approx(peak_signal_noise_ratio(hr_y, sr_y, data_range=255), rel=1e-12)
    cropped = (slice(4, -4), slice(4, -4))
    expected_cropped = structural_similarity(
        sr_y[cropped], hr_y[cropped], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim_y(sr, hr, crop_border=4) == pytest.approx(expected_cropped, abs=1e-9)


def test_rejects_bad_inputs() -> None:
    image = gray(10, size=16)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_y(image, gray(10, size=12))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        psnr_y(image[..., 0], image[..., 0])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        ssim_y(np.zeros((16, 16, 4)), np.zeros((16, 16, 4)))
    with pytest.raises(ValueError, match="leaves no pixels"):
        psnr_y(image, image, crop_border=8)
    with pytest.raises(ValueError, match="crop_border"):
        psnr_y(image, image, crop_border=-1)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(image, image, crop_border=3)  # 10x10 left
    with pytest.raises(ValueError, match="dtype"):
        rgb_to_y(np.zeros((4, 4, 3), np.int32))


def test_lr_consistency_is_psnr_y_of_the_input_against_the_restoration_degraded_back():
    from fsr_core.degradation.resize import imresize
    from fsr_core.metrics.psnr_ssim import LR_CONSISTENCY_CAP, lr_consistency

    import cv2
    import skimage.data

    face = skimage.data.astronaut()[30:230, 140:340]
    lr = np.stack([cv2.resize(np.roll(face, shift, axis=1), (16, 16), interpolation=cv2.INTER_AREA)
                   for shift in (0, 7, 13)])
    faithful = np.stack([imresize(img, output_size=(128, 128)) for img in lr])  # bicubic up: keeps the input
    invented = np.ascontiguousarray(faithful[:, ::-1])  # a face, but not the one the input shows
    scores = lr_consistency(lr, faithful)
    expected = [psnr_y(imresize(big, output_size=(16, 16)), small) for big, small in zip(faithful, lr)]
    np.testing.assert_allclose(scores, expected)
    assert scores.min() > 30 and lr_consistency(lr, invented).max() < scores.min() - 10
    flat = np.full((1, 16, 16, 3), 77, np.uint8)
    assert lr_consistency(flat, np.full((1, 64, 64, 3), 77, np.uint8))[0] == LR_CONSISTENCY_CAP  # inf, capped
    with pytest.raises(ValueError, match="N restored crops"):
        lr_consistency(lr, faithful[:2])
