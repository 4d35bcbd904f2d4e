"""The ordered pass over one video chunk of archive restoration: tracks, smoothing, paste-back, video.

Archive restoration (:mod:`pipelines.archive_restore`) splits a long video into chunks of
``chunk_seconds`` (work units decoded independently, :func:`~fsr_core.restore.video_io.chunk_ranges`)
and restores their face crops in a streaming Ray Data job whose rows arrive in no particular
order. What needs the frames *in order* happens afterwards, in :func:`finish_video_chunk`, one
call per chunk, chained chunk after chunk of the same video (a :class:`ChunkState` goes from chunk
``k`` to chunk ``k + 1``, in memory within a run and through ``_work/state/`` across runs):

1. **Tracks**: the chunk's faces, frame by frame in presentation order (faceless sampled frames
   included, so gaps count), go through one :class:`~fsr_core.restore.archive.IoUTracker` that
   continues the previous chunk's, so a face keeps its ``track_id`` across chunk boundaries and
   the ids equal those of an unchunked pass.
2. **Temporal smoothing** (``settings.temporal_smoothing > 0``): each restored crop goes through
   a :class:`~fsr_core.restore.temporal.TrackSmoother` (motion-compensated EMA along its track,
   also continued across chunks); the smoothed crop is written beside the raw one
   (``smoothed/<safe>/<tag>_faceNN.png``, manifest ``smoothed_output_uri``) and is what gets pasted.
3. **Paste-back and video**: the chunk is decoded again (cheaper than shipping every frame through
   the pipeline: decoding is a fraction of detection's cost) and the faces are pasted back; with
   ``write_video`` every sampled frame is encoded as it comes (never a whole chunk in memory) into
   ``videos/<safe>.mp4`` for a one-chunk video, or ``_work/videos/<safe>/chunk-<k>.mp4``, joined
   without re-encoding into ``videos/<safe>.mp4`` by the last chunk; without ``write_video`` the
   pasted frames that have faces are written as PNGs (``frames/<safe>/<tag>.png``).
4. **Records**: a video is quarantined ``no_face`` (once, by its last chunk) when frames were
   decoded and none had a face; a one-chunk video without faces gets no restored video (a longer
   one does: its first chunks are encoded before the last one can know). When the second decoding
   stops early (the file changed or a read failed) the frames it did not reach are still tracked
   and smoothed and a ``video_output_incomplete`` record says what is missing; an encoding or
   joining failure gives ``video_output_error``. Neither stops the archive, and the crops stay.

Everything is addressed by (video, frame, face) and written atomically, so a chunk that is redone
after a crash overwrites, never adds.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import decode_png, encode_png
from fsr_core.restore.archive import ArchiveSettings, IoUTracker, frame_tag, join_under, paste_back
from fsr_core.restore.temporal import TrackSmoother, load_state, save_state

__all__ = ["ChunkState", "VideoWriter", "chunk_video_uri", "finish_video_chunk", "load_chunk_state",
           "save_chunk_state", "state_uri", "video_uri"]

WORK_FOLDER = "_work"


@dataclass
class ChunkState:
    """What chunk ``k + 1`` of a video needs from chunks ``0..k``."""

    chunk: int
    tracker: dict  # IoUTracker.state()
    smoother: dict | None = None  # TrackSmoother.state(), None without smoothing
    faces: int = 0  # restored faces so far
    sampled: int = 0  # sampled frames so far


def video_uri(out: str, safe: str) -> str:
    return join_under(out, f"videos/{safe}.mp4")


def chunk_video_uri(out: str, safe: str, chunk: int) -> str:
    return join_under(out, f"{WORK_FOLDER}/videos/{safe}/chunk-{chunk:05d}.mp4")


def state_uri(out: str, safe: str, chunk: int) -> str:
    return join_under(out, f"{WORK_FOLDER}/state/{safe}/chunk-{chunk:05d}.json")


def save_chunk_state(out: str, safe: str, state: ChunkState) -> None:
    """The smoother's arrays (``.npz``) first, then the JSON that marks the state complete."""
    uri = state_uri(out, safe, state.chunk)
    meta = {"chunk": state.chunk, "tracker": state.tracker, "faces": state.faces, "sampled": state.sampled,
            "smoothing": state.smoother is not None}
    if state.smoother is not None:
        save_state(TrackSmoother.from_state(state.smoother), uri[: -len(".json")] + ".npz")
    storage.write_bytes(uri, json.dumps(meta).encode())


