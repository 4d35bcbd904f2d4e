"""Projection into W / W+: recovers a generated face, batched equals single, early stop, errors."""

from __future__ import annotations

import pytest
import torch

from fsr_core.inversion.latent import latent_statistics
from fsr_core.inversion.projection import noise_regularisation, project, synthesise


def test_projection_in_w_recovers_a_generated_face(generator):
    stats = latent_statistics(generator, samples=2000, seed=0)
    w_true = generator.style(torch.randn(2, generator.style_dim, generator=torch.Generator().manual_seed(3)))
    target = synthesise(generator, w_true, None)
    start = synthesise(generator, stats["w_mean"].expand(2, -1), None)
    result = project(generator, target, seeds=[0, 1], space="w", steps=300, learning_rate=0.2, perceptual=0.0,
                     optimise_noise=False, statistics=stats)
    start_error = (start - target).pow(2).mean(dim=(1, 2, 3))
    assert result.latent.shape == (2, generator.style_dim) and result.image.shape == target.shape
    assert torch.all(result.error < 1e-3 * start_error), (result.error, start_error)
    # the code itself comes back, not only the image: far closer to the truth than the start was
    assert torch.all((result.latent - w_true).norm(dim=1) < 0.01 * (stats["w_mean"] - w_true).norm(dim=1))


def test_projection_in_w_plus_fits_at_least_as_well_as_w(generator):
    stats = latent_statistics(generator, samples=2000, seed=0)
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    common = dict(seeds=[5, 6], steps=60, learning_rate=0.05, perceptual=0.0, statistics=stats)
    w = project(generator, target, space="w", **common)
    w_plus = project(generator, target, space="w_plus", **common)
    assert w_plus.latent.shape == (2, generator.n_latent, generator.style_dim)
    assert len(w_plus.noises) == generator.num_layers and w_plus.noises[-1].shape == (2, 1, 16, 16)
    assert torch.all(w_plus.error <= w.error * 1.05)


def test_downsampled_target(generator):
    stats = latent_statistics(generator, samples=500, seed=0)
    target = torch.zeros(3, 3, 8, 8)
    result = project(generator, target, seeds=[0, 1, 2], steps=5, perceptual=0.0, statistics=stats)
    assert result.image.shape == (3, 3, 16, 16) and result.error.shape == (3,)


@pytest.mark.parametrize("space", ["w", "w_plus"])
def test_a_batch_equals_single_projections_with_the_same_seeds(generator, space):
    stats = latent_statistics(generator, samples=500, seed=0)
    target = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    settings = dict(space=space, steps=25, learning_rate=0.05, perceptual=0.0, statistics=stats, patience=4,
                    tolerance=0.05)
    batch = project(generator, target, seeds=[11, 12, 13], **settings)
    for i, seed in enumerate([11, 12, 13]):
        single = project(generator, target[i:i + 1], seeds=[seed], **settings)
        assert int(single.steps[0]) == int(batch.steps[i])
        torch.testing.assert_close(single.latent[0], batch.latent[i], atol=1e-4, rtol=1e-4)
        for a, b in zip(single.noises, batch.noises):
            torch.testing.assert_close(a[0], b[i], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(single.error[0], batch.error[i], atol=1e-5, rtol=1e-4)
    assert batch.steps.min() < 25, "early stopping never triggered: the test checks nothing about it"


def test_noise_regularisation_is_per_face():
    smooth = torch.ones(1, 1, 16, 16)
    rough = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    both = noise_regularisation([torch.cat([smooth, rough])])
    assert both.shape == (2,)
    torch.testing.assert_close(both[0], noise_regularisation([smooth])[0])
    assert both[0] > both[1]


def test_wrong_settings_are_refused(generator):
    target = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="one seed per face"):
        project(generator, target, seeds=[0], steps=1, perceptual=0.0)
    with pytest.raises(ValueError, match="needs a distance"):
        project(generator, target, seeds=[0, 1], steps=1)
    with pytest.raises(ValueError, match="larger than the generator"):
        project(generator, torch.zeros(1, 3, 32, 32), seeds=[0], steps=1, perceptual=0.0)


def test_projection_runs_under_no_grad(generator):
    stats = latent_statistics(generator, samples=200, seed=0)
    with torch.no_grad():
        target = torch.zeros(1, 3, 16, 16)
        result = project(generator, target, seeds=[0], steps=3, perceptual=0.0, statistics=stats)
    assert result.steps[0] == 3 and torch.isfinite(result.error).all()
