"""The step-1 objective: losses, which networks learn, loss weights, checkpoints (tiny networks, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from fsr_core.training.objective import DataSpec, RestorerSpec
from fsr_core.training.two_step_objective import TwoStepObjective

TINY = {
    "l2h": {"channels": 8, "blocks_per_section": (1, 1, 1, 1), "reduction": 4},
    "l2h_disc": {"channels": 8, "max_channels": 16},
    "h2l": {"channels": 8, "noise_dim": 8, "reduction": 4},
    "h2l_disc": {"channels": 8, "max_channels": 16},
}


def make(mode: str, seed: int = 0, **kwargs) -> TwoStepObjective:
    torch.manual_seed(seed)
    return TwoStepObjective(mode=mode, **{**TINY, **kwargs})


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Colour ramps in [-1,1]: learnable in a few steps, unlike noise."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    c = torch.rand(n, 3, 3, generator=gen) * 2 - 1
    images = c[..., 0, None, None] * 0.5 + c[..., 1, None, None] * 0.3 * xx + c[..., 2, None, None] * 0.3 * yy
    return images.clamp(-1, 1)


@pytest.fixture(scope="module")
def batch() -> dict[str, dict[str, torch.Tensor]]:
    return {"hr": {"image": smooth_images(4, 128, seed=1)}, "real_lr": {"image": smooth_images(4, 16, seed=2)}}


def hr_only(batch) -> dict[str, dict[str, torch.Tensor]]:
    return {"hr": batch["hr"]}


def params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def changed(before: list[torch.Tensor], net: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_supervised_losses_decrease_and_h2l_is_untouched(batch):
    objective = make("supervised")
    h2l_before = {name: params(objective.networks[name]) for name in ("h2l", "h2l_disc")}
    history = [objective.train_step(batch) for _ in range(12)]
    assert set(history[0]) == {"l2h_pixel", "l2h_gan", "l2h_total", "l2h_disc"}
    first, last = history[0], history[-1]
    assert last["l2h_pixel"] < 0.5 * first["l2h_pixel"]
    assert last["l2h_total"] < 0.5 * first["l2h_total"]
    for name, before in h2l_before.items():  # bypassed in supervised mode
        assert not changed(before, objective.networks[name])
        assert all(p.grad is None for p in objective.networks[name].parameters())
    assert set(objective.optimizers) == {"l2h", "l2h_disc"}
    assert objective.trained == ("l2h", "l2h_disc")


def test_supervised_mode_needs_no_h2l(batch):
    objective = TwoStepObjective(mode="supervised", l2h=TINY["l2h"], l2h_disc=TINY["l2h_disc"])
    assert set(objective.networks) == {"l2h", "l2h_disc"}
    losses = objective.train_step(hr_only(batch))
    assert math.isfinite(losses["l2h_total"])
    assert TwoStepObjective.datasets(objective.config) == {"hr": DataSpec(size=128)}
    assert TwoStepObjective.datasets(make("unsupervised").config) == {"hr": DataSpec(size=128),
                                                                      "real_lr": DataSpec(size=16)}
    assert objective.exports() == {"l2h": RestorerSpec(kind="feed_forward", networks=("l2h",), input_size=16,
                                                       scale=8)}


def test_unsupervised_trains_all_four_networks(batch):
    objective = make("unsupervised")
    before = {name: params(net) for name, net in objective.networks.items()}
    losses = objective.train_step(batch)
    assert set(losses) == {
        "h2l_pixel", "h2l_gan", "h2l_total", "l2h_pixel", "l2h_gan", "l2h_total", "l2h_disc", "h2l_disc"
    }
    for name, net in objective.networks.items():
        assert changed(before[name], net), name
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    assert objective.trained == ("l2h", "l2h_disc", "h2l", "h2l_disc")


def test_l2h_loss_gradient_flows_into_h2l_only_end_to_end(batch):
    grads = {}
    for end_to_end in (True, False):
        objective = make("unsupervised", end_to_end=end_to_end)
        torch.manual_seed(5)  # the same H2L noise in both runs
        objective.train_step(batch)
        grads[end_to_end] = {
            name: torch.cat([p.grad.flatten() for p in objective.networks[name].parameters()])
            for name in ("l2h", "h2l")
        }
    # L2H's own gradient does not depend on whether its input is detached ...
    assert torch.allclose(grads[True]["l2h"], grads[False]["l2h"], atol=1e-6)
    # ... H2L's does: end to end it also receives the gradient of the L2H loss
    assert not torch.allclose(grads[True]["h2l"], grads[False]["h2l"], atol=1e-6)


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.001), (2.0, 0.5), (0.0, 1.0)])
def test_loss_weights_on_a_hand_checkable_case(alpha, beta):
    objective = make("supervised", l2h_loss={"pixel": alpha, "gan": beta})
    with torch.no_grad():  # SR output tanh(0) = 0 and all discriminator logits 0
        for conv in (objective.networks["l2h"].tail, objective.networks["l2h_disc"].logits):
            conv.weight.zero_()
            conv.bias.zero_()
    hr = torch.full((2, 3, 128, 128), 0.5)
    losses = objective.train_step({"hr": {"image": hr}})
    assert losses["l2h_pixel"] == pytest.approx(0.25)  # mean((0 - 0.5)^2)
    assert losses["l2h_gan"] == pytest.approx(2 * math.log(2))  # RaGAN with equal logits
    assert losses["l2h_disc"] == pytest.approx(2 * math.log(2))
    assert losses["l2h_total"] == pytest.approx(alpha * 0.25 + beta * 2 * math.log(2))


def test_each_generator_has_its_own_loss_weights(batch):
    """Raising the H2L's adversarial weight alone changes L_h2l and nothing of L_l2h."""
    results = {}
    for h2l_gan in (0.001, 0.5):
        objective = make("unsupervised", h2l_loss={"pixel": 1.0, "gan": h2l_gan})
        torch.manual_seed(5)  # the same H2L noise
        results[h2l_gan] = objective.train_step(batch)
    low, high = results[0.001], results[0.5]
    assert low["h2l_pixel"] == high["h2l_pixel"] and low["h2l_gan"] == high["h2l_gan"]
    assert high["h2l_total"] == pytest.approx(high["h2l_pixel"] + 0.5 * high["h2l_gan"])
    assert low["l2h_total"] == high["l2h_total"]
    with pytest.raises(ValueError, match="h2l_loss"):
        make("unsupervised", h2l_loss={"pixel": 1.0})