def load_chunk_state(out: str, safe: str, chunk: int) -> ChunkState | None:
    """The saved state after ``chunk``, or None when there is none."""
    uri = state_uri(out, safe, chunk)
    try:
        meta = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
    smoother = load_state(uri[: -len(".json")] + ".npz").state() if meta["smoothing"] else None
    return ChunkState(chunk=int(meta["chunk"]), tracker=meta["tracker"], smoother=smoother,
                      faces=int(meta["faces"]), sampled=int(meta["sampled"]))


class VideoWriter:
    """Encode RGB frames one at a time (H.264, else MPEG-4) into ``uri``, uploaded atomically on :meth:`close`."""

    def __init__(self, uri: str, *, fps: float) -> None:
        import av

        self.uri = uri
        self.fps = fps
        self.frames = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="fsr-encode-")
        self._path = os.path.join(self._tmp.name, "video.mp4")
        self._container = av.open(self._path, mode="w")
        self._codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = None

    def add(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2  # yuv420p needs even sides
        if self._stream is None:
            self._stream = self._container.add_stream(self._codec, rate=Fraction(self.fps).limit_denominator(1000))
            self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> int:
        """Flush, close and upload; returns the number of frames (0: nothing written, no file)."""
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
            if self.frames:
                storage.upload_file(self._path, self.uri)
            return self.frames
        finally:
            self._tmp.cleanup()

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            self._tmp.cleanup()


def _decoded_frames(item: dict[str, Any], settings: ArchiveSettings, problems: list[str]) -> Iterator[tuple[int, np.ndarray]]:
    """The chunk's sampled frames again, with the detection pass's arguments; where decoding stops
    (the file changed or vanished, a read failed) it stops and says why in ``problems``."""
    from fsr_core.data.ingest.video import VideoError, sample_frames
    from fsr_core.data.ingest.video import open_video

    try:
        with open_video(item["uri"]) as source:
            frames = sample_frames(source, sample_fps=settings.sample_fps, start_s=float(item.get("start_s") or 0.0),
                                   end_s=item.get("end_s"))
            try:
                for count, frame in enumerate(frames, 1):
                    yield frame.index, frame.rgb
                    if settings.max_frames is not None and count >= settings.max_frames:
                        break
            finally:
                frames.close()
    except (VideoError, OSError) as exc:  # FileNotFoundError included
        problems.append(f"{type(exc).__name__}: {exc}")


def _ordered_frames(item: dict[str, Any], settings: ArchiveSettings, sampled: list[int], *, decode: bool,
                    problems: list[str]) -> Iterator[tuple[int, np.ndarray | None]]:
    """Every index of ``sampled`` once, in order, with its decoded frame (None when not decoding, or
    for the frames the second decoding did not reach: tracks and smoothing still see them)."""
    wanted = set(sampled)
    seen: set[int] = set()
    if decode:
        for index, rgb in _decoded_frames(item, settings, problems):
            if index in wanted and index not in seen:
                seen.add(index)
                yield index, rgb
            if len(seen) == len(wanted):
                break
    missing = [index for index in sampled if index not in seen]
    if decode and missing:
        problems.append(f"{len(missing)} sampled frame(s) not decoded again, from frame {missing[0]}")
    for index in missing:
        yield index, None


def _smoother(settings: ArchiveSettings, previous: ChunkState | None, scale: int | None) -> TrackSmoother | None:
    """The previous chunk's smoother, or a new one (also when the previous one had no face to learn the scale)."""
    if settings.temporal_smoothing <= 0:
        return None
    if previous is not None and previous.smoother is not None:
        carried = TrackSmoother.from_state(previous.smoother)
        if scale is None or carried.scale == scale:
            return carried
    return TrackSmoother(settings.temporal_smoothing, max_gap=settings.max_track_gap, scale=scale or 1,
                         tolerance=settings.smoothing_tolerance)


def finish_video_chunk(rows: list[dict[str, Any]], item: dict[str, Any], sampled: list[int], *, out: str,
                       settings: ArchiveSettings, paste: bool, write_video: bool, feather: float,
                       fps: float, previous: ChunkState | None,
                       common: dict[str, Any]) -> tuple[list[dict[str, Any]], ChunkState]:
    """Finish one chunk (see the module docstring); returns its manifest rows and the state after it.

    ``rows``: the chunk's manifest rows from the restoration job (restored rows carry the raw crop's
    ``output_uri``, ``box``, ``matrix`` and the network's ``scale``; quarantine rows pass through);
    ``item``: the plan's unit item (``uri``, ``safe``, ``chunk``, ``chunks``, ``start_s``,
    ``end_s``); ``sampled``: the chunk's sampled frame indices in order; ``previous``: the state
    after chunk ``k - 1`` (None for the first chunk, or when it is lost: tracks then restart with
    ids from a range of their own, ``chunk * 1e6``); ``common``: the manifest fields of the file
    (unit, source, relative path, media, model), for the rows this pass adds.

    Never raises for a problem with the video: when the second decoding stops early, the frames
    it did not reach are still tracked and smoothed (not pasted or encoded) and a
    ``video_output_incomplete`` record says so; when encoding or joining fails, a
    ``video_output_error`` record carries the error and the crops stay (both keyed on the chunk's
    first frame index, so they are unique per chunk).
    """
    chunk, chunks, safe = int(item.get("chunk", 0)), int(item.get("chunks", 1)), item["safe"]
    restored = [r for r in rows if r["status"] == "restored"]
    scale = next((int(r["scale"]) for r in restored if r.get("scale")), None)
    if previous is None:
        tracker = IoUTracker(settings.iou_threshold, settings.max_track_gap)
        if chunk:  # the earlier chunks' state is gone: ids from a range of their own
            tracker = IoUTracker.from_state({**tracker.state(), "next": chunk * 1_000_000})
        faces_before = sampled_before = 0
    else:
        tracker = IoUTracker.from_state(previous.tracker)
        faces_before, sampled_before = previous.faces, previous.sampled
    smoother = _smoother(settings, previous, scale)
    by_frame: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in restored:
        by_frame[int(row["frame_index"])].append(row)
    for faces in by_frame.values():
        faces.sort(key=lambda r: r["face_index"])

    extra: list[dict[str, Any]] = []
    first_frame = item.get("first_frame") if chunk else None

    def record(reason: str, detail: str) -> None:
        extra.append({**common, "frame_index": first_frame, "status": "quarantined", "reason": reason,
                      "detail": detail})

    writer = None
    if write_video and (chunks > 1 or restored):
        writer = VideoWriter(video_uri(out, safe) if chunks == 1 else chunk_video_uri(out, safe, chunk), fps=fps)
    problems: list[str] = []
    try:
        for index, rgb in _ordered_frames(item, settings, sampled, decode=paste or writer is not None,
                                          problems=problems):
            faces = by_frame.get(index, [])
            ids = tracker.update([r["box"] for r in faces])
            crops = []
            for row, track_id in zip(faces, ids):
                row["track_id"] = track_id
                crop = decode_png(storage.read_bytes(row["output_uri"]))
                if smoother is not None:
                    crop = smoother.update(tracker.step, track_id, crop, row["matrix"])
                    uri = join_under(out, f"smoothed/{safe}/{frame_tag(index)}_face{row['face_index']:02d}.png")
                    storage.write_bytes(uri, encode_png(crop))
                    row["smoothed_output_uri"] = uri
                crops.append(crop)
            if rgb is None:
                continue
            pasted = rgb
            if faces and paste:
                pasted, _ = paste_back(rgb, np.stack(crops), [r["matrix"] for r in faces], scale=scale or 1,
                                       feather=feather)
            if writer is not None:
                writer.add(pasted)
            elif faces and paste:
                uri = join_under(out, f"frames/{safe}/{frame_tag(index)}.png")
                storage.write_bytes(uri, encode_png(pasted, compression=1))
                for row in faces:
                    row["frame_output_uri"] = uri
        if writer is not None:
            written, writer = writer.close(), None
            if chunk == chunks - 1 and chunks > 1:
                from fsr_core.restore.video_io import concat_videos

                parts = [uri for uri in (chunk_video_uri(out, safe, k) for k in range(chunks)) if storage.exists(uri)]
                if len(parts) < chunks:
                    problems.append(f"{chunks - len(parts)} of {chunks} chunk videos are missing from the restored "
                                    "video")
                written = concat_videos(parts, video_uri(out, safe)) if parts else 0
            if written:
                for row in restored:
                    row["video_output_uri"] = video_uri(out, safe)
        if problems:
            record("video_output_incomplete", "; ".join(problems)[:2000])
    except Exception as exc:  # noqa: BLE001 - a bad video must not stop the archive; the record says what failed
        record("video_output_error", f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        if writer is not None:
            writer.abort()

    state = ChunkState(chunk=chunk, tracker=tracker.state(), smoother=smoother.state() if smoother else None,
                       faces=faces_before + len(restored), sampled=sampled_before + len(sampled))
    if chunk == chunks - 1 and state.faces == 0 and state.sampled > 0:
        extra.append({**common, "frame_index": None, "status": "quarantined", "reason": "no_face",
                      "detail": f"{settings.detector} found no face of at least {settings.min_face_size:g} px in "
                                f"{state.sampled} sampled frame(s)"})
    return rows + extra, state
