"""MATLAB-style bicubic resizing with antialiasing (``imresize(img, scale, 'bicubic')``).

This is the resampling that produces simulated LR (SLR) from HR in every face-SR paper that
says "bicubic": the numbers in those papers were made with MATLAB, whose ``imresize`` differs
from OpenCV's and PIL's. Its definition (Image Processing Toolbox, ``contributions`` and
``cubic`` in ``imresize.m``):

* Keys cubic kernel with ``a = -0.5``::

      cubic(t) = 1.5|t|^3 - 2.5|t|^2 + 1            for |t| <= 1
               = -0.5|t|^3 + 2.5|t|^2 - 4|t| + 2    for 1 < |t| <= 2
               = 0                                  otherwise

* When downscaling (``scale < 1``) with antialiasing, the kernel is stretched:
  ``h(t) = scale * cubic(scale * t)`` and its support widens from 4 to ``4 / scale``.
* Output pixel ``x`` (1-based) samples input coordinate ``u = x / scale + 0.5 * (1 - 1 / scale)``
  (pixel centres aligned, as with OpenCV's half-pixel convention).
* Taps: ``left = floor(u - width / 2)``, ``P = ceil(width) + 2`` indices ``left .. left + P - 1``,
  weights ``h(u - index)`` normalised so each output pixel's weights sum to 1.
* Out-of-range indices are mirrored (``aux = [1:n, n:-1:1]``), i.e. half-sample symmetric
  padding: index 0 -> 1, -1 -> 2, n + 1 -> n. (Older MATLAB releases clamped instead,
  replicating the end pixel; current releases mirror, which is what this module does.)
* The two spatial dimensions are resized one after the other, the one with the smaller scale
  first (``[~, order] = sort(scale)``; rows first on a tie).
* Output size ``ceil(scale * size)``; given an output size instead, the per-dimension scale is
  ``out / in``.
* For ``uint8`` input MATLAB's resampling kernel returns ``uint8`` after *each* dimension, so the
  intermediate image is rounded (half away from zero) and saturated to ``[0, 255]`` too.

One deliberate deviation: ``ceil(scale * size)`` is taken after snapping products within 1e-9 of
an integer to it, so ``scale=0.1`` on 30 pixels gives 3, not 4 from ``3.0000000000000004``.

Two implementations share the same tap/weight code (:func:`contributions`):

* :func:`imresize` (numpy, float64 arithmetic, MATLAB's gather-and-accumulate per dimension) for
  data preparation;
* :func:`imresize_torch` (two matmuls with dense ``[out, in]`` weight matrices) for training: it is
  differentiable, keeps the input's device and dtype, and serves as the bicubic H2L and as the
  degradation inside cycle losses.

OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_CUBIC)`` is *not* equivalent: it uses
``a = -0.75``, replicates borders and never antialiases, so its downscaled images alias.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

from fsr_core.precision import full_precision

if TYPE_CHECKING:  # torch is imported where it is used: readers and ingest workers need numpy only
    from torch import Tensor

__all__ = ["contributions", "cubic", "imresize", "imresize_torch", "weight_matrix"]

_KERNEL_WIDTH = 4.0  # support of the unstretched cubic kernel, in input pixels
_SIZE_SNAP = 1e-9  # tolerance for snapping scale * size to an integer before ceil


def cubic(t: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with ``a = -0.5`` (MATLAB's ``cubic``).

    Args:
        t: distances in (possibly stretched) input-pixel units, any shape.

    Returns:
        Kernel values, float64, same shape as ``t``; zero for ``|t| > 2``.
    """
    absx = np.abs(np.asarray(t, dtype=np.float64))
    absx2 = absx**2
    absx3 = absx**3
    return (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1) + (
        -0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0
    ) * ((absx > 1) & (absx <= 2))


