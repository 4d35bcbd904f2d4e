"""Identity metrics on face descriptors: cosine similarity, Rank-1 identification, the knee of a curve.

Functions of descriptors (``[N, D]``): which network made them names the metric
(``identity_sim_dlib`` for dlib's ResNet descriptor, ``identity_sim_<embedder>`` for the
project's own), as for the distribution distances (:mod:`fsr_core.metrics.distribution`).

- :func:`cosine_similarity`: per pair of rows, in float64 (a zero vector has similarity 0);
- :func:`rank1_accuracy`: each probe is given the identity of its most similar gallery descriptor
  (cosine; ties go to the first gallery row); the fraction of probes identified correctly;
- :func:`knee`: where a monotone curve bends most (Kneedle's reading: the point farthest from the
  chord between the first and last points after both axes are scaled to [0, 1]), for the
  critical-resolution curve (identity match rate against input size, collapsing below ~64 px in
  the papers);
- :func:`critical_resolution_curve`: for each input size, the identity match rate of the faces
  restored from that size against their ground truth (Rank-1 of each restored face among the
  ground-truth descriptors of all the faces, a closed-set identification with one gallery face per
  identity), and the curve's :func:`knee`. The descriptors come from whichever network the caller
  used (dlib's, the project's embedder); restoring at each size is the caller's business.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["cosine_similarity", "critical_resolution_curve", "knee", "rank1_accuracy"]


def _unit(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected [N, D] descriptors, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N]`` cosine similarity of row ``i`` of ``a`` with row ``i`` of ``b``."""
    a, b = _unit("a", a), _unit("b", b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    return np.sum(a * b, axis=1)


def rank1_accuracy(gallery: np.ndarray, gallery_ids: Sequence, probes: np.ndarray, probe_ids: Sequence) -> float:
    """Fraction of probes whose most similar gallery descriptor has the probe's identity."""
    gallery, probes = _unit("gallery", gallery), _unit("probes", probes)
    if len(gallery) != len(gallery_ids) or len(probes) != len(probe_ids):
        raise ValueError("each descriptor needs one identity")
    if not len(gallery) or not len(probes):
        raise ValueError("empty gallery or probe set")
    nearest = np.argmax(probes @ gallery.T, axis=1)
    gallery_ids = np.asarray(gallery_ids)
    return float(np.mean(gallery_ids[nearest] == np.asarray(probe_ids)))


def knee(x: Sequence[float], y: Sequence[float]) -> float:
    """The ``x`` where the curve ``y(x)`` is farthest from its chord (both axes scaled to [0, 1])."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 3:
        raise ValueError("knee needs at least 3 points of equal-length x and y")
    order = np.argsort(x)
    x, y = x[order], y[order]
    xs = (x - x[0]) / (x[-1] - x[0]) if x[-1] > x[0] else np.zeros_like(x)
    span = y.max() - y.min()
    ys = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    chord = ys[0] + (ys[-1] - ys[0]) * xs
    return float(x[int(np.argmax(np.abs(ys - chord)))])


def critical_resolution_curve(truth: np.ndarray, restored: Mapping[int, np.ndarray],
                              ids: Sequence | None = None) -> dict:
    """Identity match rate of restored faces against their ground truth, per input size.

    Args:
        truth: ``[N, D]`` descriptors of the ground-truth faces (the gallery).
        restored: ``{input size: [N, D]}`` descriptors of the faces restored from that size, row
            ``i`` being face ``i`` of ``truth``.
        ids: the identity of each row (default: each row its own identity); a restored face is
            matched when its most similar ground-truth descriptor has its identity.

    Returns:
        ``{"sizes": [...] ascending, "match_rate": [...], "knee": size or None}`` (the knee needs
        at least three sizes).
    """
    truth = np.asarray(truth, np.float64)
    ids = list(range(len(truth))) if ids is None else list(ids)
    if not restored:
        raise ValueError("no input sizes")
    sizes = sorted(int(s) for s in restored)
    rates = []
    for size in sizes:
        probes = np.asarray(restored[size], np.float64)
        if probes.shape != truth.shape:
            raise ValueError(f"size {size}: {probes.shape} restored descriptors for {truth.shape} ground-truth ones")
        rates.append(rank1_accuracy(truth, ids, probes, ids))
    return {"sizes": sizes, "match_rate": rates, "knee": knee(sizes, rates) if len(sizes) >= 3 else None}
