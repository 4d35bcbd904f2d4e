"""The objective of a StyleGAN2 prior (Karras et al. 2020), the generator step 2 of the two-step
method inverts (``METHODS.md`` section 1, step 2): trained on the user's HR crops, so every
pipeline runs with no third-party weights.

One :meth:`StyleGAN2Objective.train_step` is StyleGAN2's iteration (as in rosinality's
``train.py`` and StyleGAN2-ADA's ``loss.py`` phases):

``Dmain``
    ``softplus(D(G(z))) + softplus(-D(x))``, the non-saturating logistic loss; ``G(z)`` without
    gradients.
``Dreg`` (every ``d_reg_every`` steps: lazy regularisation)
    R1, ``gamma / 2 * E||grad_x D(x)||^2`` on the real crops, times ``d_reg_every``.
``Gmain``
    ``softplus(-D(G(z)))``; ``D`` frozen.
``Greg`` (every ``g_reg_every`` steps, when ``path_regularize > 0``)
    path-length regularisation on ``batch / path_batch_shrink`` codes: ``(|J_w^T y| - a)^2`` with
    ``y`` image-space noise scaled by ``1/sqrt(H*W)``, ``a`` a running mean of the lengths (decay
    0.01), weighted by ``path_regularize * g_reg_every``.

then the EMA generator: ``beta = 0.5 ** (batch_size / (ema_kimg * 1000))`` (half-life of
``ema_kimg`` thousand images; with ``ema_rampup`` the half-life is at most ``rampup * images
seen``, StyleGAN2-ADA's ramp). ``z`` draws mix two codes at a random layer with probability
``mixing``. Adam's rate and betas of a lazily regularised network are corrected by
``ratio = every / (every + 1)``: ``lr * ratio``, ``betas ** ratio`` (so the effective
hyper-parameters are those of regularising every step).

Readings (each a constructor argument): ``r1_gamma`` None is StyleGAN2-ADA's heuristic
``0.0002 * size**2 / batch_size``; crops are flipped horizontally at random (rosinality's data
augmentation). Every random draw (codes, mixing, noise, flips, path noise) comes from the
objective's own generator, saved with its state, so a resumed run repeats a straight one.

Checkpoints add ``stylegan2.pt`` (:data:`~fsr_core.networks.stylegan2.CHECKPOINT_FILE`) in
rosinality's layout: ``g``, ``d``, ``g_ema``, ``g_optim``, ``d_optim``, ``latent_avg`` (the mean W
of 4096 seeded codes through the EMA mapping) and ``config`` (the networks' constructor
arguments), what :func:`~fsr_core.networks.stylegan2.load_stylegan2_checkpoint` reads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fsr_core.losses.adversarial import r1_penalty
from fsr_core.networks.stylegan2 import CHECKPOINT_FILE, Discriminator, Generator, set_fused_modconv
from fsr_core.training.objective import DataSpec, Objective, batch_image

__all__ = ["LATENT_AVG_SAMPLES", "StyleGAN2Objective", "adam_for_lazy_regularisation", "path_length_penalty"]

LATENT_AVG_SAMPLES = 4096
"""Codes averaged into ``latent_avg``."""
PATH_DECAY = 0.01


def adam_for_lazy_regularisation(params: Any, *, lr: float, betas: Sequence[float], every: int) -> torch.optim.Adam:
    """Adam for a network regularised every ``every`` steps (0: never): rate ``lr * r`` and betas
    ``b ** r`` with ``r = every / (every + 1)`` (``r = 1`` when never)."""
    ratio = every / (every + 1) if every > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio))


def path_length_penalty(images: Tensor, latents: Tensor, mean_length: Tensor, *,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(penalty, new mean length, lengths [N])`` of StyleGAN2's path-length regulariser.

    ``images`` ``[N,3,H,W]`` generated from ``latents`` ``[N,n_latent,style_dim]`` (in the graph);
    ``|J^T y|`` with ``y ~ N(0,1)/sqrt(H*W)``, the norm over style_dim, the mean over layers.
    """
    noise = torch.randn(images.shape, generator=generator).to(images) / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), latents, create_graph=True)
    lengths = grad.square().sum(2).mean(1).sqrt()
    mean = mean_length + PATH_DECAY * (lengths.mean().detach() - mean_length)
    return (lengths - mean).square().mean(), mean, lengths


