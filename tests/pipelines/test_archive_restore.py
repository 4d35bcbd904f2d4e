"""``fsr restore`` end to end: a generated archive (the skimage astronaut at several sizes and formats,
nested folders, bad files, a short video), a tiny registered L2H, real Ray Data, locally and on moto S3,
and a SIGKILLed CLI run that is resumed."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from fsr_core import storage
from fsr_core.data.codec import decode_png
from fsr_core.data.ingest.images import decode_image
from fsr_core.networks.two_step import L2HGenerator
from fsr_core.restore.archive import ArchiveSettings
from tests.fsr_core.data.ingest.test_images import png_bomb
from pipelines.archive_plan import read_plan_units
from pipelines.archive_restore import (
    FAIL_ENV,
    KILL_ENV,
    list_archive,
    read_manifest,
    restore_archive,
)
from pipelines.model_registry import register_restorer
from tests.restorers import l2h_checkpoint

TINY = dict(channels=8, blocks_per_section=(1, 1, 1, 1), reduction=4)
NAME = "archive_l2h"
SETTINGS = ArchiveSettings(input_size=16, sample_fps=2.0)  # the default detector (mtcnn-tiny)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _astronaut(size: int) -> np.ndarray:
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def _exif_rotated(rgb: np.ndarray) -> bytes:
    """A JPEG whose pixels lie on their side with EXIF orientation 6: a viewer shows ``rgb`` upright."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # stored turned 90 degrees counter-clockwise
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def write_video(path: str, *, seconds: float, fps: int = 10, size: int = 256) -> None:
    """The astronaut drifting a few pixels per frame, H.264 (or MPEG-4)."""
    import av

    base = _astronaut(size + 16)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            shift = i % 8
            frame = np.ascontiguousarray(base[shift:shift + size, shift:shift + size])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_archive(root: str, *, video_seconds: float = 2.0) -> dict[str, str]:
    """Writes the test archive; returns {relative path: what it is}."""
    files = {
        "photos/astro.jpg": _encode(_astronaut(256), ".jpg"),
        "photos/deep/er/astro.png": _encode(_astronaut(320), ".png"),
        "astro.bmp": _encode(_astronaut(256), ".bmp"),
        "photos/astro.webp": _encode(_astronaut(288), ".webp"),
        "photos/astro.tif": _encode(_astronaut(256), ".tif"),
        "..%2f..%2fevil.jpg": _encode(_astronaut(256), ".jpg"),
        "bad/empty.jpg": b"",
        "bad/not_an_image.png": b"just some text, not a picture\n" * 4,
        "bad/truncated.jpg": _encode(_astronaut(256), ".jpg")[:3000],
        "bad/noise.png": _encode(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8), ".png"),
        "bad/bomb.png": png_bomb(60000, 60000),  # 100 bytes claiming 3.6 gigapixels
        "photos/sideways.jpg": _exif_rotated(_astronaut(256)),
        "notes.txt": b"not part of the archive",
        "video/broken.mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(200),
    }
    for relative, data in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    os.makedirs(os.path.join(root, "video"), exist_ok=True)
    write_video(os.path.join(root, "video", "clip.mp4"), seconds=video_seconds)
    return files


