"""The PULSE-style baseline: its output's downsampling approaches the LR; hypotheses; batching."""

from __future__ import annotations

import pytest
import torch

from fsr_core.inversion.latent import latent_statistics
from fsr_core.inversion.projection import downsample, synthesise
from fsr_core.inversion.pulse import geocross, pulse


def test_the_output_downsampled_approaches_the_lr(generator):
    stats = latent_statistics(generator, samples=1000, seed=0)
    w_true = generator.style(torch.randn(2, generator.style_dim, generator=torch.Generator().manual_seed(7)))
    lr = downsample(synthesise(generator, w_true, None), 4, method="bicubic")
    short = pulse(generator, lr, seeds=[0, 1], statistics=stats, hypotheses=3, steps=1, eps=0.0)
    result = pulse(generator, lr, seeds=[0, 1], statistics=stats, hypotheses=3, steps=80, eps=0.0)
    assert result.image.shape == (2, 3, 16, 16) and result.latent.shape == (2, generator.n_latent, 16)
    assert result.all_errors.shape == (2, 3)
    assert torch.all(result.lr_error < 0.25 * short.lr_error), (result.lr_error, short.lr_error)
    # the kept hypothesis is the best of the face's starts
    torch.testing.assert_close(result.lr_error, result.all_errors.min(dim=1).values)
    again = downsample(result.image, 4, method="bicubic")
    torch.testing.assert_close((again - lr).pow(2).mean(dim=(1, 2, 3)), result.lr_error, atol=1e-6, rtol=1e-4)


def test_a_batch_equals_single_searches(generator):
    stats = latent_statistics(generator, samples=500, seed=0)
    lr = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    batch = pulse(generator, lr, seeds=[3, 4], statistics=stats, hypotheses=2, steps=10)
    for i, seed in enumerate([3, 4]):
        single = pulse(generator, lr[i:i + 1], seeds=[seed], statistics=stats, hypotheses=2, steps=10)
        torch.testing.assert_close(single.latent[0], batch.latent[i], atol=1e-4, rtol=1e-4)


def test_geocross_is_zero_for_equal_layers():
    v = torch.randn(2, 1, 8).expand(2, 5, 8)
    assert torch.all(geocross(v) < 1e-4)
    assert torch.all(geocross(torch.randn(2, 5, 8)) > 0.1)


def test_settings_are_checked(generator):
    stats = latent_statistics(generator, samples=100, seed=0)
    with pytest.raises(ValueError, match="one seed per face"):
        pulse(generator, torch.zeros(2, 3, 4, 4), seeds=[0], statistics=stats)
    with pytest.raises(ValueError, match="noise"):
        pulse(generator, torch.zeros(1, 3, 4, 4), seeds=[0], statistics=stats, noise="optimised")
