"""Projection of images into the W or W+ space of a StyleGAN2 generator (Image2StyleGAN; rosinality's
projector), batched: ``N`` faces share one optimisation loop.

:func:`project` optimises one code per face (W ``[N,D]`` or W+ ``[N,L,D]``) and, by default, the
generator's noise maps (one set per face) with Adam, so that the generator's output, downsampled to the
target's size, matches the target::

    loss_i = perceptual * d(down(G(w_i, noise_i)), target_i) + mse * MSE(...) + noise_regularize * R(noise_i)

``d`` is a pluggable perceptual distance (:mod:`fsr_core.inversion.distances`: LPIPS, dlib's identity
descriptor, the project's face embedder, or none), ``R`` StyleGAN2's noise regulariser (the squared
autocorrelation of each noise map at one-pixel shifts, over a pyramid down to 8x8), computed per face.
The schedule is rosinality's: the learning rate ramps up over the first ``lr_rampup`` of the steps and
down (cosine) over the last ``lr_rampdown``; Gaussian noise of ``w_std * noise_strength * max(0,
1 - t / noise_ramp)^2`` is added to the code at each step; the noise maps are renormalised to zero mean
and unit variance after each step. The code starts at the mean W (``latent_statistics``).

Batching: the per-face losses are summed, so each face gets its own gradient, and Adam is elementwise,
so the faces do not interact; each face has its own seed (its noise maps and latent noise are drawn from
a generator seeded with it, in the same order as a single-face projection would draw them) and its own
early stop (``patience`` steps without a relative improvement of ``tolerance`` in its loss: the face is
frozen and leaves the forward pass). A batch of B faces therefore gives the B single-face projections
with the same seeds, up to floating-point differences between batched and single convolutions
(``tests/fsr_core/inversion/test_projection.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fsr_core.degradation.resize import imresize_torch

__all__ = ["Projection", "downsample", "noise_regularisation", "noise_shapes", "project", "synthesise"]

Distance = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Projection:
    """What :func:`project` returns (tensors on the generator's device, detached).

    ``latent``: W ``[N,D]`` or W+ ``[N,L,D]``; ``noises``: the noise maps, one ``[N,1,r,r]`` per layer;
    ``image``: the generator's output ``[N,3,S,S]`` in [-1,1] at the final code; ``error``: ``[N]`` MSE
    between its downsampling and the target (the paper's ``E_p``); ``loss``: ``[N]`` the last
    per-face loss; ``steps``: ``[N]`` the steps each face ran (early stop)."""

    space: str
    latent: Tensor
    noises: list[Tensor]
    image: Tensor
    error: Tensor
    loss: Tensor
    steps: Tensor


def noise_shapes(generator: torch.nn.Module) -> list[tuple[int, ...]]:
    """The shape ``[1,1,r,r]`` of each of the generator's noise inputs (its ``noises.noise_<i>`` buffers)."""
    return [tuple(getattr(generator.noises, f"noise_{i}").shape) for i in range(generator.num_layers)]


def downsample(image: Tensor, size: int, *, method: Literal["area", "bicubic"] = "area") -> Tensor:
    """``[N,3,S,S]`` -> ``[N,3,size,size]``: ``area`` (mean over blocks, rosinality's projector) or
    ``bicubic`` (MATLAB's antialiased bicubic, :func:`~fsr_core.degradation.resize.imresize_torch`);
    the image itself when ``size == S``."""
    if image.shape[-1] == size:
        return image
    if size > image.shape[-1]:
        raise ValueError(f"cannot downsample a {image.shape[-1]} px image to {size} px")
    if method == "area":
        return F.interpolate(image, size=(size, size), mode="area")
    if method == "bicubic":
        return imresize_torch(image, output_size=(size, size))
    raise ValueError(f"downsample must be 'area' or 'bicubic', got {method!r}")


def noise_regularisation(noises: Sequence[Tensor]) -> Tensor:
    """StyleGAN2's noise regulariser per face: ``[N]`` from maps ``[N,1,r,r]``."""
    total = 0.0
    for noise in noises:
        size = noise.shape[-1]
        while True:
            total = total + (noise * torch.roll(noise, shifts=1, dims=3)).mean(dim=(1, 2, 3)).pow(2) \
                + (noise * torch.roll(noise, shifts=1, dims=2)).mean(dim=(1, 2, 3)).pow(2)
            if size <= 8:
                break
            noise = noise.reshape(-1, 1, size // 2, 2, size // 2, 2).mean(dim=(3, 5))
            size //= 2
    return total


def _normalise_noises_(noises: Sequence[Tensor], rows: Tensor | None) -> None:
    """Each face's maps of ``rows`` (``None``: every face) to zero mean and unit deviation, in place."""
    with torch.no_grad():
        for noise in noises:
            part = noise if rows is None else noise[rows]
            mean = part.mean(dim=(1, 2, 3), keepdim=True)
            std = part.std(dim=(1, 2, 3), keepdim=True)
            if rows is None:
                noise.sub_(mean).div_(std)
            else:
                noise[rows] = (part - mean) / std


def _learning_rate(t: float, base: float, *, rampup: float, rampdown: float) -> float:
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return base * ramp


def synthesise(generator: torch.nn.Module, latent: Tensor, noises: Sequence[Tensor] | None) -> Tensor:
    """The generator's image ``[N,3,S,S]`` for W ``[N,D]`` or W+ ``[N,L,D]`` codes and per-face noise maps
    (``None``: the generator's stored noise buffers, rosinality's ``randomize_noise=False``)."""
    image, _ = generator([latent], input_is_latent=True, noise=None if noises is None else list(noises),
                         randomize_noise=False)
    return image


@torch.enable_grad()
def project(
    generator: torch.nn.Module,
    target: Tensor,
    *,
    seeds: Sequence[int],
    space: Literal["w", "w_plus"] = "w",
    steps: int = 1000,
    learning_rate: float = 0.1,
    distance: Distance | None = None,
    perceptual: float = 1.0,
    mse: float = 1.0,
    noise_regularize: float = 1e5,
    optimise_noise: bool = True,
    noise_strength: float = 0.05,
    noise_ramp: float = 0.75,
    lr_rampup: float = 0.05,
    lr_rampdown: float = 0.25,
    downsample_method: Literal["area", "bicubic"] = "area",
    patience: int | None = None,
    tolerance: float = 1e-3,
    statistics: Mapping[str, Tensor] | None = None,
    statistics_samples: int = 10000,
    statistics_seed: int = 0,
    initial: Tensor | None = None,
    forward_model: Callable[[Tensor, Tensor], Tensor] | None = None,
    fidelity_reduction: Literal["mean", "sum"] = "mean",
    extra_loss: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Projection:
    """Project ``target`` ``[N,3,s,s]`` in [-1,1] (``s`` <= the generator's size) into ``space`` (see the
    module docstring). ``seeds``: one per face. ``distance(image, target) -> [N]``: the perceptual
    distance (``None``: MSE only, and ``perceptual`` must then be 0 or the distance given).
    ``optimise_noise=False`` keeps the generator's stored noise maps (no noise regulariser).
    ``patience``: per-face early stop (None: every face runs ``steps``). ``statistics``: the latent
    statistics (:func:`~fsr_core.inversion.latent.latent_statistics`), computed here when None.
    ``initial``: start codes (W or W+ as ``space``) instead of the mean.

    Searches that are projections with more terms (SAIR) name three more: ``forward_model(image, rows)
    -> prediction``, the generator's output ``[n,3,S,S]`` of faces ``rows`` (indices into the batch, a
    CPU ``LongTensor``) taken to the target's space, instead of ``downsample`` (a degradation operator
    with per-face parameters); ``fidelity_reduction``: the MSE term as a ``mean`` over pixels or a
    ``sum`` (the squared Frobenius norm); ``extra_loss(code, image, rows) -> [n]``: more per-face terms
    of the faces' codes (without the latent noise) and generator outputs. The returned ``error`` is the
    mean squared error of the forward model's prediction."""
    from fsr_core.inversion.latent import latent_statistics

    if target.ndim != 4 or target.shape[1] != 3 or target.shape[-1] != target.shape[-2]:
        raise ValueError(f"target must be [N,3,s,s] in [-1,1], got {tuple(target.shape)}")
    n = target.shape[0]
    if len(seeds) != n:
        raise ValueError(f"one seed per face: {len(seeds)} seeds for {n} faces")
    if space not in ("w", "w_plus"):
        raise ValueError(f"space must be 'w' or 'w_plus', got {space!r}")
    if steps < 1 or learning_rate <= 0:
        raise ValueError(f"steps must be >= 1 and learning_rate > 0, got {steps}, {learning_rate}")
    if distance is None and perceptual:
        raise ValueError("perceptual > 0 needs a distance (or set perceptual: 0 for MSE only)")
    if fidelity_reduction not in ("mean", "sum"):
        raise ValueError(f"fidelity_reduction must be 'mean' or 'sum', got {fidelity_reduction!r}")
    if target.shape[-1] > generator.size:
        raise ValueError(f"target of {target.shape[-1]} px is larger than the generator's {generator.size} px")
    device = next(generator.parameters()).device
    target = target.to(device).clone()  # a normal tensor even if made under inference mode
    stats = statistics if statistics is not None else latent_statistics(
        generator, samples=statistics_samples, seed=statistics_seed)
    w_mean, w_std = stats["w_mean"].to(device), stats["w_std"].to(device)
    rngs = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    shape = (n, generator.style_dim) if space == "w" else (n, generator.n_latent, generator.style_dim)
    if initial is not None:
        if tuple(initial.shape) != shape:
            raise ValueError(f"initial codes must be {shape}, got {tuple(initial.shape)}")
        latent = initial.detach().to(device).clone()
    else:
        latent = (w_mean.view(1, -1) if space == "w" else w_mean.view(1, 1, -1)).expand(shape).clone()
    latent.requires_grad_(True)
    params = [latent]
    noises: list[Tensor] | None = None
    if optimise_noise:
        per_face = [[torch.randn(s[1:], generator=rng) for s in noise_shapes(generator)] for rng in rngs]
        noises = [torch.stack([face[k] for face in per_face]).to(device).requires_grad_(True)
                  for k in range(len(per_face[0]))] if n else []
        params += noises
    optimiser = torch.optim.Adam(params, lr=learning_rate)

    size = target.shape[-1]

    def predict(image: Tensor, rows: Tensor) -> Tensor:
        return downsample(image, size, method=downsample_method) if forward_model is None else forward_model(
            image, rows)

    active = torch.ones(n, dtype=torch.bool)
    best = torch.full((n,), math.inf, dtype=torch.float64)
    since_best = torch.zeros(n, dtype=torch.long)
    ran = torch.zeros(n, dtype=torch.long)
    last_loss = torch.zeros(n, dtype=torch.float64)
    for step in range(steps):
        rows = active.nonzero().flatten()
        if not len(rows):
            break
        t = step / steps
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(t, learning_rate, rampup=lr_rampup, rampdown=lr_rampdown)
        strength = float(w_std) * noise_strength * max(0.0, 1.0 - t / noise_ramp) ** 2 if noise_ramp > 0 else 0.0
        # while no face has stopped (always, without early stopping), the whole tensors serve: no
        # gathers of the active rows, no copies of stopped ones to put back (the same values either way)
        everyone = len(rows) == n
        picked = None if everyone else rows.to(device)
        if not everyone:
            frozen_latent = latent.detach()[~active.to(device)].clone()
            frozen_noises = [noise.detach()[~active.to(device)].clone() for noise in noises or []]
        code = clean_code = latent if everyone else latent[picked]
        if strength > 0:
            jitter = torch.stack([torch.randn(code.shape[1:], generator=rngs[i]) for i in rows.tolist()])
            code = code + jitter.to(device) * strength
        face_noises = None if noises is None else list(noises) if everyone else [noise[picked] for noise in noises]
        full = synthesise(generator, code, face_noises)
        image = predict(full, rows)
        goal = target if everyone else target[picked]
        squared = (image - goal).pow(2)
        loss = mse * (squared.sum(dim=(1, 2, 3)) if fidelity_reduction == "sum" else squared.mean(dim=(1, 2, 3)))
        if extra_loss is not None:
            loss = loss + extra_loss(clean_code, full, rows)
        if perceptual:
            loss = loss + perceptual * distance(image, goal)
        if face_noises is not None and noise_regularize:
            loss = loss + noise_regularize * noise_regularisation(face_noises)
        optimiser.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimiser.step()
        if not everyone:
            with torch.no_grad():  # stopped faces keep their values (Adam's momentum would move them)
                inactive = (~active).to(device)
                latent[inactive] = frozen_latent
                for noise, frozen in zip(noises or [], frozen_noises):
                    noise[inactive] = frozen
        if noises is not None:
            _normalise_noises_(noises, picked)
        values = loss.detach().double().cpu()
        last_loss[rows] = values
        ran[rows] += 1
        if patience is not None:
            improved = values < best[rows] * (1.0 - tolerance)
            best[rows] = torch.where(improved, values, best[rows])
            since_best[rows] = torch.where(improved, torch.zeros_like(since_best[rows]), since_best[rows] + 1)
            active[rows] = since_best[rows] < patience

    with torch.no_grad():
        final_noises = None if noises is None else [noise.detach() for noise in noises]
        image = synthesise(generator, latent.detach(), final_noises)
        error = (predict(image, torch.arange(n)) - target).pow(2).mean(dim=(1, 2, 3))
    if final_noises is None:
        final_noises = [getattr(generator.noises, f"noise_{i}").expand(n, -1, -1, -1).clone()
                        for i in range(generator.num_layers)]
    return Projection(space=space, latent=latent.detach(), noises=final_noises, image=image.detach(), error=error,
                      loss=last_loss.float(), steps=ran)
