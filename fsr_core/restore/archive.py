"""Per-file logic of archive restoration: safe output names, detect -> align, tracking, paste-back.

Plain Python (numpy, OpenCV, PyAV, PyTorch through :mod:`fsr_core.restore.batch`); the Ray Data
job that runs it over a whole archive is :mod:`pipelines.archive_restore`.

- :func:`safe_relative_path` turns an archive member's relative path into an output path that can
  never leave the output root: ``..``/``.``/empty components, absolute paths and control
  characters are refused (:class:`UnsafePath`, quarantined as ``unsafe_path``); any other
  character outside ``[A-Za-z0-9._-]`` becomes ``_``, runs of dots become ``_``, and the last
  component gets ``-<8 hex of sha256(relative)>`` so two names that sanitise alike never collide.
  :func:`join_under` re-checks the result before any write.
- :func:`iter_file_records` reads one image or video (PyAV, streamed frame by frame), detects faces
  (:class:`~fsr_core.data.detection.FaceDetector`, small faces kept: ``min_face_size`` 12 px),
  aligns each on the five-point template at the network's input size, and yields one
  :class:`FrameRecord` per image / sampled frame (all its face crops together, so paste-back sees
  the whole frame) or a :class:`Quarantine` record with the ingest readers' reasons.
- :class:`IoUTracker`: greedy IoU matching of boxes across the sampled frames of a video
  (``track_id`` per face).
- :func:`paste_back`: warps restored crops back into their frame with a feathered mask; pixels
  where every mask is 0 are returned bit-identical to the input; :func:`write_restored` writes an
  image's crops and pasted-back frame (the Ray job and the plain loop,
  :mod:`fsr_core.restore.loop`, both write through it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.detection import FaceDetector, align_face, crop_box, make_detector
from fsr_core.data.ingest.folder import IMAGE_EXTENSIONS
from fsr_core.data.ingest.images import DEFAULT_MAX_PIXELS, BadImage, decode_image
from fsr_core.data.ingest.video import VIDEO_EXTENSIONS, VideoError, byte_size, sample_frames
from fsr_core.restore.costs import NULL_CLOCK, StepClock

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ArchiveSettings",
    "FaceInfo",
    "FrameRecord",
    "IoUTracker",
    "Quarantine",
    "UnsafePath",
    "feather_mask",
    "frame_tag",
    "iou",
    "iter_file_records",
    "join_under",
    "media_kind",
    "paste_back",
    "restored_matrix",
    "safe_relative_path",
    "write_restored",
]

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_DOTS = re.compile(r"\.{2,}")
_MAX_COMPONENT = 100


class UnsafePath(ValueError):
    """An archive member whose name cannot be mapped to an output path safely."""


# ---------------------------------------------------------------------------- output names
def safe_relative_path(relative: str) -> str:
    """A sanitised output path (``/``-separated, relative, no ``..``) for an archive member.

    Raises :class:`UnsafePath` for an empty or absolute path, a drive letter, a ``.``/``..``/empty
    component or control characters. Deterministic: the same input always maps to the same output.
    """
    if not isinstance(relative, str) or not relative:
        raise UnsafePath("empty relative path")
    if any(ord(c) < 32 or ord(c) == 127 for c in relative):
        raise UnsafePath(f"control character in {relative!r}")
    if relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise UnsafePath(f"absolute path {relative!r}")
    parts = relative.replace("\\", "/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(f"'.', '..' or empty component in {relative!r}")
    safe = []
    for part in parts:
        part = _DOTS.sub("_", _SAFE_CHARS.sub("_", part))
        if part.startswith("."):
            part = "_" + part[1:]
        safe.append(part[:_MAX_COMPONENT])
    digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    safe[-1] = f"{safe[-1]}-{digest}"
    return "/".join(safe)


def join_under(root: str, relative: str) -> str:
    """``storage.join(root, relative)`` after checking that ``relative`` stays below ``root``."""
    norm = posixpath.normpath(relative)
    if (not relative or norm != relative or norm.startswith(("../", "/")) or norm == ".."
            or "\\" in relative or "\x00" in relative):
        raise UnsafePath(f"output path {relative!r} would leave the output root")
    return storage.join(root, relative)


def media_kind(relative: str) -> str | None:
    """``"image"``, ``"video"`` or None (not part of the archive) from the file extension.

    Hidden names are included (unlike the ingest readers): in an archive to restore every file counts,
    and one named ``..%2fx.jpg`` is an ordinary file whose output name is made safe."""
    lower = relative.rsplit("/", 1)[-1].lower()
    if lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    if lower.endswith(VIDEO_EXTENSIONS):
        return "video"
    return None


# ---------------------------------------------------------------------------- settings and records
@dataclass(frozen=True)
class ArchiveSettings:
    """What to detect and how to crop (frozen, picklable for Ray).

    ``input_size``: side of the aligned LR crop the restorer gets (None: the restorer card's, filled
    in by the job before any work); ``template``: alignment template;
    ``detector``/``upsample``/``min_face_size``/``score_threshold``: the
    :class:`~fsr_core.data.detection.FaceDetector`; ``max_faces``: per image/frame, best first;
    ``sample_fps``: video frames sampled per second (None: every frame); ``max_frames``: sampled
    frames per video at most (None: all; a video with a limit is not chunked);
    ``keep_faceless_frames``: yield records of images and video frames without faces too; ``iou_threshold``/``max_track_gap``:
    the tracker; ``chunk_seconds``: videos longer than this are split into work units of about this
    length (None or 0: a video is one unit); ``temporal_smoothing``: the weight of the past in the
    motion-compensated EMA of restored crops along a track (0: off; see
    :mod:`fsr_core.restore.temporal`); ``smoothing_tolerance``: its ghosting guard (8-bit units,
    None: off); ``max_pixels``: images whose header claims more pixels are quarantined
    (``too_large``) before any pixel is decoded.
    """

    input_size: int | None = 16
    template: str = "ffhq"
    detector: str = "mtcnn-tiny"
    upsample: int = 1
    min_face_size: float = 12
    score_threshold: float | None = None
    max_faces: int | None = None
    sample_fps: float | None = 1.0
    max_frames: int | None = None
    keep_faceless_frames: bool = False
    iou_threshold: float = 0.3
    max_track_gap: int = 2
    chunk_seconds: float | None = 60.0
    temporal_smoothing: float = 0.0
    smoothing_tolerance: float | None = 24.0
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.input_size is not None and self.input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {self.input_size}")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {self.max_faces}")
        if self.sample_fps is not None and not self.sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0 or None, got {self.sample_fps}")
        if self.chunk_seconds is not None and self.chunk_seconds < 0:
            raise ValueError(f"chunk_seconds must be >= 0 or None, got {self.chunk_seconds}")
        if not 0 <= self.temporal_smoothing < 1:
            raise ValueError(f"temporal_smoothing must be in [0, 1), got {self.temporal_smoothing}")
        if self.smoothing_tolerance is not None and not self.smoothing_tolerance > 0:
            raise ValueError(f"smoothing_tolerance must be > 0 or None, got {self.smoothing_tolerance}")

    def face_detector(self) -> FaceDetector:
        return _detector(self.detector, float(self.min_face_size), int(self.upsample), self.score_threshold)


@functools.lru_cache(maxsize=4)
def _detector(kind: str, min_face_size: float, upsample: int, score_threshold: float | None) -> FaceDetector:
    return make_detector(kind, min_face_size=min_face_size, upsample=upsample, score_threshold=score_threshold)


@dataclass(frozen=True)
class FaceInfo:
    """One face of a frame: detector box/score/landmarks in source pixels, source -> crop ``matrix``."""

    index: int
    box: list[float]
    score: float
    landmarks: list[float]
    matrix: list[float]
    region: list[float]
    track_id: int | None = None


@dataclass(frozen=True)
class FrameRecord:
    """An image or sampled frame with its faces; ``crops`` is uint8 ``[k,S,S,3]`` (k may be 0)."""

    frame_index: int | None
    rgb: np.ndarray
    faces: list[FaceInfo]
    crops: np.ndarray
    time_s: float | None = None
    fps: float | None = None


@dataclass(frozen=True)
class Quarantine:
    reason: str
    detail: str
    frame_index: int | None = None


# ---------------------------------------------------------------------------- tracking
def iou(a, b) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class IoUTracker:
    """Greedy IoU tracker over the sampled frames of one video.

    Each :meth:`update` matches the new boxes to live tracks (highest IoU first, at least
    ``iou_threshold``); unmatched boxes start new tracks (ids 0, 1, ...). A track not seen for more
    than ``max_gap`` sampled frames ends.
    """

    iou_threshold: float = 0.3
    max_gap: int = 2
    _tracks: dict[int, tuple[list[float], int]] = field(default_factory=dict)
    _next: int = 0
    _step: int = 0

    @property
    def step(self) -> int:
        """Sampled frames seen (the number of :meth:`update` calls)."""
        return self._step

    def state(self) -> dict:
        """JSON-able state, to carry the tracking across chunks of a video (:meth:`from_state`)."""
        return {"iou_threshold": self.iou_threshold, "max_gap": self.max_gap, "next": self._next, "step": self._step,
                "tracks": [[k, list(box), step] for k, (box, step) in sorted(self._tracks.items())]}

    @classmethod
    def from_state(cls, state: dict) -> "IoUTracker":
        tracker = cls(float(state["iou_threshold"]), int(state["max_gap"]))
        tracker._next, tracker._step = int(state["next"]), int(state["step"])
        tracker._tracks = {int(k): ([float(v) for v in box], int(step)) for k, box, step in state["tracks"]}
        return tracker

    def update(self, boxes: list) -> list[int]:
        self._step += 1
        live = {k: v for k, v in self._tracks.items() if self._step - v[1] <= self.max_gap + 1}
        pairs = sorted(((iou(box, track[0]), i, k) for i, box in enumerate(boxes) for k, track in live.items()),
                       reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for overlap, i, k in pairs:
            if overlap < self.iou_threshold:
                break
            if ids[i] is None and k not in used:
                ids[i] = k
                used.add(k)
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i] = self._next
                self._next += 1
            live[ids[i]] = (list(box), self._step)
        self._tracks = live
        return [int(i) for i in ids]


# ---------------------------------------------------------------------------- detect + align
def _faces(rgb: np.ndarray, settings: ArchiveSettings, tracker: IoUTracker | None,
           clock: StepClock = NULL_CLOCK) -> tuple[list[FaceInfo], np.ndarray]:
    with clock("detect"):
        detections = settings.face_detector().detect(rgb)
    if settings.max_faces is not None:
        detections = detections[: settings.max_faces]
    size = settings.input_size
    boxes = [d.box.tolist() for d in detections]
    track_ids = tracker.update(boxes) if tracker is not None else [None] * len(detections)
    faces, crops = [], np.zeros((len(detections), size, size, 3), np.uint8)
    for index, (detection, track_id) in enumerate(zip(detections, track_ids)):
        with clock("align"):
            crop, matrix = align_face(rgb, detection.landmarks, size=size, template=settings.template)
        crops[index] = crop
        faces.append(FaceInfo(
            index=index,
            box=[round(float(v), 3) for v in detection.box],
            score=float(detection.score),
            landmarks=[round(float(v), 3) for v in detection.landmarks.reshape(-1)],
            matrix=[float(v) for v in np.asarray(matrix).reshape(-1)],
            region=crop_box(matrix, size),
            track_id=track_id,
        ))
    return faces, crops


def iter_file_records(uri: str, media: str, settings: ArchiveSettings, *, start_s: float | None = None,
                      end_s: float | None = None, report_no_face: bool = True,
                      clock: StepClock = NULL_CLOCK) -> Iterator[FrameRecord | Quarantine]:
    """Records of one archive member: :class:`FrameRecord` per image / sampled frame, or :class:`Quarantine`.

    Images with no face give ``Quarantine("no_face")``; videos stream frame by frame (never whole in
    memory; S3 videos through ranged reads, :func:`~fsr_core.data.ingest.video.open_video`), only the
    chunk ``[start_s, end_s)`` when ``start_s`` is given, and give ``no_face`` when no sampled frame
    had one and ``report_no_face`` (a chunk cannot tell for the whole video); video decoding
    problems give the video reader's reasons after the frames read before them. Never raises for
    bad data. ``clock`` (:mod:`fsr_core.restore.costs`) gets the CPU seconds of read, decode,
    detect and align.
    """
    if media == "image":
        try:
            with clock("read"):
                data = storage.read_bytes(uri)
        except FileNotFoundError:
            yield Quarantine("missing_file", "listed but absent when read")
            return
        try:
            with clock("decode"):
                rgb, _ = decode_image(data, max_pixels=settings.max_pixels)
        except BadImage as exc:
            yield Quarantine(exc.reason, exc.detail)
            return
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's, never the unit's
            yield Quarantine("corrupt_image", f"decoding failed: {type(exc).__name__}: {str(exc)[:200]}")
            return
        faces, crops = _faces(rgb, settings, None, clock)
        if not faces:
            yield Quarantine("no_face", f"{settings.detector} found no face of at least {settings.min_face_size:g} px")
            if not settings.keep_faceless_frames:
                return
        yield FrameRecord(None, rgb, faces, crops)
        return
    yield from _video_records(uri, settings, start_s=start_s, end_s=end_s, report_no_face=report_no_face,
                              clock=clock)


def _video_records(uri: str, settings: ArchiveSettings, *, start_s: float | None, end_s: float | None,
                   report_no_face: bool, clock: StepClock = NULL_CLOCK) -> Iterator[FrameRecord | Quarantine]:
    from fsr_core.data.ingest.video import open_video

    with contextlib.ExitStack() as stack:
        try:  # only the file's absence is "missing_file": a FileNotFoundError later (a model file) is not data
            source = stack.enter_context(open_video(uri))
        except FileNotFoundError:
            yield Quarantine("missing_file", "listed but absent when read")
            return
        if byte_size(source) == 0:
            yield Quarantine("empty_file", "the file has 0 bytes")
            return
        tracker = IoUTracker(settings.iou_threshold, settings.max_track_gap)
        sampled = with_faces = 0
        frames = stack.enter_context(contextlib.closing(
            sample_frames(source, sample_fps=settings.sample_fps, start_s=start_s, end_s=end_s)))
        while settings.max_frames is None or sampled < settings.max_frames:
            try:  # errors of the decoding only: a detector's own failure is not a bad file
                with clock("decode"):
                    frame = next(frames)
            except StopIteration:
                break
            except VideoError as exc:
                yield Quarantine(exc.reason, exc.detail, exc.frame_index)
                return
            except OSError as exc:  # a read failed mid-way (network): the frames before stay
                yield Quarantine("read_error", f"{type(exc).__name__} after {sampled} sampled frame(s): {exc}")
                return
            sampled += 1
            faces, crops = _faces(frame.rgb, settings, tracker, clock)
            with_faces += bool(faces)
            if faces or settings.keep_faceless_frames:
                yield FrameRecord(frame.index, frame.rgb, faces, crops, frame.time_s, frame.video.get("fps"))
    if with_faces == 0 and report_no_face:
        yield Quarantine("no_face", f"{settings.detector} found no face of at least "
                                    f"{settings.min_face_size:g} px in {sampled} sampled frame(s)")


# ---------------------------------------------------------------------------- paste-back
def restored_matrix(matrix, scale: int) -> np.ndarray:
    """The source -> restored-crop matrix of a crop made with ``matrix`` and upscaled ``scale`` times
    (pixel centres: ``x_sr = s * (x_lr + 0.5) - 0.5``)."""
    m = np.asarray(matrix, np.float64).reshape(2, 3) * float(scale)
    m[:, 2] += 0.5 * scale - 0.5
    return m


def feather_mask(size: int, feather: float) -> np.ndarray:
    """``[size,size]`` float32 mask: 1 inside, falling linearly to 0 over ``feather * size`` px at each edge."""
    if not 0 <= feather <= 0.5:
        raise ValueError(f"feather must be in [0, 0.5], got {feather}")
    centres = np.arange(size, dtype=np.float64) + 0.5
    distance = np.minimum(centres, size - centres)
    ramp = max(feather * size, 1e-6)
    line = np.clip(distance / ramp, 0.0, 1.0) if feather > 0 else np.ones(size)
    return np.minimum(line[:, None], line[None, :]).astype(np.float32)


def paste_back(frame: np.ndarray, restored: np.ndarray, matrices: list, *, scale: int,
               feather: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Blend restored crops (uint8 ``[k,S,S,3]``) into ``frame`` (uint8 ``[H,W,3]``) with feathered masks.

    ``matrices``: each crop's source -> LR-crop matrix (``scale`` the network's factor). Faces are
    blended in order (later ones on top). Returns ``(image, mask)``: ``mask`` ``[H,W]`` float32 is the
    union of the warped masks; where it is 0 the image equals ``frame`` exactly.
    """
    height, width = frame.shape[:2]
    out = frame.astype(np.float32)
    union = np.zeros((height, width), np.float32)
    for crop, matrix in zip(restored, matrices):
        m = restored_matrix(matrix, scale)
        size = crop.shape[0]
        warped = cv2.warpAffine(crop, m, (width, height), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpAffine(feather_mask(size, feather), m, (width, height),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
        mask = np.clip(mask, 0.0, 1.0)
        out = out * (1.0 - mask[..., None]) + warped.astype(np.float32) * mask[..., None]
        union = np.maximum(union, mask)
    image = np.where(union[..., None] > 0, np.clip(np.rint(out), 0, 255).astype(np.uint8), frame)
    return image, union


def write_restored(out: str, safe: str, frame_index: int | None, restored: np.ndarray, faces: list, *, scale: int,
                   frame: np.ndarray | None = None, feather: float = 0.1,
                   clock: StepClock = NULL_CLOCK) -> tuple[str | None, list[str]]:
    """Write one image's (or frame's) restored crops, ``crops/<safe>/<tag>_face<k>.png``, and when
    ``frame`` is given its paste-back ``frames/<safe>/<tag>.png``; both the archive job and the
    plain loop write through here, so their files are the same bytes for the same crops.

    ``faces``: the :class:`FaceInfo` of each crop (or its ``asdict``); ``clock`` gets paste, encode
    and write. Returns ``(frame_uri or None, crop_uris)``.
    """
    faces = [f if isinstance(f, dict) else f.__dict__ for f in faces]
    tag = frame_tag(frame_index)
    frame_uri = None
    if frame is not None:
        with clock("paste"):
            pasted, _ = paste_back(frame, restored, [f["matrix"] for f in faces], scale=scale, feather=feather)
        frame_uri = join_under(out, f"frames/{safe}/{tag}.png")
        with clock("encode"):
            data = encode_png(pasted, compression=1)
        with clock("write"):
            storage.write_bytes(frame_uri, data)
    uris = []
    for face, crop in zip(faces, restored):
        uri = join_under(out, f"crops/{safe}/{tag}_face{int(face['index']):02d}.png")
        with clock("encode"):
            data = encode_png(crop)
        with clock("write"):
            storage.write_bytes(uri, data)
        uris.append(uri)
    return frame_uri, uris


def frame_tag(frame_index: int | None) -> str:
    """``image`` for a still image, ``f00000123`` for a video frame."""
    return "image" if frame_index is None else f"f{int(frame_index):08d}"

