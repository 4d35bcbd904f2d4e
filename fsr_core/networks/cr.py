"""Characteristic Regularisation, CR (``METHODS.md`` section 3; Cheng, Zhu and Gong 2019).

Four kinds of network:

- :class:`CharacteristicRegulariser`: LR ``[N,3,s,s]`` -> LR ``[N,3,s,s]``; phi_cr (genuine LR ->
  LR with artificial characteristics) and its inverse phi~_cr (artificial -> pseudo-genuine) are
  two instances. Paper: 3 residual blocks.
- :class:`LRDomainDiscriminator`: LR ``[N,3,s,s]`` -> one logit per image ``[N,1]``; D (artificial
  real, regulated fake) and D~ (genuine real, pseudo-genuine fake). Paper: 6 residual blocks and a
  fully connected layer.
- :class:`CRSuperResolver`: phi_sr, LR ``[N,3,s,s]`` -> ``[N,3,s*2**(G-1),...]``, SRGAN-like with
  ``G`` groups of residual blocks and a x2 upsampling between groups. Paper: 12 / 3 / 2 blocks,
  16 -> 64.
- :class:`FeatureDiscriminator`: D' of the semantic adaptation (Eq. 8), face-recognition features
  ``[N,D]`` -> one logit per image ``[N,1]``. Paper: 5 fully connected layers.

Images are ``[N,3,H,W]`` in [-1,1]; no output is clamped (a restorer clamps). The paper gives the
block counts only; every other choice is a reading named in the class's docstring (widths 64, no
normalisation layers, residual outputs). No network here uses BatchNorm, so none depends on the
rest of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fsr_core.networks.base import Network
from fsr_core.networks.blocks import check_features

__all__ = [
    "CRSuperResolver",
    "CharacteristicRegulariser",
    "FeatureDiscriminator",
    "LRDomainDiscriminator",
    "parameter_count",
]


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")


def _check_image(x: Tensor, *, name: str, size: int | None = None) -> None:
    check_features(x, channels=3, name=name)
    if not x.is_floating_point():
        raise ValueError(f"{name} expects a float tensor in [-1,1], got {x.dtype}")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{name} expects [N,3,{size},{size}], got shape {tuple(x.shape)}")


def parameter_count(network: nn.Module) -> int:
    """The number of trainable and frozen parameters of ``network``."""
    return sum(p.numel() for p in network.parameters())


class _ResidualBlock(nn.Module):
    """``x + conv(act(conv(x)))`` at constant width and size (He et al. 2016, EDSR's form: no BN)."""

    def __init__(self, channels: int, *, activation: str) -> None:
        super().__init__()
        act = nn.PReLU(channels) if activation == "prelu" else nn.LeakyReLU(0.2)
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), act,
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _DownBlock(nn.Module):
    """A residual block that halves the size and changes the width: the body's first convolution
    has stride 2, the shortcut is 2x2 average pooling and a 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.body(x)


# ---------------------------------------------------------------------------- LR space
class CharacteristicRegulariser(Network):
    """phi_cr or its inverse phi~_cr: LR ``[N,3,H,W]`` in [-1,1] -> LR ``[N,3,H,W]`` (about
    [-1,1], not clamped), any H, W >= 1.

    A 3x3 head convolution with LeakyReLU 0.2, ``num_blocks`` residual blocks (paper: 3) at the
    input size, and a 3x3 tail whose output is *added to the input* (reading: the paper gives only
    the block count; a residual output, its tail initialised to zero, makes an untrained network
    the identity, which is what phi_cr should be on LR that already looks artificial).
    """

    def __init__(self, *, channels: int = 64, num_blocks: int = 3) -> None:
        super().__init__()
        _check_positive(channels=channels)
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.head = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*(_ResidualBlock(channels, activation="leaky") for _ in range(num_blocks)))
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, lr: Tensor) -> Tensor:
        _check_image(lr, name=type(self).__name__)
        return lr + self.tail(self.body(self.head(lr)))


class LRDomainDiscriminator(Network):
    """D or D~: LR ``[N,3,input_size,input_size]`` in [-1,1] -> logits ``[N,1]``.

    A 3x3 head convolution to ``channels``, ``num_blocks`` residual blocks (paper: 6) of which the
    last ``num_downsamples`` halve the size and double the width (up to ``max_channels``), LeakyReLU
    0.2, then one fully connected layer on the flattened features (paper: "6 residual blocks,
    followed by a fully connected layer"; the downsampling and widths are the reading: 16 -> 2 px).
    ``input_size`` must be divisible by ``2**num_downsamples``.
    """

    def __init__(self, *, input_size: int = 16, channels: int = 64, num_blocks: int = 6, num_downsamples: int = 3,
                 max_channels: int = 256) -> None:
        super().__init__()
        _check_positive(input_size=input_size, channels=channels, max_channels=max_channels)
        if not 0 <= num_downsamples <= num_blocks:
            raise ValueError(f"num_downsamples must be in [0, num_blocks={num_blocks}], got {num_downsamples}")
        if input_size % 2**num_downsamples:
            raise ValueError(f"input_size={input_size} must be divisible by 2**num_downsamples={2**num_downsamples}")
        self.input_size = int(input_size)
        blocks: list[nn.Module] = []
        width = channels
        for index in range(num_blocks):
            if index >= num_blocks - num_downsamples:
                wider = min(width * 2, max_channels)
                blocks.append(_DownBlock(width, wider))
                width = wider
            else:
                blocks.append(_ResidualBlock(width, activation="leaky"))
        self.head = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*blocks, nn.LeakyReLU(0.2))
        side = self.input_size // 2**num_downsamples
        self.fc = nn.Linear(width * side * side, 1)

    def forward(self, lr: Tensor) -> Tensor:
        _check_image(lr, name=type(self).__name__, size=self.input_size)
        return self.fc(self.body(self.head(lr)).flatten(1))


# ---------------------------------------------------------------------------- super-resolution
class CRSuperResolver(Network):
    """phi_sr, SRGAN-like: LR ``[N,3,s,s]`` in [-1,1] -> SR ``[N,3,s*scale,s*scale]`` (about [-1,1],
    not clamped), ``scale = 2**(len(blocks_per_group) - 1)``, any s >= 1.

    SRGAN's generator (Ledig et al. 2017) with its residual blocks split into groups (paper: 12, 3
    and 2 blocks, "resolution is increased 2 times across each group": x4): a 9x9 head convolution
    with PReLU; per group, its residual blocks (conv3x3-PReLU-conv3x3; reading: without SRGAN's
    BatchNorm, as EDSR, so an image's output does not depend on its batch) and a 3x3 convolution,
    with a skip around the group; between groups a x2 sub-pixel upsampling (conv3x3 to 4x the
    width, pixel shuffle, PReLU); a 9x9 tail convolution to RGB. ``global_residual`` (not in the
    paper) adds the bilinear upsampling of the input, so a short run learns detail on top of it.
    """

    def __init__(self, *, channels: int = 64, blocks_per_group: Sequence[int] = (12, 3, 2),
                 global_residual: bool = False) -> None:
        super().__init__()
        _check_positive(channels=channels)
        blocks_per_group = tuple(int(b) for b in blocks_per_group)
        if not blocks_per_group or min(blocks_per_group) < 0:
            raise ValueError(f"blocks_per_group must be a non-empty list of counts >= 0, got {blocks_per_group}")
        self.scale = 2 ** (len(blocks_per_group) - 1)
        self.global_residual = bool(global_residual)
        self.head = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU(channels))
        self.groups = nn.ModuleList(
            nn.Sequential(*(_ResidualBlock(channels, activation="prelu") for _ in range(count)),
                          nn.Conv2d(channels, channels, 3, padding=1))
            for count in blocks_per_group)
        self.upsamplers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(channels))
            for _ in blocks_per_group[1:])
        self.tail = nn.Conv2d(channels, 3, 9, padding=4)

    def forward(self, lr: Tensor) -> Tensor:
        _check_image(lr, name=type(self).__name__)
        x = self.head(lr)
        for index, group in enumerate(self.groups):
            if index:
                x = self.upsamplers[index - 1](x)
            x = x + group(x)
        sr = self.tail(x)
        if self.global_residual:
            sr = sr + nn.functional.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return sr


# ---------------------------------------------------------------------------- semantic adaptation
class FeatureDiscriminator(Network):
    """D' (Eq. 8): face-recognition features ``[N,feature_dim]`` -> logits ``[N,1]``.

    ``num_layers`` fully connected layers (paper: 5): ``num_layers - 1`` of width ``hidden`` each
    followed by LeakyReLU 0.2 (reading: the paper gives neither widths nor activations), then one
    to a logit.
    """

    def __init__(self, *, feature_dim: int = 128, hidden: int = 256, num_layers: int = 5) -> None:
        super().__init__()
        _check_positive(feature_dim=feature_dim, hidden=hidden, num_layers=num_layers)
        self.feature_dim = int(feature_dim)
        layers: list[nn.Module] = []
        width = feature_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        if features.ndim != 2 or features.shape[1] != self.feature_dim or features.shape[0] < 1:
            raise ValueError(f"FeatureDiscriminator expects [N,{self.feature_dim}] features, got shape "
                             f"{tuple(features.shape)}")
        if not features.is_floating_point():
            raise ValueError(f"FeatureDiscriminator expects float features, got {features.dtype}")
        return self.layers(features)
