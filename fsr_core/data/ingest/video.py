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

Chunks (archive restoration splits long videos into independently decodable work units):
``sample_frames(..., start_s=a, end_s=b)`` seeks to the keyframe at or before ``a``, decodes forward,
keeps the frames with ``a <= t < b`` (1 ms tolerance; ``end_s=None``: to the end) and samples them
on the same timestamp grid as a whole-video pass. When every chunk boundary is a multiple of
``1/sample_fps`` (:func:`fsr_core.restore.video_io.chunk_ranges` makes them so), consecutive chunks
``[0, a), [a, b), ..., [z, None)`` sample exactly the frames of one pass over the whole video. In a
chunk ``frame_index`` comes from the timestamp (see :func:`sample_frames`), since frames before the
seek point are never counted. :func:`probe_video` reads only the header (size, rate, duration) to
plan chunks. Both take a path or a seekable binary file object.

:func:`open_video` gives them one: a local file is read in place; an S3 object is read through
:class:`~fsr_core.storage.RangedFile`, which fetches only the byte ranges FFmpeg asks for (ranged
GETs of 1 MiB blocks, a few cached), never a download of the whole file. MP4/MOV keep their index
at the end unless written "fast start"; FFmpeg seeks to it as in a local file. :class:`VideoReader`
(ingest) and archive restoration both read through it.

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

import contextlib
import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any, Iterator, Union

import numpy as np

from fsr_core import storage
from fsr_core.data.ingest.base import Quarantined, SourceItem, listing_quarantine
from fsr_core.data.ingest.folder import DetectingReader

__all__ = ["VIDEO_EXTENSIONS", "SampledFrame", "VideoError", "VideoReader", "VideoSource", "byte_size", "index_rate", "open_video", "probe_video",
           "sample_frames", "video_info"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
_TIME_EPS = 1e-3  # seconds: timestamps this close to a sampling point count as on it
_SEEK_BACKOFF_S = 1.0  # first step back when a seek lands after the chunk's start (doubles each retry)

VideoSource = Union[str, "os.PathLike[str]", IO[bytes]]  # a local path or a seekable binary file object


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


def _is_path(source: VideoSource) -> bool:
    return isinstance(source, (str, os.PathLike))


def _open(source: VideoSource):
    """Open a container; a file object is rewound first (FFmpeg probes from the current position)."""
    import av

    try:
        if not _is_path(source):
            source.seek(0)
        return av.open(source)
    except (av.FFmpegError, ValueError) as exc:  # InvalidDataError, EOF, unknown format
        raise VideoError("corrupt_video", f"FFmpeg cannot open it: {exc}") from None
    # a plain OSError (a ranged S3 read that failed after its retries) is not the file's fault: it
    # propagates, so the unit is redone rather than the video quarantined for good


def index_rate(stream) -> Fraction | None:
    """The rate that turns a timestamp into a frame index: the stream's base rate (FFmpeg's
    ``r_frame_rate``, the lowest rate on whose grid every timestamp lies), else its guessed or
    average rate. Not the average rate first: an MP4's average is frames / container duration,
    which an edit list or the encoder delay makes ~1 % off (10.11 for a 10 fps file), so indices
    derived from it drift by a frame every ~50 frames."""
    return stream.base_rate or stream.guessed_rate or stream.average_rate or None


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
        "index_fps": round(float(index_rate(stream)), 6) if index_rate(stream) else None,
        "frames": int(stream.frames) or None,
        "duration_s": round(duration, 6) if duration is not None else None,
    }