def test_init_from_a_pretrain_checkpoint_gives_identical_l2h_outputs(batch, tmp_path):
    pretrained = make("supervised", seed=0)
    pretrained.train_step(batch)
    pretrained.save(str(tmp_path / "ckpt"), train_state={"step": 1, "epoch": 0})
    joint = make("unsupervised", seed=1)
    lr = batch["real_lr"]["image"]
    with torch.no_grad():
        assert not torch.allclose(joint.networks["l2h"](lr), pretrained.networks["l2h"](lr))
        h2l_before = params(joint.networks["h2l"])
        folder = str(tmp_path / "ckpt")
        assert joint.init_from({"l2h": (folder, "l2h"), "l2h_disc": (folder, "l2h_disc")}) == ["l2h", "l2h_disc"]
        assert torch.equal(joint.networks["l2h"](lr), pretrained.networks["l2h"](lr))
        hr = batch["hr"]["image"]
        assert torch.equal(joint.networks["l2h_disc"](hr), pretrained.networks["l2h_disc"](hr))
        assert not changed(h2l_before, joint.networks["h2l"])
    # weights only: the joint optimizers start fresh
    assert all(not opt.state for opt in joint.optimizers.values())
    other = TwoStepObjective(mode="unsupervised", **{**TINY, "l2h": {**TINY["l2h"], "channels": 12}})
    with pytest.raises(ValueError, match="channels"):
        other.init_from({"l2h": (str(tmp_path / "ckpt"), "l2h")})
    with pytest.raises(ValueError, match="unknown network"):
        other.init_from({"nope": (str(tmp_path / "ckpt"), "l2h")})


def test_save_load_round_trip_continues_identically(batch, tmp_path):
    first = make("supervised", seed=0)
    for _ in range(2):
        first.train_step(batch)
    first.save(str(tmp_path / "ckpt"), train_state={"step": 2, "epoch": 0})
    second = make("supervised", seed=3)
    assert second.load(str(tmp_path / "ckpt")) == {"step": 2, "epoch": 0}
    bigger = make("supervised", l2h={**TINY["l2h"], "channels": 12})
    with pytest.raises(ValueError, match="arguments"):
        bigger.load(str(tmp_path / "ckpt"))
    # same weights and Adam moments: the next step is identical
    assert first.train_step(batch) == second.train_step(batch)
    for name in ("l2h", "l2h_disc"):
        for a, b in zip(first.networks[name].parameters(), second.networks[name].parameters()):
            assert torch.equal(a, b)


def test_sample_images_for_the_grid(batch):
    objective = make("unsupervised")
    images = objective.sample(batch)
    assert list(images) == ["lr", "bicubic", "sr", "hr", "real_lr", "real_bicubic", "real_sr"]
    for key, value in images.items():
        size = 16 if key in ("lr", "real_lr") else 128
        assert value.shape == (4, 3, size, size), key
        assert value.min() >= -1 and value.max() <= 1
    again = objective.sample(batch)  # fixed noise: grids of different steps compare
    assert torch.equal(images["lr"], again["lr"])
    supervised = make("supervised").sample(hr_only(batch))
    assert list(supervised) == ["lr", "bicubic", "sr", "hr"]


