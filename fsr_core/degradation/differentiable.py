"""SAIR's degradation operator, differentiable end to end (``METHODS.md`` section 4, Eq. 4)::

    D(X) = JPEG_q( (X conv k) downsampled by s  +  n_sigma )

on ``[N,3,S,S]`` images in [-1,1] -> ``[N,3,S/s,S/s]`` in [-1,1], gradients flowing to ``X``:

``k``
    an isotropic Gaussian blur of ``blur_sigma`` pixels (of the HR image; 0: none), its kernel out to
    3 sigma, reflected border (the data path's ``gaussian_blur`` op, in torch);
``downsampled by s``
    ``bicubic`` (MATLAB's antialiased bicubic, :func:`~fsr_core.degradation.resize.imresize_torch`, the
    kernel the project's bicubic LR uses) or ``area`` (the mean over ``s x s`` blocks: the demo camera's
    sensor integration);
``n_sigma``
    additive white Gaussian noise of std ``noise_sigma`` (in [-1,1] units: 2/255 is one grey level). It is
    zero-mean, so ``E_n ||Y - D(X)||^2 = ||Y - D_0(X)||^2 + const``: :meth:`Degradation.forward` adds it
    only when given a ``torch.Generator`` to draw it with (SAIR's ``fidelity_noise: sample``); without
    one, the noiseless expectation (``fidelity_noise: expectation``, the default);
``JPEG_q``
    kornia's differentiable JPEG (``kornia.enhance.jpeg_codec_differentiable``: 4:2:0 chroma subsampling,
    the standard quantisation tables scaled by ``q`` as libjpeg scales them, a differentiable rounding),
    ``jpeg_quality`` in [1, 100]; ``None``: no JPEG. It matches OpenCV's (libjpeg's) round trip of the
    same image within the tolerance ``tests/fsr_core/inversion/test_sair_degradation.py`` states for
    ``q >= 50``.

Every parameter comes from configuration (:class:`DegradationSettings`); ``noise_sigma`` and
``jpeg_quality`` may be ``"auto"``: estimated per input face by :func:`estimate_noise_sigma` (a robust
MAD of the finest diagonal Haar detail, Donoho's ``median(|HH|) / 0.6745``) and
:func:`estimate_jpeg_quality` (the requantisation fixed point: JPEG is nearly idempotent at its own
quality, so the quality whose OpenCV re-compression changes the face least is the one it was coded at;
this needs the crop's 8x8 grid to be the coder's, true for LR crops written by the degrade stage, not for
faces re-aligned from a photo, where the quality should be named).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsr_core.degradation.resize import imresize_torch

__all__ = ["Degradation", "DegradationSettings", "estimate_jpeg_quality", "estimate_noise_sigma",
           "gaussian_kernel", "jpeg_differentiable", "jpeg_opencv"]

Auto = Literal["auto"]


def gaussian_kernel(sigma: float) -> Tensor:
    """``[k,k]`` isotropic Gaussian out to 3 sigma (``k = 2 ceil(3 sigma) + 1``), summing to 1."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = g[:, None] * g[None, :]
    return (kernel / kernel.sum()).float()


def _blur(x: Tensor, sigma: float) -> Tensor:
    kernel = gaussian_kernel(sigma).to(x)
    pad = kernel.shape[-1] // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad < x.shape[-1] else F.pad(
        x, (pad, pad, pad, pad), mode="replicate")
    weight = kernel.expand(x.shape[1], 1, -1, -1)
    return F.conv2d(padded, weight, groups=x.shape[1])


def jpeg_differentiable(x: Tensor, quality: Tensor | float) -> Tensor:
    """kornia's differentiable JPEG of ``[N,3,H,W]`` in [-1,1] at ``quality`` (a number or ``[N]``)."""
    from kornia.enhance import jpeg_codec_differentiable

    q = torch.as_tensor(quality, dtype=x.dtype, device=x.device).flatten()
    if q.numel() == 1:
        q = q.expand(x.shape[0])
    if q.numel() != x.shape[0] or bool(((q < 1) | (q > 100)).any()):
        raise ValueError(f"jpeg quality must be one number or one per image in [1, 100], got {quality}")
    unit = ((x + 1.0) * 0.5).clamp(0.0, 1.0)
    return jpeg_codec_differentiable(unit, q.contiguous()) * 2.0 - 1.0


