"""Identity metrics against independent computations on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from fsr_core.metrics.identity import cosine_similarity, knee, rank1_accuracy


def test_cosine_similarity_of_fixed_pairs():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [-3.0, -4.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [0.0, 1.0, -1.0, 0.0], atol=1e-15)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 128)), rng.normal(size=(50, 128))
    expected = [float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v)) for u, v in zip(x, y)]
    np.testing.assert_allclose(cosine_similarity(x, y), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        cosine_similarity(x, y[:10])


def test_rank1_identifies_noisy_probes_and_fails_when_the_noise_wins():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(20, 64))
    ids = [f"id{i}" for i in range(20)]
    close = gallery + 0.1 * rng.normal(size=gallery.shape)
    assert rank1_accuracy(gallery, ids, close, ids) == 1.0
    swapped = ids[1:] + ids[:1]
    assert rank1_accuracy(gallery, ids, close, swapped) == 0.0
    far = gallery + 10.0 * rng.normal(size=gallery.shape)  # mostly unrecognisable
    by_hand = np.mean([np.argmax([cosine_similarity(p[None], g[None])[0] for g in gallery]) == i
                       for i, p in enumerate(far)])
    assert rank1_accuracy(gallery, ids, far, ids) == pytest.approx(by_hand)


def test_knee_of_a_collapse_curve():
    sizes = [8, 12, 16, 24, 32, 48, 64, 96, 128]
    rate = [0.05, 0.08, 0.15, 0.45, 0.80, 0.92, 0.95, 0.96, 0.97]  # collapses below ~32
    assert knee(sizes, rate) == 32
    assert knee([10, 20, 30, 40, 50], [0.0, 0.9, 0.95, 0.97, 1.0]) == 20  # a rise that saturates early
    with pytest.raises(ValueError):
        knee([1, 2], [1, 2])


def test_critical_resolution_curve_on_hand_cases():
    from fsr_core.metrics.identity import critical_resolution_curve

    rng = np.random.default_rng(2)
    truth = rng.normal(size=(10, 16))
    wrong = np.roll(truth, 1, axis=0)  # every restored face looks like the next person
    # at size s, the first k(s) faces are restored faithfully, the rest look like someone else
    kept = {8: 0, 16: 1, 24: 3, 32: 8, 48: 9, 64: 10, 128: 10}
    restored = {s: np.where(np.arange(10)[:, None] < k, truth, wrong) for s, k in kept.items()}
    curve = critical_resolution_curve(truth, dict(reversed(list(restored.items()))))  # any order in
    assert curve["sizes"] == [8, 16, 24, 32, 48, 64, 128]
    assert curve["match_rate"] == [0.0, 0.1, 0.3, 0.8, 0.9, 1.0, 1.0]
    assert curve["knee"] == knee(curve["sizes"], curve["match_rate"]) == 32
    # two rows of one identity: a restored face matched to the other face of its person counts
    ids = ["a", "a", "b"]
    pair = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    swapped = pair[[1, 0, 2]]
    assert critical_resolution_curve(pair, {16: swapped}, ids)["match_rate"] == [1.0]
    assert critical_resolution_curve(pair, {16: swapped})["match_rate"] == [pytest.approx(1 / 3)]
    assert critical_resolution_curve(pair, {16: swapped})["knee"] is None  # one size: no knee
    with pytest.raises(ValueError, match="size 16"):
        critical_resolution_curve(pair, {16: pair[:2]})
