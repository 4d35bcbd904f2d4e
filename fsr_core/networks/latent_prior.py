"""What step 2 of the two-step method knows about a generator's latent space, as a network of buffers.

:class:`LatentPrior` holds no trainable weight: the statistics of the generator's codes
(:func:`fsr_core.inversion.latent.latent_statistics`) and the principal normal fitted on inverted
MR-quality and HR-quality faces (:func:`fsr_core.inversion.latent.fit_principal_normal`), so that a
restorer bundle carries them beside the generator (``weights/prior.pt``) and a latent search reads them
instead of sampling again.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fsr_core.networks.base import Network

__all__ = ["LatentPrior"]


class LatentPrior(Network):
    """Buffers ``w_mean`` ``[D]``, ``w_std`` ``[]``, ``gauss_mean``, ``gauss_std`` ``[D]`` (codes of the
    generator's mapping network, in W and in the Gaussianised space) and ``normal`` ``[D]`` (unit, pointing
    toward HR-quality codes; zero when none was fitted) in ``normal_space`` (``gaussian`` or ``w``).

    ``forward(w)`` returns the signed distance ``n^T z`` of W codes ``[N,D]`` (``z`` in ``normal_space``)."""

    def __init__(self, *, style_dim: int, normal_space: Literal["gaussian", "w"] = "gaussian") -> None:
        super().__init__()
        if style_dim < 1:
            raise ValueError(f"style_dim must be >= 1, got {style_dim}")
        if normal_space not in ("gaussian", "w"):
            raise ValueError(f"normal_space must be 'gaussian' or 'w', got {normal_space!r}")
        self.style_dim, self.normal_space = style_dim, normal_space
        for name in ("w_mean", "gauss_mean", "gauss_std", "normal"):
            self.register_buffer(name, torch.zeros(style_dim))
        self.register_buffer("w_std", torch.zeros(()))

    def statistics(self) -> dict[str, Tensor]:
        return {"w_mean": self.w_mean, "w_std": self.w_std, "gauss_mean": self.gauss_mean, "gauss_std": self.gauss_std}

    @torch.no_grad()
    def set(self, *, statistics: dict[str, Tensor], normal: Tensor | None = None) -> "LatentPrior":
        """Fill the buffers (``normal`` made unit length)."""
        for key, value in statistics.items():
            getattr(self, key).copy_(torch.as_tensor(value, dtype=torch.float32))
        if normal is not None:
            normal = torch.as_tensor(normal, dtype=torch.float32)
            self.normal.copy_(normal / normal.norm().clamp_min(1e-12))
        return self

    def forward(self, w: Tensor) -> Tensor:
        if w.ndim != 2 or w.shape[1] != self.style_dim:
            raise ValueError(f"LatentPrior expects W codes [N,{self.style_dim}], got {tuple(w.shape)}")
        z = F.leaky_relu(w, 5.0) if self.normal_space == "gaussian" else w  # the Gaussianised space
        return z @ self.normal