def probe_video(source: VideoSource) -> dict[str, Any]:
    """Header facts of a video, to plan chunks before decoding any (cheap: no frame is decoded).

    Returns :func:`video_info` of the first video stream (``codec``, ``width``, ``height``, ``fps``,
    ``frames``, ``duration_s``) plus ``container_duration_s``. Where the stream declares no duration
    (common in Matroska/WebM) ``duration_s`` is the container's, but only when the video is the
    container's only stream: with audio the container lasts as long as its longest stream, and a
    chunk planned past the video's real end would read as ``video_truncated``. The container's
    figure is still returned as ``container_duration_s`` (best effort, any layout; ``None`` if absent).
    FFmpeg reads the header and the few packets its stream probe needs, nothing more.

    Raises :class:`FileNotFoundError` for a missing path, :class:`VideoError` ``empty_file``
    (0 bytes), ``corrupt_video`` (FFmpeg cannot open it) or ``no_video_stream``.
    """
    if byte_size(source) == 0:
        raise VideoError("empty_file", "the file has 0 bytes")
    container = _open(source)
    try:
        if not container.streams.video:
            raise VideoError("no_video_stream", f"streams: {[s.type for s in container.streams]}")
        info = video_info(container)
        if info["duration_s"] is None:
            duration = _declared_duration(container, container.streams.video[0])
            info["duration_s"] = round(duration, 6) if duration is not None else None
        whole = container.duration / 1_000_000 if container.duration else None  # av.time_base
        info["container_duration_s"] = round(whole, 6) if whole is not None else None
        return info
    finally:
        container.close()


def byte_size(source: VideoSource) -> int:
    """Size in bytes of a path (FileNotFoundError names it) or of a seekable file object (position kept)."""
    if _is_path(source):
        return os.path.getsize(source)
    position = source.tell()
    try:
        return source.seek(0, io.SEEK_END)
    finally:
        source.seek(position)


def sample_frames(
    path: VideoSource,
    *,
    sample_fps: float | None = 1.0,
    start_s: float | None = None,
    end_s: float | None = None,
) -> Iterator[SampledFrame]:
    """Decode a video as a stream and yield the sampled frames (see the module docstring).

    ``path`` is a local path or a seekable binary file object (rewound before reading, not closed).

    Without ``start_s`` the whole video is read and ``frame_index`` counts the decoded frames. With
    ``start_s`` (0 allowed) only the chunk ``[start_s, end_s)`` is (``end_s=None``: to the end):

    - it seeks to the keyframe at or before ``start_s`` (stepping further back where the demuxer
      lands after it), decodes forward, drops the frames before ``start_s`` and stops, without
      error, at the first frame at or after ``end_s`` (1 ms tolerance on both). ``start_s=0`` keeps
      every frame from the first, so consecutive chunks cover the whole stream.
    - sampling uses the whole-video grid: the first frame at or after each multiple of
      ``1/sample_fps`` from the stream's start, and the chunk's first frame. With boundaries on
      that grid, consecutive chunks sample exactly the frames of one whole-video pass.
    - ``frame_index`` is ``round(t * rate)`` with the stream's base rate (:func:`index_rate`; ``t``
      from the stream's start), raised to the previous index + 1 where it would not increase:
      frames before the seek point are never decoded, so they cannot be counted. For constant-rate
      video this is the frame's position, the index a whole-video pass counts. For variable-rate
      video it is the frame's slot on the base-rate grid (every timestamp lies on it, so distinct
      frames get distinct indices in every chunk; not the decoded count). A stream with no rate at
      all is counted from the chunk's first frame (a position only for ``start_s=0``).
    - completeness: with ``end_s``, a stream that ends quietly with its last frame (+ one frame
      period) more than ``max(0.5 s, 2 frames)`` before ``end_s`` raises ``video_truncated`` after
      the chunk's frames; without it the whole-video checks apply to the position reached.

    Raises :class:`VideoError` (``corrupt_video``, ``no_video_stream``, ``video_decode_error``,
    ``video_truncated``) when it cannot go on, after yielding every frame it could read;
    :class:`ValueError` for bad arguments.
    """
    if sample_fps is not None and not sample_fps > 0:
        raise ValueError(f"sample_fps must be > 0 or None, got {sample_fps}")
    _check_range(start_s, end_s)
    container = _open(path)
    try:
        if not container.streams.video:
            raise VideoError("no_video_stream", f"streams: {[s.type for s in container.streams]}")
        stream = container.streams.video[0]
        if start_s is None:
            yield from _sample_whole(container, stream, sample_fps)
        else:
            yield from _sample_chunk(container, stream, sample_fps, start_s, end_s)
    finally:
        container.close()


