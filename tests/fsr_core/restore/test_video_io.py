"""Video I/O for restoration: chunk plans, ranged S3 reads (moto), joining chunk videos without re-encoding.

Videos are the labelled ones of the ingest tests (64x64, the frame's number readable in its pixels).
"""

from __future__ import annotations

import io
import os

import av
import numpy as np
import pytest

from fsr_core import storage
from fsr_core.data.ingest.video import VideoError, probe_video, sample_frames
from fsr_core.data.ingest.video import open_video
from fsr_core.restore.video_io import chunk_ranges, concat_videos
from fsr_core.storage import RangedFile
from tests.fsr_core.data.ingest.test_video import CODECS, label_of, write_labelled


def frames_of(source, **kwargs) -> list[tuple[int, float, bytes]]:
    return [(f.index, f.time_s, f.rgb.tobytes()) for f in sample_frames(source, **kwargs)]


# ---------------------------------------------------------------------------- chunk_ranges
@pytest.mark.parametrize("duration, chunk, fps, expected", [
    (None, 10.0, 1.0, [(0.0, None)]),  # duration unknown
    (100.0, None, 1.0, [(0.0, None)]),  # chunking off
    (100.0, 0, 1.0, [(0.0, None)]),
    (10.0, 10.0, 1.0, [(0.0, None)]),  # no longer than a chunk
    (0.0, 10.0, None, [(0.0, None)]),
    (60.0, 30.0, None, [(0.0, 30.0), (30.0, None)]),  # an exact multiple: no empty tail chunk
    (61.0, 30.0, None, [(0.0, 30.0), (30.0, 60.0), (60.0, None)]),
    (25.0, 10.0, 0.3, [(0.0, 10.0), (10.0, 20.0), (20.0, None)]),  # 10 s = 3 intervals of 1/0.3 s
    (25.0, 9.0, 0.25, [(0.0, 12.0), (12.0, 24.0), (24.0, None)]),  # 9 s rounded up to 3 intervals of 4 s
    (0.7, 0.1, None, [(0.0, 0.1), (0.1, 0.2), (0.2, 0.30000000000000004), (0.30000000000000004, 0.4), (0.4, 0.5),
                      (0.5, 0.6000000000000001), (0.6000000000000001, None)]),
])
def test_chunk_ranges(duration, chunk, fps, expected):
    assert chunk_ranges(duration, chunk_seconds=chunk, sample_fps=fps) == expected


def test_chunk_boundaries_are_on_the_sampling_grid():
    ranges = chunk_ranges(100.0, chunk_seconds=10.0, sample_fps=3.0)
    assert len(ranges) == 10 and ranges[-1] == (90.0, None)
    for start, _ in ranges:
        assert abs(start * 3.0 - round(start * 3.0)) < 1e-9
    ranges = chunk_ranges(100.0, chunk_seconds=1.3, sample_fps=3.0)  # 1.3 s -> 4 intervals: 4/3 s
    assert ranges[1][0] == pytest.approx(4 / 3) and len(ranges) == 75


@pytest.mark.parametrize("kwargs, name", [
    ({"duration_s": -1.0}, "duration_s"), ({"duration_s": float("nan")}, "duration_s"),
    ({"chunk_seconds": -5.0}, "chunk_seconds"), ({"chunk_seconds": float("inf")}, "chunk_seconds"),
    ({"sample_fps": 0.0}, "sample_fps"), ({"sample_fps": -1.0}, "sample_fps"), ({"duration_s": "10"}, "duration_s"),
])
def test_chunk_ranges_refuses_bad_arguments(kwargs, name):
    arguments = {"duration_s": 100.0, "chunk_seconds": 10.0, "sample_fps": 1.0, **kwargs}
    duration = arguments.pop("duration_s")
    with pytest.raises(ValueError, match=name):
        chunk_ranges(duration, **arguments)


