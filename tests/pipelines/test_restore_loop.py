"""The Ray Data restore job against the plain loop: the same bytes for the same archive, detector
and model (the job's speed-ups change no pixel), and the step costs both report."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fsr_core import storage
from fsr_core.restore.archive import ArchiveSettings
from fsr_core.restore.costs import NULL_CLOCK, STEPS, StepClock, merge_costs
from fsr_core.restore.loop import restore_loop
from pipelines.archive_restore import list_archive, read_manifest, restore_archive
from pipelines.model_registry import load_restorer
from tests.pipelines.test_archive_restore import NAME, _astronaut, _encode, register_tiny

SETTINGS = ArchiveSettings(input_size=16)


def _two_faces() -> np.ndarray:
    """Two astronauts side by side: an image with two faces (one forward each in both)."""
    return np.concatenate([_astronaut(224), _astronaut(256)[16:240, 16:240]], axis=1)


def _archive(root) -> None:
    files = {"a/astro.jpg": _encode(_astronaut(256), ".jpg"), "a/b/astro.png": _encode(_astronaut(320), ".png"),
             "pair.webp": _encode(_two_faces(), ".webp"), "astro.bmp": _encode(_astronaut(288), ".bmp"),
             "bad/empty.jpg": b"", "notes.txt": b"not an image"}
    for relative, data in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for folder in ("crops", "frames"):
        for info in storage.list_files(os.path.join(root, folder)):
            out[os.path.relpath(info.uri, root)] = storage.read_bytes(info.uri)
    return out


@pytest.mark.parametrize("execution, paste", [("fused", True), ("staged", True), ("fused", False)])
def test_pipeline_writes_the_loops_bytes(ray_session, tracking_uri, tmp_path, execution, paste):
    archive = str(tmp_path / "archive")
    _archive(archive)
    register_tiny(tracking_uri, tmp_path)
    model = f"models:/{NAME}@champion"
    job = str(tmp_path / "job")
    summary = restore_archive(archive, job, model, tracking_uri=tracking_uri, settings=SETTINGS,
                              unit_size=2, paste=paste, write_video=False, execution=execution, printer=None)
    restorer, _ = load_restorer(model, tracking_uri=tracking_uri)
    loop_clock = StepClock()
    result = restore_loop(list_archive(archive), str(tmp_path / "loop"), restorer, settings=SETTINGS, paste=paste,
                          clock=loop_clock)

    assert result["images"] == 4 and result["faces"] == summary["faces"] == 5
    job_files, loop_files = _files(job), _files(str(tmp_path / "loop"))
    assert len(job_files) == 5 + (4 if paste else 0)
    assert sorted(job_files) == sorted(loop_files)
    differing = [name for name in job_files if job_files[name] != loop_files[name]]
    assert not differing, differing
    manifest = [r for r in read_manifest(job).to_pylist() if r["status"] == "restored"]
    assert sorted(r["lr_consistency"] for r in manifest) == pytest.approx(sorted(result["lr_consistency"]), abs=1e-4)

    # both clock the same steps; the job's reach the driver from its tasks and actors
    job_steps, loop_steps = summary["step_cpu_seconds"], loop_clock.seconds
    expected = {"read", "decode", "detect", "align", "forward", "consistency", "encode", "write"}
    assert expected | ({"paste"} if paste else set()) == set(loop_steps)
    # a fused task loads the model and detector where it runs (once per worker process: the session's
    # Ray may have them loaded already)
    assert expected | {"manifest"} | ({"paste"} if paste else set()) == set(job_steps) - {"load"}
    assert set(job_steps) <= set(STEPS) and all(v > 0 for v in job_steps.values())
    assert job_steps["detect"] > job_steps["encode"] and summary["driver_cpu_seconds"] > 0


def test_step_clock_sums_per_step():
    clock = StepClock()
    with clock("detect"):
        sum(i * i for i in range(200_000))
    with clock("detect"):
        pass
    with pytest.raises(ZeroDivisionError), clock("write"):
        1 / 0  # the time until the error still counts
    assert set(clock.seconds) == {"detect", "write"} and clock.seconds["detect"] > 0
    assert clock.total() == pytest.approx(clock.seconds["detect"] + clock.seconds["write"])
    merged = merge_costs(clock.to_json(), '{"detect": 1.5, "forward": 2}', "", "{}")
    assert StepClock().add(merged).seconds == pytest.approx(
        {"detect": clock.seconds["detect"] + 1.5, "forward": 2.0, "write": clock.seconds["write"]}, abs=1e-6)
    assert clock.take() and clock.seconds == {}
    with NULL_CLOCK("detect"):
        pass
    assert NULL_CLOCK.add({"detect": 1.0}) is NULL_CLOCK
    assert NULL_CLOCK.seconds == {} and not NULL_CLOCK.enabled
