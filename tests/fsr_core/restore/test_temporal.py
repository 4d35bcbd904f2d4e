"""Temporal smoothing of restored crops along a track: resets, noise reduction, motion compensation,
ghosting guard, state round trip, flicker measure."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from fsr_core.restore.archive import restored_matrix
from fsr_core.restore.temporal import TrackSmoother, flicker, load_state, save_state

SIZE = 64  # restored crop side
SCALE = 4
IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # source -> LR crop; the same every frame: crops registered


def noisy(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(clean + rng.normal(0.0, sigma, clean.shape)), 0, 255).astype(np.uint8)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def smooth_all(smoother: TrackSmoother, crops, matrices, track_id: int = 0, first_step: int = 0) -> list[np.ndarray]:
    return [smoother.update(first_step + i, track_id, c, m) for i, (c, m) in enumerate(zip(crops, matrices))]


def constant_sequence(n: int, sigma: float, seed: int = 0, value: float = 128.0):
    rng = np.random.default_rng(seed)
    clean = np.full((SIZE, SIZE, 3), value)
    return clean, [noisy(clean, sigma, rng) for _ in range(n)]


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, name", [
    (dict(weight=1.0, scale=4), "weight"), (dict(weight=-0.1, scale=4), "weight"),
    (dict(weight=0.5, scale=0), "scale"), (dict(weight=0.5, scale=4, max_gap=-1), "max_gap"),
    (dict(weight=0.5, scale=4, tolerance=0.0), "tolerance"),
])
def test_bad_parameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrackSmoother(**kwargs)


@pytest.mark.parametrize("crop", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                  np.zeros((8, 8, 4), np.uint8), [[0]]])
def test_bad_crop_names_the_argument(crop):
    with pytest.raises(ValueError, match="crop"):
        TrackSmoother(0.5, scale=SCALE).update(0, 0, crop, IDENTITY)


@pytest.mark.parametrize("matrix", [[1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, math.nan, 0, 1, 0]])
def test_bad_matrix_names_the_argument(matrix):
    with pytest.raises(ValueError, match="matrix"):
        TrackSmoother(0.5, scale=SCALE).update(0, 0, np.zeros((8, 8, 3), np.uint8), matrix)


# ---------------------------------------------------------------------------- resets
def test_weight_zero_returns_the_input_exactly():
    _, crops = constant_sequence(5, 20.0)
    smoother = TrackSmoother(0.0, scale=SCALE)
    for out, crop in zip(smooth_all(smoother, crops, [IDENTITY] * 5), crops):
        assert out.dtype == np.uint8 and np.array_equal(out, crop) and out is not crop
    assert smoother.track_ids == []


def test_first_crop_of_a_track_is_returned_exactly():
    _, crops = constant_sequence(1, 20.0)
    out = TrackSmoother(0.9, scale=SCALE).update(7, 3, crops[0], IDENTITY)
    assert np.array_equal(out, crops[0])


def test_hand_checked_blend_of_two_constant_crops():
    # identical matrices, flat crops 100 then 200, w = 0.25: 0.75 * 200 + 0.25 * 100 = 175 everywhere
    smoother = TrackSmoother(0.25, scale=SCALE, tolerance=None)
    smoother.update(0, 0, np.full((SIZE, SIZE, 3), 100, np.uint8), IDENTITY)
    out = smoother.update(1, 0, np.full((SIZE, SIZE, 3), 200, np.uint8), IDENTITY)
    assert np.all(out == 175)


def test_a_gap_longer_than_max_gap_resets():
    a, b = np.full((SIZE, SIZE, 3), 100, np.uint8), np.full((SIZE, SIZE, 3), 200, np.uint8)
    smoother = TrackSmoother(0.5, max_gap=2, scale=SCALE, tolerance=None)
    smoother.update(0, 0, a, IDENTITY)
    assert np.all(smoother.update(3, 0, b, IDENTITY) == 150)  # missing at steps 1, 2: still blended
    assert np.array_equal(smoother.update(7, 0, a, IDENTITY), a)  # missing at 4, 5, 6 > max_gap: reset
    assert np.array_equal(smoother.update(7, 0, b, IDENTITY), b)  # a step that does not increase: reset


def test_stale_tracks_are_forgotten():
    crop = np.full((SIZE, SIZE, 3), 50, np.uint8)
    smoother = TrackSmoother(0.5, max_gap=1, scale=SCALE)
    smoother.update(0, 0, crop, IDENTITY)
    smoother.update(1, 1, crop, IDENTITY)
    smoother.update(3, 1, crop, IDENTITY)
    assert smoother.track_ids == [1]


# ---------------------------------------------------------------------------- noise
def test_noise_on_a_still_face_is_reduced_as_an_ema_predicts():
    clean, crops = constant_sequence(80, 10.0)
    smoother = TrackSmoother(0.5, scale=SCALE, tolerance=None)
    out = smooth_all(smoother, crops, [IDENTITY] * len(crops))
    burn_in = 10  # the EMA's transient decays as 0.5^t
    raw_std = np.std(np.stack(crops[burn_in:]).astype(np.float64) - clean)
    out_std = np.std(np.stack(out[burn_in:]).astype(np.float64) - clean)
    ratio = out_std / raw_std
    assert ratio == pytest.approx(math.sqrt(1 / 3), rel=0.2)  # (1 - w) / (1 + w) of the variance
    assert flicker(out, [IDENTITY] * len(out), SCALE) < 0.7 * flicker(crops, [IDENTITY] * len(crops), SCALE)
    assert mean_abs(np.stack(out[burn_in:]), clean) < 0.7 * mean_abs(np.stack(crops[burn_in:]), clean)


def test_the_guard_keeps_most_of_the_noise_reduction_on_noise():
    clean, crops = constant_sequence(40, 10.0, seed=1)
    out = smooth_all(TrackSmoother(0.5, scale=SCALE), crops, [IDENTITY] * len(crops))  # default tolerance
    assert mean_abs(np.stack(out[10:]), clean) < 0.7 * mean_abs(np.stack(crops[10:]), clean)


def test_flicker_of_registered_crops_is_their_mean_absolute_difference():
    a, b = np.full((SIZE, SIZE, 3), 10, np.uint8), np.full((SIZE, SIZE, 3), 40, np.uint8)
    assert flicker([a, b, a], [IDENTITY] * 3, SCALE) == pytest.approx(30.0)
    assert flicker([a], [IDENTITY], SCALE) == 0.0


# ---------------------------------------------------------------------------- motion
def texture(size: int, seed: int) -> np.ndarray:
    """A smooth random colour texture (blurred noise, 8-bit range), so bilinear warps are accurate."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 3.0)
    image = (image - image.mean()) / image.std() * 40 + 128
    return np.clip(image, 0, 255)


