"""Adversarial losses and R1, checked on cases computed by hand with math.log / math.exp."""

from __future__ import annotations

import math

import pytest
import torch

from fsr_core.losses.adversarial import (
    ADVERSARIAL_LOSSES,
    d_loss_hinge,
    d_loss_relativistic_average,
    d_loss_vanilla,
    g_loss_hinge,
    g_loss_relativistic_average,
    g_loss_vanilla,
    r1_penalty,
)

LOG2 = math.log(2.0)


def softplus(x: float) -> float:
    """log(1 + e^x) = -log sigmoid(-x) = -log(1 - sigmoid(x))."""
    return math.log1p(math.exp(x))


def t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[:, None]  # [N, 1] logits


def test_vanilla_by_hand() -> None:
    real, fake = t([2.0, 0.0]), t([-1.0, 3.0])
    # -log sigmoid(r) = log(1 + e^-r); -log(1 - sigmoid(f)) = log(1 + e^f).
    expected_d = (softplus(-2.0) + LOG2) / 2 + (softplus(-1.0) + softplus(3.0)) / 2
    assert d_loss_vanilla(real, fake).item() == pytest.approx(expected_d, rel=1e-12)
    expected_g = (softplus(1.0) + softplus(-3.0)) / 2  # -log sigmoid(f)
    assert g_loss_vanilla(fake).item() == pytest.approx(expected_g, rel=1e-12)
    zeros = t([0.0, 0.0])
    assert d_loss_vanilla(zeros, zeros).item() == pytest.approx(2 * LOG2)
    assert g_loss_vanilla(zeros).item() == pytest.approx(LOG2)


def test_relativistic_average_by_hand() -> None:
    real, fake = t([2.0, 0.5]), t([-1.0, 0.0])
    # E[C(x_r)] = 1.25, E[C(x_f)] = -0.5: real - E fake = [2.5, 1.0], fake - E real = [-2.25, -1.25].
    expected_d = (softplus(-2.5) + softplus(-1.0)) / 2 + (softplus(-2.25) + softplus(-1.25)) / 2
    expected_g = (softplus(2.25) + softplus(1.25)) / 2 + (softplus(2.5) + softplus(1.0)) / 2
    assert d_loss_relativistic_average(real, fake).item() == pytest.approx(expected_d, rel=1e-12)
    assert g_loss_relativistic_average(real, fake).item() == pytest.approx(expected_g, rel=1e-12)


def test_relativistic_average_equals_its_sigmoid_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(6, 1, 3, 3, generator=generator, dtype=torch.float64)
    fake = torch.randn(4, 1, 3, 3, generator=generator, dtype=torch.float64)  # batch sizes may differ
    d_real = torch.sigmoid(real - fake.mean())  # D_ra(x_r, x_f)
    d_fake = torch.sigmoid(fake - real.mean())  # D_ra(x_f, x_r)
    expected_d = -torch.log(d_real).mean() - torch.log(1 - d_fake).mean()
    expected_g = -torch.log(d_fake).mean() - torch.log(1 - d_real).mean()
    torch.testing.assert_close(d_loss_relativistic_average(real, fake), expected_d)
    torch.testing.assert_close(g_loss_relativistic_average(real, fake), expected_g)


def test_relativistic_average_symmetries() -> None:
    same = torch.full((5, 1), 0.7, dtype=torch.float64)
    assert g_loss_relativistic_average(same, same).item() == pytest.approx(2 * LOG2, rel=1e-12)
    assert d_loss_relativistic_average(same, same).item() == pytest.approx(2 * LOG2, rel=1e-12)
    real, fake = t([1.5, -0.25, 0.75]), t([0.5, 2.0, -1.0])
    # The generator loss is the discriminator loss with real and fake swapped.
    torch.testing.assert_close(g_loss_relativistic_average(real, fake), d_loss_relativistic_average(fake, real))
    # Only differences matter: shifting every logit by a constant changes nothing.
    torch.testing.assert_close(
        d_loss_relativistic_average(real + 10, fake + 10), d_loss_relativistic_average(real, fake)
    )