def _check_range(start_s: float | None, end_s: float | None) -> None:
    if start_s is None:
        if end_s is not None:
            raise ValueError(f"end_s={end_s} needs start_s (start_s=0 for a chunk from the beginning)")
        return
    if not (math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"start_s must be a finite number >= 0, got {start_s}")
    if end_s is not None and not (math.isfinite(end_s) and end_s > start_s):
        raise ValueError(f"end_s must be finite and > start_s={start_s}, got {end_s}")


class _SamplingGrid:
    """Timestamp sampling: the first frame at or after each multiple of ``1/sample_fps`` (every
    frame when ``sample_fps`` is None), with :data:`_TIME_EPS` of tolerance."""

    def __init__(self, sample_fps: float | None) -> None:
        self.interval = None if sample_fps is None else 1.0 / sample_fps
        self.next_time = -math.inf

    def take(self, t: float) -> bool:
        """Whether the frame at ``t`` is sampled (frames must come in presentation order)."""
        if self.interval is None:
            return True
        if t < self.next_time - _TIME_EPS:
            return False
        self.next_time = (math.floor((t + _TIME_EPS) / self.interval) + 1) * self.interval
        return True


def _sample_whole(container, stream, sample_fps: float | None) -> Iterator[SampledFrame]:
    """Every frame of the stream decoded, the sampled ones yielded; ``frame_index`` counts frames."""
    import av

    info = video_info(container)
    time_base = stream.time_base or Fraction(1, 1)
    start = stream.start_time or 0
    rate = stream.average_rate or stream.guessed_rate
    frame_period = 1.0 / float(rate) if rate else None
    grid = _SamplingGrid(sample_fps)
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
            if grid.take(t):
                yield SampledFrame(index, t, frame.to_ndarray(format="rgb24"), info)
    except av.FFmpegError as exc:
        raise VideoError("video_decode_error", f"decoding stopped after {decoded} frame(s): {exc}",
                         frame_index=decoded) from None
    _check_complete(container, stream, decoded=decoded, last_time=last_time, frame_period=frame_period)


@dataclass(frozen=True)
class _Timeline:
    """A stream's clock: timestamps to seconds from its start and back, frame indices from times."""

    time_base: Fraction
    start: int
    rate: Fraction | None

    @classmethod
    def of(cls, stream) -> "_Timeline":
        return cls(stream.time_base or Fraction(1, 1), stream.start_time or 0, index_rate(stream))

    @property
    def period(self) -> float | None:
        return 1.0 / float(self.rate) if self.rate else None

    def seconds(self, pts: int) -> float:
        return float((pts - self.start) * self.time_base)

    def pts(self, seconds: float) -> int:
        return self.start + round(Fraction(seconds) / self.time_base)

    def index_at(self, seconds: float) -> int:
        """The index of a frame at ``seconds`` (0 without a rate: counting starts there)."""
        return max(0, round(seconds * float(self.rate))) if self.rate else 0

    def index_of(self, t: float, *, previous: int | None, count: int) -> int:
        """Time-derived index, kept strictly increasing; ``count`` (frames so far) without a rate."""
        if not self.rate:
            return count
        index = self.index_at(t)
        return previous + 1 if previous is not None and index <= previous else index

    def position(self, *, last_index: int | None, last_time: float | None, start_s: float) -> int:
        """Index of the first frame not read: after the chunk's last frame, else after the last frame
        decoded before the chunk (the stream ended or failed there), else at ``start_s``."""
        if last_index is not None:
            return last_index + 1
        if last_time is not None and self.rate:
            return self.index_at(last_time) + 1
        return self.index_at(start_s)