def checksums(root: str) -> dict[str, str]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def register_tiny(tracking_uri: str, tmp_path) -> str:
    from mlflow import MlflowClient

    torch.manual_seed(0)
    network = L2HGenerator(**TINY).eval()
    l2h_checkpoint(str(tmp_path / "ckpt"), network)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("train") or client.get_experiment(client.create_experiment("train"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    return register_restorer(checkpoint_dir=str(tmp_path / "ckpt"), restorer="l2h", registered_name=NAME,
                            alias="champion", tracking_uri=tracking_uri, run_id=run_id)


def _keys(manifest) -> list[tuple]:
    rows = manifest.select(["source_uri", "frame_index", "face_index", "status", "reason"]).to_pylist()
    return [(r["source_uri"], r["frame_index"], r["face_index"], r["reason"]) for r in rows]


def assert_exactly_once(manifest, listed: list[dict]) -> None:
    keys = _keys(manifest)
    assert len(keys) == len(set(keys)), [k for k, n in Counter(keys).items() if n > 1]
    assert {r["source_uri"] for r in manifest.to_pylist()} == {item["uri"] for item in listed}


def test_restore_local_archive(ray_session, tracking_uri, tmp_path):
    archive = tmp_path / "archive"
    make_archive(str(archive))
    before = checksums(str(archive))
    register_tiny(tracking_uri, tmp_path)
    out = str(tmp_path / "out")

    summary = restore_archive(str(archive), out, f"models:/{NAME}@champion", tracking_uri=tracking_uri,
                              settings=SETTINGS, unit_size=3, printer=None)
    manifest = read_manifest(out)
    rows = manifest.to_pylist()
    listed = list_archive(str(archive))
    assert_exactly_once(manifest, listed)
    assert summary["units_run"] == summary["units"] == len(storage.list_files(os.path.join(out, "manifest")))
    fidelity = [r["lr_consistency"] for r in rows if r["status"] == "restored"]
    assert None not in fidelity and summary["lr_consistency"]["mean"] == pytest.approx(np.mean(fidelity))
    assert summary["lr_consistency"]["p05"] <= summary["lr_consistency"]["p50"] <= summary["lr_consistency"]["p95"]
    assert {r["model_uri"] for r in rows} == {f"models:/{NAME}/1"} and {r["model_version"] for r in rows} == {1}

    by_file = {}
    for r in rows:
        by_file.setdefault(r["relative_path"], []).append(r)
    quarantined = {rel: rs[0]["reason"] for rel, rs in by_file.items() if rs[0]["status"] == "quarantined"}
    assert quarantined == {"bad/empty.jpg": "empty_file", "bad/not_an_image.png": "not_an_image",
                           "bad/truncated.jpg": "truncated_image", "bad/noise.png": "no_face",
                           "bad/bomb.png": "too_large", "video/broken.mp4": "corrupt_video"}
    for rel in ("photos/astro.jpg", "photos/deep/er/astro.png", "astro.bmp", "photos/astro.webp",
                "photos/astro.tif", "..%2f..%2fevil.jpg", "photos/sideways.jpg"):
        (face,) = by_file[rel]  # one face each (the detector leaves the mission patch alone)
        assert face["status"] == "restored" and face["face_index"] == 0 and face["score"] > 0.3
        assert len(face["landmarks"]) == 10 and len(face["box"]) == 4
        crop = decode_png(storage.read_bytes(face["output_uri"]))
        assert crop.shape == (128, 128, 3)  # 16 px aligned crop, x8 network
        assert 0 < face["lr_consistency"] <= 100  # the fidelity number of this face
        # paste-back: outside the face's crop region the frame is the input, bit for bit
        source, _ = decode_image(storage.read_bytes(face["source_uri"]))
        pasted = decode_png(storage.read_bytes(face["frame_output_uri"]))
        assert pasted.shape == source.shape
        x0, y0, x1, y1 = face["region"]
        outside = np.ones(source.shape[:2], bool)
        rows_, cols_ = slice(max(0, int(np.floor(y0)) - 1), int(np.ceil(y1)) + 1), \
            slice(max(0, int(np.floor(x0)) - 1), int(np.ceil(x1)) + 1)
        outside[rows_, cols_] = False
        assert outside.sum() > 0.5 * outside.size
        assert np.array_equal(pasted[outside], source[outside])
        assert not np.array_equal(pasted[~outside], source[~outside])

    video = [r for r in by_file["video/clip.mp4"] if r["status"] == "restored"]
    assert len(video) == 4  # 2 s at 10 fps, sampled at 2 fps, one face per frame
    assert sorted(r["frame_index"] for r in video) == [0, 5, 10, 15]
    assert {r["track_id"] for r in video} == {0}  # the same face all along
    import av

    with av.open(video[0]["video_output_uri"]) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4

    # nothing was written outside the output root and the inputs are untouched
    for folder, _, names in os.walk(out):
        for name in names:
            assert os.path.realpath(os.path.join(folder, name)).startswith(os.path.realpath(out) + os.sep)
    for folder, _, names in os.walk(tmp_path):
        inside = folder.startswith((str(archive), out))
        assert inside or not any("evil" in name for name in names), (folder, names)
    assert checksums(str(archive)) == before

    with pytest.raises(ValueError, match="overlap"):
        restore_archive(str(archive), str(archive / "restored"), f"models:/{NAME}@champion",
                        tracking_uri=tracking_uri, printer=None)
    again = restore_archive(str(archive), out, f"models:/{NAME}@champion", tracking_uri=tracking_uri,
                            settings=SETTINGS, unit_size=3, printer=None)
    assert again["units_run"] == 0 and read_manifest(out).equals(manifest)


def test_restore_s3_archive_with_unsafe_keys(ray_session, tracking_uri, tmp_path, s3_bucket):
    import boto3

    files = {"photos/astro.jpg": _encode(_astronaut(256), ".jpg"),
             "a/../../evil.jpg": _encode(_astronaut(256), ".jpg"),
             "..%2f..%2fevil.jpg": _encode(_astronaut(256), ".jpg"),
             "bad/empty.png": b""}
    bucket = s3_bucket[len("s3://"):]
    client = boto3.client("s3")
    write_video(str(tmp_path / "clip.mp4"), seconds=2.0)
    files["clips/clip.mp4"] = (tmp_path / "clip.mp4").read_bytes()
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=f"archive/{key}", Body=data)
    listed = list_archive(f"{s3_bucket}/archive")
    assert {item["relative"] for item in listed} == set(files)
    register_tiny(tracking_uri, tmp_path)
    out = f"{s3_bucket}/out"
    settings = dataclasses.replace(SETTINGS, chunk_seconds=1.0, temporal_smoothing=0.5)  # the video in 2 chunks
    restore_archive(f"{s3_bucket}/archive", out, f"models:/{NAME}@champion", tracking_uri=tracking_uri,
                    settings=settings, unit_size=2, printer=None)
    manifest = read_manifest(out)
    assert_exactly_once(manifest, listed)
    status = {r["relative_path"]: (r["status"], r["reason"]) for r in manifest.to_pylist()
              if r["relative_path"] != "clips/clip.mp4"}
    assert status == {"photos/astro.jpg": ("restored", None), "a/../../evil.jpg": ("quarantined", "unsafe_path"),
                      "..%2f..%2fevil.jpg": ("restored", None), "bad/empty.png": ("quarantined", "empty_file")}
    video = [r for r in manifest.to_pylist() if r["relative_path"] == "clips/clip.mp4"]
    assert [(r["frame_index"], r["track_id"], r["status"]) for r in sorted(video, key=lambda r: r["frame_index"])] \
        == [(0, 0, "restored"), (5, 0, "restored"), (10, 0, "restored"), (15, 0, "restored")]
    assert len({r["unit"] for r in video}) == 2 and all(r["smoothed_output_uri"].startswith(out) for r in video)
    import av

    with av.open(io.BytesIO(storage.read_bytes(video[0]["video_output_uri"]))) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=bucket)["Contents"]]
    written = [k for k in keys if not k.startswith("archive/")]
    assert written and all(k.startswith("out/") and ".." not in k.split("/") for k in written)
    assert len(keys) - len(written) == len(files)  # inputs untouched, nothing added among them
    for key, data in files.items():
        assert client.get_object(Bucket=bucket, Key=f"archive/{key}")["Body"].read() == data


