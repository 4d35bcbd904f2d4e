"""Video chunks for archive restoration: planning them, joining the restored ones.

A long video is restored as independent work units ("chunks"): time ranges ``[start_s, end_s)``
that :func:`fsr_core.data.ingest.video.sample_frames` decodes on their own (it seeks to the
keyframe before ``start_s``), so several workers can share one video and a failed unit is retried
alone. S3 videos are read through :func:`fsr_core.data.ingest.video.open_video` (ranged reads: a
chunk of a long S3 video costs its own bytes plus the container's header and index, never a
download of the whole file). This module holds the rest:

- :func:`chunk_ranges` plans the chunks from the duration :func:`~fsr_core.data.ingest.video.probe_video`
  reads: boundaries on the sampling grid (so chunked sampling equals one pass), the last chunk
  open-ended (frames past the declared duration are never lost).
- :func:`concat_videos` joins the restored chunk videos (as the restore pipeline encodes them: one
  H.264 or MPEG-4 stream each, same settings) into one MP4 by remuxing their packets with shifted
  timestamps: no re-encoding, so no further quality loss and little CPU.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, Iterator

from fsr_core import storage
from fsr_core.data.ingest.video import VideoError

__all__ = ["chunk_ranges", "concat_videos"]

_FLOAT_SLACK = 1e-9  # ratios this close to an integer count as it (float noise in durations)


# ---------------------------------------------------------------------------- planning
def _check_number(name: str, value: float | None, *, positive: bool) -> None:
    """``value`` must be None or a finite number, > 0 (``positive``) or >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or None, got {value!r}")
    if (value <= 0) if positive else (value < 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} or None, got {value!r}")


def chunk_ranges(duration_s: float | None, *, chunk_seconds: float | None,
                 sample_fps: float | None) -> list[tuple[float, float | None]]:
    """Split ``[0, duration_s)`` into consecutive ``(start_s, end_s)`` chunks of about ``chunk_seconds``.

    One open chunk ``[(0.0, None)]`` when the duration is unknown, chunking is off
    (``chunk_seconds`` None or 0) or the video is no longer than a chunk. Otherwise the chunk length
    is ``chunk_seconds`` rounded up to a whole number of sampling intervals ``1/sample_fps`` (when
    given), so every boundary is on the sampling grid and the chunks together sample exactly the
    frames one pass would; the last chunk has ``end_s=None`` and takes everything to the stream's
    real end, however far past the declared duration that is.

    Raises :class:`ValueError` naming a negative, non-finite or (``sample_fps``) zero argument.
    """
    _check_number("duration_s", duration_s, positive=False)
    _check_number("chunk_seconds", chunk_seconds, positive=False)
    _check_number("sample_fps", sample_fps, positive=True)
    if duration_s is None or not chunk_seconds or duration_s <= chunk_seconds:
        return [(0.0, None)]
    if sample_fps is not None:
        intervals = max(1, math.ceil(chunk_seconds * sample_fps - _FLOAT_SLACK))

        def boundary(i: int) -> float:
            return i * intervals / sample_fps

    else:

        def boundary(i: int) -> float:
            return i * chunk_seconds

    count = max(1, math.ceil(duration_s / boundary(1) - _FLOAT_SLACK))
    return [(boundary(i), boundary(i + 1) if i + 1 < count else None) for i in range(count)]


# ---------------------------------------------------------------------------- joining
@contextmanager
def _local_copy(uri: str, folder: str) -> Iterator[str]:
    """A local path for ``uri``: the file itself, or an S3 object downloaded into ``folder`` (deleted after)."""
    if not storage.is_s3(uri):
        _, path = storage.pyarrow_filesystem(uri)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such chunk file: {uri}")
        yield path
        return
    path = os.path.join(folder, "chunk" + (os.path.splitext(uri)[1] or ".mp4"))
    storage.download_file(uri, path)  # FileNotFoundError names the URI
    try:
        yield path
    finally:
        os.remove(path)


def _open_chunk(path: str, uri: str):
    """Open a chunk video for demuxing; :class:`VideoError` naming ``uri`` when it cannot be."""
    import av

    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError("corrupt_video", f"{uri}: FFmpeg cannot open it: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no_video_stream", f"{uri}: no video stream to join")
    return container


def _stream_facts(stream) -> dict[str, Any]:
    """What must match between chunks for their packets to form one decodable stream."""
    context = stream.codec_context
    return {
        "codec": context.name,
        "size": (int(context.width), int(context.height)),
        "rate": stream.average_rate or stream.guessed_rate or None,
        "extradata": bytes(context.extradata or b""),  # H.264 SPS/PPS, MPEG-4 VOL header
    }


def _packet_span(container, stream) -> tuple[Fraction, Fraction] | None:
    """``(first presentation time, end of the last frame)`` in seconds over the stream's packets; None if empty."""
    rate = stream.average_rate or stream.guessed_rate
    fallback = (1 / Fraction(rate)) if rate else Fraction(0)
    start = end = None
    for packet in container.demux(stream):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if packet.size == 0 or stamp is None:
            continue
        t = stamp * stream.time_base
        duration = packet.duration * stream.time_base if packet.duration else fallback
        start = t if start is None else min(start, t)
        end = t + duration if end is None else max(end, t + duration)
    return None if start is None else (start, end)


