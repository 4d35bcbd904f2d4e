"""Frequency separation: the low band (a Gaussian blur) and the high band (the image minus it).

Fritsche et al. (2019, "Frequency Separation for Real-World Super-Resolution") let a degradation
network's pixel term judge only the low band and its discriminator only the high band, so the
discriminator looks at noise and compression instead of the faces. The two-step objective's
``h2l_pixel_lowpass`` / ``h2l_disc_highpass`` and SelFSR's ``identity_lowpass`` / ``disc_highpass``
are that split, both named departures from their papers.
"""

from __future__ import annotations

import math

from torch import Tensor

from fsr_core.precision import full_precision

__all__ = ["gaussian_lowpass", "highpass"]


@full_precision
def gaussian_lowpass(x: Tensor, sigma: float) -> Tensor:
    """The low band: a Gaussian blur of ``x`` ``[N, C, H, W]`` with standard deviation ``sigma``
    pixels (kernel ``2 * ceil(3 sigma) + 1``, reflected borders); ``sigma <= 0`` returns ``x``.
    A constant image is unchanged. Computed in float32 even under autocast (:mod:`fsr_core.precision`)."""
    if sigma <= 0:
        return x
    from kornia.filters import gaussian_blur2d

    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="reflect")


@full_precision
def highpass(x: Tensor, sigma: float) -> Tensor:
    """The high band ``x - gaussian_lowpass(x, sigma)``: zero for a constant image, unchanged by
    adding a constant; ``sigma <= 0`` returns ``x`` (no separation). Float32 under autocast too."""
    if sigma <= 0:
        return x
    return x - gaussian_lowpass(x, sigma)
