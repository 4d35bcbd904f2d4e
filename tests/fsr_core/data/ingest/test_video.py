"""Video reader: frames sampled by timestamp from a stream, faces detected, broken videos quarantined.

The test video pans a 256x256 window over ``skimage.data.astronaut()`` (the face ~90 px tall) by
2 px a frame for 3 s at 10 fps, then shows 1 s of flat grey: 40 frames, faces in frames 0-29.

Chunked decoding uses small "labelled" videos (:func:`write_labelled`): 64x64 frames whose top band
spells the frame's number and whose texture moves with it, keyframes every 12 frames, so a frame's
identity can be read back and a wrong reference frame would show.
"""

from __future__ import annotations

import inspect
import io
import os
import tracemalloc

import av
import numpy as np
import pytest
import skimage.data

from fsr_core import storage
from fsr_core.data.codec import decode_png
from fsr_core.data.detection import TEMPLATES, invert_affine, transform_points
from fsr_core.data.ingest.base import Quarantined, SourceItem
from fsr_core.data.ingest.video import VideoError, VideoReader, probe_video, sample_frames
from fsr_core.data.splits import assign_split
from fsr_core.restore.video_io import chunk_ranges

FPS = 10
SIZE = 48


def frames(n_face: int = 30, n_grey: int = 10) -> list[np.ndarray]:
    astronaut = skimage.data.astronaut()
    out = [np.ascontiguousarray(astronaut[0:256, 100 + 2 * i : 356 + 2 * i]) for i in range(n_face)]
    return out + [np.full((256, 256, 3), 128, np.uint8)] * n_grey