def test_cli_killed_mid_way_resumes_exactly_once(tracking_uri, tmp_path):
    archive = tmp_path / "archive"
    make_archive(str(archive))
    before = checksums(str(archive))
    register_tiny(tracking_uri, tmp_path)
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "pipelines.restore_cli", "restore", "--input", str(archive), "--output", out,
           "--model", f"models:/{NAME}@champion", "--tracking-uri", tracking_uri,
           "--sample-fps", "2", "--unit-size", "3", "--num-cpus", "2", "--frames-per-batch", "2"]
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    for key in ("RAY_ADDRESS",):
        env.pop(key, None)
    killed = subprocess.run(cmd, env={**env, KILL_ENV: "1"}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-3000:]
    parts = storage.list_files(os.path.join(out, "manifest"))
    listed = list_archive(str(archive))
    assert 1 <= len(parts) < 6  # killed after the first finished unit (others may have finished with it)

    resumed = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(parts)} already done" in resumed.stdout
    manifest = read_manifest(out)
    assert_exactly_once(manifest, listed)
    assert len(storage.list_files(os.path.join(out, "manifest"))) == 6  # 10 images / 3 + 2 videos
    assert sum(r["status"] == "restored" for r in manifest.to_pylist()) == 7 + 4  # 7 good images, 4 video frames
    assert checksums(str(archive)) == before
    # the killed process's MLflow run is KILLED now, and the two runs name each other
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("fsr-restore")
    runs = {r.info.status: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["FINISHED", "KILLED"]
    killed_run, resumed_run = runs["KILLED"], runs["FINISHED"]
    assert killed_run.data.tags["fsr_status"] == "killed" and "killed" in killed_run.data.tags["fsr_error"]
    assert killed_run.data.tags["fsr_resumed_by"] == resumed_run.info.run_id
    assert resumed_run.data.tags["fsr_resumes"] == killed_run.info.run_id
    assert f"MLflow run {killed_run.info.run_id} of a killed restore into this output: marked KILLED" in resumed.stdout


def test_a_failing_unit_is_retried_then_failed_while_the_others_finish(tracking_uri, tmp_path):
    """An unforeseen error (injected through the test-only FAIL_ENV): once is retried and passes; always
    fails its unit only, the job ends 1 naming it, and the next run retries that unit alone."""
    archive = tmp_path / "archive"
    for relative, size in {"a/one.jpg": 256, "a/flaky.jpg": 240, "b/doomed.jpg": 224, "c/four.jpg": 200}.items():
        (archive / relative).parent.mkdir(parents=True, exist_ok=True)
        (archive / relative).write_bytes(_encode(_astronaut(size), ".jpg"))
    register_tiny(tracking_uri, tmp_path)
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "pipelines.restore_cli", "restore", "--input", str(archive), "--output", out,
           "--model", f"models:/{NAME}@champion", "--tracking-uri", tracking_uri, "--unit-size", "1",
           "--num-cpus", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    first = subprocess.run(cmd, env={**env, FAIL_ENV: "flaky.jpg=1,doomed.jpg=9"}, cwd=ROOT, capture_output=True,
                           text=True, timeout=180)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "1 unit(s) failed" in first.stderr and "'b/doomed.jpg': RuntimeError: injected failure 2" in first.stderr
    rows = read_manifest(out).to_pylist()
    assert sorted(r["relative_path"] for r in rows) == ["a/flaky.jpg", "a/one.jpg", "c/four.jpg"]
    assert all(r["status"] == "restored" for r in rows)

    second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 already done, 1 to run" in second.stdout
    assert sorted(r["relative_path"] for r in read_manifest(out).to_pylist()) == [
        "a/flaky.jpg", "a/one.jpg", "b/doomed.jpg", "c/four.jpg"]


def test_cli_restore_is_one_mlflow_run(ray_session, tracking_uri, tmp_path):
    from mlflow import MlflowClient

    from pipelines.cli import main

    archive = tmp_path / "archive"
    for relative, data in {"a/astro.jpg": _encode(_astronaut(256), ".jpg"), "b/astro.png": _encode(_astronaut(200), ".png"),
                           "bad/empty.jpg": b"", "bad/text.png": b"not an image"}.items():
        (archive / relative).parent.mkdir(parents=True, exist_ok=True)
        (archive / relative).write_bytes(data)
    register_tiny(tracking_uri, tmp_path)
    out = str(tmp_path / "out")
    argv = ["restore", "--input", str(archive), "--output", out, "--model", f"models:/{NAME}@champion",
            "--tracking-uri", tracking_uri, "--score-threshold", "0.9", "--unit-size", "2", "--log-every", "0"]
    assert main(argv) == 0

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("fsr-restore")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.fsr_kind = 'restore'")
    assert run.info.status == "FINISHED"
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert tags["fsr_status"] == "executed" and tags["fsr_output"] == out and tags["fsr_input"] == str(archive)
    assert tags["fsr_model_uri"] == f"models:/{NAME}/1" and tags["fsr_model_version"] == "1"
    manifest = read_manifest(out).to_pylist()
    restored = sum(r["status"] == "restored" for r in manifest)
    assert restored == 2
    assert metrics["faces"] == restored and metrics["units"] == 2 and metrics["units_run"] == 2
    assert metrics["quarantined_empty_file"] == 1 and metrics["quarantined_not_an_image"] == 1
    assert metrics["quarantined"] == 2 and metrics["faces_per_second"] > 0
    progress = client.get_metric_history(run.info.run_id, "units_finished")
    assert [m.value for m in progress] == [1.0, 2.0] and [m.step for m in progress] == [1, 2]
    assert params["settings.score_threshold"] == "0.9" and params["unit_size"] == "2"
    summary = json.loads(open(client.download_artifacts(run.info.run_id, "restore_summary.json",
                                                          str(tmp_path / "dl"))).read())
    assert summary["faces"] == restored and summary["output"] == out

    # a resumed restore is a new run on the same output, with nothing left to do
    assert main(argv) == 0
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.fsr_output = '{out}'")
    assert len(runs) == 2 and runs[0].data.metrics["units_run"] == 0 and runs[0].data.metrics["units_reused"] == 2

    # a model that does not exist: the run ends FAILED and says why
    assert main(argv[:-2] + ["--output", str(tmp_path / "out2"), "--model", "models:/nope@champion"]) == 1
    (failed,) = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FAILED'")
    assert failed.data.tags["fsr_status"] == "failed" and "nope" in failed.data.tags["fsr_error"]


def test_chunked_smoothed_video_resumed_after_a_kill_equals_one_pass(ray_session, tracking_uri, tmp_path):
    """A 3 s video in 1 s chunks, temporal smoothing on, the CLI SIGKILLed after its first chunk and
    resumed: the same tracks, the same raw and smoothed crops (bit for bit) and as many video frames
    as one unchunked pass; the smoothing lowers the flicker along the track."""
    import av

    from fsr_core.restore.temporal import flicker

    archive = tmp_path / "archive"
    archive.mkdir()
    write_video(str(archive / "clip.mp4"), seconds=3.0)
    register_tiny(tracking_uri, tmp_path)
    smooth = ArchiveSettings(input_size=16, sample_fps=2.0, chunk_seconds=None,
                             temporal_smoothing=0.5)
    whole = str(tmp_path / "whole")
    restore_archive(str(archive), whole, f"models:/{NAME}@champion", tracking_uri=tracking_uri, settings=smooth,
                    frames_per_batch=1, printer=None)  # the batch size changes CPU conv results in the last bit

    out = str(tmp_path / "chunked")
    cmd = [sys.executable, "-m", "pipelines.restore_cli", "restore", "--input", str(archive), "--output", out,
           "--model", f"models:/{NAME}@champion", "--tracking-uri", tracking_uri,
           "--sample-fps", "2", "--chunk-seconds", "1", "--temporal-smoothing", "0.5", "--num-cpus", "2",
           "--frames-per-batch", "1"]
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    killed = subprocess.run(cmd, env={**env, KILL_ENV: "1"}, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert killed.returncode == -9, killed.stderr[-3000:]
    plan = json.loads(open(os.path.join(out, "_restore.json")).read())
    units = [json.loads(items)[0] for items in read_plan_units(out, plan)["items"].to_pylist()]
    assert [(u["chunk"], u["start_s"], u["end_s"]) for u in units] == [(0, 0.0, 1.0), (1, 1.0, 2.0), (2, 2.0, None)]
    assert plan["units"] == 3 and plan["files"] == 1
    assert 1 <= len(storage.list_files(os.path.join(out, "manifest"))) < 3
    resumed = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "_work"))  # chunk videos and states are gone once all is done

    def faces(root):
        rows = [r for r in read_manifest(root).to_pylist() if r["status"] == "restored"]
        return sorted(rows, key=lambda r: (r["frame_index"], r["face_index"]))

    one, chunked = faces(whole), faces(out)
    assert [r["frame_index"] for r in chunked] == [0, 5, 10, 15, 20, 25]
    assert [(r["frame_index"], r["face_index"], r["track_id"], r["box"]) for r in chunked] == \
        [(r["frame_index"], r["face_index"], r["track_id"], r["box"]) for r in one]
    assert {r["track_id"] for r in chunked} == {0}  # one track across the chunk boundaries
    for a, b in zip(one, chunked):
        assert storage.read_bytes(a["output_uri"]) == storage.read_bytes(b["output_uri"])
        assert storage.read_bytes(a["smoothed_output_uri"]) == storage.read_bytes(b["smoothed_output_uri"])
    assert {r["video_output_uri"] for r in chunked} == {os.path.join(out, "videos", os.path.basename(
        one[0]["video_output_uri"]))}
    for video in (one[0]["video_output_uri"], chunked[0]["video_output_uri"]):
        with av.open(video) as container:
            assert sum(1 for _ in container.decode(video=0)) == 6

    raw = [decode_png(storage.read_bytes(r["output_uri"])) for r in one]
    smoothed = [decode_png(storage.read_bytes(r["smoothed_output_uri"])) for r in one]
    matrices = [r["matrix"] for r in one]
    assert flicker(smoothed, matrices, 8) < flicker(raw, matrices, 8)
    assert np.array_equal(smoothed[0], raw[0])  # a track starts from its first restoration


