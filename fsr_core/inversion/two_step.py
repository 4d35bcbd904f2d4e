"""Step 2 of two-step extreme FSR (``METHODS.md`` section 1; paper section 5): MR -> HR through a StyleGAN2
prior, and the latent searches that restorer cards name.

:func:`latent_step` takes MR faces (step 1's output) and

1. projects them into W and into W+ (:func:`~fsr_core.inversion.projection.project`; errors ``E_p``,
   ``E_p+``);
2. moves both codes along the principal normal, ``z + gamma_normal n`` (Eq. 7; skipped while the
   prior's normal is zero or ``gamma_normal`` is 0);
3. interpolates both toward the mean, ``gamma_w`` and ``gamma_w_plus`` (Eq. 9; reading: in the
   Gaussianised space);
4. merges them, ``a w_i + (1 - a) w+_i`` with ``a = E_p+ / (E_p + E_p+)`` (Eq. 10-11, the reading);
5. renders the merged code at the generator's resolution, with the noise maps ``final_noise`` names
   (``weighted``: ``a`` noise_W + (1 - a) noise_W+, the same rule as the codes; ``w``, ``w_plus``:
   that projection's maps; every one of them a reading, the paper says nothing of noise).

The searches (``search(networks, lr, *, seed, **settings) -> sr``, :mod:`fsr_core.inversion`):

``two_step_latent``
    networks ``generator`` (a ``stylegan2_generator``), optional ``l2h`` (step 1: without it the input
    is the MR image), optional ``prior`` (a :class:`~fsr_core.networks.latent_prior.LatentPrior`:
    statistics and the principal normal; without it statistics are sampled and no normal is applied),
    optional ``embedder`` (for ``perceptual: face_embedder``). Face ``i`` of a call uses seed ``seed + i``,
    so the restorer's batching does not change any face's result.
``pulse``
    networks ``generator`` and optional ``prior``: :func:`~fsr_core.inversion.pulse.pulse` on the LR input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import Tensor, nn

from fsr_core.inversion.distances import make_distance
from fsr_core.inversion.latent import (edit_along_normal, interpolate_to_mean, merge_codes, merge_weight,
                                       statistics_from)
from fsr_core.inversion.projection import Projection, project, synthesise

__all__ = ["ProjectionSettings", "StepResult", "latent_step", "pulse_search", "two_step_latent"]


@dataclass(frozen=True)
class ProjectionSettings:
    """The settings of both projections (:func:`~fsr_core.inversion.projection.project`'s keywords),
    with the perceptual distance by name (:mod:`fsr_core.inversion.distances`)."""

    steps: int = 1000
    learning_rate: float = 0.1
    perceptual: Literal["lpips", "dlib", "face_embedder", "none"] = "lpips"
    perceptual_weight: float = 1.0
    mse: float = 1.0
    noise_regularize: float = 1e5
    optimise_noise: bool = True
    noise_strength: float = 0.05
    noise_ramp: float = 0.75
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    downsample: Literal["area", "bicubic"] = "area"
    patience: int | None = None
    tolerance: float = 1e-3
    lpips_backbone: str | None = None
    lpips_heads: str | None = None
    dlib_weights: str | None = None
    template: str = "ffhq"

    def run(self, generator: nn.Module, target: Tensor, *, space: str, seeds: list[int],
            statistics: Mapping[str, Tensor], networks: Mapping[str, nn.Module] | None = None) -> Projection:
        device = next(generator.parameters()).device
        distance = make_distance(self.perceptual, networks=networks, lpips_backbone=self.lpips_backbone,
                                 lpips_heads=self.lpips_heads, dlib_weights=self.dlib_weights,
                                 template=self.template, device=device)
        return project(generator, target, seeds=seeds, space=space, steps=self.steps,
                       learning_rate=self.learning_rate, distance=distance,
                       perceptual=self.perceptual_weight if distance is not None else 0.0, mse=self.mse,
                       noise_regularize=self.noise_regularize, optimise_noise=self.optimise_noise,
                       noise_strength=self.noise_strength, noise_ramp=self.noise_ramp, lr_rampup=self.lr_rampup,
                       lr_rampdown=self.lr_rampdown, downsample_method=self.downsample, patience=self.patience,
                       tolerance=self.tolerance, statistics=statistics)


@dataclass
class StepResult:
    """``image`` ``[N,3,S,S]``; ``latent`` the merged W+ code ``[N,L,D]``; the two projections; ``a`` ``[N]``."""

    image: Tensor
    latent: Tensor
    w: Projection
    w_plus: Projection
    a: Tensor


def _seeds(seed: int, n: int) -> list[int]:
    return [int(seed) + i for i in range(n)]


def latent_step(
    generator: nn.Module,
    mr: Tensor,
    *,
    seeds: list[int],
    statistics: Mapping[str, Tensor],
    normal: Tensor | None = None,
    normal_space: Literal["gaussian", "w"] = "gaussian",
    projection: ProjectionSettings = ProjectionSettings(),
    networks: Mapping[str, nn.Module] | None = None,
    gamma_normal: float = 1.0,
    gamma_w: float = 0.1,
    gamma_w_plus: float = 0.3,
    interpolation_space: Literal["gaussian", "w"] = "gaussian",
    merge_rule: Literal["error_ratio", "fixed"] = "error_ratio",
    merge_fixed: float = 0.5,
    merge_space: Literal["gaussian", "w"] = "w",
    final_noise: Literal["weighted", "w", "w_plus"] = "weighted",
) -> StepResult:
    """Step 2 on MR faces ``[N,3,s,s]`` in [-1,1] (see the module docstring)."""
    w = projection.run(generator, mr, space="w", seeds=seeds, statistics=statistics, networks=networks)
    w_plus = projection.run(generator, mr, space="w_plus", seeds=seeds, statistics=statistics, networks=networks)
    code, code_plus = w.latent, w_plus.latent
    if normal is not None and gamma_normal and float(normal.abs().sum()) > 0:
        code = edit_along_normal(code, normal, gamma_normal, space=normal_space)
        code_plus = edit_along_normal(code_plus, normal, gamma_normal, space=normal_space)
    mean = statistics["gauss_mean"] if interpolation_space == "gaussian" else statistics["w_mean"]
    code = interpolate_to_mean(code, gamma_w, mean=mean.to(code), space=interpolation_space)
    code_plus = interpolate_to_mean(code_plus, gamma_w_plus, mean=mean.to(code), space=interpolation_space)
    a = merge_weight(w.error, w_plus.error, rule=merge_rule, fixed=merge_fixed)
    merged = merge_codes(code, code_plus, a, space=merge_space)
    if final_noise == "weighted":
        weight = a.view(-1, 1, 1, 1)
        noises = [weight * nw + (1 - weight) * np_ for nw, np_ in zip(w.noises, w_plus.noises)]
    elif final_noise in ("w", "w_plus"):
        noises = (w if final_noise == "w" else w_plus).noises
    else:
        raise ValueError(f"final_noise must be 'weighted', 'w' or 'w_plus', got {final_noise!r}")
    with torch.no_grad():
        image = synthesise(generator, merged, noises)
    return StepResult(image=image, latent=merged, w=w, w_plus=w_plus, a=a)


_PROJECTION_KEYS = {f for f in ProjectionSettings.__dataclass_fields__}


def _prior_parts(networks: Mapping[str, nn.Module], generator: nn.Module, settings: dict[str, Any]):
    prior = networks.get("prior")
    statistics = statistics_from(prior.statistics() if prior is not None else None, generator,
                                 samples=int(settings.pop("statistics_samples", 10000)),
                                 seed=int(settings.pop("statistics_seed", 0)))
    return prior, statistics


def two_step_latent(networks: Mapping[str, nn.Module], lr: Tensor, *, seed: int, **settings: Any) -> Tensor:
    """The search ``two_step_latent``: LR (or MR without ``l2h``) -> step 1 -> step 2 -> ``[N,3,S,S]``.

    ``settings``: :class:`ProjectionSettings` fields, :func:`latent_step`'s keywords, and
    ``statistics_samples`` / ``statistics_seed`` (used when there is no ``prior``)."""
    settings = dict(settings)
    generator = networks["generator"]
    prior, statistics = _prior_parts(networks, generator, settings)
    projection = ProjectionSettings(**{k: settings.pop(k) for k in list(settings) if k in _PROJECTION_KEYS})
    with torch.no_grad():
        mr = networks["l2h"](lr) if "l2h" in networks else lr
    result = latent_step(generator, mr, seeds=_seeds(seed, len(lr)), statistics=statistics,
                         normal=None if prior is None else prior.normal,
                         normal_space="gaussian" if prior is None else prior.normal_space,
                         projection=projection, networks=networks, **settings)
    return result.image.clamp(-1, 1)


def pulse_search(networks: Mapping[str, nn.Module], lr: Tensor, *, seed: int, **settings: Any) -> Tensor:
    """The search ``pulse``: :func:`~fsr_core.inversion.pulse.pulse` on the LR faces -> ``[N,3,S,S]``."""
    from fsr_core.inversion.pulse import pulse

    settings = dict(settings)
    generator = networks["generator"]
    _, statistics = _prior_parts(networks, generator, settings)
    return pulse(generator, lr, seeds=_seeds(seed, len(lr)), statistics=statistics, **settings).image.clamp(-1, 1)