def test_errors(batch):
    with pytest.raises(ValueError, match="h2l"):
        TwoStepObjective(mode="unsupervised", l2h=TINY["l2h"], l2h_disc=TINY["l2h_disc"])
    with pytest.raises(ValueError, match="mode"):
        make("cycle")
    with pytest.raises(ValueError, match="gan_loss"):
        make("supervised", gan_loss="wasserstein")
    with pytest.raises(ValueError, match="scale"):
        make("supervised", scale=4)
    with pytest.raises(ValueError, match="hr_size"):
        make("supervised", hr_size=100)
    objective = make("unsupervised")
    hr = batch["hr"]["image"]
    with pytest.raises(ValueError, match="real_lr"):
        objective.train_step(hr_only(batch))
    with pytest.raises(ValueError, match=r"batch\['hr'\]"):
        objective.train_step({"hr": {"image": hr[:, :, :64, :64]}, "real_lr": batch["real_lr"]})
    with pytest.raises(ValueError, match=r"batch\['hr'\]"):
        objective.train_step({"hr": {"image": (hr * 127).to(torch.uint8)}, "real_lr": batch["real_lr"]})


def test_high_pass_h2l_discriminator_ignores_the_low_band(batch):
    """With ``h2l_disc_highpass`` the H2L discriminator judges only x - gaussian(x): a tone shift or
    a smooth ramp added to an image leaves its logits unchanged, added noise changes them."""
    objective = make("unsupervised", h2l_disc_highpass=1.0, h2l_loss={"pixel": 1.0, "gan": 0.05})
    disc = objective.networks["h2l_disc"]
    real = batch["real_lr"]["image"]
    logits = disc(objective._h2l_disc_input(real))
    shifted = disc(objective._h2l_disc_input(real + 0.25))
    torch.testing.assert_close(shifted, logits, atol=1e-5, rtol=0)
    assert objective._h2l_disc_input(torch.full((1, 3, 16, 16), 0.3)).abs().max() < 1e-6
    noisy = real + 0.2 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    assert (disc(objective._h2l_disc_input(noisy)) - logits).abs().max() > 1e-3
    before = params(disc)
    losses = objective.train_step(batch)
    assert changed(before, disc) and math.isfinite(losses["h2l_gan"])
    with pytest.raises(ValueError, match="h2l_disc_highpass"):
        make("unsupervised", h2l_disc_highpass=-1.0)


def test_h2l_pair_can_have_its_own_learning_rate():
    objective = make("unsupervised", lr=1e-3, h2l_lr=2e-4)
    rates = {name: opt.param_groups[0]["lr"] for name, opt in objective.optimizers.items()}
    assert rates == {"l2h": 1e-3, "l2h_disc": 1e-3, "h2l": 2e-4, "h2l_disc": 2e-4}
    assert {opt.param_groups[0]["lr"] for opt in make("unsupervised", lr=1e-3).optimizers.values()} == {1e-3}
    with pytest.raises(ValueError, match="h2l_lr"):
        make("unsupervised", h2l_lr=0.0)


def test_l2h_weight_average_starts_at_the_init_and_follows_each_step(batch, tmp_path):
    """``l2h_ema``: the average starts from the pre-trained weights it is initialised from, moves
    by (1 - decay) of the way to the new weights after each step, and is saved as ``l2h.ema``."""
    pretrained = make("supervised", seed=0)
    pretrained.train_step(hr_only(batch))
    pretrained.save(str(tmp_path / "pre"), train_state={"step": 1, "epoch": 0})
    joint = make("unsupervised", seed=1, l2h_ema=0.9, h2l_loss={"pixel": 1.0, "gan": 0.05})
    joint.init_from({"l2h": (str(tmp_path / "pre"), "l2h")})
    start = params(joint.ema["l2h"])
    assert all(torch.equal(a, b) for a, b in zip(start, pretrained.networks["l2h"].parameters()))
    joint.train_step(batch)
    for avg, before, now in zip(joint.ema["l2h"].parameters(), start, joint.networks["l2h"].parameters()):
        torch.testing.assert_close(avg, 0.9 * before + 0.1 * now.detach(), rtol=0, atol=1e-7)
    assert changed(start, joint.networks["l2h"]) and not joint.ema["l2h"].training
    joint.save(str(tmp_path / "joint"), train_state={"step": 1, "epoch": 0})
    assert (tmp_path / "joint" / "weights" / "l2h.ema.pt").is_file()
    again = make("unsupervised", seed=2, l2h_ema=0.9)
    again.load(str(tmp_path / "joint"))
    assert all(torch.equal(a, b) for a, b in zip(again.ema["l2h"].parameters(), joint.ema["l2h"].parameters()))
    assert make("unsupervised").ema == {}
    with pytest.raises(ValueError, match="l2h_ema"):
        make("unsupervised", l2h_ema=1.0)
