"""PSNR and SSIM on the Y channel, with BasicSR's conventions (the numbers face-SR papers report).

Conventions, shared by both metrics:

* Inputs are ``[H, W, 3]`` **RGB** images with values on the 0..255 scale: ``uint8``, or floating
  point in ``[0, 255]``. The data range is fixed at 255; images in ``[0, 1]`` or ``[-1, 1]``
  must be rescaled by the caller (the functions cannot tell a dark image from a ``[0, 1]`` one).
  Float values are not rounded or clipped, so an SR output should be quantised to ``uint8`` first
  when the reported numbers must match those computed from saved PNGs.
* Y is ITU-R BT.601 "studio swing", ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, in
  ``[16, 235]``, computed in float64 and not rounded (BasicSR ``to_y_channel``, which computes
  the same expression in float32 from BGR input).
* ``crop_border`` pixels are removed from each side of both Y images before computing, the usual
  crop of ``scale`` pixels for an x``scale`` SR result.
* PSNR: ``10 log10(255^2 / MSE)``, ``inf`` for identical images.
* SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, ``C1 = (0.01 * 255)^2``,
  ``C2 = (0.03 * 255)^2``, statistics filtered with ``cv2.filter2D`` and only the "valid" part
  kept (5 pixels dropped on each side), the mean of the SSIM map. Needs at least 11x11 pixels
  after cropping.
"""

from __future__ import annotations

import math
import numbers

import cv2
import numpy as np

__all__ = ["LR_CONSISTENCY_CAP", "lr_consistency", "psnr_y", "rgb_to_y", "ssim_y"]

_DATA_RANGE = 255.0
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * _DATA_RANGE) ** 2
_SSIM_C2 = (0.03 * _DATA_RANGE) ** 2


def _check_rgb(name: str, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be an RGB image [H, W, 3], got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {image.shape}")
    if not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{name} must be uint8 or floating point in [0, 255], got dtype {image.dtype}")
    return image


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image, ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``.

    Args:
        image: ``[H, W, 3]`` RGB, ``uint8`` or floating point in ``[0, 255]``.

    Returns:
        ``[H, W]`` float64 in ``[16, 235]`` for inputs in ``[0, 255]`` (white 235, black 16, pure
        red 81.481), not rounded.
    """
    rgb = _check_rgb("image", image).astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _cropped_y_pair(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    sr = _check_rgb("sr", sr)
    hr = _check_rgb("hr", hr)
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr shapes differ: {sr.shape} vs {hr.shape}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, numbers.Integral) or crop_border < 0:
        raise ValueError(f"crop_border must be an int >= 0, got {crop_border!r}")
    height, width = sr.shape[:2]
    if 2 * crop_border >= min(height, width):
        raise ValueError(f"crop_border={crop_border} leaves no pixels of a {height}x{width} image")
    sr_y, hr_y = rgb_to_y(sr), rgb_to_y(hr)
    if crop_border:
        inner = (slice(crop_border, -crop_border), slice(crop_border, -crop_border))
        sr_y, hr_y = sr_y[inner], hr_y[inner]
    return sr_y, hr_y


def psnr_y(sr: np.ndarray, hr: np.ndarray, *, crop_border: int = 0) -> float:
    """Peak signal-to-noise ratio on Y, in dB.

    Args:
        sr: ``[H, W, 3]`` RGB result, ``uint8`` or floating point in ``[0, 255]``.
        hr: ``[H, W, 3]`` RGB ground truth, same shape and range.
        crop_border: pixels removed from each side before comparing, ``0 <= 2 * crop_border < min(H, W)``.

    Returns:
        ``10 log10(255^2 / MSE)`` over the cropped Y images; ``inf`` when they are identical.
    """
    sr_y, hr_y = _cropped_y_pair(sr, hr, crop_border)
    mse = float(np.mean((sr_y - hr_y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_DATA_RANGE**2 / mse)


#: lr_consistency of a restoration that degrades back exactly onto its input (PSNR would be inf).
LR_CONSISTENCY_CAP = 100.0


def lr_consistency(lr: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """How faithful restorations are to their inputs: PSNR-Y (dB) between each input crop and its
    restored crop degraded back to the input size by MATLAB bicubic (antialiased) downsampling.

    A restoration is a reconstruction, not evidence: a high value says the restored face explains
    the pixels that were there (it does not say the detail is true); a low one says the restorer
    invented or removed content the input does not support.

    Args:
        lr: ``[N, h, w, 3]`` uint8 input crops.
        restored: ``[N, h*s, w*s, 3]`` uint8 restored crops, ``s`` an integer scale.

    Returns:
        ``[N]`` float64, capped at :data:`LR_CONSISTENCY_CAP`.
    """
    from fsr_core.degradation.resize import imresize

    if lr.ndim != 4 or restored.ndim != 4 or len(lr) != len(restored):
        raise ValueError(f"need [N,h,w,3] crops and N restored crops, got {lr.shape} and {restored.shape}")
    out = np.empty(len(lr), np.float64)
    for i, (small, big) in enumerate(zip(lr, restored)):
        back = imresize(big, output_size=small.shape[:2])
        out[i] = min(psnr_y(back, small), LR_CONSISTENCY_CAP)
    return out


def _gaussian_window() -> np.ndarray:
    kernel = cv2.getGaussianKernel(_SSIM_WINDOW, _SSIM_SIGMA)  # [11, 1], sums to 1
    return np.outer(kernel, kernel)


def ssim_y(sr: np.ndarray, hr: np.ndarray, *, crop_border: int = 0) -> float:
    """Structural similarity on Y (Gaussian 11x11 window, sigma 1.5, "valid" region, mean).

    Args:
        sr: ``[H, W, 3]`` RGB result, ``uint8`` or floating point in ``[0, 255]``.
        hr: ``[H, W, 3]`` RGB ground truth, same shape and range.
        crop_border: pixels removed from each side before comparing; at least 11x11 pixels must
            remain.

    Returns:
        Mean SSIM in ``[-1, 1]``; 1.0 for identical images.
    """
    sr_y, hr_y = _cropped_y_pair(sr, hr, crop_border)
    if min(sr_y.shape) < _SSIM_WINDOW:
        raise ValueError(
            f"ssim_y needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after cropping, got "
            f"{sr_y.shape[0]}x{sr_y.shape[1]} (crop_border={crop_border})"
        )
    window = _gaussian_window()
    pad = _SSIM_WINDOW // 2
    valid = (slice(pad, -pad), slice(pad, -pad))

    def filtered(values: np.ndarray) -> np.ndarray:
        return cv2.filter2D(values, -1, window)[valid]

    mu_sr, mu_hr = filtered(sr_y), filtered(hr_y)
    mu_sr_sq, mu_hr_sq, mu_sr_hr = mu_sr**2, mu_hr**2, mu_sr * mu_hr
    var_sr = filtered(sr_y**2) - mu_sr_sq
    var_hr = filtered(hr_y**2) - mu_hr_sq
    cov = filtered(sr_y * hr_y) - mu_sr_hr
    ssim_map = ((2 * mu_sr_hr + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_sr_sq + mu_hr_sq + _SSIM_C1) * (var_sr + var_hr + _SSIM_C2)
    )
    return float(ssim_map.mean())
