"""The latent space of a StyleGAN2 generator: statistics, the Gaussianised space, the principal normal,
interpolation toward the mean and the error-weighted merge of W and W+ codes (``METHODS.md`` section 1,
step 2, and its readings).

Codes are W codes ``[N,D]`` or W+ codes ``[N,L,D]`` (``L = generator.n_latent``, ``D = style_dim``).

The **Gaussianised space** (Wulff and Torralba 2020; PULSE): the mapping network ends with a leaky ReLU
of slope 0.2 (rosinality's ``fused_lrelu``: ``sqrt(2) * lrelu_0.2(x + b)``); a leaky ReLU of slope 5
undoes it exactly (the positive gain commutes), so ``v = lrelu_5(w)`` is close to Gaussian and
``w = lrelu_0.2(v)`` maps back (:func:`gaussianise`, :func:`degaussianise`). Its mean and per-dimension
standard deviation are estimated from codes of the generator's own mapping network
(:func:`latent_statistics`, a fixed seed so that every process gets the same numbers).

- :func:`fit_principal_normal`: a linear SVM (scikit-learn ``LinearSVC``) between the codes of
  MR-quality and HR-quality images; the unit normal of its hyperplane, pointing toward the HR side;
- :func:`edit_along_normal`: ``z' = z + gamma n`` (reading of Eq. 7: gamma > 0 moves toward HR);
- :func:`interpolate_to_mean`: ``w_i = w + gamma (w_mean - w)`` (Eq. 9), in the Gaussianised space by
  default (the reading), or in W as written;
- :func:`merge_weight` and :func:`merge_codes`: ``a = E_p+ / (E_p + E_p+)`` (the reading of Eq. 11,
  ``E`` the projections' MSEs) and ``w_final = a w_i + (1 - a) w+_i`` (Eq. 10), W broadcast over the
  ``L`` layers.
"""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GAUSSIAN_SLOPE",
    "MAPPING_SLOPE",
    "degaussianise",
    "edit_along_normal",
    "fit_principal_normal",
    "gaussianise",
    "interpolate_to_mean",
    "latent_statistics",
    "merge_codes",
    "merge_weight",
]

MAPPING_SLOPE = 0.2
"""The negative slope of the mapping network's last leaky ReLU."""
GAUSSIAN_SLOPE = 1.0 / MAPPING_SLOPE
"""The slope that undoes it (5)."""

Space = Literal["w", "gaussian"]


def gaussianise(w: Tensor) -> Tensor:
    """W (or W+) codes -> the Gaussianised space: leaky ReLU of slope 5."""
    return F.leaky_relu(w, GAUSSIAN_SLOPE)


def degaussianise(v: Tensor) -> Tensor:
    """The Gaussianised space -> W: leaky ReLU of slope 0.2 (the inverse of :func:`gaussianise`)."""
    return F.leaky_relu(v, MAPPING_SLOPE)


