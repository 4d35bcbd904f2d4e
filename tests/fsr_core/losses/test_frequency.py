"""The frequency-separation helpers on hand cases."""

from __future__ import annotations

import torch

from fsr_core.losses.frequency import gaussian_lowpass, highpass


def test_low_band_keeps_constants_and_means_and_the_high_band_is_the_rest() -> None:
    constant = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_lowpass(constant, 1.0), constant)
    assert highpass(constant, 1.0).abs().max() < 1e-6
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian_lowpass(x, 1.0) + highpass(x, 1.0), x)
    torch.testing.assert_close(highpass(x + 0.25, 1.0), highpass(x, 1.0), atol=1e-6, rtol=0)
    # a blur lowers the variance of white noise and keeps its mean (reflected borders)
    assert gaussian_lowpass(x, 1.0).std() < 0.6 * x.std()
    assert abs(float(gaussian_lowpass(x, 1.0).mean() - x.mean())) < 0.01
    # a wider Gaussian removes more: the high band grows with sigma
    assert highpass(x, 2.0).abs().mean() > highpass(x, 0.5).abs().mean()


def test_sigma_zero_is_no_separation() -> None:
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert gaussian_lowpass(x, 0.0) is x and highpass(x, 0.0) is x
