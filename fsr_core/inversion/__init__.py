"""Latent-space restoration: the searches a ``latent_search`` restorer can name, and their registry.

A search is a plain function ``search(networks, lr, *, seed, **settings) -> sr``: ``networks`` the
restorer's networks by name (eval mode, frozen), ``lr`` ``[N,3,s,s]`` in [-1,1], ``sr``
``[N,3,S,S]`` in [-1,1]; it optimises one latent per face, the ``N`` faces together in one loop
(:class:`fsr_core.restore.restorer.LatentSearchRestorer` runs it, a batch of faces per Ray task). A
search whose restorer card names per-face ``conditions`` is also given ``conditions={name: one value per
face}`` (``sair`` with ``reference_identity: given`` reads ``identity``).

:data:`SEARCHES` is one of the project's *lists* (``__fsr_registry__``: not part of any stage's
code version); it maps the name a restorer card gives to ``"module:function"``, imported when
asked for. Searches from outside the package come from :mod:`fsr_core.plugins`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__fsr_registry__ = True

__all__ = ["SEARCHES", "search_function"]

SEARCHES: dict[str, str] = {
    "two_step_latent": "fsr_core.inversion.two_step:two_step_latent",
    "pulse": "fsr_core.inversion.two_step:pulse_search",
    "sair": "fsr_core.inversion.sair:sair_search",
}
"""Search name (as restorer cards give it) -> ``"module:function"``."""


def search_function(name: str) -> Callable[..., Any]:
    """The search registered as ``name``; ``KeyError`` naming the known ones otherwise."""
    from fsr_core.plugins import merged

    searches = merged("SEARCHES", SEARCHES)
    if name not in searches:
        raise KeyError(f"unknown latent search {name!r}; known: {sorted(searches)}")
    entry = searches[name]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module), attribute)
    if not callable(entry):
        raise TypeError(f"latent search {name!r} is not callable: {entry!r}")
    return entry