def test_mlflow_failures_during_a_restore_are_warnings(tracking_uri, tmp_path, capsys):
    import argparse

    from mlflow import MlflowClient

    from pipelines.restore_cli import RunLogger

    args = argparse.Namespace(input="in", output=str(tmp_path / "out"), model="models:/x@a", unit_size=8,
                              batch_size=64, frames_per_batch=16, num_actors=1, actor_cpus=0.5, detect_cpus=0.5,
                              use_gpu=False, execution="auto", unit_cpus=1.0, units_per_task=4, feather=0.1,
                              no_paste_back=False, no_video=False, ray_address=None)
    logger = RunLogger(tracking_uri, "fsr-restore", args=args, settings=ArchiveSettings(), log_every=0)
    MlflowClient(tracking_uri).delete_run(logger.run_id)  # from here on every write to the run is refused
    event = {"event": "unit", "unit": 0, "units_finished": 1, "units_todo": 9, "faces": 3, "frames": 2,
             "quarantined": 0, "seconds": 1.0, "faces_per_second": 3.0}
    for _ in range(5):
        logger(event)  # never raises
    logger.finish(RuntimeError("the job's own error"))
    err = capsys.readouterr().err
    assert err.count("MLflow logging failed") == 3 and "no more updates to the run" in err
    assert "could not end MLflow run" in err


