"""Video reader: frames sampled from video files as a stream, faces detected, cropped or aligned.

Layout under ``root`` (local folder or ``s3://``): video files anywhere below it, found
recursively, with the extensions ``.mp4 .avi .mkv .mov .webm`` (any case); one item per file,
sorted by relative path. Every frame of a video goes to the same split (hash of its relative path,
as in :mod:`~fsr_core.data.ingest.folder`), so near-identical frames never leak across splits.

Decoding is a stream (PyAV): :func:`sample_frames` is a generator that demuxes and decodes one
frame at a time and converts to RGB only the frames it samples, so memory does not grow with the
video's length. Frames are sampled by **timestamp**: with ``sample_fps=r`` the first frame at or
after each multiple of ``1/r`` seconds from the stream's start is taken (variable frame rates and
dropped frames are handled; ``sample_fps=None`` takes every frame). Every frame is still decoded
(inter-frame codecs need their references); only sampled frames cost a conversion and a detector
run. ``frame_index`` is the frame's 0-based position in presentation order; ``meta.time_s`` its
timestamp in seconds from the stream's start.

S3 videos are downloaded to a temporary file first (``tmp_dir``, default the system's), deleted when
the item is done: MP4/MOV keep their index at the end of the file unless written "fast start", and
FFmpeg needs to seek to it, which an S3 byte stream cannot do cheaply. Local files are read in place.

Each sampled frame goes through the same detection and cropping as a folder image
(:class:`~fsr_core.data.ingest.folder.DetectingReader`); rows carry ``frame_index`` and in ``meta``
``time_s`` and ``video`` (codec, frame rate, size).

Quarantine reasons (a reader never raises for bad data):

- ``empty_file`` (0 bytes), ``corrupt_video`` (FFmpeg cannot open it: not a video, or an MP4 cut
  before its index), ``no_video_stream`` (e.g. audio only);
- ``video_decode_error``: decoding failed mid-way; the rows of the frames before stay, the record
  carries the ``frame_index`` where it stopped;
- ``video_truncated``: the stream ended early without an error (FFmpeg stops quietly at a cut):
  fewer frames than the container declares (``stream.frames``), or, where it declares none, an
  end more than ``max(0.5 s, 2 frames)`` before the declared duration (the container's duration
  is only used when the video is its only stream). Rows already made stay;
- ``no_face``: no face in any sampled frame (one record per video; faceless frames are normal in
  footage and are only counted, in the record's detail).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

import numpy as np

from fsr_core import storage
from fsr_core.data.ingest.base import Quarantined, SourceItem
from fsr_core.data.ingest.folder import DetectingReader

__all__ = ["VIDEO_EXTENSIONS", "SampledFrame", "VideoError", "VideoReader", "sample_frames", "video_info"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
_TIME_EPS = 1e-3  # seconds: timestamps this close to a sampling point count as on it


class VideoError(ValueError):
    """Decoding a video stopped; ``reason`` is a quarantine code, ``frame_index`` the first frame not read."""

    def __init__(self, reason: str, detail: str, *, frame_index: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.frame_index = frame_index


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: ``rgb`` is ``[H,W,3]`` uint8; ``video`` is :func:`video_info` of its stream."""

    index: int
    time_s: float
    rgb: np.ndarray
    video: dict[str, Any]


def _open(path: str):
    import av

    try:
        return av.open(path)
    except (av.FFmpegError, OSError, ValueError) as exc:  # InvalidDataError, EOF, unknown format
        raise VideoError("corrupt_video", f"FFmpeg cannot open it: {exc}") from None