def _sample_chunk(container, stream, sample_fps: float | None, start_s: float,
                  end_s: float | None) -> Iterator[SampledFrame]:
    """The sampled frames of ``[start_s, end_s)`` (see :func:`sample_frames`), then the completeness check."""
    import av

    info = video_info(container)
    timeline = _Timeline.of(stream)
    grid = _SamplingGrid(sample_fps)
    lower = start_s - _TIME_EPS if start_s > 0 else -math.inf
    upper = end_s - _TIME_EPS if end_s is not None else math.inf
    last_index: int | None = None
    last_time: float | None = None
    kept = 0
    frames = _decode_from(container, stream, timeline, start_s)
    try:
        for t, frame in frames:
            last_time = t
            if t < lower:
                continue
            if t >= upper:
                return  # the chunk is complete
            index = timeline.index_of(t, previous=last_index, count=kept)
            kept += 1
            last_index = index
            if grid.take(t):
                yield SampledFrame(index, t, frame.to_ndarray(format="rgb24"), info)
    except av.FFmpegError as exc:
        stopped = timeline.position(last_index=last_index, last_time=last_time, start_s=start_s)
        raise VideoError("video_decode_error", f"decoding stopped at frame {stopped} ({kept} frame(s) read from "
                         f"{start_s:.3f} s): {exc}", frame_index=stopped) from None
    finally:
        frames.close()
    reached = timeline.position(last_index=last_index, last_time=last_time, start_s=start_s)
    if end_s is not None:
        _check_reached(end_s, start_s=start_s, last_time=last_time, frame_period=timeline.period, position=reached)
    else:
        known = timeline.rate is not None or start_s == 0  # without a rate, counts start at the chunk
        _check_complete(container, stream, decoded=reached if known else None, last_time=last_time,
                        frame_period=timeline.period)


def _decode_from(container, stream, timeline: _Timeline, start_s: float) -> Iterator[tuple[float, Any]]:
    """``(seconds, frame)`` from the keyframe at or before ``start_s`` on (from the first frame for 0).

    Demuxers seek with their index and can land after ``start_s`` (a keyframe whose presentation
    time is later than the index's time, an index that is wrong or missing): then it steps back
    1 s, 2 s, 4 s, ... and at worst decodes from the beginning, so no frame at or after
    ``start_s`` is ever skipped.
    """
    back = 0.0
    while True:
        target = start_s - back
        if target > 0:
            container.seek(timeline.pts(target), backward=True, any_frame=False, stream=stream)
        elif back > 0:
            container.seek(timeline.start, backward=True, any_frame=False, stream=stream)
        decoded = container.decode(stream)
        frames = _timed(decoded, timeline, first_time=max(target, 0.0))
        first = next(frames, None)
        if target <= 0 or (first is not None and first[0] <= start_s + _TIME_EPS):
            break
        frames.close()
        decoded.close()
        back = max(_SEEK_BACKOFF_S, 2 * back)
    try:
        if first is not None:
            yield first
            yield from frames
    finally:
        frames.close()
        decoded.close()


def _timed(frames: Iterator[Any], timeline: _Timeline, *, first_time: float) -> Iterator[tuple[float, Any]]:
    """Pair frames with their time; a frame without a timestamp follows the previous by one period
    (the first such, where the decoding started: ``first_time``)."""
    previous = None
    for frame in frames:
        if frame.pts is not None:
            t = timeline.seconds(frame.pts)
        elif previous is not None:
            t = previous + (timeline.period or 1.0)
        else:
            t = first_time
        previous = t
        yield t, frame


