"""The objective of step 1 of two-step extreme FSR (``METHODS.md`` section 1): the CycleGAN pair.

As in StyleGAN2-ADA's ``loss.py``, the objective owns the networks, their optimizers and every
loss term and weight; the Ray Train loop (:mod:`fsr_core.training.loop`) only iterates,
checkpoints and reports, and never sees a loss weight.

Two modes (the paper's Eq. 1-3, ``L = alpha * L_pixel + beta * L_GAN`` for each generator):

``supervised`` (pre-training on simulated LR)
    ``slr = bicubic_x(1/scale)(hr)`` (MATLAB bicubic with antialias, :func:`imresize_torch`), the
    H2L networks are bypassed. Generator step:
    ``L_l2h = alpha * L2(hr, l2h(slr)) + beta * G_gan(l2h_disc; real hr, fake l2h(slr))``;
    discriminator step: ``D_gan(l2h_disc; real hr, fake l2h(slr).detach())``.

``unsupervised`` (joint training on real LR)
    ``lr = h2l(hr, noise)``,
    ``L_h2l = alpha * L2(bicubic(hr), lr) + beta * G_gan(h2l_disc; real real_lr, fake lr)``,
    ``sr = l2h(lr)``,
    ``L_l2h = alpha * L2(hr, sr) + beta * G_gan(l2h_disc; real hr, fake sr)``;
    both discriminators take their ``D_gan`` step on the detached fakes.

**End to end** (``end_to_end=True``, the paper's reading): one backward pass of
``L_h2l + L_l2h``, so the gradient of the L2H loss flows through ``sr = l2h(h2l(hr))`` into the
H2L generator as well (H2L learns to produce LR that L2H can restore, while its own pixel and GAN
terms keep it close to bicubic and realistic); then both generator optimizers step.
``end_to_end=False`` detaches ``lr`` before L2H (Bulat et al. 2018 style): H2L then learns only
from ``L_h2l``.

Discriminators are not updated by the generator step: during it they are called unwrapped (no DDP
reducer involved, no gradient sync) with ``requires_grad`` off, and the real logits that the
relativistic generator loss needs are computed under ``no_grad``. The discriminator losses are not
weighted (``beta`` only balances the generator's terms, as in ESRGAN).

Every network keeps its constructor arguments in ``.config``; a checkpoint (the folder format of
:mod:`fsr_core.training.checkpoint`) holds the networks this mode trains and their optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fsr_core.degradation.resize import imresize_torch
from fsr_core.losses.adversarial import ADVERSARIAL_LOSSES
from fsr_core.losses.pixel import l2_loss
from fsr_core.networks.two_step import H2LDiscriminator, H2LGenerator, L2HDiscriminator, L2HGenerator
from fsr_core.training import checkpoint as ckpt

__all__ = ["MODES", "TwoStepObjective"]

MODES = ("supervised", "unsupervised")

# checkpoint name -> (class name in fsr_core.networks.NETWORKS, class)
_NETWORKS: dict[str, tuple[str, type[nn.Module]]] = {
    "l2h": ("l2h_generator", L2HGenerator),
    "l2h_disc": ("l2h_discriminator", L2HDiscriminator),
    "h2l": ("h2l_generator", H2LGenerator),
    "h2l_disc": ("h2l_discriminator", H2LDiscriminator),
}
_TRAINED = {"supervised": ("l2h", "l2h_disc"), "unsupervised": ("l2h", "l2h_disc", "h2l", "h2l_disc")}


class TwoStepObjective:
    """Networks, optimizers and losses of step 1 (16 -> 128 by default).

    Args:
        mode: ``"supervised"`` (pre-training on bicubic SLR) or ``"unsupervised"`` (joint
            training with the learned H2L degradation on real LR).
        l2h, l2h_disc, h2l, h2l_disc: constructor keyword arguments of :class:`L2HGenerator`,
            :class:`L2HDiscriminator`, :class:`H2LGenerator`, :class:`H2LDiscriminator`. The H2L
            pair is required in unsupervised mode; in supervised mode it is optional, and when
            given it is built but neither trained nor saved.
        pixel_weight: ``alpha`` (paper: 1).
        gan_weight: ``beta`` (paper: 0.001).
        gan_loss: a key of :data:`~fsr_core.losses.adversarial.ADVERSARIAL_LOSSES`
            (paper: relativistic average).
        lr: Adam learning rate, constant (paper: 1e-3).
        betas: Adam betas (paper: (0.9, 0.999)).
        scale: the SR factor; must equal the L2H generator's and the H2L generator's factor.
        end_to_end: let the gradient of the L2H loss flow into H2L (unsupervised mode).
        device: where the networks live; batches are moved there.

    Batches: ``hr`` ``[N,3,S,S]`` in [-1,1] (``S = h2l["input_size"]``, 128 by default, when the
    H2L generator is built; otherwise any ``S`` divisible by ``scale`` and by the L2H
    discriminator's downsampling), and in unsupervised mode ``real_lr`` ``[M,3,S/scale,S/scale]``
    in [-1,1].
    """

    def __init__(
        self,
        *,
        mode: Literal["supervised", "unsupervised"],
        l2h: Mapping[str, Any],
        l2h_disc: Mapping[str, Any],
        h2l: Mapping[str, Any] | None = None,
        h2l_disc: Mapping[str, Any] | None = None,
        pixel_weight: float = 1.0,
        gan_weight: float = 0.001,
        gan_loss: str = "relativistic_average",
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        scale: int = 8,
        end_to_end: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if gan_loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"gan_loss must be one of {sorted(ADVERSARIAL_LOSSES)}, got {gan_loss!r}")
        if pixel_weight < 0 or gan_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got pixel_weight={pixel_weight}, gan_weight={gan_weight}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two values in [0, 1), got {betas}")
        self.mode = mode
        self.pixel_weight = float(pixel_weight)
        self.gan_weight = float(gan_weight)
        self.scale = int(scale)
        self.end_to_end = bool(end_to_end)
        self.device = torch.device(device)
        self._d_loss, self._g_loss = ADVERSARIAL_LOSSES[gan_loss]
        if mode == "unsupervised" and (h2l is None or h2l_disc is None):
            raise ValueError("unsupervised mode needs the h2l and h2l_disc network arguments")
        kwargs = {"l2h": l2h, "l2h_disc": l2h_disc, "h2l": h2l, "h2l_disc": h2l_disc}
        self.networks: dict[str, nn.Module] = {
            name: cls(**dict(kwargs[name])).to(self.device)
            for name, (_, cls) in _NETWORKS.items()
            if kwargs[name] is not None
        }
        self.config: dict[str, Any] = {
            "mode": mode,
            **{name: dict(net.config) for name, net in self.networks.items()},
            "pixel_weight": self.pixel_weight,
            "gan_weight": self.gan_weight,
            "gan_loss": gan_loss,
            "lr": float(lr),
            "betas": list(betas),
            "scale": self.scale,
            "end_to_end": self.end_to_end,
        }
        l2h_net = self.networks["l2h"]
        if l2h_net.scale != self.scale:
            raise ValueError(f"scale={scale} but the L2H generator upsamples x{l2h_net.scale} (blocks_per_section)")
        # HR size: fixed by the H2L generator when there is one, else any multiple of `_hr_divisor`
        self.hr_size: int | None = None
        self._hr_divisor = math.lcm(self.scale, self.networks["l2h_disc"].divisor)
        if "h2l" in self.networks:
            h2l_net = self.networks["h2l"]
            if h2l_net.input_size != h2l_net.output_size * self.scale:
                raise ValueError(
                    f"scale={scale} but the H2L generator maps {h2l_net.input_size} -> {h2l_net.output_size}"
                )
            self.hr_size = h2l_net.input_size
        self.trained: tuple[str, ...] = _TRAINED[mode]
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: torch.optim.Adam(self.networks[name].parameters(), lr=lr, betas=betas) for name in self.trained
        }
        # the modules used for training: the networks themselves, or what `wrap` made of them (DDP)
        self._train_modules: dict[str, nn.Module] = {name: self.networks[name] for name in self.trained}
        for name, net in self.networks.items():
            net.train(name in self.trained)
            if name not in self.trained:
                net.requires_grad_(False)

    # ------------------------------------------------------------------ wiring for the loop
    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the datasets (batch keys) a training step reads."""
        return ("hr",) if self.mode == "supervised" else ("hr", "real_lr")

    def wrap(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        """Replace each trained network, for training only, by ``fn(network)`` (e.g.
        ``ray.train.torch.prepare_model`` for DDP). Saving, sampling and the discriminators'
        use inside the generator step keep the unwrapped networks."""
        for name in self.trained:
            self._train_modules[name] = fn(self.networks[name])

    def networks_to_save(self) -> dict[str, tuple[str, nn.Module]]:
        """``{name: (class name, unwrapped network)}`` of the networks this mode trains."""
        return {name: (_NETWORKS[name][0], self.networks[name]) for name in self.trained}

    # ------------------------------------------------------------------ losses
    def _bicubic_down(self, hr: Tensor) -> Tensor:
        """MATLAB bicubic x(1/scale), saturated to [-1,1] as MATLAB's uint8 output would be."""
        return imresize_torch(hr, scale=1.0 / self.scale).clamp(-1.0, 1.0)

    def _check_image(self, batch: Mapping[str, Tensor], name: str, *, hr_size: int | None = None) -> Tensor:
        """``batch[name]`` on the device; ``ValueError`` unless it is float ``[N,3,S,S]`` with the
        HR size (``hr``) or HR size / scale (``real_lr``, given the batch's ``hr_size``)."""
        if name not in batch:
            raise ValueError(f"{self.mode} training needs batch[{name!r}]; got keys {sorted(batch)}")
        x = batch[name]
        ok = isinstance(x, Tensor) and x.is_floating_point() and x.ndim == 4 and x.shape[1] == 3
        ok = ok and x.shape[0] >= 1 and x.shape[2] == x.shape[3]
        if name == "hr":
            want = f"S = {self.hr_size}" if self.hr_size else f"S divisible by {self._hr_divisor}"
            ok = ok and (x.shape[2] == self.hr_size if self.hr_size else x.shape[2] % self._hr_divisor == 0)
        else:
            want = f"S = {hr_size // self.scale} (HR size / scale)"
            ok = ok and x.shape[2] == hr_size // self.scale
        if not ok:
            raise ValueError(
                f"batch[{name!r}] must be a float tensor [N,3,S,S] in [-1,1] with {want}, got "
                f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
            )
        return x.to(self.device)

    def _check_batch(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        hr = self._check_image(batch, "hr")
        out = {"hr": hr}
        if "real_lr" in self.inputs:
            out["real_lr"] = self._check_image(batch, "real_lr", hr_size=hr.shape[-1])
        return out

    def _generator_gan(self, disc: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        with torch.no_grad():
            real_logits = disc(real)
        return self._g_loss(real_logits=real_logits, fake_logits=disc(fake))

    def train_step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One generator step then one discriminator step; returns the losses (before the update)."""
        data = self._check_batch(batch)
        hr = data["hr"]
        alpha, beta = self.pixel_weight, self.gan_weight
        m = self._train_modules
        losses: dict[str, Tensor] = {}

        # -- generator step: discriminators frozen and unwrapped
        discriminators = [name for name in ("l2h_disc", "h2l_disc") if name in self.trained]
        for name in discriminators:
            self.networks[name].requires_grad_(False)
        if self.mode == "supervised":
            lr = self._bicubic_down(hr)
            sr = m["l2h"](lr)
            losses["l2h_pixel"] = l2_loss(sr, hr)
            losses["l2h_gan"] = self._generator_gan(self.networks["l2h_disc"], hr, sr)
            losses["l2h_total"] = alpha * losses["l2h_pixel"] + beta * losses["l2h_gan"]
            g_total = losses["l2h_total"]
        else:
            real_lr = data["real_lr"]
            lr = m["h2l"](hr)
            losses["h2l_pixel"] = l2_loss(lr, self._bicubic_down(hr))
            losses["h2l_gan"] = self._generator_gan(self.networks["h2l_disc"], real_lr, lr)
            losses["h2l_total"] = alpha * losses["h2l_pixel"] + beta * losses["h2l_gan"]
            sr = m["l2h"](lr if self.end_to_end else lr.detach())
            losses["l2h_pixel"] = l2_loss(sr, hr)
            losses["l2h_gan"] = self._generator_gan(self.networks["l2h_disc"], hr, sr)
            losses["l2h_total"] = alpha * losses["l2h_pixel"] + beta * losses["l2h_gan"]
            g_total = losses["h2l_total"] + losses["l2h_total"]
        generators = [name for name in ("l2h", "h2l") if name in self.trained]
        for name in generators:
            self.optimizers[name].zero_grad(set_to_none=True)
        g_total.backward()
        for name in generators:
            self.optimizers[name].step()

        # -- discriminator step on the detached fakes
        for name in discriminators:
            self.networks[name].requires_grad_(True)
            self.optimizers[name].zero_grad(set_to_none=True)
        losses["l2h_disc"] = self._d_loss(m["l2h_disc"](hr), m["l2h_disc"](sr.detach()))
        d_total = losses["l2h_disc"]
        if self.mode == "unsupervised":
            losses["h2l_disc"] = self._d_loss(m["h2l_disc"](data["real_lr"]), m["h2l_disc"](lr.detach()))
            d_total = d_total + losses["h2l_disc"]
        d_total.backward()
        for name in discriminators:
            self.optimizers[name].step()

        out = {key: float(value.detach()) for key, value in losses.items()}
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss in step: {out}")
        return out

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Tensor], *, seed: int = 0) -> dict[str, Tensor]:
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
            real_lr = self._check_image(batch, "real_lr", hr_size=hr.shape[-1])
            out["real_lr"] = real_lr
            out["real_bicubic"] = imresize_torch(real_lr, scale=self.scale).clamp(-1.0, 1.0)
            out["real_sr"] = l2h(real_lr)
        return out

    # ------------------------------------------------------------------ checkpoints
    def save(self, folder: str, *, train_state: Mapping[str, Any]) -> str:
        """Write a checkpoint folder: the trained networks, their optimizers, ``train_state``."""
        return ckpt.save_checkpoint(
            folder, networks=self.networks_to_save(), optimizers=self.optimizers, train_state=train_state
        )

    def load(self, folder: str) -> dict[str, Any]:
        """Restore a checkpoint of this objective (weights and optimizer states of the trained
        networks) and return its train state, to continue training."""
        self._load_weights(folder, list(self.trained))
        ckpt.load_optimizers(folder, self.optimizers, map_location=self.device)
        return ckpt.load_train_state(folder)

    def init_from(self, folder: str, *, names: Sequence[str] | None = None) -> list[str]:
        """Initialise networks from another checkpoint (e.g. the joint stage from the pre-trained
        L2H): weights only, no optimizer state, no step. ``names=None`` takes every network the
        checkpoint has. Returns the names loaded. Architectures must match (``ValueError``)."""
        return self._load_weights(folder, None if names is None else list(names))

    def _load_weights(self, folder: str, names: list[str] | None) -> list[str]:
        classes = {class_name: cls for class_name, cls in _NETWORKS.values()}
        unknown = set(names or ()) - set(self.networks)
        if unknown:
            raise ValueError(f"unknown network name(s) {sorted(unknown)}; known: {sorted(self.networks)}")
        loaded = ckpt.load_networks(folder, classes, names=names, map_location="cpu")
        for name, source in loaded.items():
            if name not in self.networks:
                continue
            target = self.networks[name]
            if type(source) is not type(target) or dict(source.config) != dict(target.config):
                raise ValueError(
                    f"checkpoint {folder} network {name!r} is {type(source).__name__}{source.config}, "
                    f"this objective has {type(target).__name__}{target.config}"
                )
            target.load_state_dict(source.state_dict())
        return [name for name in loaded if name in self.networks]