def test_a_reused_output_with_another_setting_names_the_setting_and_both_values(tmp_path):
    from pipelines.archive_restore import PLAN_FILE, _existing_plan

    settings = dataclasses.asdict(ArchiveSettings(input_size=16))
    plan = {"input": "in", "settings": settings, "unit_size": 8, "plan_files": 1}
    storage.write_bytes(str(tmp_path / PLAN_FILE), json.dumps(plan).encode())
    assert _existing_plan(str(tmp_path), {"input": "in", "settings": settings, "unit_size": 8})["unit_size"] == 8
    other = dataclasses.asdict(ArchiveSettings(input_size=24))
    with pytest.raises(ValueError) as caught:
        _existing_plan(str(tmp_path), {"input": "in", "settings": other, "unit_size": 8})
    message = str(caught.value)
    assert "another settings.input_size (16, now 24)" in message and "template" not in message
    with pytest.raises(ValueError, match=r"another unit_size \(8, now 4\)"):
        _existing_plan(str(tmp_path), {"input": "in", "settings": settings, "unit_size": 4})
    # a plan from before restorer inputs were recorded resumes without them; one with --identity does not
    # resume without it, nor with another person
    assert _existing_plan(str(tmp_path), {"input": "in", "settings": settings, "unit_size": 8,
                                          "restorer_inputs": None}) is not None
    storage.write_bytes(str(tmp_path / PLAN_FILE), json.dumps({**plan, "restorer_inputs": {"identity": "a"}}).encode())
    with pytest.raises(ValueError, match=r"another restorer_inputs"):
        _existing_plan(str(tmp_path), {"input": "in", "settings": settings, "unit_size": 8, "restorer_inputs": None})
    with pytest.raises(ValueError, match=r"another restorer_inputs.identity \('a', now 'b'\)"):
        _existing_plan(str(tmp_path), {"input": "in", "settings": settings, "unit_size": 8,
                                       "restorer_inputs": {"identity": "b"}})


@pytest.mark.parametrize("flag, value", [("--unit-size", "0"), ("--batch-size", "-1"), ("--max-pixels", "0"),
                                         ("--num-actors", "two"), ("--actor-cpus", "-0.5")])
def test_argument_errors_exit_2_before_anything_starts_naming_the_flag(tmp_path, capsys, flag, value):
    from pipelines.restore_cli import main as restore_main

    with pytest.raises(SystemExit) as caught:
        restore_main(["restore", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model", "bicubic",
                      "--no-tracking", flag, value])
    assert caught.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written, no Ray, no MLflow run