class StyleGAN2Objective(Objective):
    """A StyleGAN2 prior on one data set of HR crops (see the module docstring).

    Args:
        size: the crops' side and the generator's resolution (a power of two, 32-128 for a prior
            trained here; any power of two >= 4 works).
        generator: :class:`~fsr_core.networks.stylegan2.Generator` arguments besides ``size``
            (``style_dim``, ``n_mlp``, ``channel_multiplier``, ``channels``, ``lr_mlp``).
        discriminator: :class:`~fsr_core.networks.stylegan2.Discriminator` arguments besides ``size``.
        batch_size: the global batch (the EMA's half-life is counted in images).
        lr, betas: Adam (StyleGAN2: 0.002, (0, 0.99)), before the lazy-regularisation correction.
        r1_gamma: R1's gamma (None: ``0.0002 * size**2 / batch_size``); ``d_reg_every``: its interval.
        path_regularize: path-length weight (StyleGAN2: 2; 0 turns it off); ``g_reg_every`` its
            interval; ``path_batch_shrink``: its batch is the batch divided by this.
        mixing: probability of style mixing (StyleGAN2: 0.9).
        ema_kimg: the EMA half-life in thousands of images (StyleGAN2: 10); ``ema_rampup``: None or
            StyleGAN2-ADA's ramp (0.05).
        hflip: random horizontal flips of the crops; ``seed``: the networks' initialisation and the
            objective's random draws.

    Batches: ``batch["hr"]["image"]`` ``[N,3,size,size]`` in [-1,1], ``N`` divisible by 4 or below 4
    (the discriminator's minibatch standard deviation groups).
    """

    progress_loss = "g_loss"

    def __init__(self, *, size: int = 64, generator: Mapping[str, Any] | None = None,
                 discriminator: Mapping[str, Any] | None = None, batch_size: int = 32, lr: float = 0.002,
                 betas: Sequence[float] = (0.0, 0.99), r1_gamma: float | None = None, d_reg_every: int = 16,
                 path_regularize: float = 0.0, g_reg_every: int = 4, path_batch_shrink: int = 2,
                 mixing: float = 0.9, ema_kimg: float = 10.0, ema_rampup: float | None = None, hflip: bool = True,
                 seed: int = 0, device: str | torch.device = "cpu", data_info: Mapping[str, Any] | None = None) -> None:
        super().__init__(device=device, data_info=data_info)
        if batch_size < 1 or lr <= 0 or d_reg_every < 1 or g_reg_every < 1 or path_batch_shrink < 1:
            raise ValueError("need batch_size, d_reg_every, g_reg_every, path_batch_shrink >= 1 and lr > 0")
        if not 0.0 <= mixing <= 1.0 or ema_kimg <= 0 or path_regularize < 0 or (r1_gamma is not None and r1_gamma < 0):
            raise ValueError("need mixing in [0, 1], ema_kimg > 0, path_regularize >= 0, r1_gamma >= 0")
        self.size, self.batch_size, self.mixing, self.hflip = int(size), int(batch_size), float(mixing), bool(hflip)
        self.r1_gamma = 0.0002 * size ** 2 / batch_size if r1_gamma is None else float(r1_gamma)
        self.d_reg_every, self.g_reg_every = int(d_reg_every), int(g_reg_every)
        self.path_regularize, self.path_batch_shrink = float(path_regularize), int(path_batch_shrink)
        self.ema_kimg, self.ema_rampup = float(ema_kimg), ema_rampup
        with torch.random.fork_rng(devices=[]):  # the same networks whatever the global generator's state
            torch.manual_seed(seed)
            self.networks["generator"] = Generator(size=size, **dict(generator or {"style_dim": 512, "n_mlp": 8}))
            self.networks["discriminator"] = Discriminator(size=size, **dict(discriminator or {}))
        for network in self.networks.values():
            network.to(self.device)
        set_fused_modconv(self.networks["generator"], False)  # the faster form for training (StyleGAN2-ADA's)
        self.set_trained(("generator", "discriminator"))
        self.make_ema("generator")
        g_every = self.g_reg_every if self.path_regularize > 0 else 0
        self.optimizers["generator"] = adam_for_lazy_regularisation(
            self.networks["generator"].parameters(), lr=lr, betas=betas, every=g_every)
        self.optimizers["discriminator"] = adam_for_lazy_regularisation(
            self.networks["discriminator"].parameters(), lr=lr, betas=betas, every=self.d_reg_every)
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        self.rng = torch.Generator().manual_seed(int(seed) * 1_000_003 + rank)  # each worker draws its own codes
        self.mean_path_length = torch.zeros((), device=self.device)
        self.images_seen = 0
        # the regularisers' latest values, reported every step (the logs average them over steps)
        self.latest: dict[str, float] = {}
        if self.r1_gamma > 0:
            self.latest["r1"] = 0.0
        if self.path_regularize > 0:
            self.latest.update(path_penalty=0.0, path_length=0.0)

    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        return {"hr": DataSpec(size=int(config.get("size", 64)))}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state(), "mean_path_length": float(self.mean_path_length),
                "images_seen": self.images_seen, "latest": dict(self.latest)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.set_state(state["rng"])
        self.mean_path_length = torch.tensor(float(state["mean_path_length"]), device=self.device)
        self.images_seen = int(state["images_seen"])
        self.latest = {key: float(value) for key, value in state["latest"].items()}

    def save(self, folder: str, *, train_state: Mapping[str, Any]) -> str:
        """The checkpoint folder, plus ``stylegan2.pt`` in rosinality's layout (written first:
        ``networks.json``, written last, marks the folder complete)."""
        os.makedirs(folder, exist_ok=True)
        torch.save(self.rosinality_checkpoint(), os.path.join(folder, CHECKPOINT_FILE))
        return super().save(folder, train_state=train_state)

    def rosinality_checkpoint(self) -> dict[str, Any]:
        """``{"g", "d", "g_ema", "g_optim", "d_optim", "latent_avg", "config"}`` on the CPU."""
        def cpu(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {key: value.detach().cpu() for key, value in state.items()}

        ema = self.ema["generator"]
        return {
            "g": cpu(self.networks["generator"].state_dict()),
            "d": cpu(self.networks["discriminator"].state_dict()),
            "g_ema": cpu(ema.state_dict()),
            "g_optim": self.optimizers["generator"].state_dict(),
            "d_optim": self.optimizers["discriminator"].state_dict(),
            "latent_avg": self.latent_average().cpu(),
            "config": {"g_ema": dict(ema.config), "d": dict(self.networks["discriminator"].config)},
        }

    @torch.no_grad()
    def latent_average(self, count: int = LATENT_AVG_SAMPLES) -> Tensor:
        """The mean W ``[style_dim]`` of ``count`` codes drawn from a fixed seed, through the EMA mapping."""
        ema = self.ema["generator"]
        z = torch.randn(count, ema.style_dim, generator=torch.Generator().manual_seed(0)).to(self.device)
        return ema.get_latent(z).mean(0)

    # ------------------------------------------------------------------ draws
    def _randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.rng).to(self.device)

    def _codes(self, count: int) -> tuple[list[Tensor], int | None]:
        """One ``[count, style_dim]`` code, or two with a mixing layer (probability ``mixing``)."""
        generator = self.networks["generator"]
        if generator.n_latent > 1 and float(torch.rand((), generator=self.rng)) < self.mixing:
            inject = int(torch.randint(1, generator.n_latent, (), generator=self.rng))
            return [self._randn(count, generator.style_dim), self._randn(count, generator.style_dim)], inject
        return [self._randn(count, generator.style_dim)], None

    def _noise(self, count: int) -> list[Tensor]:
        generator = self.networks["generator"]
        return [self._randn(count, 1, n.shape[2], n.shape[3]) for n in generator.make_noise()]

    def _generate(self, module: torch.nn.Module, count: int, *, return_latents: bool = False) -> tuple[Tensor, Tensor | None]:
        styles, inject = self._codes(count)
        return module(styles, inject_index=inject, noise=self._noise(count), return_latents=return_latents)

    def _real(self, batch: Mapping[str, Mapping[str, Tensor]]) -> Tensor:
        real = batch_image(batch, "hr", self.size, self.device)
        if self.hflip:
            flip = (torch.rand(real.shape[0], generator=self.rng) < 0.5).to(self.device).view(-1, 1, 1, 1)
            real = torch.where(flip, real.flip(-1), real)
        return real

    # ------------------------------------------------------------------ the step
    def ema_beta(self) -> float:
        """This step's EMA decay: half-life ``ema_kimg`` thousand images (ramped up when ``ema_rampup``)."""
        half_life = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            half_life = min(half_life, self.images_seen * self.ema_rampup)
        return 0.5 ** (self.batch_size / max(half_life, 1e-8))

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int = 0) -> dict[str, float]:
        """One StyleGAN2 iteration (``step`` steps done before it); the lazy regularisers run when
        ``step`` is a multiple of their interval, as rosinality's ``i % every == 0``. Returns
        ``d_loss``, ``real_score``, ``fake_score``, ``g_loss``, ``ema_beta``, and the regularisers'
        latest values on every step (``r1``; ``path_penalty``, ``path_length``, ``mean_path_length``)."""
        real = self._real(batch)
        count = real.shape[0]
        generator, discriminator = self.networks["generator"], self.networks["discriminator"]
        losses: dict[str, Tensor] = {}

        # Dmain: G's output as data; D through its (possibly DDP) training module
        with torch.no_grad():
            fake, _ = self._generate(generator, count)
        d_module = self.module("discriminator")
        fake_logits, real_logits = d_module(fake), d_module(real)
        losses["d_loss"] = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        losses["real_score"], losses["fake_score"] = real_logits.mean(), fake_logits.mean()
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        losses["d_loss"].backward()
        self.optimizers["discriminator"].step()

        # Dreg: lazy R1 (the 0 * logit keeps every D parameter in the graph, as DDP needs)
        if self.r1_gamma > 0 and step % self.d_reg_every == 0:
            real_in = real.detach().requires_grad_(True)
            logits = d_module(real_in)
            losses["r1"] = r1_penalty(logits, real_in)
            self.optimizers["discriminator"].zero_grad(set_to_none=True)
            (self.r1_gamma / 2 * losses["r1"] * self.d_reg_every + 0 * logits[0, 0]).backward()
            self.optimizers["discriminator"].step()

        # Gmain: D frozen and unwrapped (its parameters get no gradient)
        discriminator.requires_grad_(False)
        try:
            fake, _ = self._generate(self.module("generator"), count)
            losses["g_loss"] = F.softplus(-discriminator(fake)).mean()
            self.optimizers["generator"].zero_grad(set_to_none=True)
            losses["g_loss"].backward()
            self.optimizers["generator"].step()
        finally:
            discriminator.requires_grad_(True)

        # Greg: lazy path-length regularisation
        if self.path_regularize > 0 and step % self.g_reg_every == 0:
            path_count = max(1, count // self.path_batch_shrink)
            images, latents = self._generate(self.module("generator"), path_count, return_latents=True)
            penalty, self.mean_path_length, lengths = path_length_penalty(
                images, latents, self.mean_path_length, generator=self.rng)
            self.optimizers["generator"].zero_grad(set_to_none=True)
            (self.path_regularize * self.g_reg_every * penalty + 0 * images[0, 0, 0, 0]).backward()
            self.optimizers["generator"].step()
            losses["path_penalty"], losses["path_length"] = penalty, lengths.mean()

        self.images_seen += self.batch_size
        beta = self.ema_beta()
        self.update_ema("generator", beta=beta)
        out = {key: float(value.detach()) for key, value in losses.items()}
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss in step {step + 1}: {out}")
        self.latest.update({key: out[key] for key in self.latest if key in out})
        out.update(self.latest)  # the same keys every step: the regularisers' latest values
        out["ema_beta"] = beta
        if self.path_regularize > 0:
            out["mean_path_length"] = float(self.mean_path_length)
        return out

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        """Rows ``real`` (the crops), ``generator`` and ``ema`` (the same fixed codes and noise from
        ``seed``, so grids of one run compare across steps)."""
        real = batch_image(batch, "hr", self.size, self.device)
        count = real.shape[0]
        draw = torch.Generator().manual_seed(int(seed))
        generator = self.networks["generator"]
        z = torch.randn(count, generator.style_dim, generator=draw).to(self.device)
        noise = [torch.randn(count, 1, n.shape[2], n.shape[3], generator=draw).to(self.device)
                 for n in generator.make_noise()]
        was_training = generator.training
        generator.eval()
        try:
            raw, _ = generator([z], noise=noise)
        finally:
            generator.train(was_training)
        ema, _ = self.ema["generator"]([z], noise=noise)
        return {"real": real, "generator": raw.clamp(-1, 1), "ema": ema.clamp(-1, 1)}
