"""The base class of every fsr network: constructor arguments recorded once, by shared machinery.

A subclass of :class:`Network` gets ``self.config``: the keyword arguments its constructor was
called with, defaults filled in, as a JSON-able dict (tuples become lists), so that
``type(net)(**net.config)`` rebuilds it and a checkpoint or a restorer bundle stores it as JSON
(:func:`fsr_core.arguments.record_arguments`). Constructors take keyword arguments only.

A network whose architecture changes during training (progressive growth) is rebuilt as a new
instance with the new arguments, never edited in place, so ``config`` always describes the module.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fsr_core.arguments import record_arguments

__all__ = ["Network"]


class Network(nn.Module):
    """An ``nn.Module`` whose constructor arguments are recorded in ``self.config``."""

    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        record_arguments(cls)
