"""Inception-v3 as FID and KID use it: pytorch-fid's "FID Inception", the TensorFlow graph of 2015
(``inception-2015-12-05.tgz``) ported to PyTorch, read from its weight file ``pt_inception-2015-12-05-6726825d.pth``.

The weights are never downloaded here: the file comes from a configured location (a path or
``s3://``), as pytorch-fid publishes it (the ``fid_weights`` release of
``github.com/mseitzer/pytorch-fid``, 91 MB; torch hub's naming puts the first 8 hex digits of the
file's sha256 in its name). :func:`load_fid_inception` loads it strictly: every key and shape of
the file must be a key and shape of :class:`FIDInceptionV3`, and the reverse.

The layout is torchvision's Inception-v3 (``Inception3(num_classes=1008, aux_logits=False)``, no
auxiliary classifier, the 1008-class ``fc`` of the TF graph) with the blocks that pytorch-fid
patches to follow the TF graph (read in ``src/pytorch_fid/inception.py`` and torchvision's
``models/inception.py``, not copied):

- every convolution is a ``BasicConv2d``: ``conv`` (no bias) -> ``bn`` (BatchNorm, eps 0.001) -> ReLU;
- the average pools of the branch_pool of ``Mixed_5b/5c/5d`` (block A), ``Mixed_6b..6e`` (block C)
  and ``Mixed_7b`` (block E) are 3x3, stride 1, padding 1 with ``count_include_pad=False``
  (TensorFlow does not count the padded zeros);
- ``Mixed_7c``'s branch_pool is a 3x3 **max** pool (stride 1, padding 1), as in the TF graph;
- the reductions ``Mixed_6a`` (block B) and ``Mixed_7a`` (block D) and the stem are torchvision's.

:meth:`FIDInceptionV3.forward` is pytorch-fid's ``InceptionV3([3])`` path: inputs are bilinearly
resized to 299x299 (``align_corners=False``, no antialiasing; an identity at 299 px), then the
stem, the two 3x3 stride-2 max pools, the Mixed blocks and the global average pool give the
2048-d "pool3" features. pytorch-fid resizes images in [0, 1] and then maps them to [-1, 1]; here
the input is already in [-1, 1] (the resize is affine, so the two orders agree up to float
rounding). These are pytorch-fid's / torch-fidelity's features, not clean-fid's "clean" mode
(which resizes with PIL bicubic before the network).
"""

from __future__ import annotations

import hashlib
import io

import torch
import torch.nn.functional as F
from torch import nn

from fsr_core import storage

__all__ = ["FID_WEIGHTS_FILE", "FID_WEIGHTS_SOURCE", "FIDInceptionV3", "load_fid_inception", "missing_weights_message"]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SOURCE = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001), ReLU; keys ``conv.weight`` and ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *,
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 stride-1 SAME average pool: the padded zeros are not counted."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (``Mixed_5b..5d``): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | TF avg pool-1x1 -> 224 + pool_features channels."""

    def __init__(self, in_channels: int, *, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """Reduction 35 -> 17 (``Mixed_6a``): 3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2 -> 480 + in_channels."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17x17 block (``Mixed_6b..6e``) with factorised 7x7 convolutions (``c7`` channels inside) -> 768."""

    def __init__(self, in_channels: int, *, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = conv(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_tf_avg_pool(x))], dim=1)


class InceptionD(nn.Module):
    """Reduction 17 -> 8 (``Mixed_7a``): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool 3x3/2 -> 512 + in_channels."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            seven = conv(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven,
                          F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class InceptionE(nn.Module):
    """8x8 block (``Mixed_7b``, ``Mixed_7c``) with split 1x3/3x1 outputs -> 2048. ``pool``: ``"avg"``
    (TF's average pool, ``Mixed_7b``) or ``"max"`` (the TF graph's max pool in ``Mixed_7c``)."""

    def __init__(self, in_channels: int, *, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = (_tf_avg_pool(x) if self.pool == "avg"
                  else F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], dim=1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception-v3 (see the module docstring); no constructor arguments, as the
    weight file fixes them.

    ``forward(x)``: ``[N,3,H,W]`` float RGB in [-1, 1] (any H, W: resized to 299x299) ->
    ``[N,2048]`` pool3 features (non-negative: the mean of ReLU outputs). ``fc`` (1008 TF classes)
    is kept so that the file loads strictly; FID and KID do not use it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected [N,3,H,W] RGB in [-1, 1], got shape {tuple(x.shape)}")
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))       # 147x147x64
        x = F.max_pool2d(x, kernel_size=3, stride=2)                            # 73x73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                           # 71x71x192
        x = F.max_pool2d(x, kernel_size=3, stride=2)                            # 35x35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,  # 35 -> 17x17x768
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):               # -> 8x8x2048
            x = block(x)
        return x.mean(dim=(2, 3))


def missing_weights_message(uri: str | None) -> str:
    """Where the FID Inception weights were looked for, and where they come from."""
    where = f"not found: {uri}" if uri else "not configured"
    return (f"FID Inception weights ({FID_WEIGHTS_FILE}) {where}; they are not downloaded here: fetch pytorch-fid's "
            f"file from {FID_WEIGHTS_SOURCE} and give its path or s3:// URI")


def load_fid_inception(uri: str | None, *, sha256: str | None = None) -> FIDInceptionV3:
    """:class:`FIDInceptionV3` in eval mode with the weights of pytorch-fid's file at ``uri`` (a path
    or ``s3://``), loaded strictly (``ValueError`` naming the missing and unexpected keys). With
    ``sha256``, a file of other bytes is refused (``ValueError``). ``FileNotFoundError`` naming the
    file and its source when it is absent. BatchNorm's ``num_batches_tracked`` counters may be
    absent from the file (older torch did not save them); they are not used in eval mode."""
    if not uri or not storage.exists(uri):
        raise FileNotFoundError(missing_weights_message(uri))
    data = storage.read_bytes(uri)
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise ValueError(f"{uri}: sha256 {digest}, expected {sha256} (not the configured FID Inception weights)")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{uri} does not hold a state dict (FID Inception weights, {FID_WEIGHTS_FILE})")
    # a plain dict carries no per-module version metadata, so BatchNorm supplies an absent counter
    state = dict(state)
    model = FIDInceptionV3()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{uri} is not pytorch-fid's Inception layout ({FID_WEIGHTS_FILE}): {exc}") from exc
    return model.requires_grad_(False).eval()
