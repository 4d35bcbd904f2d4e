"""Networks. :data:`NETWORKS` maps the class names used in configs and checkpoints to classes (explicit, no scanning)."""

from __future__ import annotations

from fsr_core.networks import two_step

NETWORKS = {**two_step.NETWORKS}

__all__ = ["NETWORKS"]
