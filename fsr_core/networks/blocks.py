"""Primitives shared by several architectures: SAGAN self-attention, RCAN channel attention, the
RCAN residual channel-attention block, and equalised-learning-rate convolution and linear layers.

Every attention block maps ``[N, C, H, W] -> [N, C, H, W]`` (any real values, any dtype) and
raises a ``ValueError`` when the input is not 4-D or has the wrong number of channels. No block
uses a normalization layer.

The equalised-learning-rate layers (:class:`EqualConv2d`, :class:`EqualLinear`; Karras et al.
2018, used by SelFSR's generator and discriminator) store weights drawn from ``N(0, 1)`` and
multiply them at run time by He's constant ``gain / sqrt(fan_in)``, so Adam's per-parameter step
is the same relative step for every layer whatever its fan-in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ChannelAttention",
    "EqualConv2d",
    "EqualLinear",
    "ResidualChannelAttentionBlock",
    "SelfAttention",
    "check_features",
]


def check_features(x: torch.Tensor, *, channels: int, name: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is a ``[N, channels, H, W]`` tensor with N, H, W >= 1."""
    if x.ndim != 4:
        raise ValueError(f"{name} expects a 4-D tensor [N,{channels},H,W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} channels, got shape {tuple(x.shape)}")
    if min(x.shape[0], x.shape[2], x.shape[3]) < 1:
        raise ValueError(f"{name} got an empty tensor of shape {tuple(x.shape)}")


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019), without spectral normalization.

    ``y = x + gamma * o`` with ``o_i = sum_j softmax_j(q_i . k_j) v_j`` over all H*W positions;
    query and key are 1x1 convolutions to ``channels // key_reduction`` channels (at least 1),
    value a 1x1 convolution to ``channels``. As in SAGAN the logits are not scaled by
    ``1/sqrt(d)``. ``gamma`` is a learned scalar initialised to 0, so the block starts as the
    identity.

    Input ``[N, C, H, W]``, output ``[N, C, H, W]`` (unbounded). Memory of the attention matrix
    grows as ``(H*W)**2`` per image when no fused attention kernel is available, so place it at
    low resolution (32x32 is 1M entries per image, 64x64 is 16.7M).
    """

    def __init__(self, *, channels: int, key_reduction: int = 8) -> None:
        super().__init__()
        _check_positive(channels=channels, key_reduction=key_reduction)
        self.channels = channels
        key_channels = max(1, channels // key_reduction)
        self.query = nn.Conv2d(channels, key_channels, kernel_size=1)
        self.key = nn.Conv2d(channels, key_channels, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, channels=self.channels, name=type(self).__name__)
        n, c, h, w = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # [N, HW, C//r]
        key = self.key(x).flatten(2).transpose(1, 2)  # [N, HW, C//r]
        value = self.value(x).flatten(2).transpose(1, 2)  # [N, HW, C]
        # Query and key zero-padded to the value's width: the logits do not change (the padded
        # products are 0), and with one head size for q, k and v (and a head axis) PyTorch can use
        # its fused flash-attention kernel, which never builds the HW x HW matrix: 3.5x faster
        # forward + backward on 2 CPU cores at 32x32 x 16 channels, equal to 1e-6.
        pad = c - query.shape[-1]
        if pad > 0:
            query, key = F.pad(query, (0, pad)), F.pad(key, (0, pad))
        # softmax over key positions, unscaled logits as in SAGAN.
        attended = F.scaled_dot_product_attention(query[:, None], key[:, None], value[:, None], scale=1.0)[:, 0]
        attended = attended.transpose(1, 2).reshape(n, c, h, w)  # [N, HW, C] -> [N, C, H, W]
        return x + self.gamma * attended


class ChannelAttention(nn.Module):
    """RCAN channel attention (Zhang et al. 2018b).

    Global average pool -> 1x1 conv ``C -> max(1, C // reduction)`` -> ReLU -> 1x1 conv back to C ->
    sigmoid gives per-channel weights ``s in (0, 1)`` of shape ``[N, C, 1, 1]``; the output is
    ``x * s``. Input and output ``[N, C, H, W]`` (unbounded).
    """

    def __init__(self, *, channels: int, reduction: int = 16) -> None:
        super().__init__()
        _check_positive(channels=channels, reduction=reduction)
        self.channels = channels
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Conv2d(channels, hidden, kernel_size=1)
        self.excite = nn.Conv2d(hidden, channels, kernel_size=1)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel weights ``[N, C, 1, 1]`` in (0, 1) for the features ``x``."""
        check_features(x, channels=self.channels, name=type(self).__name__)
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.excite(F.relu(self.squeeze(pooled))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)


class ResidualChannelAttentionBlock(nn.Module):
    """RCAN residual channel-attention block (RCAB): ``x + CA(conv3x3(relu(conv3x3(x))))``.

    No normalization. Convolutions use Kaiming-normal initialisation; the second convolution is
    scaled by ``residual_init_scale`` (0.1, as in ESRGAN/BasicSR) so that a deep stack starts close
    to the identity. Input and output ``[N, C, H, W]`` (unbounded).
    """

    def __init__(self, *, channels: int, reduction: int = 16, residual_init_scale: float = 0.1) -> None:
        super().__init__()
        _check_positive(channels=channels, reduction=reduction)
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.attention = ChannelAttention(channels=channels, reduction=reduction)
        for conv, scale in ((self.conv1, 1.0), (self.conv2, residual_init_scale)):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            with torch.no_grad():
                conv.weight.mul_(scale)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, channels=self.channels, name=type(self).__name__)
        return x + self.attention(self.conv2(F.relu(self.conv1(x))))


class EqualConv2d(nn.Module):
    """2-D convolution with an equalised learning rate (ProGAN, Karras et al. 2018).

    The stored weight is ``N(0, 1)``; the convolution uses ``weight * gain / sqrt(in * k * k)``
    (``gain = sqrt(2)``: He's constant for a following (leaky) ReLU). The bias starts at
    ``bias_init`` (0 by default) and is not rescaled. Stride 1, ``padding = kernel_size // 2``
    ('same' for odd kernels). Input ``[N, in_channels, H, W]``, output ``[N, out_channels, H, W]``
    (unbounded).
    """

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True,
                 gain: float = math.sqrt(2.0), bias_init: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.full((out_channels,), float(bias_init))) if bias else None
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, channels=self.in_channels, name=type(self).__name__)
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with an equalised learning rate: ``x @ (weight * gain / sqrt(in)).T + bias``,
    the stored weight ``N(0, 1)``, the bias starting at ``bias_init``. Input ``[N, in_features]``,
    output ``[N, out_features]`` (unbounded)."""

    def __init__(self, *, in_features: int, out_features: int, bias: bool = True, gain: float = math.sqrt(2.0),
                 bias_init: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features or x.shape[0] < 1:
            raise ValueError(f"EqualLinear expects [N,{self.in_features}], got shape {tuple(x.shape)}")
        return F.linear(x, self.weight * self.scale, self.bias)
