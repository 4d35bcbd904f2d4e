"""Adversarial losses on raw discriminator logits, and the R1 gradient penalty.

Every function takes logits (pre-sigmoid discriminator outputs) of any shape, e.g. ``[N, 1]`` or
a patch map ``[N, 1, h, w]``, and returns a scalar: expectations are means over all elements.

Three families, each a ``(d_loss, g_loss)`` pair listed in :data:`ADVERSARIAL_LOSSES`:

* ``"vanilla"``: the non-saturating GAN (Goodfellow et al. 2014), binary cross-entropy.
* ``"relativistic_average"``: RaGAN (Jolicoeur-Martineau 2018), used by ESRGAN and the two-step
  extreme FSR method. With ``C`` the logits, ``D_ra(x_r, x_f) = sigmoid(C(x_r) - E[C(x_f)])``.
* ``"hinge"``: the hinge loss of SAGAN / BigGAN, used by SelFSR.

Uniform call convention, so configuration can pick a family by name::

    d_loss_fn, g_loss_fn = ADVERSARIAL_LOSSES[name]
    d_loss = d_loss_fn(real_logits, fake_logits)              # fake from G(z).detach()
    g_loss = g_loss_fn(real_logits=real_logits, fake_logits=fake_logits)

The vanilla and hinge generator losses accept and ignore ``real_logits``. For the RaGAN generator
loss, pass ``real_logits`` computed under ``torch.no_grad()`` (or detached), as ESRGAN does: only
the generator is stepped then, and no graph through the discriminator on real images is needed.

All losses are computed with ``F.binary_cross_entropy_with_logits`` (``softplus``) where a log of
a sigmoid appears, which is stable for large logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ADVERSARIAL_LOSSES",
    "d_loss_hinge",
    "d_loss_relativistic_average",
    "d_loss_vanilla",
    "g_loss_hinge",
    "g_loss_relativistic_average",
    "g_loss_vanilla",
    "r1_penalty",
]


def _check_logits(name: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {logits.dtype}")
    if logits.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(logits.shape)}")


def _bce(logits: Tensor, target: float) -> Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against a constant label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d_loss_vanilla(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator BCE loss: ``-E[log sigmoid(real)] - E[log(1 - sigmoid(fake))]``.

    Args:
        real_logits: discriminator logits on real samples, any shape.
        fake_logits: discriminator logits on generated samples, any shape.

    Returns:
        Scalar tensor, ``>= 0``; ``2 log 2`` when both logits are 0.
    """
    _check_logits("real_logits", real_logits)
    _check_logits("fake_logits", fake_logits)
    return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)


def g_loss_vanilla(fake_logits: Tensor, real_logits: Tensor | None = None) -> Tensor:
    """Non-saturating generator loss: ``-E[log sigmoid(fake)]``.

    Args:
        fake_logits: discriminator logits on generated samples, any shape.
        real_logits: ignored; accepted for the uniform call convention.

    Returns:
        Scalar tensor, ``>= 0``; ``log 2`` when the logits are 0.
    """
    _check_logits("fake_logits", fake_logits)
    return _bce(fake_logits, 1.0)


