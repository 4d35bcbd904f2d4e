"""The centre loss of Wen et al. 2016 ("A Discriminative Feature Learning Approach for Deep Face
Recognition", CentreFace) and its centre update rule.

With features ``x_i`` ``[M,D]``, labels ``y_i`` and class centres ``c_j`` ``[K,D]``:

- :func:`centre_loss` (Eq. 2, averaged over the batch as the authors' Caffe layer does):
  ``L_C = 1/(2M) * sum_i ||x_i - c_{y_i}||^2``; its gradient reaches the features only (the
  centres are not learned by gradient descent);
- :func:`centre_differences` and :func:`update_centres` (Eq. 4 and Algorithm 1): per class
  ``delta_j = sum_{i: y_i = j} (c_j - x_i) / (1 + #{i: y_i = j})`` and ``c_j <- c_j - alpha * delta_j``.
  A class absent from the batch keeps its centre. The sums and counts are returned separately so
  that data-parallel workers can add theirs before updating (then every worker applies the update
  of the global batch).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["centre_differences", "centre_loss", "update_centres"]


def _check(features: Tensor, labels: Tensor, centres: Tensor) -> None:
    if features.ndim != 2 or centres.ndim != 2 or features.shape[1] != centres.shape[1]:
        raise ValueError(f"expected features [M,D] and centres [K,D], got {tuple(features.shape)} and "
                         f"{tuple(centres.shape)}")
    if labels.shape != features.shape[:1] or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"expected integer labels [M] for features {tuple(features.shape)}, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError("the centre loss needs at least one feature")
    if int(labels.min()) < 0 or int(labels.max()) >= centres.shape[0]:
        raise ValueError(f"labels must be in [0, {centres.shape[0]}), got [{int(labels.min())}, {int(labels.max())}]")


def centre_loss(features: Tensor, labels: Tensor, centres: Tensor) -> Tensor:
    """``1/(2M) * sum_i ||x_i - c_{y_i}||^2`` (a scalar); the centres are treated as constants."""
    _check(features, labels, centres)
    difference = features - centres.detach()[labels]
    return 0.5 * difference.pow(2).sum(dim=1).mean()


@torch.no_grad()
def centre_differences(features: Tensor, labels: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum_{i: y_i = j} (c_j - x_i)`` ``[K,D]``, ``#{i: y_i = j}`` ``[K]`` float) for this batch."""
    _check(features, labels, centres)
    features = features.detach().to(centres.dtype)
    sums = torch.zeros_like(centres).index_add_(0, labels, centres[labels] - features)
    counts = torch.zeros(centres.shape[0], dtype=centres.dtype, device=centres.device)
    counts.index_add_(0, labels, torch.ones_like(labels, dtype=centres.dtype))
    return sums, counts


@torch.no_grad()
def update_centres(centres: Tensor, sums: Tensor, counts: Tensor, *, alpha: float) -> Tensor:
    """``c_j - alpha * sums_j / (1 + counts_j)`` (a new tensor; classes with no sample are unchanged)."""
    if sums.shape != centres.shape or counts.shape != centres.shape[:1]:
        raise ValueError(f"sums {tuple(sums.shape)} and counts {tuple(counts.shape)} do not match centres "
                         f"{tuple(centres.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return centres - alpha * sums / (1.0 + counts)[:, None]
