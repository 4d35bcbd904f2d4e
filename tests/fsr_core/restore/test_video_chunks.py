"""The ordered per-chunk pass of archive restoration on real (small) files: no_face, state round trip, tracks."""

from __future__ import annotations

import os

import av
import numpy as np

from fsr_core import storage
from fsr_core.data.codec import decode_png, encode_png
from fsr_core.restore.archive import ArchiveSettings
from fsr_core.restore.temporal import TrackSmoother
from fsr_core.restore.video_chunks import ChunkState, finish_video_chunk, load_chunk_state, save_chunk_state

COMMON = {"unit": 0, "source_uri": "x", "relative_path": "grey.mp4", "media": "video", "model_name": "m",
          "model_version": 1, "model_uri": "models:/m/1"}


def _grey_video(path: str, frames: int = 20, fps: int = 10) -> None:
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8),
                                                                   format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_faceless_video_gets_one_no_face_record_and_no_restored_video(tmp_path):
    video = str(tmp_path / "grey.mp4")
    _grey_video(video)
    out = str(tmp_path / "out")
    item = {"uri": video, "relative": "grey.mp4", "safe": "grey", "chunk": 0, "chunks": 1, "start_s": 0.0,
            "end_s": None}
    settings = ArchiveSettings(sample_fps=2.0)
    rows, state = finish_video_chunk([], item, [0, 5, 10, 15], out=out, settings=settings, paste=True,
                                     write_video=True, feather=0.1, fps=2.0, previous=None, common=COMMON)
    assert [(r["status"], r["reason"], r["frame_index"]) for r in rows] == [("quarantined", "no_face", None)]
    assert "4 sampled frame(s)" in rows[0]["detail"]
    assert state.faces == 0 and state.sampled == 4 and not os.path.exists(os.path.join(out, "videos"))


def test_tracks_and_smoothing_continue_from_the_previous_chunk(tmp_path):
    out = str(tmp_path / "out")
    crop = np.full((32, 32, 3), 100, np.uint8)
    matrix = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    rows = []
    for index, value in ((10, 100), (15, 200)):
        uri = os.path.join(out, "crops", f"f{index}.png")
        storage.write_bytes(uri, encode_png(np.full_like(crop, value)))
        rows.append({**COMMON, "frame_index": index, "face_index": 0, "box": [0.0, 0.0, 8.0, 8.0], "matrix": matrix,
                     "output_uri": uri, "status": "restored", "track_id": 99, "scale": 4})
    item = {"uri": "unused", "relative": "v.mp4", "safe": "v", "chunk": 1, "chunks": 3, "start_s": 1.0, "end_s": 2.0}
    settings = ArchiveSettings(input_size=8, temporal_smoothing=0.5, smoothing_tolerance=None)
    # chunk 0 ended with track 7 at the same place, smoothed to 50, at step 2
    smoother = TrackSmoother(0.5, scale=4, tolerance=None)
    smoother.update(2, 7, np.full_like(crop, 50), matrix)
    tracker = {"iou_threshold": 0.3, "max_gap": 2, "next": 8, "step": 2, "tracks": [[7, [0.0, 0.0, 8.0, 8.0], 2]]}
    previous = ChunkState(chunk=0, tracker=tracker, smoother=smoother.state(), faces=2, sampled=2)
    save_chunk_state(out, "v", previous)
    loaded = load_chunk_state(out, "v", 0)
    assert loaded.tracker == tracker and loaded.faces == 2 and loaded.smoother["tracks"].keys() == {7}

    done, state = finish_video_chunk(rows, item, [10, 15], out=out, settings=settings, paste=False,
                                     write_video=False, feather=0.1, fps=2.0, previous=loaded, common=COMMON)
    assert [r["track_id"] for r in done] == [7, 7]  # the previous chunk's track, not the chunk-local id
    smoothed = [decode_png(storage.read_bytes(r["smoothed_output_uri"])) for r in done]
    assert smoothed[0].mean() == 75 and smoothed[1].mean() == 138  # 0.5*100+0.5*50, then 0.5*200+0.5*75 = 137.5
    assert state.faces == 4 and state.sampled == 4 and state.chunk == 1


def test_a_video_gone_before_the_second_decoding_is_recorded_and_its_faces_still_tracked(tmp_path):
    out = str(tmp_path / "out")
    uri = os.path.join(out, "crops", "f0.png")
    storage.write_bytes(uri, encode_png(np.full((32, 32, 3), 100, np.uint8)))
    rows = [{**COMMON, "frame_index": 0, "face_index": 0, "box": [0.0, 0.0, 8.0, 8.0], "output_uri": uri,
             "matrix": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "status": "restored", "track_id": 5, "scale": 4}]
    item = {"uri": str(tmp_path / "gone.mp4"), "relative": "gone.mp4", "safe": "gone", "chunk": 0, "chunks": 1,
            "start_s": 0.0, "end_s": None}
    settings = ArchiveSettings(input_size=8, temporal_smoothing=0.5)
    done, state = finish_video_chunk(rows, item, [0, 5], out=out, settings=settings, paste=True, write_video=True,
                                     feather=0.1, fps=2.0, previous=None, common=COMMON)
    restored = [r for r in done if r["status"] == "restored"]
    (incomplete,) = [r for r in done if r["status"] == "quarantined"]
    assert incomplete["reason"] == "video_output_incomplete" and "2 sampled frame(s) not decoded" in incomplete["detail"]
    assert restored[0]["track_id"] == 0 and restored[0]["smoothed_output_uri"]  # tracked and smoothed all the same
    assert "video_output_uri" not in restored[0] and not os.path.exists(os.path.join(out, "videos"))
    assert state.sampled == 2 and state.faces == 1


def test_the_smoother_learns_the_scale_from_the_first_chunk_with_faces():
    from fsr_core.restore.video_chunks import _smoother

    settings = ArchiveSettings(temporal_smoothing=0.5)
    faceless = ChunkState(chunk=0, tracker={}, smoother=_smoother(settings, None, None).state())
    assert _smoother(settings, faceless, 8).scale == 8  # chunk 0 had no face: its scale-1 smoother is replaced
    carried = ChunkState(chunk=0, tracker={}, smoother=_smoother(settings, None, 8).state())
    assert _smoother(settings, carried, None).scale == 8  # a faceless chunk keeps the carried one
    assert _smoother(ArchiveSettings(), carried, 8) is None  # smoothing off
