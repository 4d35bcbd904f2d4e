"""StyleGAN2 (Karras et al. 2020, config F): the generator and the ResNet discriminator, in plain
PyTorch, with state dicts key for key those of rosinality's ``stylegan2-pytorch`` checkpoints.

A checkpoint of that layout is ``{"g_ema": state_dict, "latent_avg": [style_dim], ...}`` (training
checkpoints add ``"g"``, ``"d"``, ``"g_optim"``, ``"d_optim"``); :func:`load_stylegan2_checkpoint`
reads one, infers the constructor arguments from its keys and shapes and loads ``g_ema`` strictly.

Generator (``[N, style_dim]`` codes -> ``[N,3,size,size]`` images, about [-1,1], not clamped):

- the mapping network ``style``: PixelNorm then ``n_mlp`` equalised linear layers (learning-rate
  multiplier ``lr_mlp``) with a fused leaky ReLU, Z -> W;
- a learned 4x4 constant ``input``; per resolution from 4 to ``size`` two modulated 3x3
  convolutions with weight demodulation (the first of each pair above 4x4 upsamples x2 by a
  transposed convolution and a [1,3,3,1] blur), per-pixel noise scaled by a learned strength,
  a bias and a leaky ReLU times sqrt(2); a modulated 1x1 ToRGB per resolution whose outputs are
  summed after upsampling the running image (skip architecture);
- ``n_latent = 2 * log2(size) - 2`` styles: a code in W (``[N, style_dim]``) is repeated across
  them, a code in W+ (``[N, n_latent, style_dim]``) gives one per layer.

Discriminator (``[N,3,size,size]`` -> ``[N,1]`` logits): a 1x1 conv from RGB, one residual block
per resolution down to 4x4 (blurred stride-2 convolutions, skip scaled by 1/sqrt(2)), the minibatch
standard deviation (groups of up to 4 images, 1 feature), a 3x3 conv and two linear layers.

Every learned layer has an equalised learning rate: weights stored ``N(0, 1)/lr_mul`` and
multiplied at run time by ``lr_mul / sqrt(fan_in)``. The resampling filter is FIR ``upfirdn2d``
(upsample by zero insertion, pad, convolve, downsample by striding), written here with
``F.conv2d`` so it runs on any device and supports the double backward that R1 needs.

The constructors are keyword-only (fsr's networks record their arguments); for code written
against rosinality's API the first arguments may also be given by position, in its order:
``Generator(size, style_dim, n_mlp, channel_multiplier, blur_kernel, lr_mlp)`` and
``Discriminator(size, channel_multiplier, blur_kernel)``. ``channels`` (widths at 4, 8, ..., size)
overrides the default width table (512 up to 32 px, then ``16384 * channel_multiplier / res``), so
tiny generators run on a CPU.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsr_core.networks.base import Network

__all__ = [
    "CHECKPOINT_FILE",
    "Discriminator",
    "Generator",
    "default_channels",
    "generator_arguments",
    "load_stylegan2_checkpoint",
    "set_fused_modconv",
    "upfirdn2d",
]

CHECKPOINT_FILE = "stylegan2.pt"
"""The rosinality-layout file inside an fsr training checkpoint folder (``stylegan2_prior``)."""
LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)
DEFAULT_BLUR = (1, 3, 3, 1)


# ---------------------------------------------------------------------------- primitives
def upfirdn2d(x: Tensor, kernel: Tensor, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """FIR resampling of ``[N,C,H,W]``: insert ``up - 1`` zeros after every pixel, pad by ``pad =
    (before, after)`` on both axes (negative values crop), convolve with ``kernel`` ``[kh,kw]``
    (a true convolution: the kernel is flipped), keep every ``down``-th pixel.

    Output side ``(H * up + before + after - kh) // down + 1``.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects [N,C,H,W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    out = x
    if up > 1:
        out = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    before, after = pad
    out = F.pad(out, [max(before, 0), max(after, 0), max(before, 0), max(after, 0)])
    if before < 0 or after < 0:
        out = out[:, :, max(-before, 0):out.shape[2] - max(-after, 0), max(-before, 0):out.shape[3] - max(-after, 0)]
    # one depthwise convolution (groups = channels): on CPUs far faster than N*C one-channel images
    weight = torch.flip(kernel, [0, 1]).to(out.dtype)[None, None].expand(c, 1, -1, -1)
    return F.conv2d(out, weight, stride=down, groups=c)


