"""Step 2 and the latent-search restorers: two_step_latent and pulse through a restorer bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsr_core.inversion import search_function
from fsr_core.inversion.latent import latent_statistics
from fsr_core.inversion.two_step import ProjectionSettings, latent_step
from fsr_core.networks.latent_prior import LatentPrior
from fsr_core.networks.two_step import L2HGenerator
from fsr_core.restore.restorer import RestorerCard, load_bundle, save_bundle

FAST = {"steps": 6, "learning_rate": 0.1, "perceptual": "none", "statistics_samples": 200}


def _networks(generator):
    torch.manual_seed(0)
    l2h = L2HGenerator(channels=8, blocks_per_section=(1, 1), reduction=4, attention_after_section=(),
                       global_residual=True).eval()
    prior = LatentPrior(style_dim=generator.style_dim)
    normal = torch.zeros(generator.style_dim)
    normal[0] = 1.0
    prior.set(statistics=latent_statistics(generator, samples=500, seed=0), normal=normal)
    return {"l2h": l2h, "generator": generator, "prior": prior}


def test_latent_step_merges_the_projections_by_their_errors(generator):
    stats = latent_statistics(generator, samples=500, seed=0)
    mr = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = latent_step(generator, mr, seeds=[0, 1, 2], statistics=stats,
                         projection=ProjectionSettings(steps=8, perceptual="none"), gamma_w=0.0, gamma_w_plus=0.0)
    torch.testing.assert_close(result.a, result.w_plus.error / (result.w.error + result.w_plus.error))
    a = result.a.view(-1, 1, 1)
    torch.testing.assert_close(result.latent, a * result.w.latent.unsqueeze(1) + (1 - a) * result.w_plus.latent)
    assert result.image.shape == (3, 3, 16, 16)


@pytest.mark.parametrize("search, settings", [
    ("two_step_latent", FAST),
    ("pulse", {"hypotheses": 2, "steps": 6, "statistics_samples": 200}),
])
def test_the_restorer_round_trip_through_a_bundle(tmp_path, generator, search, settings):
    networks = _networks(generator)
    names = ("l2h", "generator", "prior") if search == "two_step_latent" else ("generator", "prior")
    card = RestorerCard(kind="latent_search", input_size=8, scale=2, networks=names, search=search,
                        settings=settings, name=search, method="two_step")
    save_bundle(str(tmp_path / "bundle"), card, networks)
    restorer = load_bundle(str(tmp_path / "bundle"))
    assert restorer.search is search_function(search)
    torch.testing.assert_close(restorer.networks["prior"].normal, networks["prior"].normal)
    lr = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    out = restorer.restore(lr, batch_size=3, seed=5)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    # face i always gets seed + i: batching does not change a face's result
    one_by_one = restorer.restore(lr, batch_size=1, seed=5)
    assert np.abs(out.astype(int) - one_by_one.astype(int)).max() <= 1
    # the same search straight on the networks, as a restorer runs it
    direct = search_function(search)(networks, torch.from_numpy(lr).permute(0, 3, 1, 2).float() / 127.5 - 1,
                                     seed=5, **settings)
    expected = ((direct + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_a_missing_lpips_backbone_is_named(generator):
    with pytest.raises(FileNotFoundError, match="alexnet"):
        search_function("two_step_latent")(_networks(generator), torch.zeros(1, 3, 8, 8), seed=0,
                                           **{**FAST, "perceptual": "lpips"})