# ---------------------------------------------------------------------------- open_video
def test_ranged_file_reads_like_a_file_and_caches_blocks():
    import pyarrow as pa

    data = bytes(range(256)) * 4  # 1024 bytes
    ranged = RangedFile(pa.BufferReader(data), "mem://data", block_size=100, cache_blocks=2)
    assert ranged.read(250) == data[:100]  # a read stops at a block's end (a short read, as raw streams may)
    assert ranged.read() == data[100:]  # ...and read() goes on to the end
    assert (ranged.reads, ranged.bytes_read) == (11, 1024)  # 10 full blocks + the last 24 bytes
    assert ranged.seek(-30, io.SEEK_END) == 994 and ranged.read(10) == data[994:1000]
    assert ranged.seek(5, io.SEEK_CUR) == 1005 and ranged.read(100) == data[1005:]
    assert ranged.read(10) == b"" and ranged.reads == 11  # the last two blocks were still cached
    ranged.seek(0)
    assert ranged.read(10) == data[:10] and ranged.reads == 12  # block 0 had been evicted
    with pytest.raises(ValueError, match="mem://data"):
        ranged.seek(-1)
    ranged.close()
    assert ranged.closed


def test_open_video_gives_a_local_path_as_is(tmp_path):
    path = write_labelled(str(tmp_path / "local.mp4"), 10)
    with open_video(path) as source:
        assert source == path
    with pytest.raises(FileNotFoundError, match="absent.mp4"):
        with open_video(str(tmp_path / "absent.mp4")):
            pass


def test_open_video_reads_the_same_frames_from_s3(tmp_path, s3_bucket):
    path = write_labelled(str(tmp_path / "clip.mp4"), 60)  # index at the end (no fast start)
    uri = f"{s3_bucket}/videos/clip.mp4"
    storage.upload_file(path, uri)
    ranges = chunk_ranges(probe_video(path)["duration_s"], chunk_seconds=2.0, sample_fps=2.0)
    assert len(ranges) == 3
    with open_video(uri) as source:
        assert not isinstance(source, str)
        assert probe_video(source) == probe_video(path)
        for start, end in ranges:  # one object serves the calls in turn
            assert frames_of(source, sample_fps=2.0, start_s=start, end_s=end) == frames_of(
                path, sample_fps=2.0, start_s=start, end_s=end)
        assert frames_of(source, sample_fps=None) == frames_of(path, sample_fps=None)
    assert source.closed
    with pytest.raises(FileNotFoundError, match="videos/absent.mp4"):
        with open_video(f"{s3_bucket}/videos/absent.mp4"):
            pass
    storage.write_bytes(f"{s3_bucket}/videos/empty.mp4", b"")
    with open_video(f"{s3_bucket}/videos/empty.mp4") as source:
        with pytest.raises(VideoError, match="empty_file"):
            probe_video(source)


def test_a_chunk_of_an_s3_video_reads_only_its_byte_ranges(tmp_path, s3_bucket):
    """20 s of noise (every frame costs bytes): the header, the index at the end and one 2 s chunk are
    a fraction of the file; nothing downloads it whole."""
    path = str(tmp_path / "noise.mp4")
    rng = np.random.default_rng(0)
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 128
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 25
        for _ in range(500):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    size = os.path.getsize(path)
    uri = f"{s3_bucket}/noise.mp4"
    storage.upload_file(path, uri)
    with open_video(uri, block_size=64 << 10) as source:
        info = probe_video(source)
        probed = source.bytes_read
        indices = [f.index for f in sample_frames(source, sample_fps=None, start_s=10.0, end_s=12.0)]
        read = source.bytes_read
    assert info["frames"] == 500 and info["duration_s"] == 20.0
    assert indices == list(range(250, 300))
    assert probed < size / 5, (probed, size)
    assert read < size / 3, (read, size)  # probe + chunk: about 2 s of the 20 s, plus the index


# ---------------------------------------------------------------------------- concat_videos
def packets_of(path: str) -> list[tuple[int | None, int | None, bytes]]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return [(p.pts, p.dts, bytes(p)) for p in container.demux(stream) if p.size]