def _check_reached(end_s: float, *, start_s: float, last_time: float | None, frame_period: float | None,
                   position: int) -> None:
    """Raise ``video_truncated`` when a chunk's stream ended quietly well before the chunk's end."""
    period = frame_period or 0.0
    end = last_time + period if last_time is not None else start_s
    if end < end_s - max(0.5, 2 * period):
        raise VideoError("video_truncated", f"the stream ends at {end:.3f} s, before the end of the chunk "
                         f"[{start_s:.3f} s, {end_s:.3f} s)", frame_index=position)


def _declared_duration(container, stream) -> float | None:
    """The stream's declared duration, else the container's when the video is its only stream."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000  # av.time_base
    return None


def _check_complete(container, stream, *, decoded: int | None, last_time: float | None,
                    frame_period: float | None) -> None:
    """Raise ``video_truncated`` when the stream ended before what the container declares.

    ``decoded`` is the number of frames up to where the stream ended (``None``: unknown, then only
    the declared duration is checked).
    """
    declared = int(stream.frames or 0)
    if declared and decoded is not None:
        if decoded < declared - max(2, int(0.02 * declared)):
            raise VideoError("video_truncated", f"decoded {decoded} of the {declared} frames the container declares",
                             frame_index=decoded)
        return
    duration = _declared_duration(container, stream)
    if duration is None:
        return
    end = (last_time if last_time is not None else 0.0) + (frame_period or 0.0)
    tolerance = max(0.5, 2 * (frame_period or 0.0))
    if decoded == 0 or last_time is None or end < duration - tolerance:
        counted = f"{decoded} frame(s) decoded" if decoded is not None else "frame count unknown"
        raise VideoError("video_truncated", f"the stream ends at {end:.3f} s of the declared {duration:.3f} s "
                         f"({counted})", frame_index=decoded)


@contextlib.contextmanager
def open_video(uri: str, *, block_size: int = storage.READ_BLOCK_BYTES) -> Iterator[VideoSource]:
    """Yield what :func:`~fsr_core.data.ingest.video.sample_frames` reads for ``uri``.

    A local path (or ``file://`` URI) yields the path. An ``s3://`` URI yields a :class:`~fsr_core.storage.RangedFile`
    over pyarrow's S3 file (ranged GET requests of ``block_size`` bytes, a few blocks cached): only
    the ranges FFmpeg seeks to are fetched, never the whole object. It is closed on exit;
    ``sample_frames`` rewinds it, so one can serve several calls in turn (not at the same time:
    they share its position).

    Raises :class:`FileNotFoundError` naming ``uri`` when the file or object is missing.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 byte, got {block_size}")
    if not storage.is_s3(uri):
        _, path = storage.pyarrow_filesystem(uri)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such video file: {uri}")
        yield path
        return
    with storage.open_ranged(uri, block_size=block_size) as reader:
        yield reader


@dataclass(frozen=True)
class VideoReader(DetectingReader):
    """Faces detected in frames sampled from video files (see the module docstring).

    Args (besides :class:`~fsr_core.data.ingest.folder.DetectingReader`'s):
        sample_fps: frames sampled per second of video (``None``: every frame).
        max_sampled_frames: stop after this many sampled frames per video (``None``: no limit).
    """

    source: str = "video"
    sample_fps: float | None = 1.0
    max_sampled_frames: int | None = None

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
        if item.annotations.get("quarantine"):
            yield from listing_quarantine(item)
            return
        with contextlib.ExitStack() as stack:
            try:  # only the file's absence is "missing_file": a FileNotFoundError later (a model file) is not data
                # 8 MiB ranged reads: ingest decodes whole videos in order, so larger blocks mean fewer requests
                source = stack.enter_context(open_video(item.uri, block_size=8 << 20))
            except FileNotFoundError:
                yield Quarantined(item.uri, "missing_file", "listed but absent when read")
                return
            if byte_size(source) == 0:
                yield Quarantined(item.uri, "empty_file", "the file has 0 bytes")
                return
            yield from self._process_file(item, source)

    def _process_file(self, item: SourceItem, path: VideoSource) -> Iterator[dict[str, Any] | Quarantined]:
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

