"""SAIR (``METHODS.md`` section 4; Kuo et al., "Self-supervised face image restoration with a one-shot
reference"): a latent search in W+ of a StyleGAN2 prior guided by a reference face of the same identity::

    min_w  L_d + L_ID + alpha1 L_e + alpha2 L_hist                                       (Eq. 8)

    L_d    = || Y - D(G(w)) ||_F^2                                  (Eq. 3; D: fsr_core.degradation.differentiable)
    L_ID   = 1 - <T(Z), T(G(w))> + lambda || w - w_z ||^2                                 (Eq. 5)
    L_e    = 1 - cos(w + gamma dw_e, dw_e)                                                 (Eq. 6)
    L_hist = integral | CDF(F . G(w)) - CDF(F . Y) |                                       (Eq. 7)

with Adam (lr 0.1, betas 0.9/0.999, 400 iterations), ``w`` starting at ``w_z``, ``lambda = 0.001``,
``alpha1 = 0.1``, ``alpha2 = 0.05`` (the paper's values, :class:`SairSettings`' defaults). It is a
projection with more terms: :func:`~fsr_core.inversion.projection.project` runs the loop (its
``forward_model``, ``fidelity_reduction`` and ``extra_loss``), with a constant learning rate, no latent
noise and the generator's stored noise maps (the paper optimises ``w`` only).

The readings, each a named setting:

- the reference ``Z`` of a face is picked from a :class:`~fsr_core.networks.sair.ReferencePool` by the
  cosine similarity of ``T`` (``identity``: dlib's descriptor or the project's embedder) of the input
  upsampled (MATLAB bicubic) to the generator's size with the references' stored ``T(Z)``: among all
  references (``reference_identity: auto``), or among those of the face's given identity
  (``reference_identity: given``: the per-face condition ``identity`` of the restorer card, the paper's
  setting, where the user hands over a reference of the same person); ``reference_choice:
  wrong_identity`` hands it the most similar reference of *another* identity than that one;
- expressions: the paper's seven expression clusters become the attributes an
  :class:`~fsr_core.networks.sair.ExpressionDirections` holds (the demo world: smiling, mouth_open);
  an attribute the LR classifier finds present (logit > 0) pulls along ``+dw_e``, an absent one along
  ``-dw_e``; ``L_e`` is their mean. ``gamma`` (the paper: the optimisation step size) defaults to the
  learning rate; ``expression_origin: zero`` is Eq. 6 as written, ``mean`` measures ``w`` from the mean
  code (where a classifier's boundary passes);
- the face mask ``F`` is an ellipse placed by the alignment template's five landmarks (eyes, nose, mouth
  corners; ``mask_width`` inter-ocular distances wide, ``mask_height`` eye-to-mouth distances tall),
  smooth at its rim, at each image's own size; the histogram is a mask-weighted soft histogram per
  channel (Gaussian soft binning, ``histogram_bandwidth`` in bins: a differentiable approximation of
  hard binning, the paper's [18]), and ``L_hist`` the mean over channels of the integral of
  ``|CDF_a - CDF_b|``. kornia's ``histogram`` takes no per-pixel weight, and the paper's literal
  ``F . G(w)`` would put every background pixel into the bin of 0, so the mask weights the pixels instead;
- ``fidelity_reduction: sum`` is the squared Frobenius norm of Eq. 3 (``mean``: per pixel); D's noise
  enters as its expectation (``fidelity_noise: expectation``) or is drawn each step (``sample``).

Each term can be switched off (``fidelity``, ``identity``, ``expression``, ``histogram``), which is what
the stage's ablation does. A batch of faces is one loop, face ``i`` seeded ``seed + i``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsr_core.degradation.differentiable import Degradation, DegradationSettings
from fsr_core.degradation.resize import imresize_torch
from fsr_core.inversion.distances import make_embedding
from fsr_core.inversion.projection import project

__all__ = ["SairResult", "SairSettings", "expression_loss", "face_mask", "histogram_cdf_distance", "sair",
           "sair_search", "soft_histogram"]


# ---------------------------------------------------------------------------- the terms
@functools.lru_cache(maxsize=32)
def _mask_array(size: int, template: str, width: float, height: float) -> np.ndarray:
    from fsr_core.data.detection import TEMPLATES

    points = TEMPLATES[template]
    eyes, mouth = points[:2].mean(axis=0), points[3:5].mean(axis=0)
    iod = float(np.linalg.norm(points[1] - points[0]))
    eye_mouth = float(mouth[1] - eyes[1])
    cx, cy = 0.5 * (eyes[0] + mouth[0]), 0.5 * (eyes[1] + mouth[1])
    ax, ay = width * iod, height * eye_mouth
    centres = (np.arange(size) + 0.5) / size
    r = np.sqrt(((centres[None, :] - cx) / ax) ** 2 + ((centres[:, None] - cy) / ay) ** 2)
    return (1.0 / (1.0 + np.exp((r - 1.0) * 12.0))).astype(np.float32)  # about 1 inside, 0 outside


def face_mask(size: int, *, template: str = "ffhq", width: float = 1.0, height: float = 1.0) -> Tensor:
    """``[1,1,size,size]`` in [0,1]: the face ellipse of an aligned crop (see the module docstring)."""
    if size < 1 or width <= 0 or height <= 0:
        raise ValueError(f"size, width and height must be positive, got {size}, {width}, {height}")
    return torch.from_numpy(_mask_array(int(size), template, float(width), float(height)))[None, None]


def soft_histogram(values: Tensor, weights: Tensor, *, bins: int = 32, bandwidth: float = 0.5,
                   low: float = -1.0, high: float = 1.0) -> Tensor:
    """``[N,C,bins]`` weighted histograms (each sums to 1) of ``values`` ``[N,C,P]`` with ``weights``
    ``[N,1,P]`` (or ``[N,C,P]``): each value spreads over the bins as a Gaussian of ``bandwidth`` bin
    widths (the outer bins reach to -/+ infinity), so the histogram is differentiable in the values."""
    if bins < 2 or bandwidth <= 0:
        raise ValueError(f"bins must be >= 2 and bandwidth > 0, got {bins}, {bandwidth}")
    width = (high - low) / bins
    inner = torch.linspace(low + width, high - width, bins - 1, device=values.device, dtype=values.dtype)
    below = 0.5 * (1.0 + torch.erf((inner.view(1, 1, -1, 1) - values.unsqueeze(2)) / (bandwidth * width
                                                                                      * math.sqrt(2.0))))
    cdf = torch.cat([torch.zeros_like(below[:, :, :1]), below, torch.ones_like(below[:, :, :1])], dim=2)
    mass = cdf[:, :, 1:] - cdf[:, :, :-1]  # [N,C,bins,P]
    w = weights.unsqueeze(2)
    return (mass * w).sum(-1) / w.sum(-1).clamp_min(1e-12)


def histogram_cdf_distance(a: Tensor, b: Tensor, *, mask_a: Tensor, mask_b: Tensor, bins: int = 32,
                           bandwidth: float = 0.5) -> Tensor:
    """``[N]``: the mean over channels of ``integral |CDF(hist a) - CDF(hist b)|`` (value units, so 0 ...
    2 on [-1,1]) of images ``a`` ``[N,3,H,W]`` and ``b`` ``[N,3,h,w]`` in [-1,1] (sizes may differ), their
    pixels weighted by ``mask_a`` ``[1|N,1,H,W]`` and ``mask_b``."""
    if a.ndim != 4 or b.ndim != 4 or a.shape[:2] != b.shape[:2]:
        raise ValueError(f"a and b must be [N,C,H,W] with the same N and C, got {tuple(a.shape)}, {tuple(b.shape)}")
    ha = soft_histogram(a.flatten(2), mask_a.to(a).expand(a.shape[0], 1, -1, -1).flatten(2), bins=bins,
                        bandwidth=bandwidth)
    hb = soft_histogram(b.flatten(2), mask_b.to(b).expand(b.shape[0], 1, -1, -1).flatten(2), bins=bins,
                        bandwidth=bandwidth)
    return (ha.cumsum(-1) - hb.cumsum(-1)).abs().sum(-1).mean(-1) * (2.0 / bins)


def expression_loss(code: Tensor, direction: Tensor, *, gamma: float, origin: Tensor | None = None) -> Tensor:
    """``[N]``: ``1 - cos(w + gamma dw, dw)`` (Eq. 6) over the flattened W+ code ``[N,L,D]`` and direction
    ``[N,L,D]`` (``w`` measured from ``origin`` when given)."""
    w = code if origin is None else code - origin
    moved = (w + gamma * direction).flatten(1)
    return 1.0 - F.cosine_similarity(moved, direction.flatten(1), dim=1)


# ---------------------------------------------------------------------------- the search
@dataclass(frozen=True)
class SairSettings:
    """The search's settings (restorer card ``settings``; the stage's ``sair`` section)."""

    steps: int = 400
    learning_rate: float = 0.1
    fidelity: bool = True
    identity: bool = True
    expression: bool = True
    histogram: bool = True
    identity_weight: float = 1.0
    latent_weight: float = 0.001  # lambda
    expression_weight: float = 0.1  # alpha1
    histogram_weight: float = 0.05  # alpha2
    init: Literal["reference", "mean"] = "reference"
    reference_choice: Literal["nearest", "wrong_identity"] = "nearest"
    reference_identity: Literal["auto", "given"] = "auto"
    identity_network: Literal["dlib", "face_embedder"] = "dlib"
    expression_gamma: float | None = None
    expression_origin: Literal["zero", "mean"] = "zero"
    histogram_bins: int = 32
    histogram_bandwidth: float = 0.5
    mask_width: float = 1.0
    mask_height: float = 1.0
    fidelity_reduction: Literal["sum", "mean"] = "sum"
    fidelity_noise: Literal["expectation", "sample"] = "expectation"
    degradation: dict[str, Any] = field(default_factory=dict)
    optimise_noise: bool = False
    noise_regularize: float = 0.0
    dlib_weights: str | None = None
    template: str = "ffhq"
    statistics_samples: int = 10000
    statistics_seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.learning_rate <= 0:
            raise ValueError(f"steps must be >= 1 and learning_rate > 0, got {self.steps}, {self.learning_rate}")
        if not (self.fidelity or self.identity or self.expression or self.histogram):
            raise ValueError("SAIR needs one or more of fidelity, identity, expression, histogram switched on")
        if self.init not in ("reference", "mean") or self.reference_choice not in ("nearest", "wrong_identity"):
            raise ValueError(f"init must be reference/mean and reference_choice nearest/wrong_identity, got "
                             f"{self.init!r}, {self.reference_choice!r}")
        if self.reference_identity not in ("auto", "given"):
            raise ValueError(f"reference_identity must be auto or given, got {self.reference_identity!r}")
        if "scale" in self.degradation:
            raise ValueError("the degradation's scale is the generator's size over the input's; do not set it")

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> "SairSettings":
        names = {f.name for f in fields(cls)}
        unknown = set(settings) - names
        if unknown:
            raise ValueError(f"unknown SAIR setting(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**dict(settings))

    def terms(self) -> dict[str, bool]:
        return {"fidelity": self.fidelity, "identity": self.identity, "expression": self.expression,
                "histogram": self.histogram}


@dataclass
class SairResult:
    """``image`` ``[N,3,S,S]``; ``latent`` ``[N,L,D]``; ``reference`` ``[N]`` pool indices (-1: none);
    ``expression_signs`` ``[N,K]`` (+1 present / -1 absent, empty without expressions); ``lr_error`` ``[N]``
    MSE of ``D(G(w))`` against the input; ``steps`` ``[N]``."""

    image: Tensor
    latent: Tensor
    reference: Tensor
    expression_signs: Tensor
    lr_error: Tensor
    steps: Tensor


def sair(generator: nn.Module, lr: Tensor, *, seeds: list[int], settings: SairSettings,
         statistics: Mapping[str, Tensor], references: nn.Module | None = None,
         expressions: nn.Module | None = None, networks: Mapping[str, nn.Module] | None = None,
         identities: Sequence[str] | None = None) -> SairResult:
    """SAIR on the faces ``lr`` ``[N,3,s,s]`` in [-1,1] (see the module docstring); ``identities``: each
    face's identity, which ``reference_identity: given`` needs."""
    if lr.ndim != 4 or lr.shape[1] != 3 or lr.shape[-1] != lr.shape[-2]:
        raise ValueError(f"lr must be [N,3,s,s] in [-1,1], got {tuple(lr.shape)}")
    size, s = generator.size, lr.shape[-1]
    if size % s:
        raise ValueError(f"the generator's {size} px is not a multiple of the input's {s} px")
    device = next(generator.parameters()).device
    lr = lr.to(device).clone()
    n = lr.shape[0]
    needs_reference = settings.identity or settings.init == "reference"
    if needs_reference and references is None:
        raise ValueError("SAIR's identity term and reference init need the restorer network 'references' "
                         "(a sair_reference_pool; fsr restore --references URI)")
    if needs_reference and settings.reference_identity == "given" and identities is None:
        raise ValueError("SAIR with reference_identity: given needs each face's identity (the per-face condition "
                         "'identity': a column of the face rows, or fsr restore --identity)")
    if settings.expression and expressions is None:
        raise ValueError("SAIR's expression term needs the restorer network 'expressions'")
    degradation: Degradation = DegradationSettings(scale=size // s, **settings.degradation).resolve(lr)

    reference = torch.full((n,), -1, dtype=torch.long)
    w_z = e_z = embed = None
    if needs_reference:
        embed = make_embedding(settings.identity_network, networks=networks, dlib_weights=settings.dlib_weights,
                               template=settings.template, device=device)
        with torch.no_grad():
            query = embed(imresize_torch(lr, output_size=(size, size)))
            given = list(identities) if settings.reference_identity == "given" else None
            reference = references.select(query, choice=settings.reference_choice, identities=given).cpu()
        w_z = references.codes[reference.to(references.codes.device)].to(device)
        e_z = references.embeddings[reference.to(references.codes.device)].to(device)
        if tuple(w_z.shape[1:]) != (generator.n_latent, generator.style_dim):
            raise ValueError(f"the reference pool's codes are {tuple(w_z.shape[1:])}, the generator's W+ is "
                             f"{(generator.n_latent, generator.style_dim)}")

    signs = torch.zeros(n, 0)
    targets = None
    if settings.expression:
        with torch.no_grad():
            signs = torch.where(expressions(lr) > 0, 1.0, -1.0)
        targets = signs.to(device)[:, :, None, None] * expressions.directions.to(device)[None]  # [N,K,L,D]
    gamma = settings.learning_rate if settings.expression_gamma is None else settings.expression_gamma
    origin = statistics["w_mean"].to(device).view(1, 1, -1) if settings.expression_origin == "mean" else None
    mask_g = face_mask(size, template=settings.template, width=settings.mask_width,
                       height=settings.mask_height).to(device)
    mask_y = face_mask(s, template=settings.template, width=settings.mask_width,
                       height=settings.mask_height).to(device)

    def extra_loss(code: Tensor, image: Tensor, rows: Tensor) -> Tensor:
        total = torch.zeros(len(rows), device=device)
        picked = rows.to(device)
        if settings.identity:
            similarity = (embed(image) * e_z[picked]).sum(dim=1)
            total = total + settings.identity_weight * (1.0 - similarity) \
                + settings.latent_weight * (code - w_z[picked]).pow(2).flatten(1).sum(dim=1)
        if settings.expression:
            per = [expression_loss(code, targets[picked, k], gamma=gamma, origin=origin)
                   for k in range(targets.shape[1])]
            total = total + settings.expression_weight * torch.stack(per, dim=1).mean(dim=1)
        if settings.histogram:
            total = total + settings.histogram_weight * histogram_cdf_distance(
                image, lr[picked], mask_a=mask_g, mask_b=mask_y, bins=settings.histogram_bins,
                bandwidth=settings.histogram_bandwidth)
        return total

    rng = torch.Generator().manual_seed(int(seeds[0]) if seeds else 0)

    def forward_model(image: Tensor, rows: Tensor) -> Tensor:
        sample = settings.fidelity_noise == "sample" and torch.is_grad_enabled()
        return degradation.select(rows)(image, generator=rng if sample else None)

    initial = w_z if settings.init == "reference" else None
    result = project(generator, lr, seeds=seeds, space="w_plus", steps=settings.steps,
                     learning_rate=settings.learning_rate, distance=None, perceptual=0.0,
                     mse=1.0 if settings.fidelity else 0.0, noise_regularize=settings.noise_regularize,
                     optimise_noise=settings.optimise_noise, noise_strength=0.0, lr_rampup=0.0, lr_rampdown=0.0,
                     statistics=statistics, initial=initial, forward_model=forward_model,
                     fidelity_reduction=settings.fidelity_reduction, extra_loss=extra_loss)
    return SairResult(image=result.image, latent=result.latent, reference=reference, expression_signs=signs.cpu(),
                      lr_error=result.error, steps=result.steps)


def sair_search(networks: Mapping[str, nn.Module], lr: Tensor, *, seed: int,
                conditions: Mapping[str, Sequence[str]] | None = None, **settings: Any) -> Tensor:
    """The search ``sair``: networks ``generator``, optional ``prior`` (latent statistics), ``references``
    (a :class:`~fsr_core.networks.sair.ReferencePool`), ``expressions`` (an
    :class:`~fsr_core.networks.sair.ExpressionDirections`), optional ``embedder``; ``settings``:
    :class:`SairSettings` fields; ``conditions``: ``identity`` per face (``reference_identity: given``)
    -> ``[N,3,S,S]``."""
    from fsr_core.inversion.latent import statistics_from

    parsed = SairSettings.from_mapping(settings)
    generator = networks["generator"]
    prior = networks.get("prior")
    statistics = statistics_from(prior.statistics() if prior is not None else None, generator,
                                 samples=parsed.statistics_samples, seed=parsed.statistics_seed)
    result = sair(generator, lr, seeds=[int(seed) + i for i in range(len(lr))], settings=parsed,
                  statistics=statistics, references=networks.get("references"),
                  expressions=networks.get("expressions"), networks=networks,
                  identities=(conditions or {}).get("identity"))
    return result.image.clamp(-1, 1)
