"""The project's own face embedder and its identity classifier (trained with softmax + centre loss).

Two networks (CentreFace, Wen et al. 2016, made small; the objective is
:mod:`fsr_core.training.face_embedder_objective`):

- :class:`FaceEmbedder`: an aligned face crop ``[N,3,S,S]`` in [-1,1] -> an embedding
  ``[N,embedding_dim]`` (not normalised; compare embeddings by cosine similarity). A stem 3x3
  convolution, then one stage per entry of ``channels``: a stride-2 3x3 convolution followed by
  ``blocks_per_stage`` residual units (two 3x3 convolutions), each convolution with BatchNorm and
  PReLU; the last feature map is flattened into a fully connected layer, as CentreFace's feature is
  the output of its first FC layer. The network is trained at ``input_size``; a crop of another
  square size (128 px for a 64 px embedder, say) is first resized to it (bilinear, antialiased when
  shrinking), so embeddings of different crop sizes live in the same space.
- :class:`IdentityClassifier`: embedding ``[N,D]`` -> identity logits ``[N,num_classes]``, the
  softmax layer that only training uses.

Unlike the restoration networks (``two_step.py``), the embedder uses BatchNorm: it is a
recognition network, and its outputs are features, not images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fsr_core.networks.base import Network
from fsr_core.networks.blocks import check_features

__all__ = ["FaceEmbedder", "IdentityClassifier"]


def _conv_bn(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), BatchNorm."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels))


class _ResidualUnit(nn.Module):
    """``x + prelu(bn(conv(prelu(bn(conv(x))))))`` at constant channels and size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), nn.PReLU(channels), _conv_bn(channels, channels),
                                  nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FaceEmbedder(Network):
    """Aligned face crop ``[N,3,S,S]`` in [-1,1] (any square S) -> embedding ``[N,embedding_dim]``.

    Args:
        input_size: the crop side the network runs at; other sizes are resized to it. Must be
            divisible by ``2**len(channels)``.
        embedding_dim: length of the embedding.
        channels: feature channels of each stage (each stage halves the resolution).
        blocks_per_stage: residual units after each stage's stride-2 convolution.

    ``ValueError`` on anything but a non-empty ``[N,3,S,S]`` float tensor.
    """

    def __init__(self, *, input_size: int = 64, embedding_dim: int = 128,
                 channels: Sequence[int] = (32, 64, 128, 256), blocks_per_stage: int = 1) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths, got {channels}")
        if embedding_dim < 1 or blocks_per_stage < 0:
            raise ValueError(f"embedding_dim must be >= 1 and blocks_per_stage >= 0, got {embedding_dim}, "
                             f"{blocks_per_stage}")
        divisor = 2 ** len(channels)
        if input_size < divisor or input_size % divisor:
            raise ValueError(f"input_size={input_size} must be a positive multiple of 2**len(channels)={divisor}")
        self.input_size = int(input_size)
        self.embedding_dim = int(embedding_dim)
        self.stem = nn.Sequential(_conv_bn(3, channels[0]), nn.PReLU(channels[0]))
        stages = []
        previous = channels[0]
        for width in channels:
            layers = [_conv_bn(previous, width, stride=2), nn.PReLU(width)]
            layers += [_ResidualUnit(width) for _ in range(blocks_per_stage)]
            stages.append(nn.Sequential(*layers))
            previous = width
        self.stages = nn.Sequential(*stages)
        side = self.input_size // divisor
        self.fc = nn.Linear(previous * side * side, self.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, channels=3, name="FaceEmbedder")
        if not x.is_floating_point() or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"FaceEmbedder expects square float crops [N,3,S,S] in [-1,1], got {x.dtype} "
                             f"{tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        features = self.stages(self.stem(x))
        return self.fc(features.flatten(1))


class IdentityClassifier(Network):
    """Embedding ``[N,embedding_dim]`` -> identity logits ``[N,num_classes]`` (a linear softmax layer).

    ``ValueError`` unless the input is ``[N,embedding_dim]`` with N >= 1."""

    def __init__(self, *, embedding_dim: int = 128, num_classes: int = 2) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 2:
            raise ValueError(f"embedding_dim must be >= 1 and num_classes >= 2, got {embedding_dim}, {num_classes}")
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.logits = nn.Linear(self.embedding_dim, self.num_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.ndim != 2 or embedding.shape[1] != self.embedding_dim or embedding.shape[0] < 1:
            raise ValueError(f"IdentityClassifier expects [N,{self.embedding_dim}] embeddings, got shape "
                             f"{tuple(embedding.shape)}")
        return self.logits(embedding)