def d_loss_relativistic_average(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """RaGAN discriminator loss.

    ``-E_r[log sigmoid(C(x_r) - E_f[C(x_f)])] - E_f[log(1 - sigmoid(C(x_f) - E_r[C(x_r)]))]``.

    Args:
        real_logits: ``C(x_r)``, logits on real samples, any shape.
        fake_logits: ``C(x_f)``, logits on generated samples, any shape (may differ from real's).

    Returns:
        Scalar tensor, ``>= 0``; ``2 log 2`` when all logits are equal.
    """
    _check_logits("real_logits", real_logits)
    _check_logits("fake_logits", fake_logits)
    real_vs_fake = real_logits - fake_logits.mean()
    fake_vs_real = fake_logits - real_logits.mean()
    return _bce(real_vs_fake, 1.0) + _bce(fake_vs_real, 0.0)


def g_loss_relativistic_average(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """RaGAN generator loss, the discriminator loss with the roles of real and fake swapped.

    ``-E_f[log sigmoid(C(x_f) - E_r[C(x_r)])] - E_r[log(1 - sigmoid(C(x_r) - E_f[C(x_f)]))]``.
    Unlike the other generator losses it depends on the real logits: pass them detached.

    Args:
        real_logits: ``C(x_r)``, logits on real samples, any shape.
        fake_logits: ``C(x_f)``, logits on generated samples, any shape.

    Returns:
        Scalar tensor, ``>= 0``; ``2 log 2`` when all logits are equal.
    """
    _check_logits("real_logits", real_logits)
    _check_logits("fake_logits", fake_logits)
    real_vs_fake = real_logits - fake_logits.mean()
    fake_vs_real = fake_logits - real_logits.mean()
    return _bce(fake_vs_real, 1.0) + _bce(real_vs_fake, 0.0)


def d_loss_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge discriminator loss: ``E[relu(1 - real)] + E[relu(1 + fake)]``.

    Args:
        real_logits: discriminator outputs on real samples, any shape.
        fake_logits: discriminator outputs on generated samples, any shape.

    Returns:
        Scalar tensor, ``>= 0``; 0 once real >= 1 and fake <= -1 everywhere.
    """
    _check_logits("real_logits", real_logits)
    _check_logits("fake_logits", fake_logits)
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_loss_hinge(fake_logits: Tensor, real_logits: Tensor | None = None) -> Tensor:
    """Hinge generator loss: ``-E[fake]`` (unbounded below).

    Args:
        fake_logits: discriminator outputs on generated samples, any shape.
        real_logits: ignored; accepted for the uniform call convention.

    Returns:
        Scalar tensor.
    """
    _check_logits("fake_logits", fake_logits)
    return -fake_logits.mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1 gradient penalty (Mescheder et al. 2018): ``E_x[ ||grad_x C(x)||^2 ]`` on real data.

    Returns the mean over the batch of the squared L2 norm of each sample's input gradient. The
    full regulariser is ``gamma / 2 * r1_penalty(...)``; the caller multiplies by ``gamma / 2``
    (SelFSR: gamma = 10), and may apply it lazily every k steps.

    The gradient is taken with ``create_graph=True`` so the penalty can be backpropagated into the
    discriminator's parameters.

    Args:
        real_logits: discriminator output on ``real_images``, ``[N, ...]``; logits of sample ``i``
            must depend only on ``real_images[i]`` (true for discriminators without batch norm).
        real_images: ``[N, C, H, W]`` (any ``[N, ...]``) real inputs with ``requires_grad=True``,
            the tensor that was fed to the discriminator.

    Returns:
        Scalar tensor, ``>= 0``.
    """
    _check_logits("real_logits", real_logits)
    if not isinstance(real_images, Tensor) or not real_images.requires_grad:
        raise ValueError(
            "real_images must be a tensor with requires_grad=True that was fed to the "
            "discriminator (call real_images.requires_grad_(True) before the forward pass)"
        )
    if real_images.ndim < 1 or real_images.shape[0] == 0:
        raise ValueError(f"real_images must be [N, ...] with N >= 1, got shape {tuple(real_images.shape)}")
    (grad,) = torch.autograd.grad(
        outputs=real_logits.sum(), inputs=real_images, create_graph=True
    )
    return grad.pow(2).reshape(grad.shape[0], -1).sum(dim=1).mean()


AdversarialLossPair = tuple[Callable[..., Tensor], Callable[..., Tensor]]

ADVERSARIAL_LOSSES: dict[str, AdversarialLossPair] = {
    "vanilla": (d_loss_vanilla, g_loss_vanilla),
    "relativistic_average": (d_loss_relativistic_average, g_loss_relativistic_average),
    "hinge": (d_loss_hinge, g_loss_hinge),
}
"""Name (as written in configuration) -> ``(d_loss(real_logits, fake_logits),
g_loss(real_logits=..., fake_logits=...))``."""
