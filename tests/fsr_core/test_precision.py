"""Image-space filters stay float32 inside a bf16 autocast step (fsr_core.precision)."""

from __future__ import annotations

import pytest
import torch

from fsr_core.degradation.resize import imresize_torch
from fsr_core.losses.frequency import gaussian_lowpass, highpass


def _face() -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.rand(2, 3, 16, 16) * 2 - 1).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("op", [
    lambda x: imresize_torch(x, scale=8),
    lambda x: imresize_torch(x, scale=0.5),
    lambda x: highpass(x, 1.0),
    lambda x: gaussian_lowpass(x, 1.0),
], ids=["bicubic_up", "bicubic_down", "highpass", "lowpass"])
def test_filters_under_bf16_autocast_equal_their_float32_result(op):
    x = _face()
    exact = op(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = op(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, exact, rtol=0, atol=1e-6)


def test_without_the_guard_bf16_rounding_is_a_large_part_of_the_high_band():
    """Why the guard exists: the high band of a 16 px face is small, and a bf16 blur's rounding is a
    visible fraction of it (the undecorated function under autocast)."""
    x = _face()
    exact = highpass(x, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = x - gaussian_lowpass.__wrapped__(x, 1.0)
        resized = imresize_torch.__wrapped__(x, scale=8)
    assert resized.dtype == torch.bfloat16
    assert (rounded - exact).abs().max() > 1e-3  # > 1/8 grey level, on a band of a few levels
    assert (resized.float() - imresize_torch(x, scale=8)).abs().max() > 1e-3


def test_half_precision_input_is_computed_in_float32_and_gradients_flow():
    x = _face().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = highpass(x.to(torch.bfloat16), 1.0)
    assert out.dtype == torch.float32
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
