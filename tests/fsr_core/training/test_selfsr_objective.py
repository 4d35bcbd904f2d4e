"""SelFSR objectives without Ray: stage 1's losses and schedule, stage 2's growth, fade-in, R1,
modes, and save/load round trips mid-growth (with the frozen degrader the checkpoint keeps)."""

from __future__ import annotations

import pytest
import torch

from fsr_core.losses.adversarial import r1_penalty
from fsr_core.losses.frequency import gaussian_lowpass
from fsr_core.losses.pixel import l1_loss
from fsr_core.networks.selfsr import ProgressiveDiscriminator
from fsr_core.training import checkpoint as ckpt
from fsr_core.training.selfsr_objective import SelFSRDegradationObjective, SelFSRObjective

DEGRADER = {"channels": 8, "num_blocks": 1}
GENERATOR = {"channels": [8, 8, 6, 4], "convs_per_level": 1, "condition_hidden": 4}
DISCRIMINATOR = {"channels": [8, 8, 6, 4], "base_downsamples": 1}


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, and one intra-op thread: these networks are tiny, and on a loaded 2-core machine two
    threads made a step 100x slower (7 s against 0.03 s)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1


def degradation(**overrides) -> SelFSRDegradationObjective:
    kwargs = {"degrader": DEGRADER, "lr_discriminator": {"channels": 8, "max_channels": 16}, "lr_size": 16,
              "scale": 2, "total_steps": 10, **overrides}
    return SelFSRDegradationObjective(**kwargs)


def sr(**overrides) -> SelFSRObjective:
    kwargs = {"generator": GENERATOR, "discriminator": DISCRIMINATOR, "lr_size": 4, "grow_at": (2, 4),
              "fade_steps": 2, **overrides}
    return SelFSRObjective(**kwargs)


# ---------------------------------------------------------------------------- stage 1
def test_degradation_rate_is_constant_then_decays_linearly_to_zero() -> None:
    objective = degradation(lr=2e-4, total_steps=10, decay_from=0.5)
    rates = [objective.learning_rate(step) for step in range(10)]
    assert rates[:5] == [2e-4] * 5
    assert rates[5:] == pytest.approx([2e-4 * k / 5 for k in (5, 4, 3, 2, 1)])
    assert objective.learning_rate(10) == 0.0


def test_degradation_step_starts_at_the_identity_and_trains_both_networks() -> None:
    objective = degradation()
    batch = {"hr": {"image": images(4, 32, 0)}, "real_lr": {"image": images(4, 16, 1)}}
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in objective.networks.items()}
    losses = objective.train_step(batch, step=0)
    # zero-initialised heads: the intermediate image is the clean LR and the flow is zero
    assert losses["identity"] == 0.0 and losses["smoothness"] == 0.0 and losses["flow_mean_px"] == 0.0
    assert {"degrader_gan", "degrader_total", "lr_disc", "learning_rate"} <= set(losses)
    for name, params in before.items():
        assert any(not torch.equal(a, b) for a, b in zip(params, objective.networks[name].parameters())), name
    for step in range(1, 4):
        losses = objective.train_step(batch, step=step)
    assert losses["flow_mean_px"] > 0 and losses["identity"] > 0  # the heads have moved
    rows = objective.sample(batch)
    assert list(rows) == ["clean_lr", "intermediate", "flow_magnitude", "degraded", "real_lr"]
    assert all(x.shape == (4, 3, 16, 16) for x in rows.values())
    assert rows["flow_magnitude"].min() >= -1 and rows["flow_magnitude"].max() <= 1
    with pytest.raises(ValueError, match=r"\[N,3,16,16\]"):
        objective.train_step({"hr": batch["hr"], "real_lr": {"image": images(4, 8, 1)}}, step=0)


def test_degradation_weights_are_checked() -> None:
    with pytest.raises(ValueError, match="identity"):
        degradation(loss={"adversarial": 1.0})
    assert SelFSRDegradationObjective.datasets({"lr_size": 16, "scale": 4})["hr"].size == 64


