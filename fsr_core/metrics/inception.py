"""FID and KID proper: pytorch-fid's Inception-v3 pool3 features of uint8 images
(:class:`~fsr_core.networks.inception_fid.FIDInceptionV3`, weights from ``pt_inception-2015-12-05-6726825d.pth``
at a configured location), compared with :func:`~fsr_core.metrics.distribution.fid_from_features`
and :func:`~fsr_core.metrics.distribution.kid_from_features`.

Only features of that network are called ``fid_inception`` / ``kid_inception``; a set of fewer than
2049 images has a singular covariance (the Fréchet distance stays finite, but compare values at
the same set size only).
"""

from __future__ import annotations

import numpy as np
import torch

from fsr_core.networks.inception_fid import FIDInceptionV3

__all__ = ["inception_features"]


def inception_features(model: FIDInceptionV3, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """``[N,2048]`` float64 pool3 features of uint8 RGB ``images`` (``[N,H,W,3]``, any size: the
    network resizes to 299x299), each pixel mapped to [-1, 1] as ``u / 127.5 - 1``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [N,H,W,3] RGB images, got {images.dtype} {images.shape}")
    param = next(model.parameters())
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
            x = x.to(device=param.device, dtype=param.dtype) / 127.5 - 1.0
            out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))
