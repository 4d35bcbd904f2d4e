"""The objectives of SelFSR (``METHODS.md`` section 2; paper: ``seeds/selfsr-flow-field-degradation.txt``).

:class:`SelFSRDegradationObjective` (stage 1, Eq. 2-5)
    ``clean = bicubic_down(hr)``; ``I_m, F, fake = degrader(clean)``;
    ``L_deg = w_adv G_gan(D_lr; fake) + w_idt L1(I_m, clean) + w_tv TV(F)``;
    the LR discriminator takes ``D_gan(real_lr, fake.detach())``. Adam, constant rate for the
    first part of training, then linear decay to 0 at ``total_steps`` (paper: 2e-4, the last half
    of 180k iterations). Exports no restorer: its checkpoint's ``degrader`` is what stage 2 reads.

:class:`SelFSRObjective` (stage 2, Eq. 7-11)
    The self-conditioned progressive generator and its discriminator, hinge loss, R1 on real
    images, equalised learning rate (in the networks) and Adam at 0.003; growth on a step schedule
    (``start_levels``, ``grow_at``; the state is the current level, kept in the checkpoint; earlier
    levels keep their weights and Adam moments; the new level fades in over ``fade_steps``).
    ``paired``: ``L_G = w_adv G_hinge(D; sr) + w_rec L1(sr, hr_level)`` (Eq. 8), the LR made from
    the HR crop by bicubic downsampling and, when the objective has a ``degrader`` (a frozen
    stage-1 network kept in its checkpoints), the degrader applied to it: the pseudo pairs of
    the paper, made on the fly (the degrader is deterministic, so the pairs equal pairs written
    once, and a horizontal flip of the HR crop flips its pair). ``unpaired``: LR and HR come from
    two data sets and the reconstruction is the cycle ``L1(bicubic_down(sr), lr)`` (Eq. 11).

Readings of what the paper leaves open (each a constructor argument):

- loss weights (lost from the text): stage 1 ``{adversarial: 1, identity: 10, smoothness: 1}``,
  stage 2 ``{adversarial: 1, reconstruction: 10}``;
- stage 1's adversarial loss: the vanilla GAN of its Eq. 2 (it cites Goodfellow et al.);
- Adam betas (lost): stage 1 (0.5, 0.999), CycleGAN's at lr 2e-4; stage 2 (0.0, 0.99), the
  ProGAN/StyleGAN betas that go with equalised learning rates at 0.003;
- R1 every step, ``gamma / 2 * E||grad D(x)||^2`` on the real images (Mescheder et al.);
- the HR target of a level below the last: the HR crop MATLAB-bicubic downsampled to that level's
  size (ProGAN trains each resolution against downsampled reals);
- growth "at step k": the network has grown before step ``k + 1``; the new level fades in
  linearly over ``fade_steps`` (ProGAN's fade-in; the paper cites ProGAN and gives no length);
- horizontal flip: each crop flipped with probability 1/2 from the objective's own seeded
  generator (its state is in the checkpoint); LR and HR of a pair flip together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from fsr_core.degradation.resize import imresize_torch
from fsr_core.losses.adversarial import ADVERSARIAL_LOSSES, d_loss_hinge, g_loss_hinge, r1_penalty
from fsr_core.losses.frequency import gaussian_lowpass, highpass
from fsr_core.losses.pixel import l1_loss, total_variation
from fsr_core.networks.selfsr import (
    FlowDegradationNetwork,
    LRDiscriminator,
    ProgressiveDiscriminator,
    SelfConditionedGenerator,
    grown,
)
from fsr_core.training.objective import DataSpec, Objective, RestorerSpec, batch_image

__all__ = ["DEGRADATION_LOSS", "SR_LOSS", "SelFSRDegradationObjective", "SelFSRObjective"]

DEGRADATION_LOSS = {"adversarial": 1.0, "identity": 10.0, "smoothness": 1.0}
"""Eq. 5's weights: the reading (the paper's values are lost from the text)."""
SR_LOSS = {"adversarial": 1.0, "reconstruction": 10.0}
"""Eq. 10's weights besides R1: the reading (the paper's values are lost from the text)."""


def _weights(name: str, weights: Mapping[str, float], keys: set[str]) -> dict[str, float]:
    if set(weights) != keys:
        raise ValueError(f"{name} must give exactly {sorted(keys)}, got {sorted(weights)}")
    out = {key: float(value) for key, value in weights.items()}
    if min(out.values()) < 0:
        raise ValueError(f"{name} weights must be >= 0, got {out}")
    return out


def _betas(betas: Sequence[float]) -> tuple[float, float]:
    out = tuple(float(b) for b in betas)
    if len(out) != 2 or not all(0.0 <= b < 1.0 for b in out):
        raise ValueError(f"betas must be two values in [0, 1), got {betas}")
    return out  # type: ignore[return-value]




def _resize(x: Tensor, size: int, *, saturate: bool = True) -> Tensor:
    """MATLAB bicubic (antialiased when shrinking) to ``size``, saturated to [-1,1] as uint8 would be
    (``saturate=False`` inside a loss, where clamping would cut the gradient)."""
    if x.shape[-1] == size:
        return x
    out = imresize_torch(x, scale=size / x.shape[-1])
    return out.clamp(-1.0, 1.0) if saturate else out


class _Flips:
    """Per-crop horizontal flips with probability 1/2 from a seeded generator (state saved)."""

    def __init__(self, seed: int) -> None:
        self.rng = torch.Generator().manual_seed(int(seed))

    def __call__(self, *images: Tensor) -> list[Tensor]:
        """The same flip decision for the i-th crop of each of ``images`` (same batch size), or
        independent decisions per argument when their batch sizes differ."""
        out, decided = [], None
        for x in images:
            if decided is None or decided.shape[0] != x.shape[0]:
                decided = torch.rand(x.shape[0], generator=self.rng) < 0.5
            mask = decided.to(x.device).view(-1, 1, 1, 1)
            out.append(torch.where(mask, x.flip(-1), x))
        return out


def _flow_image(flow: Tensor) -> Tensor:
    """Flow magnitude as a grey ``[N,3,H,W]`` image in [-1,1], scaled by the batch's largest (or 1 px)."""
    magnitude = flow.norm(dim=1, keepdim=True)
    peak = torch.clamp(magnitude.amax(), min=1.0)
    return (magnitude / peak * 2 - 1).expand(-1, 3, -1, -1)


