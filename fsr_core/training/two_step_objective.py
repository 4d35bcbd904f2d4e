"""The objective of step 1 of two-step extreme FSR (``METHODS.md`` section 1): the CycleGAN pair.

An :class:`~fsr_core.training.objective.Objective`: it owns the networks, their optimizers and
every loss term and weight; the Ray Train loop (:mod:`fsr_core.training.loop`) only iterates,
checkpoints and reports, and never sees a loss weight. Each generator has its own weights
(``l2h_loss``, ``h2l_loss``: ``{"pixel": alpha, "gan": beta}``), so the degradation network's
adversarial weight can change alone.

Two modes (the paper's Eq. 1-3, ``L = alpha * L_pixel + beta * L_GAN`` for each generator):

``supervised`` (pre-training on simulated LR)
    ``slr = bicubic_x(1/scale)(hr)`` (MATLAB bicubic with antialias, :func:`imresize_torch`), the
    H2L networks are bypassed. Generator step:
    ``L_l2h = alpha_l2h * L2(hr, l2h(slr)) + beta_l2h * G_gan(l2h_disc; real hr, fake l2h(slr))``;
    discriminator step: ``D_gan(l2h_disc; real hr, fake l2h(slr).detach())``.

``unsupervised`` (joint training on real LR)
    ``lr = h2l(hr, noise)``,
    ``L_h2l = alpha_h2l * L2(bicubic(hr), lr) + beta_h2l * G_gan(h2l_disc; real real_lr, fake lr)``,
    ``sr = l2h(lr)``,
    ``L_l2h = alpha_l2h * L2(hr, sr) + beta_l2h * G_gan(l2h_disc; real hr, fake sr)``;
    both discriminators take their ``D_gan`` step on the detached fakes.

**End to end** (``end_to_end=True``, the paper's reading): one backward pass of
``L_h2l + L_l2h``, so the gradient of the L2H loss flows through ``sr = l2h(h2l(hr))`` into the
H2L generator as well (H2L learns to produce LR that L2H can restore, while its own pixel and GAN
terms keep it close to bicubic and realistic); then both generator optimizers step.
``end_to_end=False`` detaches ``lr`` before L2H (Bulat et al. 2018 style): H2L then learns only
from ``L_h2l``.

A generator whose adversarial weight ``beta`` is 0 (the demo's pixel-only pre-training) has its
discriminator neither run nor trained: its term would be multiplied by 0, so the generator's
weights are the same bit for bit, at a fraction of the cost.

Discriminators are not updated by the generator step: during it they are called unwrapped (no DDP
reducer involved, no gradient sync) with ``requires_grad`` off, and the real logits that the
relativistic generator loss needs are computed under ``no_grad``. The discriminator losses are not
weighted (``beta`` only balances the generator's terms, as in ESRGAN).

A checkpoint (the folder format of :mod:`fsr_core.training.checkpoint`) holds the networks this
mode trains and their optimizers; the objective exports one restorer, ``l2h`` (feed-forward,
``hr_size / scale`` in, x``scale`` out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from fsr_core.degradation.resize import imresize_torch
from fsr_core.losses.adversarial import ADVERSARIAL_LOSSES
from fsr_core.losses.frequency import gaussian_lowpass, highpass
from fsr_core.losses.pixel import l2_loss
from fsr_core.networks.two_step import H2LDiscriminator, H2LGenerator, L2HDiscriminator, L2HGenerator
from fsr_core.training.objective import DataSpec, Objective, RestorerSpec

__all__ = ["MODES", "TwoStepObjective"]

MODES = ("supervised", "unsupervised")

_CLASSES = {"l2h": L2HGenerator, "l2h_disc": L2HDiscriminator, "h2l": H2LGenerator, "h2l_disc": H2LDiscriminator}
_TRAINED = {"supervised": ("l2h", "l2h_disc"), "unsupervised": ("l2h", "l2h_disc", "h2l", "h2l_disc")}
PAPER_LOSS = {"pixel": 1.0, "gan": 0.001}
"""alpha, beta of Eq. 1-3 (the paper's values for both generators)."""


def _loss_weights(name: str, weights: Mapping[str, float]) -> dict[str, float]:
    if set(weights) != {"pixel", "gan"}:
        raise ValueError(f"{name} must give exactly 'pixel' and 'gan' weights, got {sorted(weights)}")
    out = {key: float(value) for key, value in weights.items()}
    if min(out.values()) < 0:
        raise ValueError(f"{name} weights must be >= 0, got {out}")
    return out


class TwoStepObjective(Objective):
    """Networks, optimizers and losses of step 1 (16 -> 128 by default).

    Args:
        mode: ``"supervised"`` (pre-training on bicubic SLR) or ``"unsupervised"`` (joint
            training with the learned H2L degradation on real LR).
        l2h, l2h_disc, h2l, h2l_disc: constructor keyword arguments of :class:`L2HGenerator`,
            :class:`L2HDiscriminator`, :class:`H2LGenerator`, :class:`H2LDiscriminator`. The H2L
            pair is required in unsupervised mode; in supervised mode it is optional, and when
            given it is built but neither trained nor saved.
        hr_size: the HR (MR target) crop size; equals the H2L generator's input size when there is one.
        l2h_loss, h2l_loss: ``{"pixel": alpha, "gan": beta}`` of each generator (paper: 1, 0.001).
        gan_loss: a key of :data:`~fsr_core.losses.adversarial.ADVERSARIAL_LOSSES`
            (paper: relativistic average).
        lr: Adam learning rate, constant (paper: 1e-3).
        l2h_ema: not in the paper (0: none): keep an exponential moving average of the L2H weights
            with this decay (``weights/l2h.ema.pt``; ESRGAN/Real-ESRGAN practice), updated after
            every generator step; ``register_model`` with ``ema: true`` registers it. At a high
            learning rate the adversarially trained pair makes the L2H's test score swing by
            +-0.3 dB from step to step; the average keeps what the steps share.
        h2l_lr: not in the paper (None: ``lr``): the Adam learning rate of the H2L generator and its
            discriminator, so the adversarial pair can move slower than the L2H.
        betas: Adam betas (paper: (0.9, 0.999)).
        scale: the SR factor; must equal the L2H generator's and the H2L generator's factor.
        end_to_end: let the gradient of the L2H loss flow into H2L (unsupervised mode).
        h2l_pixel_lowpass: not in the paper (0: the paper's full-band L2). When > 0, the H2L pixel
            term compares Gaussian low-passed images (sigma in LR pixels) of H2L(hr) and of the
            bicubic downsampling, so it keeps H2L's colours and coarse shape while leaving the
            fine band (noise, blur, compression) to the adversarial term (as in Fritsche et al.
            2019's frequency separation).
        h2l_disc_highpass: not in the paper (0: the H2L discriminator sees the images). When > 0,
            the H2L discriminator sees only the high band ``x - gaussian_sigma(x)`` (sigma in LR
            pixels) of the real LR and of H2L's output, the other half of the frequency
            separation: it judges noise and compression, not the faces.
        device: where the networks live; batches are moved there.

    Batches: ``batch["hr"]["image"]`` ``[N,3,S,S]`` in [-1,1] (``S = hr_size``) and in
    unsupervised mode ``batch["real_lr"]["image"]`` ``[M,3,S/scale,S/scale]`` in [-1,1].
    """

    progress_loss = "l2h_total"

    def __init__(
        self,
        *,
        mode: Literal["supervised", "unsupervised"],
        l2h: Mapping[str, Any],
        l2h_disc: Mapping[str, Any],
        h2l: Mapping[str, Any] | None = None,
        h2l_disc: Mapping[str, Any] | None = None,
        hr_size: int = 128,
        l2h_loss: Mapping[str, float] = PAPER_LOSS,
        h2l_loss: Mapping[str, float] = PAPER_LOSS,
        gan_loss: str = "relativistic_average",
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        scale: int = 8,
        end_to_end: bool = True,
        h2l_pixel_lowpass: float = 0.0,
        h2l_disc_highpass: float = 0.0,
        h2l_lr: float | None = None,
        l2h_ema: float = 0.0,
        device: str | torch.device = "cpu",
        data_info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(device=device, data_info=data_info)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if gan_loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"gan_loss must be one of {sorted(ADVERSARIAL_LOSSES)}, got {gan_loss!r}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two values in [0, 1), got {betas}")
        self.mode = mode
        self.l2h_loss = _loss_weights("l2h_loss", l2h_loss)
        self.h2l_loss = _loss_weights("h2l_loss", h2l_loss)
        self.scale = int(scale)
        self.hr_size = int(hr_size)
        self.end_to_end = bool(end_to_end)
        if h2l_pixel_lowpass < 0:
            raise ValueError(f"h2l_pixel_lowpass must be >= 0, got {h2l_pixel_lowpass}")
        self.h2l_pixel_lowpass = float(h2l_pixel_lowpass)
        if h2l_disc_highpass < 0:
            raise ValueError(f"h2l_disc_highpass must be >= 0, got {h2l_disc_highpass}")
        self.h2l_disc_highpass = float(h2l_disc_highpass)
        self._d_loss, self._g_loss = ADVERSARIAL_LOSSES[gan_loss]
        if mode == "unsupervised" and (h2l is None or h2l_disc is None):
            raise ValueError("unsupervised mode needs the h2l and h2l_disc network arguments")
        kwargs = {"l2h": l2h, "l2h_disc": l2h_disc, "h2l": h2l, "h2l_disc": h2l_disc}
        self.networks = {
            name: cls(**dict(kwargs[name])).to(self.device) for name, cls in _CLASSES.items() if kwargs[name] is not None
        }
        l2h_net = self.networks["l2h"]
        if l2h_net.scale != self.scale:
            raise ValueError(f"scale={scale} but the L2H generator upsamples x{l2h_net.scale} (blocks_per_section)")
        divisor = math.lcm(self.scale, self.networks["l2h_disc"].divisor)
        if self.hr_size % divisor:
            raise ValueError(f"hr_size={hr_size} must be divisible by the scale and the L2H discriminator's "
                             f"downsampling ({divisor})")
        if "h2l" in self.networks:
            h2l_net = self.networks["h2l"]
            if h2l_net.input_size != self.hr_size or h2l_net.output_size * self.scale != self.hr_size:
                raise ValueError(f"hr_size={hr_size}, scale={scale} but the H2L generator maps "
                                 f"{h2l_net.input_size} -> {h2l_net.output_size}")
        self.set_trained(_TRAINED[mode])
        if not 0.0 <= l2h_ema < 1.0:
            raise ValueError(f"l2h_ema must be in [0, 1), got {l2h_ema}")
        self.l2h_ema = float(l2h_ema)
        if self.l2h_ema > 0:
            self.make_ema("l2h")
        if h2l_lr is not None and h2l_lr <= 0:
            raise ValueError(f"h2l_lr must be > 0, got {h2l_lr}")
        rates = {name: (h2l_lr if h2l_lr is not None and name.startswith("h2l") else lr) for name in self.trained}
        self.optimizers = {
            name: torch.optim.Adam(self.networks[name].parameters(), lr=rates[name], betas=betas) for name in self.trained
        }

    # ------------------------------------------------------------------ the contract
    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        hr_size = int(config.get("hr_size", 128))
        out = {"hr": DataSpec(size=hr_size)}
        if config["mode"] == "unsupervised":
            out["real_lr"] = DataSpec(size=hr_size // int(config.get("scale", 8)))
        return out

    def exports(self) -> dict[str, RestorerSpec]:
        return {"l2h": RestorerSpec(kind="feed_forward", networks=("l2h",), input_size=self.hr_size // self.scale,
                                    scale=self.scale)}

    # ------------------------------------------------------------------ losses
    def _bicubic_down(self, hr: Tensor) -> Tensor:
        """MATLAB bicubic x(1/scale), saturated to [-1,1] as MATLAB's uint8 output would be."""
        return imresize_torch(hr, scale=1.0 / self.scale).clamp(-1.0, 1.0)

    def _check_image(self, batch: Mapping[str, Mapping[str, Tensor]], name: str) -> Tensor:
        """``batch[name]["image"]`` on the device; ``ValueError`` unless it is float ``[N,3,S,S]``
        with the HR size (``hr``) or HR size / scale (``real_lr``)."""
        if name not in batch or "image" not in batch[name]:
            raise ValueError(f"{self.mode} training needs batch[{name!r}]['image']; got keys {sorted(batch)}")
        x = batch[name]["image"]
        size = self.hr_size if name == "hr" else self.hr_size // self.scale
        ok = isinstance(x, Tensor) and x.is_floating_point() and x.ndim == 4 and x.shape[1] == 3
        ok = ok and x.shape[0] >= 1 and tuple(x.shape[2:]) == (size, size)
        if not ok:
            raise ValueError(
                f"batch[{name!r}]['image'] must be a float tensor [N,3,{size},{size}] in [-1,1], got "
                f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
            )
        return x.to(self.device)

    def _generator_gan(self, disc: torch.nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        with torch.no_grad():
            real_logits = disc(real)
        return self._g_loss(real_logits=real_logits, fake_logits=disc(fake))

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int = 0) -> dict[str, float]:
        """One generator step then one discriminator step; returns the losses (before the update)."""
        hr = self._check_image(batch, "hr")
        real_lr = self._check_image(batch, "real_lr") if self.mode == "unsupervised" else None
        m = self.module
        losses: dict[str, Tensor] = {}

        # -- generator step: discriminators frozen and unwrapped. A discriminator whose generator's
        # adversarial weight is 0 is neither run nor trained (its gradient would be multiplied by 0)
        discriminators = [name for name in self._active_discriminators() if name in self.trained]
        for name in discriminators:
            self.networks[name].requires_grad_(False)
        if self.mode == "supervised":
            lr = self._bicubic_down(hr)
            sr = m("l2h")(lr)
            g_total = self._generator_losses("l2h", losses, target=hr, output=sr, real=hr)
        else:
            lr = m("h2l")(hr)
            h2l_total = self._generator_losses("h2l", losses, target=self._bicubic_down(hr), output=lr, real=real_lr)
            sr = m("l2h")(lr if self.end_to_end else lr.detach())
            g_total = h2l_total + self._generator_losses("l2h", losses, target=hr, output=sr, real=hr)
        generators = [name for name in ("l2h", "h2l") if name in self.trained]
        for name in generators:
            self.optimizers[name].zero_grad(set_to_none=True)
        g_total.backward()
        for name in generators:
            self.optimizers[name].step()
        if self.l2h_ema > 0:
            self.update_ema("l2h", beta=self.l2h_ema)

        # -- discriminator step on the detached fakes
        if discriminators:
            for name in discriminators:
                self.networks[name].requires_grad_(True)
                self.optimizers[name].zero_grad(set_to_none=True)
            fakes = {"l2h_disc": (hr, sr), "h2l_disc": (real_lr, lr)}
            for name in discriminators:
                real, fake = fakes[name]
                if name == "h2l_disc":
                    real, fake = self._h2l_disc_input(real), self._h2l_disc_input(fake)
                losses[name] = self._d_loss(m(name)(real), m(name)(fake.detach()))
            sum(losses[name] for name in discriminators).backward()
            for name in discriminators:
                self.optimizers[name].step()

        out = {key: float(value.detach()) for key, value in losses.items()}
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss in step: {out}")
        return out

    def _active_discriminators(self) -> list[str]:
        """The discriminators this mode uses whose generator has a non-zero adversarial weight."""
        pairs = [("l2h_disc", self.l2h_loss)] + ([("h2l_disc", self.h2l_loss)] if self.mode == "unsupervised" else [])
        return [name for name, weights in pairs if weights["gan"] > 0]

    def _h2l_disc_input(self, x: Tensor) -> Tensor:
        """What the H2L discriminator sees: the image, or with ``h2l_disc_highpass`` its high band."""
        return highpass(x, self.h2l_disc_highpass)

    def _lowpass(self, x: Tensor) -> Tensor:
        return gaussian_lowpass(x, self.h2l_pixel_lowpass)

    def _generator_losses(self, name: str, losses: dict[str, Tensor], *, target: Tensor, output: Tensor,
                          real: Tensor) -> Tensor:
        """``alpha * L2(target, output) + beta * G_gan(disc; real, fake output)`` of generator ``name``
        (for H2L with ``h2l_pixel_lowpass``, the L2 of the low-passed images)."""
        weights = self.l2h_loss if name == "l2h" else self.h2l_loss
        if name == "h2l" and self.h2l_pixel_lowpass > 0:
            losses[f"{name}_pixel"] = l2_loss(self._lowpass(output), self._lowpass(target))
        else:
            losses[f"{name}_pixel"] = l2_loss(output, target)
        total = weights["pixel"] * losses[f"{name}_pixel"]
        if weights["gan"] > 0:
            if name == "h2l":
                real, output = self._h2l_disc_input(real), self._h2l_disc_input(output)
            losses[f"{name}_gan"] = self._generator_gan(self.networks[f"{name}_disc"], real, output)
            total = total + weights["gan"] * losses[f"{name}_gan"]
        losses[f"{name}_total"] = total
        return total

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        """Images for a sample grid, each ``[N,3,h,w]`` in [-1,1], in display order:
        ``lr`` (the L2H input: bicubic SLR, or H2L(hr) in unsupervised mode), ``bicubic`` (lr
        bicubic-upsampled), ``sr``, ``hr``; in unsupervised mode also ``real_lr``,
        ``real_bicubic``, ``real_sr`` when the batch has ``real_lr``. The H2L noise is drawn from
        ``seed`` so that grids of different steps compare."""
        hr = self._check_image(batch, "hr")
        l2h = self.networks["l2h"]
        if self.mode == "supervised":
            lr = self._bicubic_down(hr)
        else:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            lr = self.networks["h2l"](hr, generator=generator)
        out = {
            "lr": lr,
            "bicubic": imresize_torch(lr, scale=self.scale).clamp(-1.0, 1.0),
            "sr": l2h(lr),
            "hr": hr,
        }
        if self.mode == "unsupervised" and "real_lr" in batch:
            real_lr = self._check_image(batch, "real_lr")
            out["real_lr"] = real_lr
            out["real_bicubic"] = imresize_torch(real_lr, scale=self.scale).clamp(-1.0, 1.0)
            out["real_sr"] = l2h(real_lr)
        return out