def test_frequency_separation_options_of_the_degradation_objective() -> None:
    """``disc_highpass``: the LR discriminator judges x - gaussian(x), so a tone shift of an LR
    leaves its logits unchanged and noise changes them; both options train together, and negative
    values are refused."""
    objective = degradation(disc_highpass=1.0, identity_lowpass=1.0)
    disc = objective.networks["lr_disc"]
    lr = images(4, 16, 1)
    logits = disc(objective.disc_input(lr))
    torch.testing.assert_close(disc(objective.disc_input(lr + 0.25)), logits, atol=1e-5, rtol=0)
    noisy = lr + 0.2 * torch.randn(lr.shape, generator=torch.Generator().manual_seed(2))
    assert (disc(objective.disc_input(noisy)) - logits).abs().max() > 1e-3
    assert degradation().disc_input(lr) is lr  # the paper's default: whole images
    batch = {"hr": {"image": images(4, 32, 0)}, "real_lr": {"image": lr}}
    for step in range(3):
        losses = objective.train_step(batch, step=step)
    assert losses["identity"] > 0 and losses["flow_mean_px"] > 0
    for name in ("disc_highpass", "identity_lowpass", "flow_magnitude", "flow_lr_scale"):
        with pytest.raises(ValueError, match=name):
            degradation(**{name: -1.0})


def test_identity_lowpass_compares_the_low_bands_only() -> None:
    """After a few steps the intermediate image differs from the clean LR; a step at rate 0 (past
    ``total_steps``, no flips) reports the identity term on the weights ``sample`` sees: the L1 of
    the Gaussian low bands with ``identity_lowpass``, not the full-band L1 of the same pair."""
    objective = degradation(identity_lowpass=1.0, hflip=False, total_steps=10)
    batch = {"hr": {"image": images(4, 32, 0)}, "real_lr": {"image": images(4, 16, 1)}}
    for step in range(4):
        objective.train_step(batch, step=step)
    rows = objective.sample(batch)
    low = float(l1_loss(gaussian_lowpass(rows["intermediate"], 1.0), gaussian_lowpass(rows["clean_lr"], 1.0)))
    full = float(l1_loss(rows["intermediate"], rows["clean_lr"]))
    losses = objective.train_step(batch, step=10)
    assert losses["learning_rate"] == 0.0
    assert losses["identity"] == pytest.approx(low, rel=1e-5) and abs(low - full) > 1e-3 * full


def test_flow_magnitude_adds_the_flows_mean_length_to_the_total() -> None:
    objective = degradation(flow_magnitude=2.5)
    batch = {"hr": {"image": images(4, 32, 0)}, "real_lr": {"image": images(4, 16, 1)}}
    for step in range(4):
        losses = objective.train_step(batch, step=step)
    assert losses["flow_mean_px"] > 0
    weights = objective.loss
    expected = (weights["adversarial"] * losses["degrader_gan"] + weights["identity"] * losses["identity"]
                + weights["smoothness"] * losses["smoothness"] + 2.5 * losses["flow_mean_px"])
    assert losses["degrader_total"] == pytest.approx(expected, rel=1e-5)