def lr_matrix(x: float, y: float, angle_deg: float) -> list[float]:
    """Source -> LR-crop similarity: the LR crop shows the source at 1 / SCALE, rotated, offset by (x, y)."""
    a = math.radians(angle_deg)
    c, s = math.cos(a) / SCALE, math.sin(a) / SCALE
    return [c, -s, -(c * x - s * y), s, c, -(s * x + c * y)]


def moving_face(n: int, sigma: float, seed: int = 0):
    """Clean and noisy restored crops of a textured 'face' moving and turning in the source, with
    matrices that describe the motion exactly (each clean crop is a warp of the others)."""
    rng = np.random.default_rng(seed)
    source = texture(256, seed)
    matrices, clean = [], []
    for t in range(n):
        matrix = lr_matrix(60 + 3.3 * t, 70 + 1.7 * t + 2 * math.sin(t), 1.5 * math.sin(0.7 * t))
        crop = cv2.warpAffine(source, restored_matrix(matrix, SCALE), (SIZE, SIZE), flags=cv2.INTER_CUBIC)
        matrices.append(matrix)
        clean.append(crop.astype(np.float64))
    return clean, [noisy(c, sigma, rng) for c in clean], matrices


def naive_ema(crops, weight: float) -> list[np.ndarray]:
    """Un-warped EMA (pretends consecutive crops are pixel-registered)."""
    state, out = None, []
    for crop in crops:
        x = crop.astype(np.float64)
        state = x if state is None else (1 - weight) * x + weight * state
        out.append(np.clip(np.rint(state), 0, 255).astype(np.uint8))
    return out


def test_motion_compensation_beats_raw_and_naive_smoothing_on_a_moving_face():
    clean, crops, matrices = moving_face(30, 12.0)
    compensated = smooth_all(TrackSmoother(0.5, scale=SCALE, tolerance=None), crops, matrices)
    naive = naive_ema(crops, 0.5)
    inner = (slice(1, None), slice(8, SIZE - 8), slice(8, SIZE - 8))  # away from newly uncovered borders

    def error(sequence):
        return mean_abs(np.stack(sequence)[inner], np.stack(clean)[inner])

    raw, mc, plain = error(crops), error(compensated), error(naive)
    assert mc < 0.8 * raw
    assert mc < 0.5 * plain  # the naive EMA blurs the moving texture: worse than doing nothing
    assert plain > raw
    # with the default guard the compensated smoother still helps, and flicker drops
    guarded = smooth_all(TrackSmoother(0.5, scale=SCALE), crops, matrices)
    assert error(guarded) < 0.85 * raw
    assert flicker(guarded, matrices, SCALE) < 0.8 * flicker(crops, matrices, SCALE)