class _Joiner:
    """Appends chunk videos' packets to one output stream, each chunk's timeline following the previous one's end."""

    def __init__(self, output) -> None:
        self.output = output
        self.stream = None
        self.first: dict[str, Any] | None = None
        self.time_base: Fraction | None = None  # the first chunk's: packets are stamped in it, then rebased
        self.offset = Fraction(0)  # seconds: where the next chunk starts
        self.written = 0

    def append(self, path: str, uri: str) -> int:
        """Remux one chunk's video packets; returns how many were written."""
        container = _open_chunk(path, uri)
        try:
            source = container.streams.video[0]
            self._check_compatible(source, uri)
            span = _packet_span(container, source)
        finally:
            container.close()
        if span is None:
            return 0
        container = _open_chunk(path, uri)
        try:
            return self._remux(container, container.streams.video[0], uri, shift=self.offset - span[0],
                               duration=span[1] - span[0])
        finally:
            container.close()

    def _check_compatible(self, source, uri: str) -> None:
        """Create the output stream from the first chunk; later chunks must match it."""
        facts = _stream_facts(source)
        if self.first is None:
            self.first = facts
            self.stream = self.output.add_stream_from_template(source)
            self.stream.time_base = source.time_base
            self.time_base = source.time_base
            return
        for key, value in facts.items():
            expected = self.first[key]
            if key == "rate" and (value is None or expected is None):
                continue
            if value != expected:
                shown = f"{len(value)} bytes" if key == "extradata" else value
                wanted = f"{len(expected)} bytes" if key == "extradata" else expected
                raise ValueError(f"{uri}: its {key} ({shown}) differs from the first chunk's ({wanted}); "
                                 "only chunks from the same encoder settings can be joined without re-encoding")

    def _remux(self, container, source, uri: str, *, shift: Fraction, duration: Fraction) -> int:
        import av

        count = 0
        try:
            for packet in container.demux(source):
                if packet.size == 0 or (packet.pts is None and packet.dts is None):
                    continue  # the demuxer's end-of-stream marker
                packet.pts = self._restamp(packet.pts, source.time_base, shift)
                packet.dts = self._restamp(packet.dts, source.time_base, shift)
                if packet.duration:
                    packet.duration = round(packet.duration * source.time_base / self.time_base)
                packet.time_base = self.time_base
                packet.stream = self.stream
                self.output.mux(packet)
                count += 1
        except av.FFmpegError as exc:
            raise ValueError(f"{uri}: cannot append it after {self.written + count} packet(s): {exc}") from None
        self.offset += duration
        self.written += count
        return count

    def _restamp(self, stamp: int | None, time_base: Fraction, shift: Fraction) -> int | None:
        """A timestamp in the chunk's time base, moved by ``shift`` seconds, in the output's hint time base."""
        if stamp is None:
            return None
        return round((stamp * time_base + shift) / self.time_base)


def _close_quietly(container) -> None:
    """Close a half-written output whose content is being thrown away."""
    try:
        container.close()
    except Exception:  # e.g. no header was ever written: nothing worth keeping either way
        pass


def concat_videos(chunk_uris: list[str], out_uri: str) -> int:
    """Join chunk videos, in order, into one MP4 at ``out_uri`` without re-encoding; returns the packets written.

    The chunks (local paths or ``s3://``, fetched one at a time into a temporary folder) must hold
    one compatible video stream each: same codec, size, frame rate and codec header, as the restore
    pipeline encodes them (H.264 or MPEG-4, same encoder settings). Their packets are copied into
    one stream (made from the first chunk's as a template), each chunk's timestamps shifted so it
    starts where the previous one ended (its first presentation time to the end of the previous
    chunk's last frame) and rescaled to the output's time base. For video, packets are frames.
    Other streams (audio) are dropped. The MP4 is written to a temporary file, then copied to
    ``out_uri`` atomically (:func:`fsr_core.storage.upload_file`): a failed join writes nothing.

    Raises :class:`ValueError` for an empty list or chunks that do not match (naming the chunk),
    :class:`~fsr_core.data.ingest.video.VideoError` for one FFmpeg cannot open or that has no video,
    :class:`FileNotFoundError` for a missing chunk.
    """
    import av

    if not chunk_uris:
        raise ValueError(f"concat_videos needs at least one chunk video to write {out_uri}, got none")
    with tempfile.TemporaryDirectory(prefix="fsr-concat-") as folder:
        path = os.path.join(folder, "joined.mp4")
        output = av.open(path, mode="w", format="mp4")
        joiner = _Joiner(output)
        try:
            for uri in chunk_uris:
                with _local_copy(uri, folder) as chunk_path:
                    joiner.append(chunk_path, uri)
            if joiner.written == 0:
                raise ValueError(f"none of the {len(chunk_uris)} chunk(s) holds a video packet: nothing to write "
                                 f"to {out_uri}")
        except BaseException:
            _close_quietly(output)  # the error that stopped the join is the one to report
            raise
        output.close()
        storage.upload_file(path, out_uri)
    return joiner.written
