"""Pixel-space losses: L2 (MSE), L1, and the total variation of a flow field.

``l2_loss`` is the pixel loss of the two-step method and of CR; ``l1_loss`` is SelFSR's identity
and reconstruction loss; ``total_variation`` is SelFSR's smoothness term on the predicted flow.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["l1_loss", "l2_loss", "total_variation"]


def _check_pair(prediction: Tensor, target: Tensor) -> None:
    for name, value in (("prediction", prediction), ("target", target)):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {value.dtype}")
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target shapes differ: {tuple(prediction.shape)} vs {tuple(target.shape)} "
            "(no broadcasting in pixel losses)"
        )
    if prediction.numel() == 0:
        raise ValueError("prediction and target must not be empty")


def l2_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements.

    Args:
        prediction: any shape, e.g. ``[N, 3, H, W]`` in ``[-1, 1]``.
        target: same shape as ``prediction`` and the same value range.

    Returns:
        Scalar tensor, ``mean((prediction - target) ** 2)``.
    """
    _check_pair(prediction, target)
    return F.mse_loss(prediction, target, reduction="mean")


def l1_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over all elements.

    Args:
        prediction: any shape, e.g. ``[N, 3, H, W]`` in ``[-1, 1]``.
        target: same shape as ``prediction`` and the same value range.

    Returns:
        Scalar tensor, ``mean(|prediction - target|)``.
    """
    _check_pair(prediction, target)
    return F.l1_loss(prediction, target, reduction="mean")


def total_variation(flow: Tensor) -> Tensor:
    """Anisotropic total variation: mean |horizontal difference| + mean |vertical difference|.

    Args:
        flow: ``[N, C, H, W]`` floating tensor with ``H, W >= 2``, e.g. a pixel flow field
            ``[N, 2, H, W]`` in pixels.

    Returns:
        Scalar tensor ``mean |f[..., :, 1:] - f[..., :, :-1]| + mean |f[..., 1:, :] - f[..., :-1, :]|``;
        0 for a constant field, ``|a| + |b|`` for the ramp ``a * x + b * y``.
    """
    if not isinstance(flow, Tensor):
        raise ValueError(f"flow must be a torch.Tensor, got {type(flow).__name__}")
    if flow.ndim != 4:
        raise ValueError(f"flow must be [N, C, H, W], got shape {tuple(flow.shape)}")
    if not flow.is_floating_point():
        raise ValueError(f"flow must be floating point, got {flow.dtype}")
    if flow.shape[0] == 0 or flow.shape[1] == 0 or flow.shape[-2] < 2 or flow.shape[-1] < 2:
        raise ValueError(f"flow needs N, C >= 1 and H, W >= 2, got shape {tuple(flow.shape)}")
    horizontal = (flow[..., :, 1:] - flow[..., :, :-1]).abs().mean()
    vertical = (flow[..., 1:, :] - flow[..., :-1, :]).abs().mean()
    return horizontal + vertical
