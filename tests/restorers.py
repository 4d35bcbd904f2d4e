"""Test helpers: a checkpoint folder that exports an ``l2h`` restorer, and its expected outputs."""

from __future__ import annotations

import numpy as np
from torch import nn

from fsr_core.restore.restorer import FeedForwardRestorer, RestorerCard
from fsr_core.training.checkpoint import save_checkpoint
from fsr_core.training.objective import RestorerSpec


def l2h_checkpoint(folder: str, network: nn.Module, *, input_size: int = 16, **train_state) -> str:
    """Save ``network`` as network ``l2h`` of a checkpoint that exports the feed-forward restorer ``l2h``."""
    spec = RestorerSpec(kind="feed_forward", networks=("l2h",), input_size=input_size, scale=network.scale)
    return save_checkpoint(folder, networks={"l2h": network}, train_state=dict(train_state),
                           restorers={"l2h": spec.to_dict()})


def super_resolve(network: nn.Module, lr: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """What the ``l2h`` restorer of ``network`` gives for uint8 ``lr`` crops."""
    card = RestorerCard(kind="feed_forward", input_size=lr.shape[1], scale=network.scale, networks=("l2h",))
    return FeedForwardRestorer(card, {"l2h": network.eval()}).restore(lr, batch_size=batch_size)
