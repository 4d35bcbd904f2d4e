"""A tiny StyleGAN2 generator (16 px, style_dim 16) for the inversion tests, with learned noise strengths."""

from __future__ import annotations

import pytest
import torch


def tiny_generator(*, seed: int = 0, size: int = 16, style_dim: int = 16):
    from fsr_core.networks.stylegan2 import Generator

    torch.manual_seed(seed)
    channels = {16: [16, 16, 8], 32: [16, 16, 8, 8]}[size]
    generator = Generator(size=size, style_dim=style_dim, n_mlp=2, channels=channels)
    with torch.no_grad():  # an untrained generator ignores its noise (strength 0): give it some
        for module in generator.modules():
            if type(module).__name__ == "NoiseInjection":
                module.weight.fill_(0.1)
    return generator.eval().requires_grad_(False)


@pytest.fixture
def generator():
    torch.set_num_threads(1)
    return tiny_generator()
