"""CR objectives: each loss term on hand cases, the LR consistency loss zero for an exact inverse of
the down-sampler, which networks learn in each phase, stage 2 from the four stage-1 checkpoints, the
restorers it exports, a few steps lowering the loss, dlib's missing file named."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsr_core.degradation.resize import imresize_torch
from fsr_core.training.cr_objective import (
    CRDomainObjective,
    CRJointObjective,
    CRSuperResolutionObjective,
    downsample,
    lr_consistency_loss,
)
from fsr_core.training.face_embedder_objective import FaceEmbedderObjective

SR = {"channels": 4, "blocks_per_group": [1, 1, 1]}
REG = {"channels": 4, "num_blocks": 1}
DISC = {"channels": 4, "num_blocks": 2, "num_downsamples": 1, "max_channels": 8}
FEAT = {"hidden": 4, "num_layers": 2}
EMB = {"input_size": 16, "embedding_dim": 6, "channels": [4, 4]}
LOG2 = math.log(2.0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def ramps(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth colour ramps ``[n,3,size,size]`` in [-1,1], multiples of 1/64 (as 8-bit pixels are of
    1/255), so that a mean of 2**k of them is exact in float32."""
    gen = torch.Generator().manual_seed(seed)
    base, dx, dy = (torch.rand(3, n, 3, 1, 1, generator=gen) - 0.5)
    ramp = torch.linspace(-1, 1, size)
    image = (base + dx * ramp.view(1, 1, 1, size) + dy * ramp.view(1, 1, size, 1)).clamp(-1, 1)
    return (image * 64).round() / 64


def batch(n: int = 4, lr_size: int = 8, scale: int = 4) -> dict:
    return {"hr": {"image": ramps(n, lr_size * scale, 0)}, "real_lr": {"image": ramps(n, lr_size, 1)}}


def joint(**kwargs) -> CRJointObjective:
    args = dict(sr=SR, regulariser=REG, discriminator=DISC, feature_discriminator=FEAT, embedder=EMB, lr_size=8)
    return CRJointObjective(**{**args, **kwargs})


class NearestUp(nn.Module):
    """An SR 'network' that replicates each pixel ``scale x scale`` times: area down-sampling undoes it."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") + self.dummy


class ConstantLogit(nn.Module):
    """A discriminator that says 0 (p = 1/2) to everything."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 1)


def snapshot(objective) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in net.parameters()] for name, net in objective.networks.items()}


def changed(before, objective) -> set[str]:
    return {name for name, net in objective.networks.items()
            if any(not torch.equal(a, p) for a, p in zip(before[name], net.parameters()))}


