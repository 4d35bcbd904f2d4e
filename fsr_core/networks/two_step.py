"""Step 1 of two-step extreme face super-resolution: the self-supervised CycleGAN networks.

Four networks (paper section 4.1, ``METHODS.md`` section 1):

- :class:`L2HGenerator`: LR ``[N,3,16,16]`` -> MR ``[N,3,128,128]``, sections of residual
  channel-attention blocks separated by bilinear x2 upsampling, plus SAGAN self-attention.
- :class:`L2HDiscriminator`: MR/HR ``[N,3,128,128]`` -> logit map ``[N,1,8,8]``.
- :class:`H2LGenerator`: HR ``[N,3,128,128]`` + noise -> LR ``[N,3,16,16]`` (learned degradation).
- :class:`H2LDiscriminator`: LR ``[N,3,16,16]`` -> logit map ``[N,1,8,8]``.

Images are ``[N,3,H,W]`` in ``[-1,1]``; generators end with ``tanh`` so their outputs are in
``(-1,1)``. No network has a normalization layer (the paper excludes AdaIN and spectral norm).
Every network is a :class:`~fsr_core.networks.base.Network`: its constructor arguments are
recorded in ``self.config`` (a JSON-able dict), so ``type(net)(**net.config)`` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fsr_core.degradation.resize import imresize_torch
from fsr_core.networks.base import Network
from fsr_core.networks.blocks import ResidualChannelAttentionBlock, SelfAttention, check_features

__all__ = ["H2LDiscriminator", "H2LGenerator", "L2HDiscriminator", "L2HGenerator"]


def _conv3x3(in_channels: int, out_channels: int, *, negative_slope: float = 0.0, scale: float = 1.0) -> nn.Conv2d:
    """3x3 'same' convolution, Kaiming-normal init for a following (leaky) ReLU, times ``scale``."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
    _init_conv(conv, negative_slope=negative_slope, scale=scale)
    return conv


def _init_conv(conv: nn.Conv2d, *, negative_slope: float = 0.0, scale: float = 1.0) -> None:
    nn.init.kaiming_normal_(conv.weight, a=negative_slope, nonlinearity="leaky_relu")
    with torch.no_grad():
        conv.weight.mul_(scale)
    nn.init.zeros_(conv.bias)


def _upsample_x2() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")


def _check_rgb(x: torch.Tensor, *, name: str, divisor: int = 1, size: int | None = None) -> None:
    """Raise a ``ValueError`` unless ``x`` is ``[N,3,H,W]`` with H, W divisible by ``divisor``
    (and equal to ``size`` when given)."""
    check_features(x, channels=3, name=name)
    height, width = x.shape[-2:]
    if size is not None and (height, width) != (size, size):
        raise ValueError(f"{name} expects {size}x{size} images, got shape {tuple(x.shape)}")
    if height % divisor or width % divisor:
        raise ValueError(f"{name} expects H and W divisible by {divisor}, got shape {tuple(x.shape)}")