# ---------------------------------------------------------------------------- stage 1
class SelFSRDegradationObjective(Objective):
    """Stage 1: the flow-field degradation network against the genuine LR (see the module docstring).

    Args:
        degrader, lr_discriminator: constructor arguments of
            :class:`~fsr_core.networks.selfsr.FlowDegradationNetwork` and
            :class:`~fsr_core.networks.selfsr.LRDiscriminator`.
        lr_size: the LR side (genuine LR crops are resized to it); ``scale``: HR = ``lr_size * scale``.
        loss: ``{adversarial, identity, smoothness}``, Eq. 5's weights.
        gan_loss: a key of :data:`~fsr_core.losses.adversarial.ADVERSARIAL_LOSSES` (reading: vanilla).
        lr: Adam's base rate (paper 2e-4); ``betas`` (reading (0.5, 0.999)).
        total_steps: the run's length; ``decay_from``: the fraction of it after which the rate decays
            linearly to 0 at ``total_steps`` (paper: 180k and the last half, 0.5).
        hflip: random horizontal flips of both inputs; ``seed``: their generator's seed.
        disc_highpass: not in the paper (0: the LR discriminator sees the images). When > 0 it
            sees only the high band ``x - gaussian_sigma(x)`` (sigma in LR pixels) of the genuine
            and of the degraded LR: it judges noise and compression, not the faces (frequency
            separation, as the two-step objective's ``h2l_disc_highpass``).
        identity_lowpass: not in the paper (0: the paper's full-band identity L1). When > 0 the
            identity term compares Gaussian low-passed images, leaving the intermediate image's
            fine band to the adversarial term.
        flow_magnitude: not in the paper (0: off): the weight of the flow's mean length in LR
            pixels, added to Eq. 5. The TV term asks the flow only to be smooth (a uniform shift
            is free); this one asks it to stay small, so the discriminator's gradient has to be
            answered by the intermediate image.
        flow_lr_scale: not in the paper (1: the flow head learns at the degrader's rate): the flow
            head's Adam rate is the degrader's times this (0 freezes the flow at its zero start:
            the degraded LR is the intermediate image). Measured on the demo world
            (docs/selfsr-study.md, third round): 0.1 and 0.01 only delay the flow's growth; 0
            gives an aligned degrader with the camera's high-frequency energy.

    Batches: ``batch["hr"]["image"]`` ``[N,3,S,S]`` (``S = lr_size * scale``) and
    ``batch["real_lr"]["image"]`` ``[M,3,lr_size,lr_size]``, both in [-1,1].
    """

    progress_loss = "degrader_total"

    def __init__(
        self,
        *,
        degrader: Mapping[str, Any],
        lr_discriminator: Mapping[str, Any],
        lr_size: int = 16,
        scale: int = 4,
        loss: Mapping[str, float] = DEGRADATION_LOSS,
        gan_loss: str = "vanilla",
        lr: float = 2e-4,
        betas: Sequence[float] = (0.5, 0.999),
        total_steps: int = 180_000,
        decay_from: float = 0.5,
        hflip: bool = True,
        seed: int = 0,
        disc_highpass: float = 0.0,
        identity_lowpass: float = 0.0,
        flow_magnitude: float = 0.0,
        flow_lr_scale: float = 1.0,
        device: str | torch.device = "cpu",
        data_info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(device=device, data_info=data_info)
        if gan_loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"gan_loss must be one of {sorted(ADVERSARIAL_LOSSES)}, got {gan_loss!r}")
        for name, value in (("disc_highpass", disc_highpass), ("identity_lowpass", identity_lowpass),
                            ("flow_magnitude", flow_magnitude), ("flow_lr_scale", flow_lr_scale)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {value}")
        self.disc_highpass, self.identity_lowpass = float(disc_highpass), float(identity_lowpass)
        self.flow_magnitude, self.flow_lr_scale = float(flow_magnitude), float(flow_lr_scale)
        if lr <= 0 or total_steps < 1 or not 0.0 <= decay_from <= 1.0:
            raise ValueError(f"need lr > 0, total_steps >= 1, decay_from in [0, 1]; got {lr}, {total_steps}, {decay_from}")
        if lr_size < 1 or scale < 1:
            raise ValueError(f"lr_size and scale must be >= 1, got {lr_size}, {scale}")
        self.loss = _weights("loss", loss, set(DEGRADATION_LOSS))
        self.lr_size, self.scale, self.base_lr = int(lr_size), int(scale), float(lr)
        self.total_steps, self.decay_start = int(total_steps), int(round(decay_from * total_steps))
        self.hflip = bool(hflip)
        self._d_loss, self._g_loss = ADVERSARIAL_LOSSES[gan_loss]
        self.networks = {"degrader": FlowDegradationNetwork(**dict(degrader)).to(self.device),
                         "lr_disc": LRDiscriminator(**dict(lr_discriminator)).to(self.device)}
        if self.lr_size % self.networks["lr_disc"].divisor:
            raise ValueError(f"lr_size={lr_size} must be divisible by the LR discriminator's "
                             f"{self.networks['lr_disc'].divisor}")
        self.set_trained(("degrader", "lr_disc"))
        self.optimizers = {name: torch.optim.Adam(self._param_groups(name), lr=lr, betas=_betas(betas))
                           for name in self.trained}
        self.flips = _Flips(seed)

    def _param_groups(self, name: str) -> list[dict[str, Any]]:
        """Adam's groups with their rate factor ``lr_scale``: the flow head's is ``flow_lr_scale``.
        One group where every factor is 1, so checkpoints keep the layout they had before the option."""
        network = self.networks[name]
        if name != "degrader" or self.flow_lr_scale == 1.0:
            return [{"params": list(network.parameters()), "lr_scale": 1.0}]
        flow = {id(p) for p in network.flow_head.parameters()}
        return [{"params": [p for p in network.parameters() if id(p) not in flow], "lr_scale": 1.0},
                {"params": list(network.flow_head.parameters()), "lr_scale": self.flow_lr_scale}]

    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        lr_size = int(config.get("lr_size", 16))
        return {"hr": DataSpec(size=lr_size * int(config.get("scale", 4))), "real_lr": DataSpec(size=lr_size)}

    def learning_rate(self, step: int) -> float:
        """The rate of step ``step + 1``: constant, then linear to 0 at ``total_steps``."""
        if step < self.decay_start:
            return self.base_lr
        return self.base_lr * max(0.0, (self.total_steps - step) / max(self.total_steps - self.decay_start, 1))

    def state_dict(self) -> dict[str, Any]:
        return {"flip_rng": self.flips.rng.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.flips.rng.set_state(state["flip_rng"])

    def _inputs(self, batch: Mapping[str, Mapping[str, Tensor]]) -> tuple[Tensor, Tensor]:
        hr = batch_image(batch, "hr", self.lr_size * self.scale, self.device)
        real_lr = batch_image(batch, "real_lr", self.lr_size, self.device)
        return _resize(hr, self.lr_size), real_lr

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int = 0) -> dict[str, float]:
        """One degrader step then one LR-discriminator step; returns the losses and the rate."""
        clean, real_lr = self._inputs(batch)
        if self.hflip:
            clean, real_lr = self.flips(clean, real_lr)
        rate = self.learning_rate(step)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = rate * group.get("lr_scale", 1.0)
        losses: dict[str, Tensor] = {}
        disc = self.networks["lr_disc"]
        disc.requires_grad_(False)
        intermediate, flow, fake = self.module("degrader")(clean, components=True)
        losses["identity"] = l1_loss(gaussian_lowpass(intermediate, self.identity_lowpass),
                                     gaussian_lowpass(clean, self.identity_lowpass))
        losses["smoothness"] = total_variation(flow)
        real_in, fake_in = self.disc_input(real_lr), self.disc_input(fake)
        with torch.no_grad():
            real_logits = disc(real_in)
        losses["degrader_gan"] = self._g_loss(real_logits=real_logits, fake_logits=disc(fake_in))
        flow_length = flow.norm(dim=1).mean()
        total = (self.loss["adversarial"] * losses["degrader_gan"] + self.loss["identity"] * losses["identity"]
                 + self.loss["smoothness"] * losses["smoothness"] + self.flow_magnitude * flow_length)
        losses["degrader_total"] = total
        self.optimizers["degrader"].zero_grad(set_to_none=True)
        total.backward()
        self.optimizers["degrader"].step()

        disc.requires_grad_(True)
        self.optimizers["lr_disc"].zero_grad(set_to_none=True)
        logits = self.module("lr_disc")(torch.cat([real_in, fake_in.detach()]))
        losses["lr_disc"] = self._d_loss(logits[: real_lr.shape[0]], logits[real_lr.shape[0]:])
        losses["lr_disc"].backward()
        self.optimizers["lr_disc"].step()

        out = {key: float(value.detach()) for key, value in losses.items()}
        out["flow_mean_px"] = float(flow_length.detach())
        out["learning_rate"] = rate
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss in step: {out}")
        return out

    def disc_input(self, x: Tensor) -> Tensor:
        """What the LR discriminator sees: the LR image, or with ``disc_highpass`` its high band."""
        return highpass(x, self.disc_highpass)

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        """Rows: ``clean_lr`` (bicubic of HR), ``intermediate``, ``flow_magnitude`` (grey, scaled by
        the largest in the batch or 1 px), ``degraded`` (the warp), ``real_lr`` (a genuine LR)."""
        clean, real_lr = self._inputs(batch)
        intermediate, flow, degraded = self.networks["degrader"](clean, components=True)
        return {"clean_lr": clean, "intermediate": intermediate, "flow_magnitude": _flow_image(flow),
                "degraded": degraded, "real_lr": real_lr}


# ---------------------------------------------------------------------------- stage 2
MODES = ("paired", "unpaired")


class SelFSRObjective(Objective):
    """Stage 2: the self-conditioned SR network, grown on a step schedule (see the module docstring).

    Args:
        mode: ``"paired"`` (reconstruction against HR; LR from the HR crop by bicubic and, with
            ``degrader``, the frozen degradation network) or ``"unpaired"`` (a separate LR data set;
            the cycle of Eq. 11).
        generator: constructor arguments of
            :class:`~fsr_core.networks.selfsr.SelfConditionedGenerator` without ``levels``.
        discriminator: those of :class:`~fsr_core.networks.selfsr.ProgressiveDiscriminator`
            without ``levels`` and ``lr_size``.
        degrader: those of :class:`~fsr_core.networks.selfsr.FlowDegradationNetwork` (paired mode
            only): a frozen network, initialised from a stage-1 checkpoint and kept in this one's.
        lr_size: the LR side; the HR side is ``lr_size * 2**(start_levels + len(grow_at))``.
        start_levels, grow_at, fade_steps: the growth schedule (paper, paired CelebA x8: from 1
            level (x2), grow at 20k and 80k; unpaired at 40k and 120k; real world x4: at 60k).
        loss: ``{adversarial, reconstruction}`` (reading 1, 10); ``r1_gamma``: R1's gamma (paper 10).
        lr, betas: Adam (paper 0.003, constant; betas reading (0, 0.99)).
        hflip: random horizontal flips (the paper's only augmentation); ``seed``: their generator.

    Batches: ``batch["hr"]["image"]`` ``[N,3,S,S]`` (the final HR size) and in unpaired mode
    ``batch["lr"]["image"]`` ``[M,3,lr_size,lr_size]``, in [-1,1].
    """

    progress_loss = "g_total"

    def __init__(
        self,
        *,
        mode: Literal["paired", "unpaired"] = "paired",
        generator: Mapping[str, Any],
        discriminator: Mapping[str, Any],
        degrader: Mapping[str, Any] | None = None,
        lr_size: int = 16,
        start_levels: int = 1,
        grow_at: Sequence[int] = (20_000, 80_000),
        fade_steps: int = 10_000,
        loss: Mapping[str, float] = SR_LOSS,
        r1_gamma: float = 10.0,
        lr: float = 0.003,
        betas: Sequence[float] = (0.0, 0.99),
        hflip: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        data_info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(device=device, data_info=data_info)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if degrader is not None and mode != "paired":
            raise ValueError("a degrader makes pseudo pairs: paired mode only")
        grow_at = tuple(int(g) for g in grow_at)
        if list(grow_at) != sorted(set(grow_at)) or any(g < 1 for g in grow_at):
            raise ValueError(f"grow_at must be increasing steps >= 1, got {grow_at}")
        if start_levels < 1 or fade_steps < 0 or r1_gamma < 0 or lr <= 0 or lr_size < 1:
            raise ValueError("need start_levels >= 1, fade_steps >= 0, r1_gamma >= 0, lr > 0, lr_size >= 1")
        for key in ("levels", "lr_size"):
            if key in generator or key in discriminator:
                raise ValueError(f"{key!r} is set by the objective, not in the network arguments")
        self.mode, self.lr_size = mode, int(lr_size)
        self.start_levels, self.grow_at, self.fade_steps = int(start_levels), grow_at, int(fade_steps)
        self.final_levels = self.start_levels + len(grow_at)
        self.hr_size = self.lr_size * 2**self.final_levels
        self.loss = _weights("loss", loss, set(SR_LOSS))
        self.r1_gamma, self.lr, self.betas, self.hflip = float(r1_gamma), float(lr), _betas(betas), bool(hflip)
        self.seed = int(seed)
        self.networks = {
            "generator": SelfConditionedGenerator(**dict(generator), levels=self.start_levels),
            "discriminator": ProgressiveDiscriminator(**dict(discriminator), levels=self.start_levels,
                                                      lr_size=self.lr_size),
        }
        for name, net in self.networks.items():
            if self.final_levels > len(net.config["channels"]) - 1:
                raise ValueError(f"{name} channels {net.config['channels']} allow {len(net.config['channels']) - 1} "
                                 f"levels; the schedule ends at {self.final_levels}")
        if degrader is not None:
            self.networks["degrader"] = FlowDegradationNetwork(**dict(degrader))
        self.networks = {name: net.to(self.device) for name, net in self.networks.items()}
        self.set_trained(("generator", "discriminator"), kept=("degrader",) if degrader is not None else ())
        self.optimizers = {name: self._adam(self.networks[name]) for name in self.trained}
        self.flips = _Flips(seed)

    # ------------------------------------------------------------------ the contract
    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        lr_size = int(config.get("lr_size", 16))
        levels = int(config.get("start_levels", 1)) + len(config.get("grow_at", (20_000, 80_000)))
        out = {"hr": DataSpec(size=lr_size * 2**levels)}
        if config.get("mode", "paired") == "unpaired":
            out["lr"] = DataSpec(size=lr_size)
        return out

    def exports(self) -> dict[str, RestorerSpec]:
        return {"sr": RestorerSpec(kind="feed_forward", networks=("generator",), input_size=self.lr_size,
                                   scale=2**self.level)}

    @property
    def level(self) -> int:
        """The generator's current number of x2 levels."""
        return int(self.networks["generator"].config["levels"])

    # ------------------------------------------------------------------ growth
    def _adam(self, network: torch.nn.Module) -> torch.optim.Adam:
        return torch.optim.Adam(network.parameters(), lr=self.lr, betas=self.betas)

    def _grow(self) -> None:
        """One more level for both networks; earlier weights and their Adam moments carried over.
        The new layers' initial weights are drawn from ``seed`` and the level, not from the global
        generator, so a run resumed before a growth grows the same network as one that never stopped."""
        for index, name in enumerate(("generator", "discriminator")):
            old, old_optimizer = self.networks[name], self.optimizers[name]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000 + self.level * 10 + index)
                new = grown(old)
            optimizer = self._adam(new)
            old_params = dict(old.named_parameters())
            for key, param in new.named_parameters():
                if key in old_params and old_params[key] in old_optimizer.state:
                    optimizer.state[param] = {k: v.clone() for k, v in old_optimizer.state[old_params[key]].items()}
            self.replace_network(name, new)
            self.optimizers[name] = optimizer

    def fade(self, step: int) -> float:
        """The new level's blend weight before step ``step + 1``: 1 at the first level or when
        ``fade_steps`` is 0, else ``(step - grown at) / fade_steps`` up to 1."""
        if self.level == self.start_levels or self.fade_steps == 0:
            return 1.0
        since = step - self.grow_at[self.level - self.start_levels - 1]
        return min(max(since / self.fade_steps, 0.0), 1.0)

    def on_step(self, step: int) -> bool:
        target = self.start_levels + sum(step >= g for g in self.grow_at)
        changed = False
        while self.level < target:
            self._grow()
            changed = True
        value = self.fade(step)
        for name in ("generator", "discriminator"):
            self.networks[name].fade.fill_(value)
        return changed

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "flip_rng": self.flips.rng.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        level = int(state["level"])
        if not self.level <= level <= self.final_levels:
            raise ValueError(f"checkpoint level {level} is outside this schedule ({self.level}..{self.final_levels})")
        while self.level < level:
            self._grow()
        self.flips.rng.set_state(state["flip_rng"])

    # ------------------------------------------------------------------ losses
    def _pair(self, batch: Mapping[str, Mapping[str, Tensor]], *, flip: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(lr, hr at the current level, clean lr or None)`` of a batch (flipped when ``flip``)."""
        hr = batch_image(batch, "hr", self.hr_size, self.device)
        if self.mode == "unpaired":
            lr = batch_image(batch, "lr", self.lr_size, self.device)
            if flip:
                hr, lr = self.flips(hr, lr)
            return lr, _resize(hr, self.lr_size * 2**self.level), None
        if flip:
            (hr,) = self.flips(hr)
        with torch.no_grad():
            clean = _resize(hr, self.lr_size)
            lr = self.networks["degrader"](clean).clamp(-1.0, 1.0) if "degrader" in self.networks else clean
        return lr, _resize(hr, self.lr_size * 2**self.level), clean

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int = 0) -> dict[str, float]:
        """One generator step, then one discriminator step with R1; returns the losses, level and fade."""
        lr, real, _ = self._pair(batch, flip=self.hflip)
        losses: dict[str, Tensor] = {}
        disc = self.networks["discriminator"]
        disc.requires_grad_(False)
        sr = self.module("generator")(lr)
        losses["g_adversarial"] = g_loss_hinge(disc(sr))
        if self.mode == "paired":
            losses["reconstruction"] = l1_loss(sr, real)
        else:
            losses["reconstruction"] = l1_loss(_resize(sr, self.lr_size, saturate=False), lr)
        total = self.loss["adversarial"] * losses["g_adversarial"] + self.loss["reconstruction"] * losses["reconstruction"]
        losses["g_total"] = total
        self.optimizers["generator"].zero_grad(set_to_none=True)
        total.backward()
        self.optimizers["generator"].step()

        disc.requires_grad_(True)
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        real_in = real.detach().requires_grad_(self.r1_gamma > 0)
        logits = self.module("discriminator")(torch.cat([real_in, sr.detach()]))  # one forward: one DDP pass
        real_logits, fake_logits = logits[: real.shape[0]], logits[real.shape[0]:]
        losses["d_hinge"] = d_loss_hinge(real_logits, fake_logits)
        d_total = losses["d_hinge"]
        if self.r1_gamma > 0:
            losses["r1"] = r1_penalty(real_logits, real_in)
            d_total = d_total + self.r1_gamma / 2 * losses["r1"]
        d_total.backward()
        self.optimizers["discriminator"].step()

        out = {key: float(value.detach()) for key, value in losses.items()}
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss in step: {out}")
        out.update(level=float(self.level), fade=float(self.networks["generator"].fade))
        return out

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        """Rows at the current level: ``clean_lr`` (paired with a degrader), ``lr`` (the network's
        input), ``bicubic`` (its upsampling), ``sr``, ``hr`` (the HR at the level's size; in unpaired
        mode another face's). The generator runs in eval mode (its running batch statistics)."""
        lr, real, clean = self._pair(batch, flip=False)
        generator = self.networks["generator"]
        generator.eval()
        try:
            sr = generator(lr)
        finally:
            generator.train("generator" in self.trained)
        rows = {"clean_lr": clean} if "degrader" in self.networks else {}
        size = self.lr_size * 2**self.level
        rows.update(lr=lr, bicubic=_resize(lr, size), sr=sr.clamp(-1.0, 1.0), hr=real)
        return rows