def test_flow_lr_scale_sets_the_flow_heads_rate() -> None:
    """``flow_lr_scale`` multiplies the flow head's Adam rate only: 0 keeps the flow at its zero
    start (the degraded LR is then the intermediate image), 0.1 moves its weights 0.1 times as far
    on the first step (Adam's first step is the rate times the gradient's sign), and 1 keeps the
    single group the checkpoints of earlier runs hold."""
    batch = {"hr": {"image": images(4, 32, 0)}, "real_lr": {"image": images(4, 16, 1)}}
    assert len(degradation().optimizers["degrader"].param_groups) == 1

    frozen = degradation(flow_lr_scale=0.0, hflip=False)
    for step in range(3):
        losses = frozen.train_step(batch, step=step)
    assert losses["flow_mean_px"] == 0.0 and losses["identity"] > 0
    rows = frozen.sample(batch)
    assert torch.equal(rows["degraded"], rows["intermediate"])

    moved = {}
    for scale in (1.0, 0.1):
        objective = degradation(flow_lr_scale=scale, hflip=False, seed=3)
        head, body = objective.networks["degrader"].flow_head.weight, objective.networks["degrader"].image_head.weight
        before = head.detach().clone(), body.detach().clone()
        losses = objective.train_step(batch, step=0)
        rates = [group["lr"] for group in objective.optimizers["degrader"].param_groups]
        assert rates[-1] == pytest.approx(losses["learning_rate"] * scale)
        moved[scale] = ((head.detach() - before[0]).abs().max().item(), (body.detach() - before[1]).abs().max().item())
    assert moved[0.1][0] == pytest.approx(0.1 * moved[1.0][0], rel=1e-3)
    assert moved[0.1][1] == pytest.approx(moved[1.0][1], rel=1e-3)


# ---------------------------------------------------------------------------- stage 2: schedule and growth
def test_growth_follows_the_step_schedule_with_fade_in() -> None:
    objective = sr()  # levels 1 -> 2 at step 2 -> 3 at step 4, fading over 2 steps
    assert (objective.level, objective.hr_size) == (1, 32)
    seen = []
    for step in range(7):
        grew = objective.on_step(step)
        seen.append((step, objective.level, grew, float(objective.networks["generator"].fade)))
    assert seen == [(0, 1, False, 1.0), (1, 1, False, 1.0), (2, 2, True, 0.0), (3, 2, False, 0.5),
                    (4, 3, True, 0.0), (5, 3, False, 0.5), (6, 3, False, 1.0)]
    assert objective.exports()["sr"].scale == 8 and objective.exports()["sr"].input_size == 4
    assert float(objective.networks["discriminator"].fade) == 1.0


def test_growth_keeps_earlier_weights_and_adam_moments() -> None:
    objective = sr(grow_at=(1,), fade_steps=0)
    batch = {"hr": {"image": images(4, 16, 0)}}
    objective.on_step(0)
    objective.train_step(batch, step=0)
    old = {name: dict(objective.networks[name].named_parameters()) for name in ("generator", "discriminator")}
    old_state = {name: {key: objective.optimizers[name].state[p]["exp_avg"].clone() for key, p in params.items()}
                 for name, params in old.items()}
    assert objective.on_step(1) and objective.level == 2
    for name, params in old.items():
        new = dict(objective.networks[name].named_parameters())
        for key, param in params.items():
            assert torch.equal(new[key], param), (name, key)
            assert torch.equal(objective.optimizers[name].state[new[key]]["exp_avg"], old_state[name][key])
        assert set(new) - set(params)  # and a new level
    losses = objective.train_step(batch, step=1)
    assert losses["level"] == 2.0 and losses["fade"] == 1.0


def test_paired_step_losses_and_the_r1_term() -> None:
    objective = sr()
    batch = {"hr": {"image": images(4, 32, 0)}}
    objective.on_step(0)
    losses = objective.train_step(batch, step=0)
    assert set(losses) == {"g_adversarial", "reconstruction", "g_total", "d_hinge", "r1", "level", "fade"}
    assert losses["g_total"] == pytest.approx(losses["g_adversarial"] + 10 * losses["reconstruction"], rel=1e-5)
    assert losses["r1"] > 0
    no_r1 = sr(r1_gamma=0.0).train_step(batch, step=0)
    assert "r1" not in no_r1
    rows = objective.sample(batch)
    assert list(rows) == ["lr", "bicubic", "sr", "hr"] and rows["sr"].shape == (4, 3, 8, 8)
    assert rows["lr"].shape == (4, 3, 4, 4)