def write_video(path: str, images: list[np.ndarray], *, fps: int = FPS, options: dict | None = None) -> str:
    with av.open(path, "w", options=options or {}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def item_for(path: str, root: str | None = None) -> SourceItem:
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    return SourceItem(path, {"relative_path": relative}, "train")


def split_output(out: list) -> tuple[list[dict], list[Quarantined]]:
    return [o for o in out if isinstance(o, dict)], [o for o in out if isinstance(o, Quarantined)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("videos"))
    os.makedirs(os.path.join(root, "cam"))
    write_video(os.path.join(root, "cam", "pan.mp4"), frames())
    write_video(os.path.join(root, "grey.mkv"), frames(0, 20))
    with open(os.path.join(root, "cam", "pan.mp4"), "rb") as fh:
        data = fh.read()
    with open(os.path.join(root, "cut.mp4"), "wb") as fh:  # MP4 with its index at the end: cut, unreadable
        fh.write(data[: len(data) * 6 // 10])
    # Matroska, and MP4 written "fast start" (index first), stay readable up to a cut
    for name, options in (("cut.mkv", None), ("cut-faststart.mp4", {"movflags": "faststart"})):
        whole = write_video(os.path.join(root, "whole" + os.path.splitext(name)[1]), frames(), options=options)
        with open(whole, "rb") as fh:
            data = fh.read()
        os.remove(whole)
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(data[: len(data) * 6 // 10])
    with open(os.path.join(root, "empty.avi"), "wb"):
        pass
    with open(os.path.join(root, "notes.mov"), "w") as fh:
        fh.write("not a video\n")
    with open(os.path.join(root, "noise.webm"), "wb") as fh:
        fh.write(np.random.default_rng(0).bytes(5000))
    with av.open(os.path.join(root, "sound.mp4"), "w") as container:  # audio only
        stream = container.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with open(os.path.join(root, "readme.txt"), "w") as fh:
        fh.write("not listed\n")
    return root


@pytest.fixture(scope="module")
def reader() -> VideoReader:
    return VideoReader(size=SIZE, upsample=0, score_threshold=0.3, sample_fps=1.0)


def test_frames_are_sampled_by_timestamp(videos):
    path = os.path.join(videos, "cam", "pan.mp4")
    sampled = [(f.index, f.time_s) for f in sample_frames(path, sample_fps=1.0)]
    assert sampled == [(0, 0.0), (10, 1.0), (20, 2.0), (30, 3.0)]
    assert [f.index for f in sample_frames(path, sample_fps=2.5)] == list(range(0, 40, 4))
    everything = list(sample_frames(path, sample_fps=None))
    assert [f.index for f in everything] == list(range(40))
    assert everything[0].rgb.shape == (256, 256, 3) and everything[0].rgb.dtype == np.uint8
    assert everything[0].video["fps"] == 10 and everything[0].video["frames"] == 40
    # decoded pixels follow the pan (lossy codec: compare loosely)
    original = frames()
    assert np.abs(everything[15].rgb.astype(int) - original[15]).mean() < 8


def test_lists_videos_recursively(videos, reader):
    relative = [i.annotations["relative_path"] for i in reader.list_items(videos)]
    assert relative == ["cam/pan.mp4", "cut-faststart.mp4", "cut.mkv", "cut.mp4", "empty.avi", "grey.mkv",
                        "noise.webm", "notes.mov", "sound.mp4"]


def test_rows_per_sampled_frame(videos, reader):
    item = next(i for i in reader.list_items(videos) if i.annotations["relative_path"] == "cam/pan.mp4")
    out = list(reader.process(item))
    rows, records = split_output(out)
    assert records == []  # the faceless frame 30 is only counted
    assert [r["frame_index"] for r in rows] == [0, 10, 20]
    assert [r["meta"]["time_s"] for r in rows] == [0.0, 1.0, 2.0]
    split = assign_split("cam/pan.mp4", reader.split_fractions, salt="video")
    assert all(r["split"] == split and r["source"] == "video" for r in rows)
    # the face moves 2 px left a frame: the left eye, mapped back into the frame with meta.matrix,
    # is where the pan puts the astronaut's eye (203.2, 101.5)
    for row in rows:
        points = np.asarray(row["landmarks"]).reshape(5, 2)
        eye = transform_points(points[:1], invert_affine(np.asarray(row["meta"]["matrix"])))[0]
        assert np.linalg.norm(eye - [203.2 - 100 - 2 * row["frame_index"], 101.5]) < 3, (row["frame_index"], eye)
    for row in rows:
        assert decode_png(row["image_png"]).shape == (SIZE, SIZE, 3)
        points = np.asarray(row["landmarks"]).reshape(5, 2)
        assert np.all((points >= 0) & (points < SIZE))
        assert np.all(np.linalg.norm(points[:2] - TEMPLATES["ffhq"][:2] * SIZE, axis=1) < 1.5)
        assert row["meta"]["video"]["codec"] == "mpeg4" and row["meta"]["image_size"] == [256, 256]
    assert len({r["id"] for r in rows}) == 3
    again = list(reader.process(item))
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    assert [r["image_png"] for r in again] == [r["image_png"] for r in rows]


def test_max_sampled_frames(videos):
    reader = VideoReader(size=SIZE, upsample=0, score_threshold=0.3, sample_fps=1.0, max_sampled_frames=2)
    out = list(reader.process(item_for(os.path.join(videos, "cam", "pan.mp4"), videos)))
    assert [r["frame_index"] for r in out] == [0, 10]


def test_reading_is_a_stream(videos, tmp_path, reader):
    """A generator over frames: memory does not grow with the video's length."""
    assert inspect.isgeneratorfunction(sample_frames)
    assert inspect.isgenerator(reader.process(item_for(os.path.join(videos, "cam", "pan.mp4"))))
    short = write_video(str(tmp_path / "short.mp4"), frames(20, 0))
    long = write_video(str(tmp_path / "long.mp4"), frames(30, 0) * 5 + frames(10, 0))  # 8x longer

    def peak(path: str) -> tuple[int, int]:
        tracemalloc.start()
        count = sum(1 for _ in sample_frames(path, sample_fps=None))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return count, top

    (n_short, p_short), (n_long, p_long) = peak(short), peak(long)
    assert (n_short, n_long) == (20, 160)
    frame_bytes = 256 * 256 * 3
    assert p_long < p_short + 4 * frame_bytes  # holding the frames would add 140 frames' worth


def test_truncated_videos_keep_the_frames_before_the_cut(videos, reader):
    for name, detail in (("cut.mkv", "declared 4.000 s"), ("cut-faststart.mp4", "decoded 12 of the 40 frames")):
        rows, records = split_output(list(reader.process(item_for(os.path.join(videos, name)))))
        assert [r["frame_index"] for r in rows] == [0, 10], name
        assert len(records) == 1 and records[0].reason == "video_truncated", (name, records)
        assert records[0].frame_index == 12 and detail in records[0].detail
    # an MP4 whose index (at the end) was cut off cannot be opened at all
    out = list(reader.process(item_for(os.path.join(videos, "cut.mp4"))))
    assert len(out) == 1 and out[0].reason == "corrupt_video"


def test_a_decode_error_mid_way_keeps_the_rows_before(videos, reader, monkeypatch):
    """FFmpeg conceals most damage; where it gives up mid-stream the reader keeps what it read."""
    from fsr_core.data.ingest import video as video_module

    class FailingAfter:  # the real container, whose decoding fails at frame 15
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def decode(self, stream):
            for index, frame in enumerate(self._container.decode(stream)):
                if index == 15:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield frame

    real_open = video_module._open
    monkeypatch.setattr(video_module, "_open", lambda path: FailingAfter(real_open(path)))
    rows, records = split_output(list(reader.process(item_for(os.path.join(videos, "cam", "pan.mp4")))))
    assert [r["frame_index"] for r in rows] == [0, 10]
    assert len(records) == 1 and records[0].reason == "video_decode_error" and records[0].frame_index == 15
    assert "after 15 frame(s)" in records[0].detail


@pytest.mark.parametrize(
    "name, reason",
    [("empty.avi", "empty_file"), ("notes.mov", "corrupt_video"), ("noise.webm", "corrupt_video"),
     ("sound.mp4", "no_video_stream"), ("grey.mkv", "no_face")],
)
def test_bad_and_faceless_videos_are_quarantined(videos, reader, name, reason):
    out = list(reader.process(item_for(os.path.join(videos, name))))
    assert len(out) == 1 and isinstance(out[0], Quarantined) and out[0].reason == reason, out
    if reason == "no_face":
        assert "2 sampled frame(s)" in out[0].detail


def test_reads_the_same_rows_from_s3(videos, reader, s3_bucket):
    """Through ranged reads (no download): the same rows and records as from the local files."""
    prefix = f"{s3_bucket}/footage"
    storage.upload_file(os.path.join(videos, "cam", "pan.mp4"), f"{prefix}/cam/pan.mp4")
    storage.upload_file(os.path.join(videos, "cut.mkv"), f"{prefix}/cut.mkv")
    s3_reader = VideoReader(size=SIZE, upsample=0, score_threshold=0.3, sample_fps=1.0)
    items = s3_reader.list_items(prefix)
    assert [i.uri for i in items] == [f"{prefix}/cam/pan.mp4", f"{prefix}/cut.mkv"]
    local = {i.annotations["relative_path"]: list(reader.process(i)) for i in reader.list_items(videos)
             if i.annotations["relative_path"] in ("cam/pan.mp4", "cut.mkv")}
    for item in items:
        out = list(s3_reader.process(item))
        expected = local[item.annotations["relative_path"]]
        assert [(r["id"], r["image_png"]) if isinstance(r, dict) else (r.reason, r.frame_index) for r in out] == [
            (r["id"], r["image_png"]) if isinstance(r, dict) else (r.reason, r.frame_index) for r in expected
        ]
        assert all(r["source_uri"] == item.uri for r in out if isinstance(r, dict))


# ---------------------------------------------------------------------------- chunks
LABEL_FPS = 10
CODECS = ["mpeg4"] + (["libx264"] if "libx264" in av.codecs_available else [])


def labelled_frame(k: int) -> np.ndarray:
    """64x64 RGB: the top 16 rows spell ``k`` (two flat blocks, one per hex digit), below a blocky
    texture shifted ``k`` px, so inter-frame prediction matters."""
    texture = np.random.default_rng(7).integers(0, 256, (6, 8), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    gray = np.empty((64, 64), np.uint8)
    gray[:16, :32] = (k // 16) * 16 + 8
    gray[:16, 32:] = (k % 16) * 16 + 8
    gray[16:] = np.roll(texture, k, axis=1)
    return np.repeat(gray[:, :, None], 3, axis=2)


def label_of(rgb: np.ndarray) -> int:
    """The number :func:`labelled_frame` wrote (read from the middle of its blocks: lossy codecs)."""
    high = round((rgb[3:13, 6:26].mean() - 8) / 16)
    low = round((rgb[3:13, 38:58].mean() - 8) / 16)
    return int(high) * 16 + int(low)


def write_labelled(path: str, count: int, *, codec: str = "mpeg4", fps: int = LABEL_FPS, gop: int | None = 12,
                   first: int = 0, options: dict | None = None) -> str:
    """A video of frames ``first .. first+count-1`` (see :func:`labelled_frame`), a keyframe every ``gop``
    (``None``: the encoder's default)."""
    with av.open(path, "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for k in range(first, first + count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(labelled_frame(k), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def chunked(path, ranges, *, sample_fps) -> list:
    return [f for start, end in ranges for f in sample_frames(path, sample_fps=sample_fps, start_s=start, end_s=end)]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_chunks_sample_exactly_the_frames_of_one_pass(tmp_path, codec, ext):
    """Chunk boundaries on the sampling grid, not on keyframes (every 1.2 s): same frames, same pixels."""
    path = write_labelled(str(tmp_path / f"labelled{ext}"), 63, codec=codec)  # 6.3 s
    for sample_fps in (None, 1.0, 2.5, 3.0, 10.0):
        whole = list(sample_frames(path, sample_fps=sample_fps))
        ranges = chunk_ranges(6.3, chunk_seconds=1.3, sample_fps=sample_fps)
        assert len(ranges) >= 4 and ranges[-1][1] is None
        assert any(round(start * LABEL_FPS, 6) % 12 for start, _ in ranges[1:]), ranges  # not all on keyframes
        parts = chunked(path, ranges, sample_fps=sample_fps)
        assert [(f.index, f.time_s) for f in parts] == [(f.index, f.time_s) for f in whole], (sample_fps, ranges)
        assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(parts, whole)), sample_fps
        assert [label_of(f.rgb) for f in parts] == [f.index for f in parts]
    assert [f.index for f in sample_frames(path, sample_fps=3.0)] == [0, 4, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37,
                                                                     40, 44, 47, 50, 54, 57, 60]


@pytest.mark.parametrize("codec", CODECS)
def test_time_derived_indices_equal_counted_ones_at_a_constant_rate(tmp_path, codec):
    path = write_labelled(str(tmp_path / "cfr.mp4"), 50, codec=codec)
    counted = [(f.index, f.time_s) for f in sample_frames(path, sample_fps=None)]
    from_time = [(f.index, f.time_s) for f in sample_frames(path, sample_fps=None, start_s=0)]
    assert from_time == counted and [i for i, _ in counted] == list(range(50))
    # a chunk starting between frames (and between keyframes) begins at the next frame
    middle = list(sample_frames(path, sample_fps=None, start_s=2.05, end_s=3.55))
    assert [f.index for f in middle] == list(range(21, 36))
    assert [label_of(f.rgb) for f in middle] == list(range(21, 36))
    assert middle[0].video["frames"] == 50 and middle[0].video["fps"] == LABEL_FPS


def test_chunks_read_from_a_file_object(tmp_path):
    path = write_labelled(str(tmp_path / "obj.mp4"), 30)
    with open(path, "rb") as fh:
        data = fh.read()
    handle = io.BytesIO(data)
    expected = [(f.index, f.rgb.tobytes()) for f in sample_frames(path, sample_fps=2.0, start_s=1.0, end_s=2.5)]
    for _ in range(2):  # rewound before each use
        got = [(f.index, f.rgb.tobytes()) for f in sample_frames(handle, sample_fps=2.0, start_s=1.0, end_s=2.5)]
        assert got == expected and [i for i, _ in got] == [10, 15, 20]
    assert [f.index for f in sample_frames(handle, sample_fps=1.0)] == [0, 10, 20]
    assert not handle.closed


def test_a_cut_in_a_middle_chunk_is_reported_after_its_frames(tmp_path):
    """A Matroska file cut at half its bytes: earlier chunks are whole, the one with the cut keeps its
    frames and then reports ``video_truncated``; so do the chunks after it, with no frames."""
    whole_path = write_labelled(str(tmp_path / "whole.mkv"), 100)  # 10 s
    with open(whole_path, "rb") as fh:
        data = fh.read()
    path = str(tmp_path / "cut.mkv")
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    reference = []
    with pytest.raises(VideoError) as caught:
        for frame in sample_frames(path, sample_fps=None):
            reference.append(frame.index)
    assert caught.value.reason == "video_truncated"
    cut = len(reference)  # frames before the cut
    assert 30 < cut < 70, cut
    outcomes = []
    for start, end in chunk_ranges(10.0, chunk_seconds=2.0, sample_fps=None):
        got = []
        try:
            for frame in sample_frames(path, sample_fps=None, start_s=start, end_s=end):
                got.append(frame.index)
                assert label_of(frame.rgb) == frame.index
            outcomes.append((got, None, None))
        except VideoError as exc:
            outcomes.append((got, exc.reason, exc.frame_index))
    assert [index for got, _, _ in outcomes for index in got] == reference
    middle = (cut - 1) // 20  # the chunk with the cut
    for number, (got, reason, frame_index) in enumerate(outcomes):
        if number < middle:
            assert reason is None and got == list(range(20 * number, 20 * number + 20))
        elif number == middle:
            assert reason == "video_truncated" and got[-1] == cut - 1 and frame_index == cut
        else:  # nothing left to read: the first frame not read is still the cut one
            assert reason == "video_truncated" and got == [] and frame_index == cut, outcomes


def test_a_decode_error_in_a_chunk_names_the_frame_where_it_stopped(videos, monkeypatch):
    from fsr_core.data.ingest import video as video_module

    class FailingAfter:  # the real container, whose decoding fails at the 15th frame it decodes
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def decode(self, stream):
            for count, frame in enumerate(self._container.decode(stream)):
                if count == 15:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield frame

    real_open = video_module._open
    monkeypatch.setattr(video_module, "_open", lambda source: FailingAfter(real_open(source)))
    got = []
    with pytest.raises(VideoError) as caught:  # decoding starts at the keyframe at 1.2 s (frame 12)
        for frame in sample_frames(os.path.join(videos, "cam", "pan.mp4"), sample_fps=None, start_s=2.0, end_s=4.0):
            got.append(frame.index)
    assert got == list(range(20, 27))
    assert caught.value.reason == "video_decode_error" and caught.value.frame_index == 27


def test_a_seek_that_lands_late_steps_back(tmp_path, monkeypatch):
    """Where a demuxer lands after the chunk's start, the reader seeks further back: no frame is lost."""
    from fsr_core.data.ingest import video as video_module

    class LandsLate:  # the real container, whose first seek lands 2 s later than asked
        def __init__(self, container):
            self._container = container
            self.seeks = []

        def __getattr__(self, name):
            return getattr(self._container, name)

        def seek(self, offset, **kwargs):
            stream = kwargs["stream"]
            late = 0 if self.seeks else int(2 / stream.time_base)
            self.seeks.append(offset)
            return self._container.seek(offset + late, **kwargs)

    path = write_labelled(str(tmp_path / "late.mp4"), 60)
    expected = [(f.index, f.rgb.tobytes()) for f in sample_frames(path, sample_fps=2.0, start_s=2.5, end_s=4.5)]
    opened = []
    real_open = video_module._open
    monkeypatch.setattr(video_module, "_open", lambda source: opened.append(LandsLate(real_open(source))) or opened[-1])
    got = [(f.index, f.rgb.tobytes()) for f in sample_frames(path, sample_fps=2.0, start_s=2.5, end_s=4.5)]
    assert got == expected and [i for i, _ in got] == [25, 30, 35, 40]
    assert len(opened[0].seeks) == 2  # at 2.5 s (landed at 4.5 s), then 1 s before


@pytest.mark.parametrize("kwargs", [{"end_s": 2.0}, {"start_s": -1.0}, {"start_s": 2.0, "end_s": 2.0},
                                    {"start_s": float("nan")}, {"start_s": 0.0, "end_s": float("inf")}])
def test_bad_chunk_arguments(videos, kwargs):
    with pytest.raises(ValueError, match="start_s|end_s"):
        next(sample_frames(os.path.join(videos, "cam", "pan.mp4"), **kwargs))


def test_probe_reads_the_header(videos, tmp_path):
    info = probe_video(os.path.join(videos, "cam", "pan.mp4"))
    assert info == {"codec": "mpeg4", "width": 256, "height": 256, "fps": 10.0, "index_fps": 10.0, "frames": 40, "duration_s": 4.0,
                    "container_duration_s": 4.0}
    with open(os.path.join(videos, "cam", "pan.mp4"), "rb") as fh:
        handle = io.BytesIO(fh.read())
    handle.seek(123)
    assert probe_video(handle) == info
    # Matroska declares no stream duration: the container's, the video being its only stream
    grey = probe_video(os.path.join(videos, "grey.mkv"))
    assert grey["duration_s"] == 2.0 and grey["frames"] is None
    # with an audio stream beside it the container's duration is only reported as such
    path = str(tmp_path / "with-sound.mkv")
    with av.open(path, "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=8000)
        audio.layout = "mono"
        for k in range(10):
            for packet in video.encode(av.VideoFrame.from_ndarray(labelled_frame(k), format="rgb24")):
                container.mux(packet)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)
    both = probe_video(path)
    assert both["duration_s"] is None and both["container_duration_s"] > 0.9


@pytest.mark.parametrize("name, reason", [("empty.avi", "empty_file"), ("notes.mov", "corrupt_video"),
                                          ("noise.webm", "corrupt_video"), ("cut.mp4", "corrupt_video"),
                                          ("sound.mp4", "no_video_stream")])
def test_probe_refuses_bad_files(videos, name, reason):
    with pytest.raises(VideoError) as caught:
        probe_video(os.path.join(videos, name))
    assert caught.value.reason == reason
    with open(os.path.join(videos, name), "rb") as fh:
        with pytest.raises(VideoError) as caught:
            probe_video(io.BytesIO(fh.read()))
    assert caught.value.reason == reason


def test_probe_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.mp4"):
        probe_video(str(tmp_path / "absent.mp4"))


def _x264_with_times(path: str, times: list[float]) -> None:
    """H.264 MP4 (B-frames, an edit list: the average rate comes out ~1 % off) with frame k at ``times[k]``,
    its grey level k."""
    from fractions import Fraction

    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 2 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("times", [
    [k / 10 for k in range(60)],  # constant 10 fps, 6 s: indices are positions all along (no drift)
    [k / 30 for k in range(60)] + [2 + k / 5 for k in range(15)],  # 30 fps, then 5 fps
])
def test_chunk_indices_are_unique_and_chunks_equal_one_pass(tmp_path, times):
    path = str(tmp_path / "v.mp4")
    _x264_with_times(path, times)
    one = [(f.index, int(f.rgb.mean() + 0.5)) for f in sample_frames(path, sample_fps=None)]
    chunked = [(f.index, int(f.rgb.mean() + 0.5)) for start, end in ((0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, None))
               for f in sample_frames(path, sample_fps=None, start_s=start, end_s=end)]
    assert [level for _, level in chunked] == [level for _, level in one]  # the same frames, in order
    indices = [index for index, _ in chunked]
    assert len(set(indices)) == len(indices) and indices == sorted(indices)
    if len(times) == 60:
        assert indices == [index for index, _ in one] == list(range(60))
