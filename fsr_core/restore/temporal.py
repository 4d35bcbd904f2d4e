"""Optional temporal smoothing of restored face crops along a face track, against flicker.

A feed-forward SR network restores each sampled frame's face crop independently, so the same face
comes out slightly different from frame to frame (noise and hallucinated detail that change every
frame: *flicker*). :class:`TrackSmoother` blends each restored crop with the smoothed crop of the
same track from the previous step (a motion-compensated exponential moving average):

- the crops are aligned to detected landmarks, so consecutive crops of a track are *not*
  pixel-registered (alignment jitter, head motion). The previous smoothed crop is therefore warped
  into the current crop's coordinates with ``A = M_t . M_{t-1}^-1`` (source -> restored-crop
  matrices from :func:`~fsr_core.restore.archive.restored_matrix`, composed as 3x3), bilinear,
  constant border, together with a validity mask: pixels the previous crop did not cover take the
  current crop;
- ``y_t = (1 - w) x_t + w warp(y_{t-1})`` with ``w = weight * validity * guard``; the *ghosting
  guard* lowers ``w`` linearly from 1 at ``tolerance`` to 0 at ``2 * tolerance`` where the current
  crop differs from the warped past (mean over channels, lightly blurred), so real changes (mouth
  opening, occlusion, lighting) are followed at once instead of being dragged along;
- the state is kept in float32 (no re-quantisation drift); outputs are rounded to uint8;
- a track resets (output = input) when it is new or was missing for more than ``max_gap`` sampled
  frames (the same rule as :class:`~fsr_core.restore.archive.IoUTracker`).

:meth:`TrackSmoother.state` / :meth:`TrackSmoother.from_state` carry the smoothing across
independently processed chunks of a video; :func:`save_state` / :func:`load_state` store it as an
``.npz`` (no pickle) at a local path or ``s3://`` URI.

:func:`flicker` is a simple temporal-consistency measure of a track: the mean absolute difference
between each crop and the previous crop warped into its coordinates, over fully covered pixels, in
8-bit units. It is a warped frame-difference measure of this project, not a published metric.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from fsr_core import storage
from fsr_core.restore.archive import restored_matrix

__all__ = [
    "DEFAULT_TOLERANCE",
    "TrackSmoother",
    "flicker",
    "load_state",
    "save_state",
]

DEFAULT_TOLERANCE = 24.0
"""Ghosting-guard tolerance in 8-bit units: well above the per-pixel difference that restoration
noise makes (a few units), well below a real change such as a mouth opening or a shadow."""

_GUARD_SIGMA = 1.0  # px; blurs the difference map so single noisy pixels do not switch the guard
_FULL_COVER = 0.999  # validity above which a warped pixel counts as fully covered (flicker)


# ---------------------------------------------------------------------------- geometry helpers
def _as_3x3(matrix: np.ndarray) -> np.ndarray:
    """A 2x3 affine matrix as its homogeneous 3x3 form."""
    return np.vstack([np.asarray(matrix, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])


def _checked_matrix(matrix: Sequence[float], name: str = "matrix") -> np.ndarray:
    """``matrix`` as a finite, invertible 2x3 float64 array; ValueError naming ``name`` otherwise."""
    try:
        m = np.asarray(matrix, np.float64).reshape(2, 3)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be 6 numbers (a 2x3 affine matrix), got {matrix!r}") from exc
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:, :2])) < 1e-12:
        raise ValueError(f"{name} must be a finite, invertible 2x3 affine matrix, got {m.tolist()}")
    return m


def _relative_matrix(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """``current . previous^-1`` as 2x3: maps the previous crop's pixels to the current crop's."""
    return (_as_3x3(current) @ np.linalg.inv(_as_3x3(previous)))[:2]


def _warp_with_validity(image: np.ndarray, relative: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Warp float32 ``image`` [h,w,3] by ``relative`` into ``size`` (w, h), bilinear, zero border.

    Returns ``(warped, validity)``: ``validity`` [H,W] float32 in [0, 1] is the warped all-ones mask,
    i.e. the share of each output pixel's bilinear weights that fell inside ``image``. ``warped`` is
    normalised by it where it is positive, so edge pixels are averages of the covered neighbours
    only (not darkened by the zero border).
    """
    warped = cv2.warpAffine(image, relative, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ones = np.ones(image.shape[:2], np.float32)
    validity = cv2.warpAffine(ones, relative, size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    validity = np.clip(validity, 0.0, 1.0)
    covered = validity > 1e-6
    warped[covered] /= validity[covered, None]
    return warped, validity


def _checked_crop(crop: np.ndarray, name: str = "crop") -> np.ndarray:
    """``crop`` if it is a uint8 ``[H,W,3]`` array; ValueError naming ``name`` otherwise."""
    if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        detail = f"{crop.dtype} {crop.shape}" if isinstance(crop, np.ndarray) else type(crop).__name__
        raise ValueError(f"{name} must be a uint8 [H,W,3] array, got {detail}")
    return crop


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- smoother
@dataclass
class _Track:
    """Per-track state: the smoothed crop (float32, unrounded), its source -> restored-crop matrix
    and the step it was last updated at."""

    smoothed: np.ndarray
    matrix: np.ndarray
    step: int


class TrackSmoother:
    """Motion-compensated exponential moving average of restored crops, one state per face track.

    ``weight``: weight of the (warped) past in ``[0, 1)``; 0 switches smoothing off (outputs equal
    inputs bit for bit). For still content and independent noise the steady-state noise variance is
    ``(1 - w) / (1 + w)`` of the input's (1/3 at 0.5), at the price of ``w / (1 - w)`` steps of lag
    for slow changes that the guard lets through.
    ``max_gap``: sampled frames a track may be missing before its state is dropped (as
    :class:`~fsr_core.restore.archive.IoUTracker`'s).
    ``scale``: the network's upscaling factor; maps the source -> LR-crop matrices given to
    :meth:`update` to restored-crop coordinates.
    ``tolerance``: ghosting guard in 8-bit units (``None``: off); where the current crop differs from
    the warped past by more than this, the past's weight falls linearly to 0 at twice it.
    """

    def __init__(self, weight: float, *, max_gap: int = 2, scale: int, tolerance: float | None = DEFAULT_TOLERANCE):
        self.weight = _checked_weight(weight)
        self.max_gap = _checked_max_gap(max_gap)
        self.scale = _checked_scale(scale)
        self.tolerance = _checked_tolerance(tolerance)
        self._tracks: dict[int, _Track] = {}

    def __repr__(self) -> str:
        return (f"TrackSmoother(weight={self.weight}, max_gap={self.max_gap}, scale={self.scale}, "
                f"tolerance={self.tolerance}, tracks={sorted(self._tracks)})")

    @property
    def track_ids(self) -> list[int]:
        """Ids of the tracks that currently hold state."""
        return sorted(self._tracks)

    def update(self, step: int, track_id: int, crop: np.ndarray, matrix: Sequence[float]) -> np.ndarray:
        """Smoothed version of ``crop`` (restored, uint8 ``[S,S,3]``) of track ``track_id`` at ``step``.

        ``step``: index of the sampled frame (increasing along the video); ``matrix``: the crop's
        source -> LR-crop matrix (6 numbers, row-major), as in
        :attr:`~fsr_core.restore.archive.FaceInfo.matrix`. A new track, one missing for more than
        ``max_gap`` steps, a step that does not increase, or a crop of another size starts afresh
        (the crop is returned unchanged). Returns a new uint8 array of the crop's shape.
        """
        crop = _checked_crop(crop)
        step, track_id = int(step), int(track_id)
        current = restored_matrix(_checked_matrix(matrix), self.scale)
        if self.weight == 0.0:
            return crop.copy()
        self._drop_stale(step)
        x = crop.astype(np.float32)
        track = self._tracks.get(track_id)
        if track is not None and self._continues(track, step, crop.shape):
            x = self._blend(x, track, current)
        self._tracks[track_id] = _Track(x, current, step)
        return _to_uint8(x)

    def _continues(self, track: _Track, step: int, shape: tuple[int, ...]) -> bool:
        """Whether ``track``'s state may be blended into a crop of ``shape`` at ``step``."""
        return 0 < step - track.step <= self.max_gap + 1 and track.smoothed.shape == shape

    def _drop_stale(self, step: int) -> None:
        """Forget tracks that can no longer continue at ``step`` (bounds memory on long videos)."""
        stale = [k for k, t in self._tracks.items() if step - t.step > self.max_gap + 1]
        for k in stale:
            del self._tracks[k]

    def _blend(self, x: np.ndarray, track: _Track, current: np.ndarray) -> np.ndarray:
        """``(1 - w) x + w warp(previous)`` with ``w = weight * validity * guard``, float32."""
        height, width = x.shape[:2]
        past, validity = _warp_with_validity(track.smoothed, _relative_matrix(track.matrix, current), (width, height))
        w = self.weight * validity
        if self.tolerance is not None:
            w = w * _guard(x, past, self.tolerance)
        w = w[..., None].astype(np.float32)
        return (x + w * (past - x)).astype(np.float32)

    # ------------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """A picklable snapshot: the parameters and, per track id, ``{"smoothed", "matrix", "step"}``
        (float32 crop, float64 2x3 source -> restored-crop matrix, int). Arrays are copies."""
        return {
            "weight": self.weight,
            "max_gap": self.max_gap,
            "scale": self.scale,
            "tolerance": self.tolerance,
            "tracks": {k: {"smoothed": t.smoothed.copy(), "matrix": t.matrix.copy(), "step": t.step}
                       for k, t in self._tracks.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TrackSmoother":
        """A smoother that continues exactly where the one that made ``state`` stopped."""
        smoother = cls(state["weight"], max_gap=state["max_gap"], scale=state["scale"],
                       tolerance=state["tolerance"])
        for track_id, track in state["tracks"].items():
            smoothed = np.array(track["smoothed"], np.float32)
            if smoothed.ndim != 3 or smoothed.shape[2] != 3:
                raise ValueError(f"state track {track_id}: smoothed must be [H,W,3], got {smoothed.shape}")
            matrix = _checked_matrix(track["matrix"], f"state track {track_id} matrix")
            smoother._tracks[int(track_id)] = _Track(smoothed, matrix, int(track["step"]))
        return smoother


def _guard(x: np.ndarray, past: np.ndarray, tolerance: float) -> np.ndarray:
    """[H,W] float32 factor: 1 where the blurred mean |x - past| is at most ``tolerance``, falling
    linearly to 0 at ``2 * tolerance``."""
    difference = np.abs(x - past).mean(axis=2).astype(np.float32)
    difference = cv2.GaussianBlur(difference, (0, 0), _GUARD_SIGMA, borderType=cv2.BORDER_REFLECT)
    return np.clip(2.0 - difference / tolerance, 0.0, 1.0).astype(np.float32)


def _checked_weight(weight: float) -> float:
    weight = float(weight)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"weight must be in [0, 1), got {weight}")
    return weight


def _checked_max_gap(max_gap: int) -> int:
    if int(max_gap) != max_gap or max_gap < 0:
        raise ValueError(f"max_gap must be an integer >= 0, got {max_gap}")
    return int(max_gap)


def _checked_scale(scale: int) -> int:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    return int(scale)


def _checked_tolerance(tolerance: float | None) -> float | None:
    if tolerance is None:
        return None
    tolerance = float(tolerance)
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive number or None, got {tolerance}")
    return tolerance


# ---------------------------------------------------------------------------- state files
def _state_arrays(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """``state`` as flat named arrays for ``np.savez`` (``tolerance`` None is stored as NaN)."""
    tolerance = state["tolerance"]
    arrays = {
        "weight": np.float64(state["weight"]),
        "max_gap": np.int64(state["max_gap"]),
        "scale": np.int64(state["scale"]),
        "tolerance": np.float64(np.nan if tolerance is None else tolerance),
        "track_ids": np.array(sorted(state["tracks"]), np.int64),
    }
    for track_id in arrays["track_ids"]:
        track = state["tracks"][int(track_id)]
        arrays[f"smoothed_{track_id}"] = np.asarray(track["smoothed"], np.float32)
        arrays[f"matrix_{track_id}"] = np.asarray(track["matrix"], np.float64)
        arrays[f"step_{track_id}"] = np.int64(track["step"])
    return arrays


def _state_from_arrays(arrays) -> dict[str, Any]:
    """Inverse of :func:`_state_arrays`."""
    tolerance = float(arrays["tolerance"])
    tracks = {
        int(k): {"smoothed": arrays[f"smoothed_{k}"], "matrix": arrays[f"matrix_{k}"], "step": int(arrays[f"step_{k}"])}
        for k in arrays["track_ids"]
    }
    return {
        "weight": float(arrays["weight"]),
        "max_gap": int(arrays["max_gap"]),
        "scale": int(arrays["scale"]),
        "tolerance": None if math.isnan(tolerance) else tolerance,
        "tracks": tracks,
    }


def save_state(smoother: TrackSmoother, uri: str) -> None:
    """Write ``smoother``'s state as an ``.npz`` (plain arrays, no pickle) to a local path or ``s3://`` URI."""
    buffer = io.BytesIO()
    np.savez(buffer, **_state_arrays(smoother.state()))
    storage.write_bytes(uri, buffer.getvalue())


def load_state(uri: str) -> TrackSmoother:
    """The smoother saved by :func:`save_state` at ``uri`` (read with ``allow_pickle=False``)."""
    with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as arrays:
        return TrackSmoother.from_state(_state_from_arrays(arrays))


# ---------------------------------------------------------------------------- measure
def flicker(crops: Sequence[np.ndarray], matrices: Sequence[Sequence[float]], scale: int) -> float:
    """Warped frame difference of a track: mean |crop_t - warp(crop_{t-1})| in 8-bit units.

    Each crop (uint8 ``[S,S,3]``, restored) is compared with the previous one warped into its
    coordinates (``matrices``: the crops' source -> LR-crop matrices, ``scale`` the network's
    factor), over the pixels the previous crop fully covers; the sum over all consecutive pairs is
    divided by the number of compared values. Lower is steadier. Interpolation and real motion of
    the face add to it too, so compare it between variants of the same track, not across videos.
    Returns 0.0 for fewer than two crops or when no pixel is covered.
    """
    if len(crops) != len(matrices):
        raise ValueError(f"crops and matrices must have the same length, got {len(crops)} and {len(matrices)}")
    scale = _checked_scale(scale)
    total, count = 0.0, 0
    previous = previous_matrix = None
    for index, (crop, matrix) in enumerate(zip(crops, matrices)):
        crop = _checked_crop(crop, f"crops[{index}]")
        current = restored_matrix(_checked_matrix(matrix, f"matrices[{index}]"), scale)
        if previous is not None:
            height, width = crop.shape[:2]
            past, validity = _warp_with_validity(previous.astype(np.float32),
                                                 _relative_matrix(previous_matrix, current), (width, height))
            covered = validity >= _FULL_COVER
            total += float(np.abs(crop.astype(np.float32) - past)[covered].sum())
            count += int(covered.sum()) * crop.shape[2]
        previous, previous_matrix = crop, current
    return total / count if count else 0.0