def decoded(path: str) -> list[tuple[int, float]]:
    """(label, time) of every frame of a video."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        return [(label_of(f.to_ndarray(format="rgb24")), float(f.pts * stream.time_base))
                for f in container.decode(stream)]


@pytest.mark.parametrize("codec", CODECS)
def test_concat_joins_chunks_in_order_without_reencoding(tmp_path, codec):
    lengths = (13, 20, 7)  # chunks cut mid-GOP, one shorter than a GOP
    chunks, first = [], 0
    for number, count in enumerate(lengths):
        chunks.append(write_labelled(str(tmp_path / f"chunk-{number}.mp4"), count, codec=codec, first=first))
        first += count
    out = str(tmp_path / "out" / "joined.mp4")
    assert concat_videos(chunks, out) == 40
    frames = decoded(out)
    assert [label for label, _ in frames] == list(range(40))
    times = [t for _, t in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert times == pytest.approx([k / 10 for k in range(40)], abs=1e-3)
    info = probe_video(out)
    assert info["frames"] == 40 and info["duration_s"] == pytest.approx(4.0, abs=1e-3) and info["fps"] == 10
    assert info["codec"] == probe_video(chunks[0])["codec"]
    # the very packets of the chunks, in order: nothing was re-encoded
    joined = packets_of(out)
    assert [data for _, _, data in joined] == [data for chunk in chunks for _, _, data in packets_of(chunk)]
    dts = [d for _, d, _ in joined]
    assert all(b > a for a, b in zip(dts, dts[1:]))
    assert [name for name in os.listdir(os.path.dirname(out))] == ["joined.mp4"]  # no temporary left beside it


def test_concat_of_chunks_on_s3(tmp_path, s3_bucket):
    """Chunks as the restore pipeline encodes them (H.264 where available, the encoder's default GOP,
    stored on S3), joined into an S3 output."""
    chunk_uris, first = [], 0
    for number, count in enumerate((12, 5, 9)):
        path = write_labelled(str(tmp_path / f"{number}.mp4"), count, codec=CODECS[-1], gop=None, first=first)
        chunk_uris.append(f"{s3_bucket}/restored/clip.mp4.chunks/{number:04d}.mp4")
        storage.upload_file(path, chunk_uris[-1])
        first += count
    out_uri = f"{s3_bucket}/restored/clip.mp4"
    assert concat_videos(chunk_uris, out_uri) == 26
    local = str(tmp_path / "clip.mp4")
    storage.download_file(out_uri, local)
    frames = decoded(local)
    assert [label for label, _ in frames] == list(range(26))
    assert [t for _, t in frames] == pytest.approx([k / 10 for k in range(26)], abs=1e-3)
    with pytest.raises(FileNotFoundError, match="0009.mp4"):
        concat_videos(chunk_uris + [f"{s3_bucket}/restored/clip.mp4.chunks/0009.mp4"], f"{s3_bucket}/other.mp4")
    assert not storage.exists(f"{s3_bucket}/other.mp4")


def test_concat_refuses_what_it_cannot_join(tmp_path):
    out = str(tmp_path / "joined.mp4")
    good = write_labelled(str(tmp_path / "a.mp4"), 12)
    with pytest.raises(ValueError, match="at least one chunk"):
        concat_videos([], out)
    faster = write_labelled(str(tmp_path / "fast.mp4"), 12, fps=25, first=12)
    with pytest.raises(ValueError, match=r"fast\.mp4: its rate"):
        concat_videos([good, faster], out)
    if "libx264" in av.codecs_available:
        other = write_labelled(str(tmp_path / "h264.mp4"), 12, codec="libx264", first=12)
        with pytest.raises(ValueError, match=r"h264\.mp4: its codec"):
            concat_videos([good, other], out)
    with pytest.raises(FileNotFoundError, match="absent.mp4"):
        concat_videos([good, str(tmp_path / "absent.mp4")], out)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(VideoError, match="notes.mp4"):
        concat_videos([good, str(text)], out)
    assert not os.path.exists(out)  # a failed join writes nothing