class L2HGenerator(Network):
    """Low-to-high generator: ``[N,3,h,w]`` in [-1,1] -> ``[N,3,h*s,w*s]`` in (-1,1).

    ``s = self.scale = 2**(len(blocks_per_section) - 1)``: 8 for the default four sections.

    Head 3x3 conv, then ``len(blocks_per_section)`` sections of residual channel-attention blocks
    (default 6, 3, 2, 1); between consecutive sections a bilinear x2 upsampling followed by a 3x3
    conv and LeakyReLU(0.2) (16 -> 32 -> 64 -> 128 by default); a tail 3x3 conv to RGB and
    ``tanh``. No normalization layers.

    Reading of the paper: it uses SAGAN self-attention but does not say where. One
    :class:`SelfAttention` layer is placed after the blocks of each section whose 0-based index is
    in ``attention_after_section`` (before that section's upsampling). The default ``(1,)`` puts it
    after the second section, at 32x32 for a 16x16 input (attention over 1024 positions); later
    sections (64x64, 128x128) cost 16x and 256x the attention memory.

    ``tanh`` (rather than a clamp) keeps a gradient everywhere and the output strictly inside
    (-1, 1). The network is fully convolutional, so any ``h, w >= 1`` works.

    ``global_residual=True`` (not in the paper; off by default) adds the MATLAB-bicubic
    upsampling of the input to the tail's output instead of the ``tanh``, clamped to [-1, 1]: the
    network starts from the bicubic baseline and learns the detail, which converges in far fewer
    steps (the small-compute demo uses it).
    """

    def __init__(
        self,
        *,
        channels: int = 64,
        blocks_per_section: Sequence[int] = (6, 3, 2, 1),
        reduction: int = 16,
        attention_after_section: Sequence[int] = (1,),
        global_residual: bool = False,
    ) -> None:
        super().__init__()
        blocks = tuple(int(n) for n in blocks_per_section)
        attention_at = tuple(int(i) for i in attention_after_section)
        _check_positive(channels=channels, reduction=reduction)
        if not blocks or min(blocks) < 0:
            raise ValueError(f"blocks_per_section must be a non-empty tuple of counts >= 0, got {blocks}")
        if len(set(attention_at)) != len(attention_at) or any(not 0 <= i < len(blocks) for i in attention_at):
            raise ValueError(
                f"attention_after_section must hold distinct section indices in [0, {len(blocks)}), got {attention_at}"
            )
        self.global_residual = bool(global_residual)
        self.scale = 2 ** (len(blocks) - 1)
        self.head = _conv3x3(3, channels)
        self.sections = nn.ModuleList(
            nn.Sequential(*(ResidualChannelAttentionBlock(channels=channels, reduction=reduction) for _ in range(n)))
            for n in blocks
        )
        self.attention = nn.ModuleDict({str(i): SelfAttention(channels=channels) for i in sorted(attention_at)})
        self.upsample = nn.ModuleList(
            nn.Sequential(_upsample_x2(), _conv3x3(channels, channels, negative_slope=0.2), nn.LeakyReLU(0.2))
            for _ in range(len(blocks) - 1)
        )
        self.tail = _conv3x3(channels, 3, scale=0.1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """``lr``: ``[N,3,h,w]`` in [-1,1]; returns ``[N,3,h*scale,w*scale]`` in (-1,1)."""
        _check_rgb(lr, name=type(self).__name__)
        features = self.head(lr)
        for index, section in enumerate(self.sections):
            features = section(features)
            if str(index) in self.attention:
                features = self.attention[str(index)](features)
            if index < len(self.upsample):
                features = self.upsample[index](features)
        if self.global_residual:
            base = imresize_torch(lr, scale=float(self.scale))
            return (base + self.tail(features)).clamp(-1.0, 1.0)
        return torch.tanh(self.tail(features))


class _AttentionDiscriminator(Network):
    """Shared body of both discriminators: ``num_layers`` convs, each followed by LeakyReLU(0.2),
    then ``attention_layers`` SAGAN self-attention layers, then a 3x3 conv to one logit channel.

    Layer ``i`` has ``min(channels * 2**i, max_channels)`` output channels. The last
    ``num_downsamples`` conv layers are 4x4 stride 2 (halving H and W); the others are 3x3 stride 1.
    Input ``[N,3,H,W]`` in [-1,1] with H, W divisible by ``2**num_downsamples``; output the raw
    logit map ``[N,1,H/2**num_downsamples,W/2**num_downsamples]`` (no sigmoid, no reduction: the
    adversarial loss decides how to reduce; for the relativistic average loss each patch logit is
    compared with the mean logit of the other batch).
    """

    def __init__(
        self, *, channels: int, num_layers: int, num_downsamples: int, attention_layers: int, max_channels: int
    ) -> None:
        super().__init__()
        _check_positive(channels=channels, num_layers=num_layers, max_channels=max_channels)
        if not 0 <= num_downsamples <= num_layers:
            raise ValueError(f"num_downsamples must be in [0, num_layers={num_layers}], got {num_downsamples}")
        if attention_layers < 0:
            raise ValueError(f"attention_layers must be >= 0, got {attention_layers}")
        self.divisor = 2**num_downsamples
        layers: list[nn.Module] = []
        in_channels = 3
        for index in range(num_layers):
            out_channels = min(channels * 2**index, max_channels)
            if index >= num_layers - num_downsamples:
                conv = nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
            else:
                conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
            _init_conv(conv, negative_slope=0.2)
            layers += [conv, nn.LeakyReLU(0.2)]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.attention = nn.Sequential(*(SelfAttention(channels=in_channels) for _ in range(attention_layers)))
        self.logits = nn.Conv2d(in_channels, 1, kernel_size=3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: ``[N,3,H,W]`` in [-1,1]; returns raw logits ``[N,1,H/d,W/d]``, ``d = 2**num_downsamples``."""
        _check_rgb(images, name=type(self).__name__, divisor=self.divisor)
        return self.logits(self.attention(self.features(images)))


class L2HDiscriminator(_AttentionDiscriminator):
    """Low-to-high (MR/HR) discriminator: ``[N,3,128,128]`` in [-1,1] -> logit map ``[N,1,8,8]``.

    Four 4x4 stride-2 convs (``channels`` doubling up to ``max_channels``: 64, 128, 256, 512), each
    followed by LeakyReLU(0.2); two SAGAN self-attention layers at the end (at 8x8 for a 128 input);
    a last 3x3 conv to one channel. Reading of the paper: "at the end" means after the conv stack
    and before the last (logit) conv, since attention over a one-channel map would be void. Any
    H, W divisible by ``2**num_downsamples`` work.
    """

    def __init__(
        self,
        *,
        channels: int = 64,
        num_layers: int = 4,
        num_downsamples: int = 4,
        attention_layers: int = 2,
        max_channels: int = 512,
    ) -> None:
        super().__init__(
            channels=channels,
            num_layers=num_layers,
            num_downsamples=num_downsamples,
            attention_layers=attention_layers,
            max_channels=max_channels,
        )


class H2LDiscriminator(_AttentionDiscriminator):
    """High-to-low (LR) discriminator: ``[N,3,16,16]`` in [-1,1] -> logit map ``[N,1,8,8]``.

    Three convs (64, 128, 256 channels) each followed by LeakyReLU(0.2), two SAGAN self-attention
    layers, a last 3x3 conv to one channel. Reading of the paper (which gives no strides): only the
    last conv downsamples (``num_downsamples=1``), so attention runs over 8x8 = 64 positions, the
    same as in :class:`L2HDiscriminator`; with three stride-2 convs a 16x16 input would leave 2x2.
    """

    def __init__(
        self,
        *,
        channels: int = 64,
        num_layers: int = 3,
        num_downsamples: int = 1,
        attention_layers: int = 2,
        max_channels: int = 512,
    ) -> None:
        super().__init__(
            channels=channels,
            num_layers=num_layers,
            num_downsamples=num_downsamples,
            attention_layers=attention_layers,
            max_channels=max_channels,
        )


class H2LGenerator(Network):
    """High-to-low (degradation) generator: ``[N,3,S,S]`` in [-1,1] (+ noise ``[N,noise_dim]``) ->
    ``[N,3,S*2**u/2**e,...]`` in (-1,1); defaults ``S=128, e=5, u=2`` give 128 -> 16.

    As in Bulat et al. (2018) the noise vector goes through a fully connected layer to ``S*S``
    values, reshaped to one extra input channel and concatenated to the RGB input (4 channels).
    Head 3x3 conv; encoder of ``encoder_blocks`` residual channel-attention blocks, each followed
    by 2x2 average pooling (/32: 128 -> 4); decoder of ``decoder_blocks`` blocks, the first
    ``decoder_upsample_blocks`` each followed by bilinear x2 upsampling (x4: 4 -> 16); tail 3x3 conv
    to RGB and ``tanh``.

    ``skip_connections`` (not in the paper, default off) adds the encoder features at the
    matching resolution after each decoder upsampling (U-Net style, additive), which eases
    passing detail through the 4x4 bottleneck.

    ``global_residual`` (not in the paper, default off) adds the MATLAB-bicubic downsampling of the
    input to the tail's output instead of the ``tanh``, clamped to [-1, 1]: the generator starts
    from the bicubic degradation and learns the departure from it (blur, noise, compression,
    colour), the mirror of :class:`L2HGenerator`'s option. A short training run then begins from
    plausible LR images instead of the untrained decoder's output.

    ``pixel_noise`` (not in the paper, default off) injects per-pixel Gaussian noise, StyleGAN
    style, before each decoder block at the output resolution and before the tail: a fresh
    ``N(0,1)`` map ``[N,1,h,w]`` times a learned per-channel strength (zero at start, so the
    generator starts noiseless). The paper's noise vector reaches the image only through one
    ``S*S`` channel spanned by ``noise_dim`` learned patterns and a /32 bottleneck, which cannot
    make the independent per-pixel sensor noise of real LR; the injected maps can, and the blocks
    after them can make it depend on the signal.
    """

    def __init__(
        self,
        *,
        channels: int = 64,
        noise_dim: int = 64,
        input_size: int = 128,
        encoder_blocks: int = 5,
        decoder_blocks: int = 4,
        decoder_upsample_blocks: int = 2,
        reduction: int = 16,
        skip_connections: bool = False,
        global_residual: bool = False,
        pixel_noise: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(channels=channels, noise_dim=noise_dim, input_size=input_size, reduction=reduction)
        if encoder_blocks < 0 or input_size % 2**encoder_blocks:
            raise ValueError(
                f"encoder_blocks must be >= 0 with input_size divisible by 2**encoder_blocks, "
                f"got encoder_blocks={encoder_blocks}, input_size={input_size}"
            )
        if not 0 <= decoder_upsample_blocks <= decoder_blocks:
            raise ValueError(
                f"need 0 <= decoder_upsample_blocks <= decoder_blocks, got {decoder_upsample_blocks}, {decoder_blocks}"
            )
        self.global_residual = bool(global_residual)
        self.noise_dim = noise_dim
        self.input_size = input_size
        self.output_size = input_size * 2**decoder_upsample_blocks // 2**encoder_blocks
        self.skip_connections = skip_connections
        self.decoder_upsample_blocks = decoder_upsample_blocks
        self.noise_to_channel = nn.Linear(noise_dim, input_size * input_size)
        self.head = _conv3x3(3 + 1, channels)
        self.encoder = nn.ModuleList(
            ResidualChannelAttentionBlock(channels=channels, reduction=reduction) for _ in range(encoder_blocks)
        )
        self.pool = nn.AvgPool2d(2)
        self.decoder = nn.ModuleList(
            ResidualChannelAttentionBlock(channels=channels, reduction=reduction) for _ in range(decoder_blocks)
        )
        self.upsample = _upsample_x2()
        self.tail = _conv3x3(channels, 3, scale=0.1)
        self.pixel_noise = bool(pixel_noise)
        if self.pixel_noise:  # one strength vector per injection: the full-resolution blocks and the tail
            injections = decoder_blocks - decoder_upsample_blocks + 1
            self.noise_strength = nn.Parameter(torch.zeros(injections, channels))

    def _inject(self, features: torch.Tensor, index: int, generator: torch.Generator | None) -> torch.Tensor:
        batch, _, height, width = features.shape
        noise = torch.randn(batch, 1, height, width, generator=generator, device=features.device, dtype=features.dtype)
        return features + self.noise_strength[index].view(1, -1, 1, 1) * noise

    def forward(
        self, hr: torch.Tensor, noise: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``hr``: ``[N,3,S,S]`` in [-1,1] with ``S = input_size``; ``noise``: ``[N,noise_dim]``, drawn
        from N(0,1) on ``hr``'s device and dtype (with ``generator``) when None.
        With ``pixel_noise`` the per-pixel maps are drawn with ``generator`` too.
        Returns ``[N,3,output_size,output_size]`` in (-1,1)."""
        _check_rgb(hr, name=type(self).__name__, size=self.input_size)
        batch = hr.shape[0]
        if noise is None:
            noise = torch.randn(batch, self.noise_dim, generator=generator, device=hr.device, dtype=hr.dtype)
        elif noise.shape != (batch, self.noise_dim):
            raise ValueError(f"noise must have shape ({batch}, {self.noise_dim}), got {tuple(noise.shape)}")
        noise_channel = self.noise_to_channel(noise).view(batch, 1, self.input_size, self.input_size)
        features = self.head(torch.cat([hr, noise_channel], dim=1))
        skips: dict[int, torch.Tensor] = {}
        for block in self.encoder:
            features = self.pool(block(features))
            skips[features.shape[-1]] = features
        for index, block in enumerate(self.decoder):
            if self.pixel_noise and index >= self.decoder_upsample_blocks:
                features = self._inject(features, index - self.decoder_upsample_blocks, generator)
            features = block(features)
            if index < self.decoder_upsample_blocks:
                features = self.upsample(features)
                if self.skip_connections and features.shape[-1] in skips:
                    features = features + skips[features.shape[-1]]
        if self.pixel_noise:
            features = self._inject(features, len(self.noise_strength) - 1, generator)
        if self.global_residual:
            base = imresize_torch(hr, output_size=(self.output_size, self.output_size))
            return (base + self.tail(features)).clamp(-1.0, 1.0)
        return torch.tanh(self.tail(features))

