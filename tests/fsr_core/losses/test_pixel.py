"""Pixel losses and total variation on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from fsr_core.losses.pixel import l1_loss, l2_loss, total_variation


def test_l2_and_l1_by_hand() -> None:
    prediction = torch.tensor([[1.0, 2.0, 3.0]])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    assert l2_loss(prediction, target).item() == pytest.approx((0 + 4 + 9) / 3)
    assert l1_loss(prediction, target).item() == pytest.approx((0 + 2 + 3) / 3)
    assert l2_loss(target, target).item() == 0.0


def test_l2_gradient() -> None:
    prediction = torch.tensor([2.0, -1.0], requires_grad=True)
    l2_loss(prediction, torch.zeros(2)).backward()
    torch.testing.assert_close(prediction.grad, torch.tensor([2.0, -1.0]))  # 2 (p - t) / n


def test_pixel_losses_refuse_broadcasting() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        l2_loss(torch.zeros(2, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="shapes differ"):
        l1_loss(torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, 4))


def test_total_variation_of_a_constant_is_zero() -> None:
    assert total_variation(torch.full((2, 2, 5, 7), 3.25)).item() == 0.0


def test_total_variation_of_ramps_equals_the_slopes() -> None:
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(9.0), indexing="ij")
    horizontal_ramp = (0.5 * xs)[None, None]
    assert total_variation(horizontal_ramp).item() == pytest.approx(0.5)
    plane = (0.5 * xs - 2.0 * ys)[None, None].repeat(3, 2, 1, 1)
    assert total_variation(plane).item() == pytest.approx(0.5 + 2.0)


def test_total_variation_by_hand() -> None:
    flow = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])
    # horizontal |1 - 0|, |5 - 3| -> mean 1.5; vertical |3 - 0|, |5 - 1| -> mean 3.5.
    assert total_variation(flow).item() == pytest.approx(5.0)


def test_total_variation_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        total_variation(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="H, W >= 2"):
        total_variation(torch.zeros(1, 2, 1, 4))
