"""Image-space filters at full precision inside a mixed-precision training step.

Under ``torch.autocast`` in bfloat16 (``TrainingParams.precision``) every convolution and matrix
product runs with an 8-bit mantissa, so a blur or a bicubic resize of an image in [-1, 1] is off by
up to ~0.004 (half a grey level). That is harmless inside a network, but not in the fixed filters
around it: the high band ``x - blur(x)`` of a 16 px face is itself only a few grey levels, and the
bicubic downsampling is the H2L's base image and the target of its pixel term, so bf16 rounding
would be noise the discriminators see and the generators learn. :func:`full_precision` runs such a
filter with autocast off, on float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

__all__ = ["full_precision"]

F = TypeVar("F", bound=Callable)
_AUTOCAST_DEVICES = ("cpu", "cuda")


def full_precision(fn: F) -> F:
    """Decorate ``fn(x: Tensor, ...)``: it runs with autocast disabled on ``x``'s device and a
    half-precision ``x`` is cast to float32 first (the result is then float32). Outside autocast,
    with a float32 ``x``, nothing changes."""

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        import torch  # here, not at import: numpy-only readers import the decorated modules

        if not isinstance(x, torch.Tensor) or x.device.type not in _AUTOCAST_DEVICES:
            return fn(x, *args, **kwargs)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn(x.float() if x.dtype in (torch.bfloat16, torch.float16) else x, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