@torch.no_grad()
def latent_statistics(generator: torch.nn.Module, *, samples: int = 10000, seed: int = 0,
                      batch_size: int = 4096) -> dict[str, Tensor]:
    """Statistics of ``samples`` codes ``w = generator.style(z)``, ``z ~ N(0, I)`` drawn from ``seed``
    (on the CPU, so every device gets the same codes), on the generator's device:

    ``w_mean`` ``[D]``, ``w_std`` ``[]`` (rosinality's projector: ``sqrt(sum |w - w_mean|^2 / samples)``,
    the scale of its latent noise), ``gauss_mean`` and ``gauss_std`` ``[D]`` (of ``lrelu_5(w)``).
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(int(seed))
    codes = []
    for start in range(0, samples, batch_size):
        z = torch.randn(min(batch_size, samples - start), generator.style_dim, generator=rng)
        codes.append(generator.style(z.to(device)).double())
    w = torch.cat(codes)
    w_mean = w.mean(0)
    v = gaussianise(w)
    dtype = torch.float32
    return {"w_mean": w_mean.to(dtype), "w_std": ((w - w_mean).pow(2).sum() / samples).sqrt().to(dtype),
            "gauss_mean": v.mean(0).to(dtype), "gauss_std": v.std(0).to(dtype)}


def fit_principal_normal(mr_codes: np.ndarray | Tensor, hr_codes: np.ndarray | Tensor, *, c: float = 1.0,
                         max_iter: int = 10000, seed: int = 0) -> np.ndarray:
    """The principal normal: the unit normal ``[D]`` (float64) of a linear SVM's hyperplane between
    ``mr_codes`` (class 0) and ``hr_codes`` (class 1), ``[N,D]`` each, pointing toward the HR side.

    scikit-learn's ``LinearSVC`` (squared hinge, ``C = c``), fitted on the codes as given (the caller
    picks the space: W, Gaussianised, W+ flattened)."""
    from sklearn.svm import LinearSVC

    mr = np.asarray(mr_codes.detach().cpu() if isinstance(mr_codes, Tensor) else mr_codes, np.float64)
    hr = np.asarray(hr_codes.detach().cpu() if isinstance(hr_codes, Tensor) else hr_codes, np.float64)
    if mr.ndim != 2 or hr.ndim != 2 or mr.shape[1] != hr.shape[1]:
        raise ValueError(f"expected two [N,D] code sets of one D, got {mr.shape} and {hr.shape}")
    if len(mr) < 1 or len(hr) < 1:
        raise ValueError("the principal normal needs at least one code of each class")
    x = np.concatenate([mr, hr])
    y = np.concatenate([np.zeros(len(mr)), np.ones(len(hr))])
    svm = LinearSVC(C=c, max_iter=max_iter, random_state=seed).fit(x, y)
    normal = svm.coef_.reshape(-1).astype(np.float64)
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("the SVM found no separating direction (a zero normal)")
    return normal / norm


def _to_space(w: Tensor, space: Space) -> Tensor:
    if space not in ("w", "gaussian"):
        raise ValueError(f"space must be 'w' or 'gaussian', got {space!r}")
    return gaussianise(w) if space == "gaussian" else w


def _from_space(v: Tensor, space: Space) -> Tensor:
    return degaussianise(v) if space == "gaussian" else v


def edit_along_normal(w: Tensor, normal: Tensor, gamma: float, *, space: Space = "gaussian") -> Tensor:
    """``z' = z + gamma n`` in ``space`` (W or Gaussianised), for W ``[N,D]`` or W+ ``[N,L,D]`` codes
    (every layer moved alike); ``normal`` ``[D]`` (made unit length here)."""
    if normal.ndim != 1 or normal.shape[0] != w.shape[-1]:
        raise ValueError(f"normal must be [{w.shape[-1]}], got {tuple(normal.shape)}")
    n = normal.to(w) / normal.norm().clamp_min(1e-12)
    return _from_space(_to_space(w, space) + gamma * n, space)


def interpolate_to_mean(w: Tensor, gamma: float, *, mean: Tensor, space: Space = "gaussian") -> Tensor:
    """Eq. 9: ``w + gamma (mean - w)`` in ``space``; ``mean`` ``[D]`` is the mean *in that space*
    (``w_mean`` for W, ``gauss_mean`` for the Gaussianised space). ``gamma`` in [0, 1]."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if mean.shape != w.shape[-1:]:
        raise ValueError(f"mean must be [{w.shape[-1]}], got {tuple(mean.shape)}")
    v = _to_space(w, space)
    return _from_space(v + gamma * (mean.to(v) - v), space)


def merge_weight(error_w: Tensor, error_w_plus: Tensor, *, rule: Literal["error_ratio", "fixed"] = "error_ratio",
                 fixed: float = 0.5, floor: float = 1e-12) -> Tensor:
    """The weight ``a`` ``[N]`` of the W code in the merge (Eq. 11).

    ``error_ratio`` (the reading): ``a = E_p+ / (E_p + E_p+)``, inversely proportional to the W
    projection's error (both errors floored at ``floor``: the paper says they are bounded away from
    zero); ``fixed``: ``a = fixed`` for every face."""
    if error_w.shape != error_w_plus.shape:
        raise ValueError(f"error shapes differ: {tuple(error_w.shape)} and {tuple(error_w_plus.shape)}")
    if rule == "fixed":
        if not 0.0 <= fixed <= 1.0:
            raise ValueError(f"fixed must be in [0, 1], got {fixed}")
        return torch.full_like(error_w, float(fixed))
    if rule != "error_ratio":
        raise ValueError(f"rule must be 'error_ratio' or 'fixed', got {rule!r}")
    e, e_plus = error_w.clamp_min(floor), error_w_plus.clamp_min(floor)
    return e_plus / (e + e_plus)


def merge_codes(w: Tensor, w_plus: Tensor, a: Tensor, *, space: Space = "w") -> Tensor:
    """Eq. 10: ``a w + (1 - a) w+`` ``[N,L,D]`` from W codes ``[N,D]``, W+ codes ``[N,L,D]`` and
    ``a`` ``[N]``, combined in ``space`` (W as written, or Gaussianised)."""
    if w.ndim != 2 or w_plus.ndim != 3 or w.shape[0] != w_plus.shape[0] or w.shape[1] != w_plus.shape[2]:
        raise ValueError(f"expected W [N,D] and W+ [N,L,D], got {tuple(w.shape)} and {tuple(w_plus.shape)}")
    if a.shape != w.shape[:1]:
        raise ValueError(f"a must be [{w.shape[0]}], got {tuple(a.shape)}")
    a = a.to(w).view(-1, 1, 1)
    merged = a * _to_space(w, space).unsqueeze(1) + (1 - a) * _to_space(w_plus, space)
    return _from_space(merged, space)


def statistics_from(prior: Mapping[str, Tensor] | None, generator: torch.nn.Module, *, samples: int,
                    seed: int) -> dict[str, Tensor]:
    """The statistics a latent prior network stores (:class:`~fsr_core.networks.latent_prior.LatentPrior`
    buffers), or :func:`latent_statistics` of the generator when there is none."""
    if prior is not None:
        return {key: prior[key] for key in ("w_mean", "w_std", "gauss_mean", "gauss_std")}
    return latent_statistics(generator, samples=samples, seed=seed)
