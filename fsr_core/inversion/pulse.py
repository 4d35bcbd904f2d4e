"""A PULSE-style baseline (Menon et al. 2020): search the sphere of the Gaussianised latent space for a
generator output whose downsampling matches the LR input.

Each face gets ``hypotheses`` random starts. A start is a W+ code in the Gaussianised space, one vector
per layer on the sphere of radius ``sqrt(D)``; the generator sees ``w = lrelu_0.2(v * gauss_std +
gauss_mean)`` (:mod:`fsr_core.inversion.latent`). Adam moves ``v`` and each layer's vector is put back on
the sphere after every step (PULSE's spherical optimiser)::

    loss = MSE(down(G(w)), lr) + geocross * GEOCROSS(v)

``down`` is MATLAB's antialiased bicubic by default (the downsampling the LR-consistency metric uses),
``GEOCROSS`` the mean squared geodesic angle between the layers' vectors (PULSE's cross loss, which keeps
the W+ code close to one W code). The noise maps are drawn per hypothesis and kept fixed (``noise:
random``; ``stored``: the generator's buffers). A hypothesis stops when its loss falls under ``eps``
(PULSE's stopping rule) or after ``patience`` steps without improvement. Of each face's hypotheses the one
with the lowest LR error (MSE of its downsampling against the input) is kept.

All hypotheses of all faces share one loop; face ``i``'s starts and noise come from a generator seeded
with ``seeds[i]``, so a batch gives the faces' single searches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor

from fsr_core.inversion.latent import degaussianise
from fsr_core.inversion.projection import _learning_rate, downsample, noise_shapes, synthesise

__all__ = ["PulseResult", "geocross", "pulse"]


@dataclass
class PulseResult:
    """``image`` ``[N,3,S,S]`` (the kept hypothesis of each face), ``latent`` its W+ code ``[N,L,D]``,
    ``lr_error`` ``[N]`` its MSE against the LR, ``hypothesis`` ``[N]`` which start it was,
    ``all_errors`` ``[N,K]`` every hypothesis's LR error."""

    image: Tensor
    latent: Tensor
    lr_error: Tensor
    hypothesis: Tensor
    all_errors: Tensor


def geocross(v: Tensor) -> Tensor:
    """``[M]``: the mean squared geodesic angle between the layer vectors of ``v`` ``[M,L,D]``."""
    unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = (unit.unsqueeze(1) * unit.unsqueeze(2)).sum(-1).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.acos(cos).pow(2).mean(dim=(1, 2))


def _to_sphere(v: Tensor) -> Tensor:
    return v * (math.sqrt(v.shape[-1]) / v.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@torch.enable_grad()
def pulse(
    generator: torch.nn.Module,
    lr: Tensor,
    *,
    seeds: Sequence[int],
    statistics: Mapping[str, Tensor],
    hypotheses: int = 4,
    steps: int = 100,
    learning_rate: float = 0.4,
    lr_rampup: float = 0.0,
    lr_rampdown: float = 0.5,
    geocross_weight: float = 0.1,
    eps: float = 2e-3,
    patience: int | None = None,
    tolerance: float = 1e-3,
    noise: Literal["random", "stored"] = "random",
    downsample_method: Literal["area", "bicubic"] = "bicubic",
) -> PulseResult:
    """Search for each face of ``lr`` ``[N,3,s,s]`` in [-1,1] (see the module docstring); ``statistics``
    as :func:`~fsr_core.inversion.latent.latent_statistics` gives them (``gauss_mean``, ``gauss_std``)."""
    if lr.ndim != 4 or lr.shape[1] != 3 or lr.shape[-1] != lr.shape[-2]:
        raise ValueError(f"lr must be [N,3,s,s] in [-1,1], got {tuple(lr.shape)}")
    if len(seeds) != lr.shape[0]:
        raise ValueError(f"one seed per face: {len(seeds)} seeds for {lr.shape[0]} faces")
    if hypotheses < 1 or steps < 1:
        raise ValueError(f"hypotheses and steps must be >= 1, got {hypotheses}, {steps}")
    if noise not in ("random", "stored"):
        raise ValueError(f"noise must be 'random' or 'stored', got {noise!r}")
    device = next(generator.parameters()).device
    n, k, size = lr.shape[0], hypotheses, lr.shape[-1]
    layers, dim = generator.n_latent, generator.style_dim
    mean, std = statistics["gauss_mean"].to(device), statistics["gauss_std"].to(device)
    starts, noise_maps = [], []
    for seed in seeds:  # face by face, hypothesis by hypothesis: the order a single search draws in
        rng = torch.Generator().manual_seed(int(seed))
        for _ in range(k):
            starts.append(torch.randn(layers, dim, generator=rng))
            if noise == "random":
                noise_maps.append([torch.randn(s[1:], generator=rng) for s in noise_shapes(generator)])
    v = _to_sphere(torch.stack(starts).to(device)).requires_grad_(True)
    noises = None if noise == "stored" else [
        torch.stack([maps[j] for maps in noise_maps]).to(device) for j in range(len(noise_maps[0]))]
    goal_all = lr.to(device).clone().repeat_interleave(k, dim=0)
    optimiser = torch.optim.Adam([v], lr=learning_rate)
    active = torch.ones(n * k, dtype=torch.bool)
    best = torch.full((n * k,), math.inf, dtype=torch.float64)
    since_best = torch.zeros(n * k, dtype=torch.long)

    def codes(values: Tensor) -> Tensor:
        return degaussianise(values * std + mean)

    for step in range(steps):
        rows = active.nonzero().flatten()
        if not len(rows):
            break
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step / steps, learning_rate, rampup=lr_rampup, rampdown=lr_rampdown)
        frozen = v.detach()[~active.to(device)].clone()
        picked = rows.to(device)
        part = v[picked]
        image = synthesise(generator, codes(part), None if noises is None else [m[picked] for m in noises])
        error = (downsample(image, size, method=downsample_method) - goal_all[picked]).pow(2).mean(dim=(1, 2, 3))
        loss = error + geocross_weight * geocross(part) if geocross_weight else error
        optimiser.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimiser.step()
        with torch.no_grad():
            v[picked] = _to_sphere(v[picked])
            v[(~active).to(device)] = frozen
        values = loss.detach().double().cpu()
        stop = values < eps
        if patience is not None:
            improved = values < best[rows] * (1.0 - tolerance)
            best[rows] = torch.where(improved, values, best[rows])
            since_best[rows] = torch.where(improved, torch.zeros_like(since_best[rows]), since_best[rows] + 1)
            stop |= since_best[rows] >= patience
        active[rows] = ~stop

    with torch.no_grad():
        latent = codes(v.detach())
        image = synthesise(generator, latent, noises)
        errors = (downsample(image, size, method=downsample_method) - goal_all).pow(2).mean(dim=(1, 2, 3)).view(n, k)
        choice = errors.argmin(dim=1)
        pick = torch.arange(n, device=device) * k + choice
    return PulseResult(image=image[pick], latent=latent[pick], lr_error=errors.gather(1, choice[:, None])[:, 0],
                       hypothesis=choice.cpu(), all_errors=errors)
