"""SelFSR (``METHODS.md`` section 2): the flow-field degradation network and the self-conditioned
progressive SR network, each with its discriminator.

Stage 1, LR domain adaptation:

- :class:`FlowDegradationNetwork`: clean LR ``[N,3,s,s]`` -> an intermediate image ``I_m`` and a
  per-pixel flow ``F`` (in pixels); the degraded LR is :func:`warp` ``(I_m, F)``, bilinear.
- :class:`LRDiscriminator`: LR ``[N,3,s,s]`` -> a logit map (PatchGAN).

Stage 2, super-resolution:

- :class:`SelfConditionedNorm`: Eq. 6, ``norm(h) * scale(cond)`` with the LR input resized to the
  activation's size as the condition.
- :class:`SelfConditionedGenerator`: LR ``[N,3,s,s]`` -> ``[N,3,s*2**levels,...]``, one x2 level
  after another, each with the same number of convolutions, each followed by a self-conditioned
  normalisation; grows a level at a time (a new instance with ``levels + 1``).
- :class:`ProgressiveDiscriminator`: HR at the current level's size -> one logit per image; grows
  with the generator at its input side.

Both stage-2 networks use equalised learning rates (:class:`~fsr_core.networks.blocks.EqualConv2d`)
and have a ``fade`` buffer in [0, 1]: right after a growth the new level is blended in (ProGAN's
fade-in), ``fade = 1`` is the grown network alone. The buffer is part of the weights, so a
restorer exported mid-fade runs what training ran. :func:`grown` makes the next level's network
from the current one, every earlier weight kept.

Images are ``[N,3,H,W]`` in [-1,1]. No generator output is clamped (a restorer clamps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsr_core.networks.base import Network
from fsr_core.networks.blocks import EqualConv2d, EqualLinear, check_features

__all__ = [
    "FlowDegradationNetwork",
    "LRDiscriminator",
    "ProgressiveDiscriminator",
    "SelfConditionedGenerator",
    "SelfConditionedNorm",
    "grown",
    "parameter_count",
    "warp",
]


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")


def _check_rgb(x: Tensor, *, name: str, size: int | None = None) -> None:
    check_features(x, channels=3, name=name)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{name} expects [N,3,{size},{size}], got shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------- stage 1: degradation
def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Backward bilinear warp (Eq. 1; the spatial transformer's sampler).

    ``out[n, :, y, x] = image[n, :, y + flow[n, 1, y, x], x + flow[n, 0, y, x]]``, sampled
    bilinearly, with sample positions clamped to the image (border replication, as
    ``grid_sample(..., padding_mode="border", align_corners=True)``). Zero flow returns ``image``
    exactly (the weights are 1 and 0, not a rounded normalised grid).

    Args:
        image: ``[N, C, H, W]`` floating.
        flow: ``[N, 2, H, W]`` pixel offsets, ``(dx, dy)``.

    Returns:
        ``[N, C, H, W]``, differentiable in both ``image`` and ``flow``.
    """
    if image.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"warp expects image [N,C,H,W] and flow [N,2,H,W], got {tuple(image.shape)}, "
                         f"{tuple(flow.shape)}")
    n, c, h, w = image.shape
    if flow.shape[0] != n or tuple(flow.shape[2:]) != (h, w):
        raise ValueError(f"flow {tuple(flow.shape)} does not match image {tuple(image.shape)}")
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, w)
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, h, 1)
    x = (xs + flow[:, 0]).clamp(0, w - 1)
    y = (ys + flow[:, 1]).clamp(0, h - 1)
    x0, y0 = x.detach().floor(), y.detach().floor()
    wx, wy = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = image.reshape(n, c, h * w)

    def gather(yi: Tensor, xi: Tensor) -> Tensor:
        index = (yi * w + xi).view(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, index).view(n, c, h, w)

    top = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FlowDegradationNetwork(Network):
    """The flow-field degradation network (Fig. 2, Eq. 1): clean LR -> (intermediate, flow) -> warp.

    A 3x3 head, ``num_blocks`` residual blocks (conv-LeakyReLU-conv) at the LR size, then two 3x3
    heads: the intermediate image ``I_m = lr + image_head(features)`` (a residual on the clean LR:
    the reading of "forced to approximate the input", whose architecture the paper does not give)
    and the flow ``F = flow_head(features)`` in LR pixels. Both heads start at zero, so an untrained
    network returns its input exactly.

    Input ``[N,3,H,W]`` in [-1,1] (any H, W >= 1); :meth:`forward` returns the degraded LR
    ``warp(I_m, F)`` ``[N,3,H,W]`` (about [-1,1], not clamped), or with ``components=True`` the
    tuple ``(intermediate [N,3,H,W], flow [N,2,H,W], degraded [N,3,H,W])``.

    ``noise_channels`` (0, the paper): that many channels of per-pixel standard normal noise,
    drawn anew at each call from torch's generator, are concatenated to the input of the head — a
    departure, not in the paper: a deterministic function of the clean LR cannot make sensor noise
    or compression that is independent of the face (measured with ``bench/degradation_fidelity.py``:
    without it the demo's degrader made the LR smoother than bicubic, not noisier like the camera).
    """

    def __init__(self, *, channels: int = 64, num_blocks: int = 6, noise_channels: int = 0) -> None:
        super().__init__()
        _check_positive(channels=channels)
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if noise_channels < 0:
            raise ValueError(f"noise_channels must be >= 0, got {noise_channels}")
        self.noise_channels = noise_channels
        self.head = nn.Sequential(nn.Conv2d(3 + noise_channels, channels, 3, padding=1), nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*(_ResidualBlock(channels) for _ in range(num_blocks)))
        self.image_head = nn.Conv2d(channels, 3, 3, padding=1)
        self.flow_head = nn.Conv2d(channels, 2, 3, padding=1)
        for head in (self.image_head, self.flow_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, lr: Tensor, *, components: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        _check_rgb(lr, name=type(self).__name__)
        x = lr
        if self.noise_channels:
            noise = torch.randn(lr.shape[0], self.noise_channels, *lr.shape[2:], device=lr.device, dtype=lr.dtype)
            x = torch.cat([lr, noise], dim=1)
        features = self.body(self.head(x))
        intermediate = lr + self.image_head(features)
        flow = self.flow_head(features)
        degraded = warp(intermediate, flow)
        return (intermediate, flow, degraded) if components else degraded


class LRDiscriminator(Network):
    """The LR domain discriminator: ``[N,3,s,s]`` -> logits ``[N,1,s/2**num_downsamples,...]``.

    A PatchGAN (the paper gives no architecture): a 3x3 conv, then ``num_downsamples`` stride-2
    4x4 convs doubling the width (up to ``max_channels``), each with LeakyReLU 0.2, and a 3x3
    conv to one logit per patch. ``s`` must be divisible by ``2**num_downsamples``.
    """

    def __init__(self, *, channels: int = 64, num_downsamples: int = 2, max_channels: int = 256) -> None:
        super().__init__()
        _check_positive(channels=channels, max_channels=max_channels)
        if num_downsamples < 0:
            raise ValueError(f"num_downsamples must be >= 0, got {num_downsamples}")
        self.divisor = 2**num_downsamples
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(num_downsamples):
            wider = min(width * 2, max_channels)
            layers += [nn.Conv2d(width, wider, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            width = wider
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, lr: Tensor) -> Tensor:
        _check_rgb(lr, name=type(self).__name__)
        if lr.shape[-1] % self.divisor or lr.shape[-2] % self.divisor:
            raise ValueError(f"LRDiscriminator needs H, W divisible by {self.divisor}, got {tuple(lr.shape)}")
        return self.layers(lr)


# ---------------------------------------------------------------------------- stage 2: SR
class SelfConditionedNorm(nn.Module):
    """The self-conditioned block's modulation (Eq. 6): ``out = (h - mu) / sigma * s(cond)``.

    ``mu``, ``sigma``: per-channel statistics over the batch and the positions (``norm="batch"``:
    the paper's "in batch and channel", BatchNorm without affine, running statistics in eval mode)
    or per image and channel (``norm="instance"``, not the paper's). ``s``: the condition branch,
    EqualConv3x3(3 -> hidden) -> LeakyReLU 0.2 -> EqualConv3x3(hidden -> channels), a spatially
    varying scale (no shift: the paper mentions none); its last bias starts at 1, so ``s`` starts
    around 1.

    Inputs ``h`` ``[N,channels,H,W]`` and ``cond`` ``[N,3,H,W]`` (the LR image resized to H x W,
    [-1,1]); output ``[N,channels,H,W]``.
    """

    def __init__(self, *, channels: int, hidden: int = 128, norm: Literal["batch", "instance"] = "batch") -> None:
        super().__init__()
        _check_positive(channels=channels, hidden=hidden)
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        self.channels = channels
        self.norm = (nn.BatchNorm2d(channels, affine=False) if norm == "batch"
                     else nn.InstanceNorm2d(channels, affine=False))
        self.condition = nn.Sequential(
            EqualConv2d(in_channels=3, out_channels=hidden, kernel_size=3), nn.LeakyReLU(0.2),
            EqualConv2d(in_channels=hidden, out_channels=channels, kernel_size=3, gain=1.0, bias_init=1.0),
        )

    def scale(self, cond: Tensor) -> Tensor:
        """The spatially varying scale ``s(cond)`` ``[N,channels,H,W]``."""
        _check_rgb(cond, name=f"{type(self).__name__} condition")
        return self.condition(cond)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        check_features(h, channels=self.channels, name=type(self).__name__)
        if cond.shape[0] != h.shape[0] or cond.shape[-2:] != h.shape[-2:]:
            raise ValueError(f"condition {tuple(cond.shape)} must be [N,3,H,W] of the activation {tuple(h.shape)}")
        return self.norm(h) * self.scale(cond)


class _ConditionedConv(nn.Module):
    """EqualConv3x3 -> self-conditioned normalisation -> LeakyReLU 0.2."""

    def __init__(self, in_channels: int, out_channels: int, *, hidden: int, norm: str) -> None:
        super().__init__()
        self.conv = EqualConv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=3)
        self.modulation = SelfConditionedNorm(channels=out_channels, hidden=hidden, norm=norm)  # type: ignore[arg-type]

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return F.leaky_relu(self.modulation(self.conv(x), cond), 0.2)


class _Level(nn.Module):
    """One level of the generator: (x2 upsampling, unless it is the LR level) then ``convs``
    conditioned convolutions at that size."""

    def __init__(self, in_channels: int, out_channels: int, *, convs: int, upsample: bool, hidden: int,
                 norm: str) -> None:
        super().__init__()
        self.upsample = upsample
        self.convs = nn.ModuleList(
            _ConditionedConv(in_channels if i == 0 else out_channels, out_channels, hidden=hidden, norm=norm)
            for i in range(convs)
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        for conv in self.convs:
            x = conv(x, cond)
        return x


def _resize(lr: Tensor, size: int) -> Tensor:
    """The condition at ``size``: the LR input bilinearly resized (the paper: "upsampled")."""
    if lr.shape[-1] == size:
        return lr
    return F.interpolate(lr, size=(size, size), mode="bilinear", align_corners=False)


class SelfConditionedGenerator(Network):
    """The self-conditioned progressive SR network (Fig. 3): LR ``[N,3,s,s]`` in [-1,1] ->
    SR ``[N,3,s*2**levels,s*2**levels]`` (about [-1,1], not clamped).

    ``channels[l]`` is the width at level ``l`` (0: the LR size, ``l``: ``s*2**l``); its length
    is the largest number of levels plus one. A 3x3 from-RGB convolution, then level 0 and levels
    1..``levels``, each ``convs_per_level`` :class:`SelfConditionedNorm`-modulated 3x3 convolutions
    (the "balanced" backbone; levels >= 1 first upsample x2, nearest), the condition being the LR
    input resized to the level's size; a 1x1 to-RGB convolution per level >= 1. With
    ``levels >= 2`` the output is ``lerp(up2(to_rgb[levels-1](x_{levels-1})), to_rgb[levels](x_levels),
    fade)`` (ProGAN's fade-in; ``fade`` is a buffer set by the training objective, 1 by default).
    ``global_residual`` (not in the paper, which conditions instead of predicting a residual) adds
    the bilinear upsampling of the input.
    """

    def __init__(self, *, channels: Sequence[int] = (512, 512, 256, 128), levels: int = 1, convs_per_level: int = 2,
                 condition_hidden: int = 128, norm: Literal["batch", "instance"] = "batch",
                 global_residual: bool = False) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels needs >= 2 positive widths (level 0 and one x2 level), got {channels}")
        if not 1 <= levels <= len(channels) - 1:
            raise ValueError(f"levels must be in [1, {len(channels) - 1}] for {len(channels)} widths, got {levels}")
        _check_positive(convs_per_level=convs_per_level, condition_hidden=condition_hidden)
        self.levels, self.scale, self.global_residual = levels, 2**levels, global_residual
        self.from_rgb = EqualConv2d(in_channels=3, out_channels=channels[0], kernel_size=3)
        self.blocks = nn.ModuleList(
            _Level(channels[max(level - 1, 0)], channels[level], convs=convs_per_level, upsample=level > 0,
                   hidden=condition_hidden, norm=norm)
            for level in range(levels + 1)
        )
        self.to_rgb = nn.ModuleList(  # to_rgb[l - 1] belongs to level l
            EqualConv2d(in_channels=channels[level], out_channels=3, kernel_size=1, gain=1.0)
            for level in range(1, levels + 1)
        )
        self.register_buffer("fade", torch.ones(()))

    def forward(self, lr: Tensor) -> Tensor:
        _check_rgb(lr, name=type(self).__name__)
        if lr.shape[-1] != lr.shape[-2]:
            raise ValueError(f"{type(self).__name__} expects square inputs, got {tuple(lr.shape)}")
        size = lr.shape[-1]
        x = F.leaky_relu(self.from_rgb(lr), 0.2)
        previous = x
        for level, block in enumerate(self.blocks):
            previous, x = x, block(x, _resize(lr, size * 2**level))
        out = self.to_rgb[-1](x)
        if self.levels >= 2:
            coarse = F.interpolate(self.to_rgb[-2](previous), scale_factor=2, mode="nearest")
            out = torch.lerp(coarse, out, self.fade)
        if self.global_residual:
            out = out + _resize(lr, size * self.scale)
        return out


class ProgressiveDiscriminator(Network):
    """The HR discriminator, ProGAN-style: ``[N,3,s*2**levels,...]`` -> logits ``[N,1]``.

    ``channels[l]``: the width at level ``l`` (as the generator's); ``s = lr_size``. A 1x1
    from-RGB per level >= 1 (``from_rgb[l - 1]``), then for ``l = levels..1`` a block
    EqualConv3x3(``c_l -> c_l``), EqualConv3x3(``c_l -> c_{l-1}``), each LeakyReLU 0.2, 2x2 average
    pooling; then ``base_downsamples`` blocks at width ``c_0`` (``s -> s / 2**base_downsamples``),
    a 3x3 conv and two equalised linear layers to one logit. Right after a growth the input side is
    faded in: ``lerp(from_rgb[levels-1](avgpool(x)), block_levels(from_rgb[levels](x)), fade)``.
    No normalisation and no minibatch statistics, so each logit depends on its own image (R1).
    """

    def __init__(self, *, channels: Sequence[int] = (512, 512, 256, 128), levels: int = 1, lr_size: int = 16,
                 base_downsamples: int = 2) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels needs >= 2 positive widths, got {channels}")
        if not 1 <= levels <= len(channels) - 1:
            raise ValueError(f"levels must be in [1, {len(channels) - 1}] for {len(channels)} widths, got {levels}")
        if base_downsamples < 0 or lr_size < 1 or lr_size % 2**base_downsamples:
            raise ValueError(f"lr_size={lr_size} must be divisible by 2**base_downsamples={2**max(base_downsamples, 0)}")
        self.levels, self.input_size = levels, lr_size * 2**levels
        self.from_rgb = nn.ModuleList(
            EqualConv2d(in_channels=3, out_channels=channels[level], kernel_size=1) for level in range(1, levels + 1))
        self.blocks = nn.ModuleList(  # blocks[l - 1] maps level l to level l - 1
            nn.Sequential(EqualConv2d(in_channels=channels[level], out_channels=channels[level]), nn.LeakyReLU(0.2),
                          EqualConv2d(in_channels=channels[level], out_channels=channels[level - 1]),
                          nn.LeakyReLU(0.2), nn.AvgPool2d(2))
            for level in range(1, levels + 1)
        )
        width = channels[0]
        base: list[nn.Module] = []
        for _ in range(base_downsamples):
            base += [EqualConv2d(in_channels=width, out_channels=width), nn.LeakyReLU(0.2), nn.AvgPool2d(2)]
        base += [EqualConv2d(in_channels=width, out_channels=width), nn.LeakyReLU(0.2), nn.Flatten()]
        self.base = nn.Sequential(*base)
        final = lr_size // 2**base_downsamples
        self.head = nn.Sequential(EqualLinear(in_features=width * final * final, out_features=width), nn.LeakyReLU(0.2),
                                  EqualLinear(in_features=width, out_features=1, gain=1.0))
        self.register_buffer("fade", torch.ones(()))

    def forward(self, image: Tensor) -> Tensor:
        _check_rgb(image, name=type(self).__name__, size=self.input_size)
        x = self.blocks[-1](F.leaky_relu(self.from_rgb[-1](image), 0.2))
        if self.levels >= 2:
            coarse = F.leaky_relu(self.from_rgb[-2](F.avg_pool2d(image, 2)), 0.2)
            x = torch.lerp(coarse, x, self.fade)
        for block in reversed(self.blocks[:-1]):
            x = block(x)
        return self.head(self.base(x))


def grown(network: SelfConditionedGenerator | ProgressiveDiscriminator) -> SelfConditionedGenerator | ProgressiveDiscriminator:
    """``network`` with one more level (a new instance, ``levels + 1``): every earlier weight and
    buffer kept, the new level's layers fresh, ``fade`` 0 (the new level blended in from nothing).
    ``ValueError`` at the last level its ``channels`` allow."""
    levels = network.config["levels"]
    if levels + 1 > len(network.config["channels"]) - 1:
        raise ValueError(f"{type(network).__name__} is at its last level ({levels}); channels "
                         f"{network.config['channels']} allow no more")
    bigger = type(network)(**{**network.config, "levels": levels + 1})
    new = (f"blocks.{levels + 1}.", f"to_rgb.{levels}.") if isinstance(network, SelfConditionedGenerator) else (
        f"blocks.{levels}.", f"from_rgb.{levels}.")
    missing, unexpected = bigger.load_state_dict(network.state_dict(), strict=False)
    if unexpected or not all(key.startswith(new) for key in missing):
        raise RuntimeError(f"growth changed more than the new level: missing {missing}, unexpected {unexpected}")
    bigger.fade.zero_()
    return bigger.to(network.fade.device)


def parameter_count(network: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in network.parameters())