# ---------------------------------------------------------------------------- Eq. 7
def test_lr_consistency_is_zero_when_sr_exactly_inverts_the_downsampler() -> None:
    lr = torch.randint(-64, 65, (2, 3, 8, 8)) / 64.0
    # area down-sampling undoes nearest up-sampling exactly, on any LR
    assert float(lr_consistency_loss(NearestUp(4)(lr), lr, scale=4, method="area")) == 0.0
    # MATLAB bicubic: an SR that returns the HR crop an LR was made from is exact on the range of f_DS
    hr = ramps(2, 32, 3)
    assert float(lr_consistency_loss(hr, downsample(hr, scale=4), scale=4)) == 0.0
    # ... and a smooth SR that is not the inverse is not
    bicubic_up = imresize_torch(lr, scale=4)
    assert float(lr_consistency_loss(bicubic_up, lr, scale=4, method="area")) > 1e-4
    torch.testing.assert_close(downsample(torch.arange(16.0).view(1, 1, 4, 4), scale=2, method="area"),
                               torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    with pytest.raises(ValueError, match="x 4"):
        lr_consistency_loss(torch.zeros(1, 3, 16, 16), lr, scale=4)
    with pytest.raises(ValueError, match="downsampler"):
        downsample(lr, scale=2, method="nearest")


def test_joint_lr_consistency_term_is_zero_for_an_exact_inverse_sr() -> None:
    objective = joint(downsampler="area")
    objective.replace_network("sr", NearestUp(4))
    data = batch()
    losses, regulated, _ = objective.generator_losses(*objective._inputs(data))
    assert float(losses["cr_sr"]) == 0.0
    torch.testing.assert_close(regulated, data["real_lr"]["image"])  # an untrained phi_cr is the identity


# ---------------------------------------------------------------------------- hand cases
def test_joint_terms_and_their_weighted_sum_on_hand_inputs() -> None:
    """phi_cr and phi~_cr untrained (the identity), phi_sr nearest up-sampling, both discriminators
    constant: every term is known in closed form."""
    objective = joint(downsampler="area")
    objective.replace_network("sr", NearestUp(4))
    objective.networks["cr_disc"] = ConstantLogit()
    objective.networks["fr_disc"] = ConstantLogit()
    hr, artificial, real_lr = objective._inputs(batch())
    torch.testing.assert_close(artificial, F.avg_pool2d(hr, 4))
    losses, _, _ = objective.generator_losses(hr, artificial, real_lr)
    expected_sr = float(((F.interpolate(artificial, scale_factor=4, mode="nearest") - hr) ** 2).mean())
    assert float(losses["sr"]) == pytest.approx(expected_sr, rel=1e-6)
    assert float(losses["cr_cycle"]) == 0.0  # cr(inverse(artificial)) = artificial
    assert float(losses["cr_gan"]) == pytest.approx(LOG2) and float(losses["semantic"]) == pytest.approx(LOG2)
    assert float(losses["cr"]) == pytest.approx(0.2 * LOG2)  # Eq. 6: cycle + lambda 0.2 GAN
    assert float(losses["total"]) == pytest.approx(expected_sr + 0.06 * 0.2 * LOG2 + 0.01 * 0.0 + 0.03 * LOG2,
                                                   rel=1e-6)
    # the weights are the objective's arguments
    weighted = joint(downsampler="area", loss={"sr": 0.0, "cr": 1.0, "cr_sr": 0.0, "cr_gan": 2.0, "cr_cycle_gan": 1.0})
    weighted.networks["cr_disc"] = ConstantLogit()
    weighted.networks["fr_disc"] = ConstantLogit()
    assert float(weighted.generator_losses(hr, artificial, real_lr)[0]["total"]) == pytest.approx(3 * LOG2)


def test_sr_through_cr_chooses_the_auxiliary_branch_input() -> None:
    objective = joint()
    with torch.no_grad():
        objective.networks["inverse"].tail.bias.fill_(0.3)  # pseudo-genuine = artificial + 0.3
    hr, artificial, real_lr = objective._inputs(batch())
    through = objective.generator_losses(hr, artificial, real_lr)[0]
    objective.sr_through_cr = False
    direct = objective.generator_losses(hr, artificial, real_lr)[0]
    expected = float(((objective.networks["sr"](artificial) - hr) ** 2).mean())
    assert float(direct["sr"]) == pytest.approx(expected, rel=1e-5)
    cycled = objective.networks["cr"](artificial + 0.3)
    assert float(through["sr"]) == pytest.approx(float(((objective.networks["sr"](cycled) - hr) ** 2).mean()), rel=1e-5)
    assert float(through["cr_cycle"]) == pytest.approx(0.09, rel=1e-5)  # cr is the identity: 0.3 ** 2


def test_domain_objective_terms_on_hand_inputs() -> None:
    for direction, weights in (("regulariser", (1.0, 0.2)), ("inverse", (0.0, 1.0))):
        objective = CRDomainObjective(direction=direction, regulariser=REG, discriminator=DISC, lr_size=8)
        assert (objective.loss["pixel"], objective.loss["gan"]) == weights  # Eq. 6 / Eq. 5
        objective.networks[objective.disc_name] = ConstantLogit()
        source, target = objective._domains(batch())
        real_lr = batch()["real_lr"]["image"]
        assert torch.equal(source if direction == "regulariser" else target, real_lr)
        with torch.no_grad():
            objective.networks[objective.net_name].tail.bias.fill_(0.1)
        losses, fake = objective.generator_losses(source, target)
        torch.testing.assert_close(fake, source + 0.1)
        assert float(losses["pixel"]) == pytest.approx(0.01, rel=1e-5)
        assert float(losses["gan"]) == pytest.approx(LOG2)
        assert float(losses["generator_total"]) == pytest.approx(weights[0] * 0.01 + weights[1] * LOG2, rel=1e-5)


def test_sum_reading_weighs_each_term_by_its_elements() -> None:
    """loss_reduction="sum" reads ||.||^2 as a sum over an image's elements: divided through by the HR
    crop's 3 x 32 x 32 elements, the 8 px LR terms weigh 1/16 and the adversarial terms 1/3072; the
    terms themselves (logged) stay mean squared errors."""
    hand = joint(downsampler="area", loss_reduction="sum")
    hand.replace_network("sr", NearestUp(4))
    with torch.no_grad():
        hand.networks["inverse"].tail.bias.fill_(0.3)  # a cycle term of 0.09
    hand.networks["cr_disc"] = ConstantLogit()
    hand.networks["fr_disc"] = ConstantLogit()
    hr, artificial, real_lr = hand._inputs(batch())
    losses = hand.generator_losses(hr, artificial, real_lr)[0]
    assert float(losses["cr_cycle"]) == pytest.approx(0.09, rel=1e-5) and float(losses["cr_sr"]) == 0.0
    expected = (float(losses["sr"]) + 0.06 * (0.09 / 16 + 0.2 * LOG2 / 3072) + 0.03 * LOG2 / 3072)
    assert float(losses["total"]) == pytest.approx(expected, rel=1e-5)
    # the domain objective: 8 px L2 over 192 elements per image
    domain = CRDomainObjective(direction="regulariser", regulariser=REG, discriminator=DISC, lr_size=8,
                               loss_reduction="sum")
    domain.networks[domain.disc_name] = ConstantLogit()
    with torch.no_grad():
        domain.networks["cr"].tail.bias.fill_(0.1)
    out = domain.generator_losses(*domain._domains(batch()))[0]
    assert float(out["generator_total"]) == pytest.approx(0.01 + 0.2 * LOG2 / 192, rel=1e-5)
    with pytest.raises(ValueError, match="loss_reduction"):
        joint(loss_reduction="median")


# ---------------------------------------------------------------------------- what trains
def test_each_phase_trains_its_own_networks() -> None:
    data = batch()
    sr = CRSuperResolutionObjective(sr=SR, lr_size=8)
    before = snapshot(sr)
    sr.train_step(data, step=0)
    assert changed(before, sr) == {"sr"}
    for direction, names in (("regulariser", {"cr", "cr_disc"}), ("inverse", {"inverse", "inverse_disc"})):
        domain = CRDomainObjective(direction=direction, regulariser=REG, discriminator=DISC, lr_size=8)
        before = snapshot(domain)
        out = domain.train_step(data, step=0)
        assert changed(before, domain) == names and set(out) == {"pixel", "gan", "generator_total", "discriminator"}
    both = joint()
    before = snapshot(both)
    out = both.train_step(data, step=0)
    assert changed(before, both) == {"cr", "sr", "cr_disc", "fr_disc"}  # inverse and embedder frozen
    assert set(out) == {"sr", "cr_cycle", "cr_gan", "cr", "cr_sr", "semantic", "total", "cr_disc", "fr_disc"}
    assert both.trained == ("cr", "sr", "cr_disc", "fr_disc") and both.kept == ("inverse", "embedder")
    assert not both.networks["embedder"].training  # BatchNorm on its running statistics


def test_a_few_steps_lower_the_loss() -> None:
    data = batch(n=8)
    sr = CRSuperResolutionObjective(sr=SR, lr_size=8, lr=2e-3)
    first = sr.train_step(data)["sr_mse"]
    for _ in range(15):
        last = sr.train_step(data)["sr_mse"]
    assert last < 0.7 * first
    # stage 2 without its adversarial terms: L_sr + lambda_cr L_cr + lambda_cr-sr L_cr-sr descend
    both = joint(lr=2e-3, loss={"sr": 1.0, "cr": 0.06, "cr_sr": 0.01, "cr_gan": 0.0, "cr_cycle_gan": 0.0})
    first = both.train_step(data)["total"]
    for _ in range(15):
        last = both.train_step(data)["total"]
    assert last < 0.7 * first


# ---------------------------------------------------------------------------- checkpoints, exports, errors
def test_stage_two_starts_from_the_four_stage_one_checkpoints_and_keeps_its_frozen_networks(tmp_path) -> None:
    data = batch()
    sources = {
        "sr": CRSuperResolutionObjective(sr=SR, lr_size=8),
        "regulariser": CRDomainObjective(direction="regulariser", regulariser=REG, discriminator=DISC, lr_size=8),
        "inverse": CRDomainObjective(direction="inverse", regulariser=REG, discriminator=DISC, lr_size=8),
        "embedder": FaceEmbedderObjective(embedder=EMB, data_info={"faces": {"identities": ["a", "b"]}}),
    }
    for name, objective in sources.items():
        if name != "embedder":
            objective.train_step(data)
        objective.save(str(tmp_path / name), train_state={"step": 1})
    both = joint()
    init = {"sr": ("sr", "sr"), "cr": ("regulariser", "cr"), "cr_disc": ("regulariser", "cr_disc"),
            "inverse": ("inverse", "inverse"), "embedder": ("embedder", "embedder")}
    assert sorted(both.init_from({k: (str(tmp_path / c), n) for k, (c, n) in init.items()})) == sorted(init)
    for target, (source, name) in init.items():
        expected = sources[source].networks[name].state_dict()
        assert all(torch.equal(v, both.networks[target].state_dict()[k]) for k, v in expected.items()), target
    both.train_step(data)
    both.save(str(tmp_path / "joint"), train_state={"step": 1})
    resumed = joint()
    resumed.load(str(tmp_path / "joint"))
    for name in ("inverse", "embedder", "cr", "sr"):
        assert all(torch.equal(v, resumed.networks[name].state_dict()[k])
                   for k, v in both.networks[name].state_dict().items()), name
    exports = both.exports()
    assert exports["cr_sr"].networks == ("cr", "sr") and exports["sr"].networks == ("sr",)
    assert (exports["cr_sr"].input_size, exports["cr_sr"].scale) == (8, 4)
    rows = both.sample(data)
    assert list(rows) == ["real_lr", "regulated", "bicubic", "sr_without_cr", "sr_with_cr", "artificial",
                          "pseudo_genuine", "hr"]
    assert rows["sr_with_cr"].shape == (4, 3, 32, 32) and rows["regulated"].shape == (4, 3, 8, 8)


def test_wrong_arguments_and_batches_are_errors(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "dlib_face_recognition_resnet_model_v1.dat"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        joint(face_features="dlib", embedder=None, dlib_weights=str(missing))
    with pytest.raises(ValueError, match="embedder"):
        joint(face_features="dlib")
    with pytest.raises(ValueError, match="scale"):
        joint(scale=8)
    with pytest.raises(ValueError, match="loss"):
        joint(loss={"sr": 1.0})
    with pytest.raises(ValueError, match="direction"):
        CRDomainObjective(direction="both", regulariser=REG, discriminator=DISC)
    with pytest.raises(ValueError, match=r"batch\['real_lr'\]"):
        joint().train_step({"hr": batch()["hr"]})
    with pytest.raises(ValueError, match=r"\[N,3,32,32\]"):
        CRSuperResolutionObjective(sr=SR, lr_size=8).train_step({"hr": {"image": torch.zeros(2, 3, 16, 16)}})
