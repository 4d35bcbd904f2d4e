"""Methods from outside this package: ``FSR_PLUGINS=package.module,other.module``.

Each module named in the environment variable ``FSR_PLUGINS`` (comma-separated, imported by name
from the installed packages, the way ``PYTEST_PLUGINS`` works) may define any of these dicts,
which the registries merge after their own entries:

- ``NETWORKS``: network name -> :class:`~fsr_core.networks.base.Network` subclass
  (``fsr_core.networks``: names in checkpoints and restorer bundles);
- ``SEARCHES``: search name -> latent-search function (``fsr_core.inversion``);
- ``STAGES``: stage kind name -> :class:`pipelines.stage.Stage` (``pipelines.stages``).

A plugin name that is already taken is an error (a plugin cannot replace a built-in). The variable
is read when a registry is first asked; processes that Ray starts inherit it from the driver's
environment. Nothing here imports anything at import time.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import Any, Mapping

__all__ = ["ENV", "merged", "plugin_modules"]

ENV = "FSR_PLUGINS"


@functools.lru_cache(maxsize=8)
def _modules(names: str) -> tuple[ModuleType, ...]:
    out = []
    for name in (part.strip() for part in names.split(",")):
        if not name:
            continue
        try:
            out.append(importlib.import_module(name))
        except ImportError as exc:
            raise ImportError(f"{ENV} names module {name!r}, which cannot be imported: {exc}") from exc
    return tuple(out)


def plugin_modules() -> tuple[ModuleType, ...]:
    """The modules named in ``FSR_PLUGINS`` (imported once per distinct value)."""
    return _modules(os.environ.get(ENV, ""))


def merged(attribute: str, builtin: Mapping[str, Any]) -> dict[str, Any]:
    """``builtin`` plus the ``attribute`` dict of every plugin module; a taken name is an error."""
    out = dict(builtin)
    for module in plugin_modules():
        for name, value in dict(getattr(module, attribute, {}) or {}).items():
            if name in out and out[name] is not value:
                raise ValueError(f"{ENV}: {module.__name__}.{attribute} redefines {name!r}")
            out[name] = value
    return out