def video_info(container) -> dict[str, Any]:
    """Codec, size, frame rate, declared frames and duration of the first video stream (JSON-able)."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
    return {
        "codec": stream.codec_context.name,
        "width": int(stream.codec_context.width),
        "height": int(stream.codec_context.height),
        "fps": round(float(rate), 6) if rate else None,
        "frames": int(stream.frames) or None,
        "duration_s": round(duration, 6) if duration is not None else None,
    }


def sample_frames(path: str, *, sample_fps: float | None = 1.0) -> Iterator[SampledFrame]:
    """Decode a video file as a stream and yield the sampled frames (see the module docstring).

    Raises :class:`VideoError` (``corrupt_video``, ``no_video_stream``, ``video_decode_error``,
    ``video_truncated``) when it cannot go on, after yielding every frame it could read.
    """
    import av

    if sample_fps is not None and not sample_fps > 0:
        raise ValueError(f"sample_fps must be > 0 or None, got {sample_fps}")
    container = _open(path)
    try:
        if not container.streams.video:
            raise VideoError("no_video_stream", f"streams: {[s.type for s in container.streams]}")
        stream = container.streams.video[0]
        info = video_info(container)
        time_base = stream.time_base or Fraction(1, 1)
        start = stream.start_time or 0
        rate = stream.average_rate or stream.guessed_rate
        frame_period = 1.0 / float(rate) if rate else None
        interval = None if sample_fps is None else 1.0 / sample_fps
        next_time = -math.inf
        decoded = 0
        last_time = None
        try:
            for frame in container.decode(stream):
                index = decoded
                decoded += 1
                if frame.pts is not None:
                    t = float((frame.pts - start) * time_base)
                else:
                    t = index * frame_period if frame_period else float(index)
                last_time = t
                if interval is not None and t < next_time - _TIME_EPS:
                    continue
                if interval is not None:
                    next_time = (math.floor((t + _TIME_EPS) / interval) + 1) * interval
                yield SampledFrame(index, t, frame.to_ndarray(format="rgb24"), info)
        except av.FFmpegError as exc:
            raise VideoError("video_decode_error", f"decoding stopped after {decoded} frame(s): {exc}",
                             frame_index=decoded) from None
        _check_complete(container, stream, decoded=decoded, last_time=last_time, frame_period=frame_period)
    finally:
        container.close()


def _check_complete(container, stream, *, decoded: int, last_time: float | None, frame_period: float | None) -> None:
    """Raise ``video_truncated`` when the stream ended before what the container declares."""
    declared = int(stream.frames or 0)
    if declared:
        if decoded < declared - max(2, int(0.02 * declared)):
            raise VideoError("video_truncated", f"decoded {decoded} of the {declared} frames the container declares",
                             frame_index=decoded)
        return
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        duration = container.duration / 1_000_000  # av.time_base
    if duration is None:
        return
    end = (last_time if last_time is not None else 0.0) + (frame_period or 0.0)
    tolerance = max(0.5, 2 * (frame_period or 0.0))
    if decoded == 0 or end < duration - tolerance:
        raise VideoError("video_truncated", f"the stream ends at {end:.3f} s of the declared {duration:.3f} s "
                         f"({decoded} frame(s) decoded)", frame_index=decoded)


@dataclass(frozen=True)
class VideoReader(DetectingReader):
    """Faces detected in frames sampled from video files (see the module docstring).

    Args (besides :class:`~fsr_core.data.ingest.folder.DetectingReader`'s):
        sample_fps: frames sampled per second of video (``None``: every frame).
        max_sampled_frames: stop after this many sampled frames per video (``None``: no limit).
        tmp_dir: where S3 videos are downloaded while they are read (``None``: the system's).
    """

    source: str = "video"
    sample_fps: float | None = 1.0
    max_sampled_frames: int | None = None
    tmp_dir: str | None = None

    def __post_init__(self) -> None:
        if self.sample_fps is not None and not self.sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0 or None, got {self.sample_fps}")
        if self.max_sampled_frames is not None and self.max_sampled_frames < 1:
            raise ValueError(f"max_sampled_frames must be >= 1 or None, got {self.max_sampled_frames}")
        super().__post_init__()

    def list_items(self, root: str) -> list[SourceItem]:
        """One item per video file under ``root``, sorted by relative path; split by hashing that path."""
        return self._items(root, VIDEO_EXTENSIONS, "video files")

    def process(self, item: SourceItem) -> Iterator[dict[str, Any] | Quarantined]:
        """Rows of the faces in one video's sampled frames, then a record if it stopped early or had none."""
        tmp = None
        path = item.uri
        try:
            if storage.is_s3(item.uri):
                tmp = tempfile.mkdtemp(prefix="fsr-video-", dir=self.tmp_dir)
                path = os.path.join(tmp, "video" + os.path.splitext(item.uri)[1].lower())
                try:
                    storage.download_file(item.uri, path)
                except FileNotFoundError:
                    yield Quarantined(item.uri, "missing_file", "listed but absent when read")
                    return
            elif not os.path.exists(path):
                yield Quarantined(item.uri, "missing_file", "listed but absent when read")
                return
            if os.path.getsize(path) == 0:
                yield Quarantined(item.uri, "empty_file", "the file has 0 bytes")
                return
            yield from self._process_file(item, path)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _process_file(self, item: SourceItem, path: str) -> Iterator[dict[str, Any] | Quarantined]:
        relative = item.annotations["relative_path"]
        sampled = with_faces = 0
        frames = sample_frames(path, sample_fps=self.sample_fps)
        try:
            for frame in frames:
                sampled += 1
                rows = self.face_rows(frame.rgb, source_uri=item.uri, relative=relative, split=item.split,
                                      frame_index=frame.index,
                                      meta={"time_s": round(frame.time_s, 6), "video": frame.video})
                with_faces += bool(rows)
                yield from rows
                if self.max_sampled_frames is not None and sampled >= self.max_sampled_frames:
                    break
        except VideoError as exc:
            yield Quarantined(item.uri, exc.reason, exc.detail, frame_index=exc.frame_index)
            return
        finally:
            frames.close()
        if with_faces == 0:
            yield Quarantined(item.uri, "no_face",
                              f"{self.detector} detector found no face of at least {self.min_face_size:g} px "
                              f"in {sampled} sampled frame(s)")