def jpeg_opencv(images: np.ndarray, quality: int) -> np.ndarray:
    """OpenCV (libjpeg) round trip of uint8 ``[N,H,W,3]`` RGB at ``quality``: the data path's ``jpeg`` op."""
    out = []
    for image in np.asarray(images):
        ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY,
                                                                                 int(quality)])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {image.shape[1]}x{image.shape[0]} image as JPEG")
        out.append(cv2.cvtColor(cv2.imdecode(buffer, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return np.stack(out) if out else np.zeros_like(images)


def estimate_noise_sigma(lr: Tensor) -> Tensor:
    """``[N]`` noise std of ``[N,3,h,w]`` images in [-1,1]: ``median(|HH|) / 0.6745`` of the finest
    orthonormal Haar diagonal detail of the luma (Donoho and Johnstone's robust MAD; faces are smooth at
    that scale, so the median detail is the noise's)."""
    if lr.ndim != 4 or lr.shape[1] != 3 or lr.shape[-1] < 2 or lr.shape[-2] < 2:
        raise ValueError(f"lr must be [N,3,h,w] with h, w >= 2, got {tuple(lr.shape)}")
    luma = 0.299 * lr[:, 0] + 0.587 * lr[:, 1] + 0.114 * lr[:, 2]
    h, w = luma.shape[-2] // 2 * 2, luma.shape[-1] // 2 * 2
    y = luma[:, :h, :w]
    hh = (y[:, 0::2, 0::2] - y[:, 0::2, 1::2] - y[:, 1::2, 0::2] + y[:, 1::2, 1::2]) / 2.0
    return hh.abs().flatten(1).median(dim=1).values / 0.6745


def estimate_jpeg_quality(lr: np.ndarray, *, candidates: Sequence[int] = tuple(range(10, 100, 5)),
                          margin: float = 1.0) -> np.ndarray:
    """``[N]`` JPEG quality of uint8 ``[N,h,w,3]`` crops, 100 for none found.

    JPEG is nearly idempotent at its own quality: re-compressing a crop at the quality it was coded with
    changes it far less than re-compressing at the neighbouring qualities. For each candidate ``q`` (a
    grid, step 5 by default) the mean absolute change of an OpenCV re-compression is compared with the
    smaller of the changes at the grid's neighbours ``q -/+ step`` (so the change's smooth fall with
    ``q`` is no dip); the candidate with the deepest dip wins, and a dip under ``margin`` grey levels
    means no JPEG fixed point (100). See
    the module docstring for when the crop's grid is the coder's."""
    lr = np.asarray(lr)
    if lr.dtype != np.uint8 or lr.ndim != 4 or lr.shape[-1] != 3:
        raise ValueError(f"lr must be uint8 [N,h,w,3], got {lr.dtype} {lr.shape}")
    grid = sorted(int(q) for q in candidates)
    if len(grid) < 2:
        raise ValueError("estimate_jpeg_quality needs two or more candidates")
    step = grid[1] - grid[0]
    qualities = [max(1, grid[0] - step)] + grid + [min(100, grid[-1] + step)]
    changes = np.stack([np.abs(jpeg_opencv(lr, q).astype(np.float64) - lr).mean(axis=(1, 2, 3))
                        for q in qualities], axis=1)  # [N, Q + 2]
    dips = np.minimum(changes[:, :-2], changes[:, 2:]) - changes[:, 1:-1]  # [N, Q]
    best = dips.argmax(axis=1)
    return np.where(dips[np.arange(len(lr)), best] >= margin, np.asarray(grid)[best], 100).astype(np.int64)


@dataclass(frozen=True)
class DegradationSettings:
    """The parameters of :class:`Degradation` (SAIR's config section ``degradation``)."""

    scale: int = 8
    blur_sigma: float = 0.0
    downsample: Literal["bicubic", "area"] = "bicubic"
    noise_sigma: float | Auto = 0.0
    jpeg_quality: float | Auto | None = None

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"scale must be >= 1, got {self.scale}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if self.downsample not in ("bicubic", "area"):
            raise ValueError(f"downsample must be 'bicubic' or 'area', got {self.downsample!r}")
        if self.noise_sigma != "auto" and (isinstance(self.noise_sigma, str) or self.noise_sigma < 0):
            raise ValueError(f"noise_sigma must be >= 0 or 'auto', got {self.noise_sigma!r}")
        q = self.jpeg_quality
        if q is not None and q != "auto" and (isinstance(q, str) or not 1 <= q <= 100):
            raise ValueError(f"jpeg_quality must be in [1, 100], 'auto' or null, got {q!r}")

    def resolve(self, lr: Tensor) -> "Degradation":
        """The operator for the faces ``lr`` ``[N,3,h,w]`` in [-1,1]: ``auto`` parameters estimated per face."""
        sigma = estimate_noise_sigma(lr).detach() if self.noise_sigma == "auto" else torch.full(
            (lr.shape[0],), float(self.noise_sigma))
        quality = None
        if self.jpeg_quality == "auto":
            pixels = ((lr.detach() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
            estimated = estimate_jpeg_quality(pixels.permute(0, 2, 3, 1).cpu().numpy())
            quality = None if bool((estimated >= 100).all()) else torch.from_numpy(estimated).float()
        elif self.jpeg_quality is not None:
            quality = torch.full((lr.shape[0],), float(self.jpeg_quality))
        return Degradation(scale=self.scale, blur_sigma=self.blur_sigma, downsample=self.downsample,
                           noise_sigma=sigma.to(lr.device), jpeg_quality=None if quality is None else quality.to(lr.device))


class Degradation:
    """``D(x)``, per-face ``noise_sigma`` ``[N]`` and ``jpeg_quality`` ``[N]`` (or None): see the module
    docstring. :meth:`select` takes the rows of a subset of the faces (a search's active faces)."""

    def __init__(self, *, scale: int, blur_sigma: float = 0.0, downsample: str = "bicubic",
                 noise_sigma: Tensor | None = None, jpeg_quality: Tensor | None = None) -> None:
        self.scale, self.blur_sigma, self.downsample = int(scale), float(blur_sigma), downsample
        self.noise_sigma, self.jpeg_quality = noise_sigma, jpeg_quality

    def select(self, rows: Tensor) -> "Degradation":
        pick = lambda t: None if t is None else t[rows.to(t.device)]  # noqa: E731
        return Degradation(scale=self.scale, blur_sigma=self.blur_sigma, downsample=self.downsample,
                           noise_sigma=pick(self.noise_sigma), jpeg_quality=pick(self.jpeg_quality))

    def __call__(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return self.forward(x, generator=generator)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``[N,3,S,S]`` in [-1,1] -> ``[N,3,S/s,S/s]``; noise drawn only with a ``generator``."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % self.scale or x.shape[-2] % self.scale:
            raise ValueError(f"D takes [N,3,S,S] with S a multiple of {self.scale}, got {tuple(x.shape)}")
        if self.blur_sigma > 0:
            x = _blur(x, self.blur_sigma)
        size = (x.shape[-2] // self.scale, x.shape[-1] // self.scale)
        if self.scale > 1:
            x = F.interpolate(x, size=size, mode="area") if self.downsample == "area" else imresize_torch(
                x, output_size=size)
        if generator is not None and self.noise_sigma is not None and bool((self.noise_sigma > 0).any()):
            noise = torch.randn(x.shape, generator=generator).to(x)
            x = x + noise * self.noise_sigma.to(x).view(-1, 1, 1, 1)
        if self.jpeg_quality is not None:
            x = jpeg_differentiable(x, self.jpeg_quality)
        return x