def contributions(
    *, in_length: int, out_length: int, scale: float, antialias: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Taps of a 1-D MATLAB bicubic resize: which input pixels feed each output pixel, how much.

    Args:
        in_length: number of input pixels along the dimension (>= 1).
        out_length: number of output pixels along the dimension (>= 1).
        scale: resize factor used for the coordinate mapping and the kernel stretch (> 0). With an
            explicit output size MATLAB passes ``out_length / in_length`` here.
        antialias: stretch the kernel by ``1 / scale`` when ``scale < 1``.

    Returns:
        ``(weights, indices)``, both ``[out_length, P]``: float64 weights whose rows sum to 1, and
        0-based input indices after mirroring, all in ``[0, in_length)``. Columns whose weights are
        zero for every output pixel are dropped, as MATLAB does.
    """
    if in_length < 1 or out_length < 1:
        raise ValueError(f"lengths must be >= 1, got in_length={in_length}, out_length={out_length}")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number, got {scale}")

    if scale < 1 and antialias:
        kernel_width = _KERNEL_WIDTH / scale

        def h(t: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * t)

    else:
        kernel_width = _KERNEL_WIDTH
        h = cubic

    x = np.arange(1, out_length + 1, dtype=np.float64)  # 1-based output coordinates
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based input coordinates
    left = np.floor(u - kernel_width / 2.0)
    num_taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(num_taps, dtype=np.float64)[None, :]  # 1-based
    weights = h(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)

    # Mirror out-of-range indices: aux = [1:n, n:-1:1]; index -> aux(mod(index - 1, 2n) + 1).
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])  # 0-based
    indices = aux[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]

    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


@functools.lru_cache(maxsize=256)
def weight_matrix(*, in_length: int, out_length: int, scale: float, antialias: bool) -> np.ndarray:
    """Dense 1-D resize operator built from :func:`contributions`.

    Returns:
        Read-only float64 array ``[out_length, in_length]``; ``resized = matrix @ signal``. Taps
        that mirror onto the same input pixel are summed. Cached per argument tuple.
    """
    weights, indices = contributions(
        in_length=in_length, out_length=out_length, scale=scale, antialias=antialias
    )
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], indices.shape)
    np.add.at(matrix, (rows, indices), weights)
    matrix.setflags(write=False)
    return matrix


def _output_length(scale: float, in_length: int) -> int:
    product = scale * in_length
    nearest = round(product)
    if abs(product - nearest) <= _SIZE_SNAP * max(1.0, abs(product)):
        return max(int(nearest), 1)
    return max(int(math.ceil(product)), 1)


def _plan(
    in_size: tuple[int, int],
    scale: float | None,
    output_size: tuple[int, int] | None,
) -> tuple[tuple[float, float], tuple[int, int], tuple[int, int]]:
    """Per-dimension scales, output size and resize order (dimension indices 0=H, 1=W)."""
    if (scale is None) == (output_size is None):
        raise ValueError("give exactly one of scale= or output_size=")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise ValueError(f"scale must be a number, got {type(scale).__name__}")
        scale = float(scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        scales = (scale, scale)
        out_size = (_output_length(scale, in_size[0]), _output_length(scale, in_size[1]))
    else:
        if (
            not isinstance(output_size, (tuple, list))
            or len(output_size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in output_size)
            or min(output_size) < 1
        ):
            raise ValueError(f"output_size must be two positive ints (height, width), got {output_size}")
        out_size = (int(output_size[0]), int(output_size[1]))
        scales = (out_size[0] / in_size[0], out_size[1] / in_size[1])
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    return scales, out_size, order


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's saturating cast: round half away from zero, clip to [0, 255]."""
    return np.clip(np.floor(values + 0.5), 0, 255)


def imresize(
    image: np.ndarray,
    *,
    scale: float | None = None,
    output_size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """Resize like MATLAB's ``imresize(image, scale, 'bicubic')``.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` array, ``uint8`` in ``[0, 255]`` or floating point (any
            range; values are not clipped).
        scale: resize factor for both dimensions, ``> 0``; output size ``ceil(scale * (H, W))``.
        output_size: ``(height, width)`` of the output instead of ``scale``.
        antialias: stretch the kernel when downscaling (MATLAB's default ``true``).

    Returns:
        The resized image, ``[H', W']`` or ``[H', W', C]``. ``uint8`` in gives ``uint8`` out,
        rounded half away from zero and saturated after each dimension (as MATLAB). A floating
        input gives the same floating dtype out, computed in float64.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    is_uint8 = image.dtype == np.uint8
    if not (is_uint8 or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"image dtype must be uint8 or floating, got {image.dtype}")

    scales, out_size, order = _plan(image.shape[:2], scale, output_size)
    out = image.astype(np.float64)
    for dim in order:
        weights, indices = contributions(
            in_length=out.shape[dim], out_length=out_size[dim], scale=scales[dim], antialias=antialias
        )
        moved = np.moveaxis(out, dim, 0)  # [in, ...]
        broadcast = (slice(None),) + (None,) * (moved.ndim - 1)
        resized = np.zeros((out_size[dim],) + moved.shape[1:], dtype=np.float64)
        for tap in range(weights.shape[1]):  # MATLAB accumulates tap by tap
            resized += weights[:, tap][broadcast] * moved[indices[:, tap]]
        out = np.moveaxis(resized, 0, dim)
        if is_uint8:
            out = _round_to_uint8(out)
    return out.astype(np.uint8) if is_uint8 else out.astype(image.dtype)


@full_precision
def imresize_torch(
    x: Tensor,
    *,
    scale: float | None = None,
    output_size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> Tensor:
    """Differentiable MATLAB bicubic resize of a batch: two matmuls with fixed weight matrices.

    Same weights as :func:`imresize` (they come from :func:`contributions`), applied in the same
    dimension order; in float64 the two agree to rounding error. No clipping or rounding is done,
    so there is no uint8 emulation here.

    Args:
        x: ``[N, C, H, W]`` floating tensor, any value range (e.g. ``[-1, 1]`` or ``[0, 1]``), any
            device.
        scale: resize factor for both dimensions, ``> 0``.
        output_size: ``(height, width)`` of the output instead of ``scale``.
        antialias: stretch the kernel when downscaling.

    Returns:
        ``[N, C, H', W']`` tensor on ``x``'s device with ``x``'s dtype (float32 for a half-precision
        ``x``: it runs in float32 with autocast off, :mod:`fsr_core.precision`, so a bf16 training
        step's bicubic images are not rounded to bf16); gradients flow to ``x``.
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor, got {x.dtype}")
    height, width = x.shape[-2:]
    if height < 1 or width < 1:
        raise ValueError(f"x must have non-empty spatial dimensions, got shape {tuple(x.shape)}")

    scales, out_size, order = _plan((height, width), scale, output_size)
    out = x
    for dim in order:
        matrix = torch.from_numpy(
            weight_matrix(
                in_length=out.shape[2 + dim],
                out_length=out_size[dim],
                scale=scales[dim],
                antialias=antialias,
            ).copy()
        ).to(device=x.device, dtype=x.dtype)
        out = torch.matmul(matrix, out) if dim == 0 else torch.matmul(out, matrix.t())
    return out
