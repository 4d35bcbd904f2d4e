"""Deterministic train/val/test assignment from a key (an identity, a file), stable across runs and machines."""

from __future__ import annotations

import hashlib
from typing import Mapping

__all__ = ["assign_split", "check_fractions"]


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    from fsr_core.data.schema import SPLITS

    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split name(s) {sorted(unknown)}; expected {SPLITS}")
    if any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be >= 0, got {dict(fractions)}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total} from {dict(fractions)}")
    return {name: float(fractions.get(name, 0.0)) for name in SPLITS}


def assign_split(key: str, fractions: Mapping[str, float], *, salt: str = "") -> str:
    """Map ``key`` to a split: a hash of (salt, key) read as a number in [0, 1) picks the bucket."""
    fractions = check_fractions(fractions)
    digest = hashlib.sha256(f"{salt}\x1f{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    last = "train"
    for name, fraction in fractions.items():
        if fraction <= 0:
            continue
        edge += fraction
        last = name
        if u < edge:
            return name
    return last
