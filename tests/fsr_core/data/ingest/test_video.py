"""Video reader: frames sampled by timestamp from a stream, faces detected, broken videos quarantined.

The test video pans a 256x256 window over ``skimage.data.astronaut()`` (the face ~90 px tall) by
2 px a frame for 3 s at 10 fps, then shows 1 s of flat grey: 40 frames, faces in frames 0-29.
"""

from __future__ import annotations

import inspect
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
from fsr_core.data.ingest.video import VideoReader, sample_frames
from fsr_core.data.splits import assign_split

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


def test_reads_the_same_rows_from_s3(videos, reader, s3_bucket, tmp_path):
    prefix = f"{s3_bucket}/footage"
    storage.upload_file(os.path.join(videos, "cam", "pan.mp4"), f"{prefix}/cam/pan.mp4")
    storage.upload_file(os.path.join(videos, "cut.mkv"), f"{prefix}/cut.mkv")
    s3_reader = VideoReader(size=SIZE, upsample=0, score_threshold=0.3, sample_fps=1.0, tmp_dir=str(tmp_path))
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
    assert os.listdir(tmp_path) == []  # the downloaded copies are gone