def test_flicker_of_clean_moving_crops_is_small():
    clean, crops, matrices = moving_face(10, 12.0, seed=2)
    clean8 = [np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in clean]
    assert flicker(clean8, matrices, SCALE) < 2.0 < flicker(crops, matrices, SCALE)


# ---------------------------------------------------------------------------- ghosting guard
def test_the_guard_follows_a_sudden_change_that_none_drags_along():
    rng = np.random.default_rng(3)
    before = np.full((SIZE, SIZE, 3), 80.0)
    after = before.copy()
    after[:, SIZE // 2:] += 100  # right half brightens by 100
    frames = [noisy(before, 3.0, rng) for _ in range(8)] + [noisy(after, 3.0, rng) for _ in range(3)]
    changed = (slice(None), slice(SIZE // 2, None))
    for tolerance, expected in [(24.0, "follows"), (None, "ghosts")]:
        out = smooth_all(TrackSmoother(0.5, scale=SCALE, tolerance=tolerance), frames, [IDENTITY] * len(frames))
        first_after = mean_abs(out[8][changed], after[changed])
        if expected == "follows":
            assert first_after < 3.0
        else:
            assert first_after == pytest.approx(50.0, abs=3.0)  # w * 100 of lag at w = 0.5
        assert mean_abs(out[8][:, : SIZE // 2 - 4], before[:, : SIZE // 2 - 4]) < 2.0  # unchanged half still smooth


# ---------------------------------------------------------------------------- state, tracks
def test_state_round_trip_continues_exactly(tmp_path):
    clean, crops, matrices = moving_face(12, 12.0, seed=4)
    whole = smooth_all(TrackSmoother(0.6, scale=SCALE, max_gap=3), crops, matrices)
    first = TrackSmoother(0.6, scale=SCALE, max_gap=3)
    head = smooth_all(first, crops[:6], matrices[:6])
    uri = str(tmp_path / "state" / "smoother.npz")
    save_state(first, uri)
    resumed = load_state(uri)
    assert (resumed.weight, resumed.max_gap, resumed.scale, resumed.tolerance) == (0.6, 3, SCALE, 24.0)
    tail = smooth_all(resumed, crops[6:], matrices[6:], first_step=6)
    for a, b in zip(whole, head + tail):
        assert np.array_equal(a, b)
    # the in-memory snapshot continues the same way, and tolerance None survives a file
    again = smooth_all(TrackSmoother.from_state(first.state()), crops[6:], matrices[6:], first_step=6)
    assert all(np.array_equal(a, b) for a, b in zip(tail, again))
    save_state(TrackSmoother(0.5, scale=2, tolerance=None), uri)
    assert load_state(uri).tolerance is None and load_state(uri).track_ids == []


def test_saved_state_needs_no_pickle(tmp_path):
    smoother = TrackSmoother(0.5, scale=SCALE)
    smoother.update(0, 5, np.full((SIZE, SIZE, 3), 9, np.uint8), IDENTITY)
    path = tmp_path / "s.npz"
    save_state(smoother, str(path))
    with np.load(path, allow_pickle=False) as arrays:
        assert list(arrays["track_ids"]) == [5] and arrays["smoothed_5"].dtype == np.float32


def test_two_tracks_are_independent():
    _, crops_a = constant_sequence(6, 15.0, seed=5, value=60.0)
    _, crops_b = constant_sequence(6, 15.0, seed=6, value=190.0)
    matrices_b = [lr_matrix(5.0 * t, 0.0, 0.0) for t in range(6)]
    together = TrackSmoother(0.5, scale=SCALE)
    out_a, out_b = [], []
    for step in range(6):
        out_a.append(together.update(step, 0, crops_a[step], IDENTITY))
        out_b.append(together.update(step, 1, crops_b[step], matrices_b[step]))
    alone_a = smooth_all(TrackSmoother(0.5, scale=SCALE), crops_a, [IDENTITY] * 6)
    alone_b = smooth_all(TrackSmoother(0.5, scale=SCALE), crops_b, matrices_b, track_id=1)
    assert all(np.array_equal(x, y) for x, y in zip(out_a, alone_a))
    assert all(np.array_equal(x, y) for x, y in zip(out_b, alone_b))
