"""The latent-space helpers: Gaussianised space, principal normal, edits, interpolation, merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsr_core.inversion.latent import (degaussianise, edit_along_normal, fit_principal_normal, gaussianise,
                                       interpolate_to_mean, latent_statistics, merge_codes, merge_weight)


def test_gaussianise_undoes_the_mappings_last_leaky_relu(generator):
    w = generator.style(torch.randn(64, generator.style_dim, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(degaussianise(gaussianise(w)), w)
    # before the last activation the mapping's values are roughly symmetric; after it negatives shrink 5x
    v = gaussianise(w)
    assert (w < 0).any() and torch.allclose(v[w < 0], 5 * w[w < 0])


def test_statistics_are_deterministic_and_shaped(generator):
    a = latent_statistics(generator, samples=300, seed=4)
    b = latent_statistics(generator, samples=300, seed=4)
    assert a["w_mean"].shape == (generator.style_dim,) and a["w_std"].shape == ()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert torch.all(a["gauss_std"] > 0)


def test_the_svm_normal_separates_two_synthetic_clusters():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=32)
    direction /= np.linalg.norm(direction)
    mr = rng.normal(size=(60, 32)) - 2.0 * direction
    hr = rng.normal(size=(60, 32)) + 2.0 * direction
    normal = fit_principal_normal(mr, hr)
    assert normal.shape == (32,) and abs(np.linalg.norm(normal) - 1) < 1e-9
    assert normal @ direction > 0.8  # found the direction the clusters differ along, pointing to HR
    threshold = 0.5 * ((mr @ normal).mean() + (hr @ normal).mean())
    accuracy = ((hr @ normal > threshold).sum() + (mr @ normal < threshold).sum()) / 120
    assert accuracy > 0.95
    with pytest.raises(ValueError, match="two"):
        fit_principal_normal(mr, hr[:, :5])


def test_edit_moves_along_the_normal_in_the_chosen_space():
    w = torch.randn(3, 8)
    normal = torch.zeros(8)
    normal[2] = 2.0
    edited = edit_along_normal(w, normal, 0.5, space="w")
    torch.testing.assert_close(edited - w, 0.5 * torch.eye(8)[2].expand(3, -1))
    gauss = edit_along_normal(w, normal, 0.5, space="gaussian")
    torch.testing.assert_close(gaussianise(gauss) - gaussianise(w), 0.5 * torch.eye(8)[2].expand(3, -1))
    w_plus = torch.randn(3, 4, 8)
    assert edit_along_normal(w_plus, normal, 1.0).shape == (3, 4, 8)


def test_interpolation_toward_the_mean():
    w = torch.randn(2, 4, 8)
    mean = torch.randn(8)
    torch.testing.assert_close(interpolate_to_mean(w, 0.0, mean=mean, space="w"), w)
    torch.testing.assert_close(interpolate_to_mean(w, 1.0, mean=mean, space="w"), mean.expand(2, 4, 8))
    half = interpolate_to_mean(w, 0.5, mean=mean, space="gaussian")
    torch.testing.assert_close(gaussianise(half), 0.5 * (gaussianise(w) + mean))
    with pytest.raises(ValueError, match="gamma"):
        interpolate_to_mean(w, 1.5, mean=mean)


def test_merge_weights_follow_the_errors():
    e_w = torch.tensor([0.01, 0.02, 0.04, 0.03])
    e_plus = torch.tensor([0.01, 0.01, 0.01, 0.03])
    a = merge_weight(e_w, e_plus)
    torch.testing.assert_close(a, e_plus / (e_w + e_plus))
    torch.testing.assert_close(a[[0, 3]], torch.tensor([0.5, 0.5]))
    assert a[1] > a[2] and torch.all((a > 0) & (a < 1))  # the larger the W error, the less W counts
    assert torch.all(merge_weight(e_w, e_plus, rule="fixed", fixed=0.3) == 0.3)
    w, w_plus = torch.randn(4, 8), torch.randn(4, 6, 8)
    merged = merge_codes(w, w_plus, a)
    torch.testing.assert_close(merged, a.view(-1, 1, 1) * w.unsqueeze(1) + (1 - a.view(-1, 1, 1)) * w_plus)
    torch.testing.assert_close(merge_codes(w, w_plus, torch.ones(4)), w.unsqueeze(1).expand(-1, 6, -1))