def test_losses_are_finite_for_large_logits() -> None:
    real, fake = t([1e4, -1e4]), t([-1e4, 1e4])
    for d_fn, g_fn in ADVERSARIAL_LOSSES.values():
        assert torch.isfinite(d_fn(real, fake))
        assert torch.isfinite(g_fn(real_logits=real, fake_logits=fake))
    # sigmoid(1e4 - 0) would round to 1 and log(1 - 1) = -inf without the logits form.
    assert d_loss_vanilla(t([1e4]), t([-1e4])).item() == pytest.approx(0.0, abs=1e-12)
    assert g_loss_vanilla(t([-1e4])).item() == pytest.approx(1e4)


def test_hinge_by_hand() -> None:
    real, fake = t([2.0, 0.5, -1.0]), t([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 1.5].
    assert d_loss_hinge(real, fake).item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert g_loss_hinge(fake).item() == pytest.approx(-(-1.5 / 3))
    assert d_loss_hinge(t([1.0, 3.0]), t([-1.0, -5.0])).item() == 0.0  # margins met


def test_r1_on_a_linear_discriminator_is_the_squared_weight_norm() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 4, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    images = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64).requires_grad_(True)
    logits = (images * weight).sum(dim=(1, 2, 3))  # D(x) = sum(w * x): grad_x D = w for every x
    penalty = r1_penalty(logits, images)
    assert penalty.item() == pytest.approx(weight.detach().pow(2).sum().item(), rel=1e-12)
    penalty.backward()  # create_graph=True: d ||w||^2 / dw = 2w reaches the discriminator
    torch.testing.assert_close(weight.grad, 2 * weight.detach())


def test_r1_on_a_quadratic_discriminator_by_hand() -> None:
    # D(x) = sum(x^2): grad = 2x. Samples [1, 2] and [0, 3]: ||2x||^2 = 20 and 36, mean 28.
    images = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64, requires_grad=True)
    assert r1_penalty(images.pow(2).sum(dim=1), images).item() == pytest.approx(28.0)


def test_r1_requires_input_gradients() -> None:
    images = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(images.sum(dim=(1, 2, 3)), images)


def test_registry_names_and_uniform_call() -> None:
    assert set(ADVERSARIAL_LOSSES) == {"vanilla", "relativistic_average", "hinge"}
    assert ADVERSARIAL_LOSSES["vanilla"] == (d_loss_vanilla, g_loss_vanilla)
    assert ADVERSARIAL_LOSSES["relativistic_average"] == (d_loss_relativistic_average, g_loss_relativistic_average)
    assert ADVERSARIAL_LOSSES["hinge"] == (d_loss_hinge, g_loss_hinge)
    real, fake = t([2.0, 0.5]), t([-1.0, 0.0])
    assert g_loss_vanilla(fake).item() == g_loss_vanilla(real_logits=real, fake_logits=fake).item()
    assert g_loss_hinge(fake).item() == g_loss_hinge(real_logits=real, fake_logits=fake).item()


@pytest.mark.parametrize("name", ["vanilla", "relativistic_average", "hinge"])
def test_generator_loss_falls_as_fakes_look_more_real(name: str) -> None:
    d_fn, g_fn = ADVERSARIAL_LOSSES[name]
    real = t([0.5, 0.25])
    fake = t([-0.5, -0.75]).requires_grad_(True)
    g_fn(real_logits=real, fake_logits=fake).backward()
    assert (fake.grad < 0).all()  # raising fake logits lowers the generator loss
    fake_for_d = t([-0.5, -0.75]).requires_grad_(True)
    d_fn(real, fake_for_d).backward()
    assert (fake_for_d.grad > 0).all()  # and raises the discriminator loss


def test_rejects_bad_logits() -> None:
    with pytest.raises(ValueError, match="empty"):
        d_loss_vanilla(torch.zeros(0, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="floating"):
        g_loss_hinge(torch.zeros(2, 1, dtype=torch.long))
