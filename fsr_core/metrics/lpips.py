"""LPIPS (Zhang et al. 2018), AlexNet variant v0.1: the learned perceptual distance of the ``lpips`` package.

Two weight files, both read from configured locations, never downloaded:

- the **linear heads** (``lin0``-``lin4``, 1x1 convolutions without bias, calibrated on human
  judgements): ``lpips/weights/v0.1/alex.pth`` of the ``lpips`` wheel, installed without its
  dependencies (its code imports torchvision, which cannot sit beside the CPU torch pinned here)
  and located without importing it;
- the **AlexNet backbone** (ImageNet weights, torchvision's layout ``features.{0,3,6,8,10}.weight``
  /``.bias``, e.g. torchvision's ``alexnet-owt-7be5be79.pth``): not obtainable in this build
  environment, so it must be given (``backbone_uri``, a path or ``s3://``); a missing file is an
  error naming it. Without it there is no LPIPS here, and nothing is computed under its name with
  another network.

The computation follows the package (read for its conventions): inputs RGB in [-1, 1]; the scaling
layer ``(x - shift) / scale`` with shift (-0.030, -0.088, -0.188) and scale (0.458, 0.448, 0.450);
the ReLU outputs after AlexNet's 1st, 2nd, 3rd, 4th and 5th convolutions (max pools of 3, stride 2
after the 1st and 2nd); each feature map divided by its channel-wise L2 norm (+1e-10); the squared
difference through the layer's head, averaged over space, summed over the five layers.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from fsr_core import storage

__all__ = ["LPIPS", "default_heads_path", "load_lpips", "lpips_distance"]

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_CHANNELS = (64, 192, 384, 256, 256)


def default_heads_path() -> str:
    """The ``lpips`` wheel's AlexNet v0.1 heads, found without importing the package."""
    path = storage.package_file("lpips", "weights", "v0.1", "alex.pth")
    if path is None:
        raise FileNotFoundError(
            "LPIPS heads alex.pth not found: install the lpips wheel without its dependencies "
            "(`pip install --no-deps lpips==0.1.4`; only weights/v0.1/alex.pth is used) or pass heads_uri")
    return path


class LPIPS(nn.Module):
    """AlexNet features + the LPIPS heads; ``forward(a, b)`` -> ``[N]`` distances of RGB in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleList([
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.Conv2d(64, 192, 5, padding=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.Conv2d(384, 256, 3, padding=1), nn.Conv2d(256, 256, 3, padding=1),
        ])
        self.heads = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.shift) / self.scale
        taps = []
        for k, conv in enumerate(self.features):
            if k in (1, 2):
                h = nn.functional.max_pool2d(h, 3, 2)
            h = torch.relu(conv(h))
            taps.append(h)
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for fa, fb, head in zip(self._taps(a), self._taps(b), self.heads):
            fa = fa / (torch.sqrt(torch.sum(fa ** 2, dim=1, keepdim=True)) + 1e-10)
            fb = fb / (torch.sqrt(torch.sum(fb ** 2, dim=1, keepdim=True)) + 1e-10)
            total = total + head((fa - fb) ** 2).mean(dim=(2, 3))
        return total.flatten()


def _read_state(uri: str, what: str) -> dict:
    if not storage.exists(uri):
        raise FileNotFoundError(f"{what} not found: {uri}")
    state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{uri} does not hold a state dict ({what})")
    return state


def load_lpips(backbone_uri: str | None, heads_uri: str | None = None) -> LPIPS:
    """LPIPS from the AlexNet ImageNet weights at ``backbone_uri`` (torchvision's keys, with or
    without the classifier) and the heads (default: the lpips wheel's)."""
    if not backbone_uri:
        raise FileNotFoundError("LPIPS needs AlexNet's ImageNet weights (torchvision's alexnet-owt-7be5be79.pth): "
                                "give their path or s3:// URI; they are not downloaded")
    model = LPIPS()
    backbone = _read_state(backbone_uri, "AlexNet ImageNet weights (torchvision's alexnet-owt-7be5be79.pth)")
    heads_uri = heads_uri or default_heads_path()
    heads = _read_state(heads_uri, "LPIPS heads (lpips/weights/v0.1/alex.pth)")
    try:
        for k, index in enumerate((0, 3, 6, 8, 10)):
            model.features[k].weight.copy_(backbone[f"features.{index}.weight"])
            model.features[k].bias.copy_(backbone[f"features.{index}.bias"])
            model.heads[k].weight.copy_(heads[f"lin{k}.model.1.weight"])
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{backbone_uri} / {heads_uri}: not AlexNet features and LPIPS v0.1 heads ({exc})") from exc
    return model.eval()


def lpips_distance(model: LPIPS, a: np.ndarray, b: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """``[N]`` LPIPS between uint8 RGB images ``a[i]`` and ``b[i]`` (``[N,H,W,3]``, H, W >= 32)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected two [N,H,W,3] image sets of one shape, got {a.shape} and {b.shape}")
    param = next(model.parameters())
    out = []
    with torch.no_grad():
        for start in range(0, len(a), batch_size):
            x, y = (torch.from_numpy(np.ascontiguousarray(t[start:start + batch_size])).permute(0, 3, 1, 2)
                    .to(device=param.device, dtype=param.dtype) / 127.5 - 1.0 for t in (a, b))
            out.append(model(x, y).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