def fir_kernel(taps: Sequence[float]) -> Tensor:
    """The separable 2-D filter of 1-D ``taps`` (outer product), normalised to sum 1."""
    kernel = torch.tensor([float(t) for t in taps], dtype=torch.float32)
    if kernel.ndim != 1 or kernel.numel() < 1:
        raise ValueError(f"blur_kernel must be a non-empty list of taps, got {taps!r}")
    kernel = kernel[None, :] * kernel[:, None]
    return kernel / kernel.sum()


def fused_leaky_relu(x: Tensor, bias: Tensor | None, *, gain: float = ACTIVATION_GAIN) -> Tensor:
    """``leaky_relu(x + bias, 0.2) * gain``, the bias broadcast along dimension 1."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, LEAKY_SLOPE) * gain


class PixelNorm(nn.Module):
    """Each code divided by its root mean square over dimension 1."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    """A per-channel ``bias`` (optional) then leaky ReLU 0.2 times sqrt(2)."""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """``upfirdn2d`` with a fixed kernel (a buffer named ``kernel``), no resampling."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("kernel", fir_kernel(taps) * gain)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """x2 FIR upsampling (zero insertion, the kernel times 4 keeps the mean)."""

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", fir_kernel(taps) * factor ** 2)
        extra = len(taps) - factor
        self.pad = ((extra + 1) // 2 + factor - 1, extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class EqualLinear(nn.Module):
    """Linear layer, weight ``N(0,1)/lr_mul`` scaled by ``lr_mul/sqrt(in_dim)``, bias by ``lr_mul``;
    with ``activation=True`` followed by the fused leaky ReLU (bias inside it)."""

    def __init__(self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """Convolution, weight ``N(0,1)`` scaled by ``1/sqrt(in * k * k)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ModulatedConv2d(nn.Module):
    """A convolution whose input channels are scaled per image by an affine map of the style, then
    (``demodulate``) whose output channels are renormalised to unit expected variance.

    ``fused`` (an attribute, not part of the weights; rosinality's default True): one grouped
    convolution over the batch with per-image weights; False: the input scaled by the style, one
    shared convolution, the output scaled by the demodulation coefficients (the same function to
    float rounding, about 1e-6; faster on CPUs, and StyleGAN2-ADA's choice for training).
    ``upsample``: transposed convolution with stride 2 then a blur (output ``2H``). Input
    ``[N,in,H,W]`` and style ``[N,style_dim]``.
    """

    fused = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, *,
                 demodulate: bool = True, upsample: bool = False, blur_kernel: Sequence[float] = DEFAULT_BLUR) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            extra = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((extra + 1) // 2 + 1, extra // 2 + 1), gain=4.0)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        n, _, h, w = x.shape
        k = self.kernel_size
        if not self.fused:
            return self._unfused(x, style)
        weight = self.scale * self.weight * self.modulation(style).view(n, 1, self.in_channels, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum([2, 3, 4]) + 1e-8).view(n, self.out_channels, 1, 1, 1)
        x = x.reshape(1, n * self.in_channels, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * self.in_channels, self.out_channels, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            out = self.blur(out.view(n, self.out_channels, out.shape[2], out.shape[3]))
            return out
        out = F.conv2d(x, weight.view(n * self.out_channels, self.in_channels, k, k), padding=self.padding, groups=n)
        return out.view(n, self.out_channels, out.shape[2], out.shape[3])

    def _unfused(self, x: Tensor, style: Tensor) -> Tensor:
        n = x.shape[0]
        scales = self.modulation(style)  # [N, in]
        weight = self.scale * self.weight[0]  # [out, in, k, k]
        x = x * scales.view(n, self.in_channels, 1, 1)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            coefficients = (weight[None] * scales.view(n, 1, self.in_channels, 1, 1)).square().sum([2, 3, 4])
            out = out * torch.rsqrt(coefficients + 1e-8).view(n, self.out_channels, 1, 1)
        return out


class NoiseInjection(nn.Module):
    """``x + weight * noise``, one learned strength (starting at 0); fresh ``N(0,1)`` noise when none is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, x.shape[2], x.shape[3]).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned ``[1, C, 4, 4]`` start of the synthesis network, repeated over the batch."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, latent: Tensor) -> Tensor:
        """The constant repeated for each of ``latent``'s ``N`` codes (rosinality's signature)."""
        return self.input.expand(latent.shape[0], -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv, noise, bias and leaky ReLU (the bias lives in ``activate``)."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, *, upsample: bool = False,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) plus a bias, plus the upsampled previous image."""

    def __init__(self, in_channels: int, style_dim: int, *, upsample: bool = True,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


def set_fused_modconv(network: nn.Module, fused: bool) -> nn.Module:
    """Set every :class:`ModulatedConv2d` of ``network`` to the grouped (``True``, rosinality's
    default) or the unfused form (``False``); returns ``network``."""
    for module in network.modules():
        if isinstance(module, ModulatedConv2d):
            module.fused = bool(fused)
    return network


# ---------------------------------------------------------------------------- widths
def _log2_size(size: int) -> int:
    if size < 4 or size & (size - 1):
        raise ValueError(f"size must be a power of two >= 4, got {size}")
    return size.bit_length() - 1


def default_channels(size: int, channel_multiplier: int = 2) -> list[int]:
    """rosinality's width table at 4, 8, ..., ``size``: 512 up to 32 px, then ``16384 * m / res``
    (64: 256m, 128: 128m, ..., 1024: 16m)."""
    if channel_multiplier < 1:
        raise ValueError(f"channel_multiplier must be >= 1, got {channel_multiplier}")
    return [min(512, 16384 * channel_multiplier // 2 ** i) for i in range(2, _log2_size(size) + 1)]


def _widths(size: int, channel_multiplier: int, channels: Sequence[int] | None) -> list[int]:
    if channels is None:
        return default_channels(size, channel_multiplier)
    widths = [int(c) for c in channels]
    expected = _log2_size(size) - 1
    if len(widths) != expected or min(widths) < 1:
        raise ValueError(f"channels must give {expected} positive widths (at 4, 8, ..., {size} px), got {list(channels)}")
    return widths


class _PositionalArguments(type):
    """Lets rosinality-style positional arguments reach a keyword-only (recorded) constructor."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        names = cls._positional  # type: ignore[attr-defined]
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes at most {len(names)} positional arguments ({', '.join(names)})")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__} got {name!r} both by position and by keyword")
            kwargs[name] = value
        return super().__call__(**kwargs)


# ---------------------------------------------------------------------------- networks
class Generator(Network, metaclass=_PositionalArguments):
    """The StyleGAN2 generator (see the module docstring); state dict as rosinality's ``Generator``.

    ``forward(styles, ...)`` as rosinality's: ``styles`` a list of one or two codes, each ``[N,
    style_dim]`` in Z (or W with ``input_is_latent``), or one ``[N, n_latent, style_dim]`` W+ code
    with ``input_is_latent``; two codes mix at ``inject_index`` (random when None). ``truncation <
    1`` pulls codes toward ``truncation_latent``. ``noise``: a list of ``num_layers`` tensors
    ``[N or 1, 1, res, res]`` (None entries draw fresh noise); when None, fresh noise with
    ``randomize_noise`` and the stored ``noises.noise_i`` buffers without. Returns ``(image
    [N,3,size,size] about [-1,1], the W+ code [N,n_latent,style_dim] if return_latents else None)``.
    """

    _positional = ("size", "style_dim", "n_mlp", "channel_multiplier", "blur_kernel", "lr_mlp")

    def __init__(self, *, size: int, style_dim: int, n_mlp: int, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, lr_mlp: float = 0.01,
                 channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if style_dim < 1 or n_mlp < 0:
            raise ValueError(f"style_dim must be >= 1 and n_mlp >= 0, got {style_dim}, {n_mlp}")
        self.size, self.style_dim = size, style_dim
        self.log_size = _log2_size(size)
        widths = _widths(size, channel_multiplier, channels)
        self.channels = {2 ** (i + 2): width for i, width in enumerate(widths)}
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2

        self.style = nn.Sequential(PixelNorm(), *(
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)))
        self.input = ConstantInput(widths[0])
        self.conv1 = StyledConv(widths[0], widths[0], style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(widths[0], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept so the module tree is rosinality's
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(self.num_layers):
            res = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise_{layer}", torch.randn(1, 1, res, res))
        for in_width, out_width in zip(widths[:-1], widths[1:]):
            self.convs.append(StyledConv(in_width, out_width, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_width, out_width, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_width, style_dim, blur_kernel=blur_kernel))

    def make_noise(self) -> list[Tensor]:
        """Fresh ``N(0,1)`` noise maps, one per layer, ``[1,1,res,res]``, on the generator's device."""
        device = self.input.input.device
        return [torch.randn(1, 1, 2 ** ((layer + 5) // 2), 2 ** ((layer + 5) // 2), device=device)
                for layer in range(self.num_layers)]

    def mean_latent(self, n_latent: int) -> Tensor:
        """The mean W code of ``n_latent`` random Z codes, ``[1, style_dim]``."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z: Tensor) -> Tensor:
        """Z ``[N, style_dim]`` -> W ``[N, style_dim]``."""
        return self.style(z)

    def _check_style(self, code: Tensor, *, w_plus: bool) -> None:
        ok = code.ndim == 2 and code.shape[1] == self.style_dim
        if w_plus:
            ok = ok or (code.ndim == 3 and code.shape[1:] == (self.n_latent, self.style_dim))
        if not ok or code.shape[0] < 1:
            shapes = f"[N,{self.style_dim}]" + (f" or [N,{self.n_latent},{self.style_dim}]" if w_plus else "")
            raise ValueError(f"Generator expects style codes {shapes}, got shape {tuple(code.shape)}")

    def forward(self, styles: Sequence[Tensor], return_latents: bool = False, inject_index: int | None = None,
                truncation: float = 1, truncation_latent: Tensor | None = None, input_is_latent: bool = False,
                noise: Sequence[Tensor | None] | None = None,
                randomize_noise: bool = True) -> tuple[Tensor, Tensor | None]:
        if isinstance(styles, Tensor) or not 1 <= len(styles) <= 2:
            raise ValueError("Generator expects a list of one or two style tensors")
        for code in styles:
            self._check_style(code, w_plus=input_is_latent and len(styles) == 1)
        if not input_is_latent:
            styles = [self.style(z) for z in styles]
        if noise is None:
            noise = ([None] * self.num_layers if randomize_noise
                     else [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)])
        elif len(noise) != self.num_layers:
            raise ValueError(f"noise must hold {self.num_layers} maps, got {len(noise)}")
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs a truncation_latent")
            styles = [truncation_latent + truncation * (w - truncation_latent) for w in styles]

        if len(styles) == 1:
            w = styles[0]
            latent = w if w.ndim == 3 else w.unsqueeze(1).repeat(1, self.n_latent, 1)
        else:
            if inject_index is None:
                inject_index = int(torch.randint(1, self.n_latent, ()).item()) if self.n_latent > 1 else 1
            latent = torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                                styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], 1)

        out = self.conv1(self.input(latent), latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for up_conv, conv, to_rgb, noise1, noise2 in zip(self.convs[::2], self.convs[1::2], self.to_rgbs,
                                                         noise[1::2], noise[2::2]):
            out = up_conv(out, latent[:, i], noise=noise1)
            out = conv(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip, (latent if return_latents else None)


class ConvLayer(nn.Sequential):
    """[blur,] equalised conv (stride 2 when ``downsample``), [fused leaky ReLU]: rosinality's ``ConvLayer``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, downsample: bool = False,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            extra = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((extra + 1) // 2, extra // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second downsamples) plus a downsampled 1x1 skip, summed and scaled by 1/sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, blur_kernel: Sequence[float] = DEFAULT_BLUR) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, blur_kernel=blur_kernel,
                              activate=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(Network, metaclass=_PositionalArguments):
    """The StyleGAN2 ResNet discriminator: ``[N,3,size,size]`` in [-1,1] -> logits ``[N,1]``.

    The minibatch standard deviation uses groups of ``min(N, 4)`` images (``N`` must divide by the
    group size), taken with stride ``N / group`` as rosinality does. State dict as rosinality's
    ``Discriminator``.
    """

    _positional = ("size", "channel_multiplier", "blur_kernel")

    def __init__(self, *, size: int, channel_multiplier: int = 2, blur_kernel: Sequence[float] = DEFAULT_BLUR,
                 channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.size = size
        log_size = _log2_size(size)
        widths = _widths(size, channel_multiplier, channels)
        width = {2 ** (i + 2): w for i, w in enumerate(widths)}
        blocks: list[nn.Module] = [ConvLayer(3, width[size], 1)]
        for i in range(log_size, 2, -1):
            blocks.append(ResBlock(width[2 ** i], width[2 ** (i - 1)], blur_kernel))
        self.convs = nn.Sequential(*blocks)
        self.stddev_group, self.stddev_feat = 4, 1
        self.final_conv = ConvLayer(width[4] + 1, width[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(width[4] * 16, width[4], activation=True),
                                          EqualLinear(width[4], 1))

    def forward(self, image: Tensor) -> Tensor:
        if image.ndim != 4 or image.shape[1:] != (3, self.size, self.size) or image.shape[0] < 1:
            raise ValueError(f"Discriminator expects [N,3,{self.size},{self.size}], got shape {tuple(image.shape)}")
        out = self.convs(image)
        n, c, h, w = out.shape
        group = min(n, self.stddev_group)
        if n % group:
            raise ValueError(f"Discriminator needs a batch divisible by {group} (minibatch stddev groups), got {n}")
        stddev = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        out = torch.cat([out, stddev.repeat(group, 1, h, w)], 1)
        out = self.final_conv(out)
        return self.final_linear(out.view(n, -1))


# ---------------------------------------------------------------------------- checkpoints
def generator_arguments(shapes: Mapping[str, Sequence[int] | Tensor]) -> dict[str, Any]:
    """The :class:`Generator` constructor arguments of a rosinality ``g_ema`` state dict, from its
    keys and shapes alone (a ``{key: shape}`` mapping or the state dict itself).

    ``channels`` is left out (None) when the widths are those of the default table for some
    ``channel_multiplier``. ``blur_kernel`` and ``lr_mlp`` do not show in shapes: the defaults are
    returned (the blur kernel itself is a buffer in the state dict).
    """
    shape = {key: tuple(value.shape if isinstance(value, Tensor) else value) for key, value in shapes.items()}
    for key in ("input.input", "conv1.conv.weight", "style.1.weight"):
        if key not in shape:
            raise ValueError(f"not a StyleGAN2 generator state dict (rosinality layout): no {key!r}")
    mlp = sorted(int(m.group(1)) for key in shape if (m := re.fullmatch(r"style\.(\d+)\.weight", key)))
    if mlp != list(range(1, len(mlp) + 1)):
        raise ValueError(f"mapping layers style.N.weight are not numbered 1..n: {mlp}")
    rgbs = sorted(int(m.group(1)) for key in shape if (m := re.fullmatch(r"to_rgbs\.(\d+)\.conv\.weight", key)))
    if rgbs != list(range(len(rgbs))):
        raise ValueError(f"to_rgbs.N are not numbered 0..n-1: {rgbs}")
    size = 2 ** (len(rgbs) + 2)
    widths = [shape["conv1.conv.weight"][1]] + [shape[f"convs.{2 * i}.conv.weight"][1] for i in range(len(rgbs))]
    arguments: dict[str, Any] = {"size": size, "style_dim": shape["style.1.weight"][1], "n_mlp": len(mlp),
                                 "channel_multiplier": 2, "channels": widths}
    for multiplier in (2, 1, 4, 8):
        if default_channels(size, multiplier) == widths:
            arguments.update(channel_multiplier=multiplier, channels=None)
            break
    return arguments


def _read_checkpoint(location: str) -> bytes:
    """The bytes of the checkpoint file at ``location``, or of ``CHECKPOINT_FILE`` when ``location`` is a folder."""
    from fsr_core import storage

    if storage.is_s3(location):  # a key, else a prefix holding the file
        candidates = [location, storage.join(location, CHECKPOINT_FILE)]
    elif os.path.isdir(storage.local_path(location)):
        candidates = [storage.join(location, CHECKPOINT_FILE)]
    else:
        candidates = [location]
    for candidate in candidates:
        try:
            return storage.read_bytes(candidate)
        except (FileNotFoundError, IsADirectoryError):
            continue
    raise FileNotFoundError(f"StyleGAN2 checkpoint not found: {location} (a checkpoint file, or a folder holding "
                            f"{CHECKPOINT_FILE})")


def load_stylegan2_checkpoint(location: str, *, sha256: str | None = None,
                              map_location: str | torch.device = "cpu") -> tuple[Generator, Tensor | None]:
    """The ``g_ema`` generator (eval mode) and ``latent_avg`` (``[style_dim]`` or None when absent) of
    a rosinality-layout checkpoint at ``location``: a file (path or ``s3://`` URI), or a checkpoint
    folder of the ``stylegan2_prior`` stage (its :data:`CHECKPOINT_FILE` is read).

    ``sha256``: the expected hex digest of the file; a mismatch is a ``ValueError``. A missing file
    is a ``FileNotFoundError`` naming it. The constructor arguments come from the checkpoint's
    ``"config"`` entry when it has one (fsr's own checkpoints), else from the keys and shapes
    (:func:`generator_arguments`); the weights load with strict key matching.
    """
    data = _read_checkpoint(location)
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise ValueError(f"StyleGAN2 checkpoint {location} has sha256 {digest}, expected {sha256}")
    import argparse

    # rosinality's training checkpoints carry their argparse Namespace; nothing else is unpickled
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, Mapping) or "g_ema" not in checkpoint:
        raise ValueError(f"{location} is not a StyleGAN2 checkpoint in rosinality's layout (no 'g_ema')")
    state = checkpoint["g_ema"]
    config = checkpoint.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("g_ema"), Mapping):
        arguments = dict(config["g_ema"])
    else:
        arguments = generator_arguments(state)
    generator = Generator(**arguments)
    generator.load_state_dict(state, strict=True)
    generator.to(map_location).eval()
    latent_avg = checkpoint.get("latent_avg")
    return generator, latent_avg