def test_unpaired_mode_reads_two_data_sets_and_cycles_through_bicubic() -> None:
    config = {"mode": "unpaired", "lr_size": 4, "grow_at": (2, 4)}
    assert {name: spec.size for name, spec in SelFSRObjective.datasets(config).items()} == {"hr": 32, "lr": 4}
    objective = sr(mode="unpaired")
    batch = {"hr": {"image": images(4, 32, 0)}, "lr": {"image": images(4, 4, 1)}}
    objective.on_step(0)
    losses = objective.train_step(batch, step=0)
    assert losses["reconstruction"] > 0
    with pytest.raises(ValueError, match="paired mode only"):
        sr(mode="unpaired", degrader=DEGRADER)


def test_flips_are_shared_by_the_crops_of_a_pair() -> None:
    objective = sr(seed=3)
    a = images(16, 8, 0)
    flipped_a, flipped_b = objective.flips(a, a.clone())
    assert torch.equal(flipped_a, flipped_b)
    changed = (flipped_a != a).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) < 16


def test_r1_matches_a_finite_difference_gradient() -> None:
    """R1 = mean over images of ||d D(x) / d x||^2, checked against central differences (float64)."""
    disc = ProgressiveDiscriminator(channels=(4, 4), levels=1, lr_size=2, base_downsamples=0).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    penalty = float(r1_penalty(disc(x), x).detach())
    eps, count = 1e-6, x[0].numel()
    steps = torch.eye(count, dtype=torch.float64).view(count, 3, 4, 4) * eps
    norms = []
    with torch.no_grad():
        for image in x:  # every coordinate of one image perturbed in one batch
            grad = (disc(image + steps) - disc(image - steps)).squeeze(1) / (2 * eps)
            norms.append(float((grad**2).sum()))
    assert penalty == pytest.approx(sum(norms) / 2, rel=1e-6)


# ---------------------------------------------------------------------------- checkpoints
def test_resume_mid_growth_continues_identically_with_the_kept_degrader(tmp_path) -> None:
    """Six steps straight equal three steps, a checkpoint (mid-fade of the first growth), a fresh
    objective that loads it, and three more (growing again); the frozen degrader is in the checkpoint."""
    batches = [{"hr": {"image": images(4, 32, seed)}} for seed in range(6)]

    def build() -> SelFSRObjective:
        return sr(degrader=DEGRADER, seed=5)

    def run(objective: SelFSRObjective, steps: range) -> list[dict]:
        out = []
        for step in steps:
            objective.on_step(step)
            out.append(objective.train_step(batches[step], step=step))
        return out

    torch.manual_seed(1)
    straight = build()
    with torch.no_grad():  # a non-trivial degrader, as if initialised from a stage-1 checkpoint
        straight.networks["degrader"].flow_head.bias.fill_(0.3)
    degrader_state = {k: v.clone() for k, v in straight.networks["degrader"].state_dict().items()}
    first = run(straight, range(3))
    straight.save(str(tmp_path / "ckpt"), train_state={"step": 3})
    rest = run(straight, range(3, 6))
    assert straight.level == 3

    torch.manual_seed(99)  # another global RNG state: growth must not depend on it
    resumed = build()
    assert resumed.kept == ("degrader",)
    assert resumed.load(str(tmp_path / "ckpt"))["step"] == 3
    assert resumed.level == 2
    for key, value in degrader_state.items():
        assert torch.equal(resumed.networks["degrader"].state_dict()[key], value)
    again = run(resumed, range(3, 6))
    assert again == rest and len(first) == 3
    for key, value in straight.networks["generator"].state_dict().items():
        assert torch.equal(resumed.networks["generator"].state_dict()[key], value), key
    assert set(ckpt.load_network_specs(str(tmp_path / "ckpt"))) == {"generator", "discriminator", "degrader"}
    with pytest.raises(ValueError, match="outside this schedule"):
        sr(grow_at=()).load(str(tmp_path / "ckpt"))
