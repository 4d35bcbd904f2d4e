"""The method shape end to end, with the test-only growing toy method (``tests/toy_method.py``,
loaded as a plugin): objective state and growth survive save/load; through the generic training
stage on two Ray Train workers, a pipeline run is SIGKILLed mid-growth and a re-run resumes at the
same level and step; its restorers (feed-forward, and a latent search run as batched Ray tasks) are
registered and ``fsr restore`` runs both on an image folder."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
import yaml

from fsr_core.data.codec import encode_png
from fsr_core.data.shards import ShardWriter
from tests.conftest import ROOT
from tests.toy_method import ToyGrowingObjective, grown, ToyGrower


def _batch(seed: int, n: int = 4) -> dict:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1
    return {"hr": {"image": images, "identity": torch.arange(n) % 2}}


def test_growth_keeps_earlier_levels_and_resume_continues_identically(tmp_path):
    """Six steps straight equal three steps, a checkpoint, a fresh objective that loads it (growth
    level, EMA, optimizers, RNG) and three more: bit for bit."""
    def fresh() -> ToyGrowingObjective:
        torch.manual_seed(0)
        return ToyGrowingObjective(grow_at=(2, 4), data_info={"hr": {"num_identities": 2}})

    small = ToyGrower(channels=4, levels=1)
    big = grown(small)
    assert big.config == {"channels": 4, "levels": 2} and big.scale == 4
    assert all(torch.equal(big.state_dict()[k], v) for k, v in small.state_dict().items())

    straight = fresh()
    for step in range(6):
        straight.on_step(step)
        straight.train_step(_batch(step), step=step)
    assert straight.level == 3 and straight.grows == 2

    first = fresh()
    for step in range(3):
        first.on_step(step)
        first.train_step(_batch(step), step=step)
    first.save(str(tmp_path / "ckpt"), train_state={"step": 3})
    assert first.level == 2
    resumed = fresh()
    assert resumed.load(str(tmp_path / "ckpt")) == {"step": 3}
    assert resumed.level == 2 and resumed.grows == 1
    for step in range(3, 6):
        resumed.on_step(step)
        resumed.train_step(_batch(step), step=step)
    for name in ("generator", "identity"):
        for a, b in zip(straight.networks[name].state_dict().values(), resumed.networks[name].state_dict().values()):
            assert torch.equal(a, b), name
    for a, b in zip(straight.ema["generator"].parameters(), resumed.ema["generator"].parameters()):
        assert torch.equal(a, b)
    with open(tmp_path / "ckpt" / "restorers.json") as fh:
        exports = json.load(fh)
    assert exports["sr"]["scale"] == 4 and exports["search"]["kind"] == "latent_search"


# ---------------------------------------------------------------------------- through the stage, killed
def _write_hr(folder: str, count: int = 16) -> str:
    rng = np.random.default_rng(0)
    with ShardWriter(folder) as writer:
        for index in range(count):
            image = cv2.resize(rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8), (32, 32), interpolation=cv2.INTER_CUBIC)
            writer.write({"id": f"hr-{index}", "image_png": encode_png(image), "height": 32, "width": 32,
                          "source": "test", "source_uri": f"mem://{index}", "identity": f"person-{index % 4}",
                          "split": "train"})
    return folder


def _conf(tmp_path, tracking_uri: str) -> str:
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(yaml.safe_dump({
        "runtime": {"work_root": str(tmp_path / "work"), "num_cpus": 2},
        "tracking": {"uri": tracking_uri, "experiment": "method-shape"}}))
    (root / "catalog.yaml").write_text(yaml.safe_dump({"catalog": {
        "hr": {"uri": _write_hr(str(tmp_path / "hr")), "kind": "shards"}}}))
    common = {"num_workers": 0, "max_steps": 2, "report_every": 2}
    (root / "pipelines" / "toy.yaml").write_text(yaml.safe_dump({"pipeline": {"name": "toy", "stages": [
        {"name": "init_a", "uses": "toy_train", "inputs": {"hr": "hr"}, "params": {**common, "seed": 1}},
        {"name": "init_b", "uses": "toy_train", "inputs": {"hr": "hr"}, "params": {**common, "seed": 2}},
        {"name": "main", "uses": "toy_train_from",
         "inputs": {"hr": "hr", "gen_init": "init_a.checkpoint", "id_init": "init_b.checkpoint"},
         "params": {"init": {"generator": "gen_init.generator", "identity": "id_init.identity"},
                    "num_workers": 2, "cpus_per_worker": 0.5, "max_steps": 8, "grow_at": [2, 5],
                    "report_every": 1, "step_sleep": 1.0, "num_to_keep": 3, "max_failures": 0}},
        {"name": "register_sr", "uses": "register_model", "inputs": {"checkpoint": "main.checkpoint"},
         "params": {"restorer": "sr", "registered_name": "toy_sr", "ema": True}},
        {"name": "register_search", "uses": "register_model", "inputs": {"checkpoint": "main.checkpoint"},
         "params": {"restorer": "search", "registered_name": "toy_search"}},
    ]}}))
    return str(root)


def _level_after(step: int) -> int:
    """Growth before steps 3 and 6 (``grow_at: [2, 5]``, from level 1)."""
    return 1 + (step >= 3) + (step >= 6)


def _checkpoint_steps(train_run_glob: str) -> dict[int, str]:
    out = {}
    for path in glob.glob(os.path.join(train_run_glob, "checkpoint_*", "train_state.json")):
        try:
            with open(path) as fh:
                out[int(json.load(fh)["step"])] = os.path.dirname(path)
        except (OSError, ValueError):
            continue  # being written
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_growing_method_killed_mid_growth_resumes_and_its_restorers_run(tmp_path, tracking_uri):
    from mlflow import MlflowClient

    from pipelines.archive_restore import read_manifest

    conf = _conf(tmp_path, tracking_uri)
    env = {**os.environ, "PYTHONPATH": ROOT, "FSR_PLUGINS": "tests.toy_method", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    run = [sys.executable, "-m", "pipelines.cli", "run", "toy", "--conf-dir", conf, "--json"]
    train_run = str(tmp_path / "work" / "toy" / "main" / "*" / "train_run" / "main")

    process = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.time() + 300
    while not any(3 <= step < 8 for step in _checkpoint_steps(train_run)):
        assert process.poll() is None, process.communicate()[1].decode()[-3000:]
        assert time.time() < deadline, "no checkpoint after the first growth"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the whole job: driver, Ray, workers
    process.wait(timeout=60)
    kept, settled = _checkpoint_steps(train_run), time.time()
    while time.time() - settled < 3.0:  # a checkpoint being persisted at the kill may still land: wait for quiet
        time.sleep(0.5)
        now = _checkpoint_steps(train_run)
        if now != kept:
            kept, settled = now, time.time()
    assert kept and max(kept) < 8 and any(step >= 3 for step in kept)

    again = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-4000:]
    result = json.loads(again.stdout)
    status = {stage["name"]: stage["status"] for stage in result["stages"]}
    assert status == {"init_a": "cached", "init_b": "cached", "main": "executed", "register_sr": "executed",
                      "register_search": "executed"}
    main = next(stage for stage in result["stages"] if stage["name"] == "main")
    folder = main["outputs"]["checkpoint"]
    with open(os.path.join(folder, "train_state.json")) as fh:
        state = json.load(fh)
    start = state["attempt_start_step"]
    assert state["step"] == 8 and state["world_size"] == 2 and state["restored_from"] == "ray_checkpoint"
    assert start in kept and start >= 3
    objective_state = torch.load(os.path.join(folder, "objective_state.pt"), weights_only=True)
    assert objective_state["level"] == 3 and objective_state["grows"] == 2  # not grown twice, not lost
    assert sorted(os.listdir(os.path.join(folder, "weights"))) == ["generator.ema.pt", "generator.pt", "identity.pt"]
    assert state["data_info"]["hr"]["num_identities"] == 4

    client = MlflowClient(tracking_uri)
    levels = client.get_metric_history(main["run_id"], "level")  # the resumed attempt, from its first step
    assert [int(m.step) for m in levels] == list(range(start + 1, 9))
    assert [int(m.value) for m in levels] == [_level_after(step) for step in range(start + 1, 9)]

    # the two restorers behind the same front door, on an image folder
    import skimage.data

    archive = tmp_path / "photos"
    archive.mkdir()
    cv2.imwrite(str(archive / "astronaut.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    for name in ("toy_sr", "toy_search"):
        out = str(tmp_path / f"restored-{name}")
        restore = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "restore", "--input", str(archive), "--output", out,
             "--model", f"models:/{name}@challenger", "--tracking-uri", tracking_uri, "--num-cpus", "2"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert restore.returncode == 0, restore.stderr[-4000:]
        rows = [r for r in read_manifest(out).to_pylist() if r["status"] == "restored"]
        assert rows and all(row["model_name"] == name for row in rows)
        for row in rows:  # the card's input size 4 (no --input-size given), x8 after two growths
            assert cv2.imread(row["output_uri"]).shape == (4 * 8, 4 * 8, 3)
