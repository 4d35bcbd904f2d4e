"""SelFSR's stages through the runner (degradation -> SR on pseudo pairs -> register -> restore with
the registered restorer), and stage 2 resumed mid-growth on two Ray Train workers after a failure."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from fsr_core.data.codec import encode_png
from fsr_core.data.shards import ShardWriter
from fsr_core.training import checkpoint as ckpt
from fsr_core.training.selfsr_objective import SelFSRObjective
from pipelines.config import load_config
from pipelines.runner import run_pipeline
from pipelines.stages.register import REGISTER_MODEL
from pipelines.stages.selfsr import (
    SELFSR_DEGRADATION,
    SELFSR_SR_PAIRED,
    SELFSR_SR_PSEUDO_PAIRS,
    SELFSR_SR_UNPAIRED,
    SelFSRDegradationParams,
    SelFSRPairedParams,
    SelFSRPseudoPairsParams,
    SelFSRUnpairedParams,
)

REGISTRY = {stage.name: stage for stage in (SELFSR_DEGRADATION, SELFSR_SR_PSEUDO_PAIRS, REGISTER_MODEL)}
DEGRADER = {"channels": 8, "num_blocks": 1}
GENERATOR = {"channels": [8, 8, 6, 4], "convs_per_level": 1, "condition_hidden": 4}
DISCRIMINATOR = {"channels": [8, 8, 6, 4], "base_downsamples": 1}
COMMON = {"batch_size": 4, "report_every": 2, "log_every": 1, "sample_every": 2, "sample_count": 2,
          "num_workers": 0, "torch_threads": 1}


def write_faces(folder: str, *, count: int, size: int, seed: int) -> str:
    """``count`` smooth random colour-ramp crops of ``size`` px as one train-split shard."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    with ShardWriter(folder) as writer:
        for index in range(count):
            base, dx, dy = rng.uniform(0.1, 0.6, (3, 3))
            image = base + dx * ramp[None, :, None] * 0.6 + dy * ramp[:, None, None] * 0.6
            writer.write({
                "id": f"t{seed}-{index}", "image_png": encode_png((np.clip(image, 0, 1) * 255).astype(np.uint8)),
                "height": size, "width": size, "source": "test", "source_uri": f"mem://{seed}/{index}",
                "split": "train",
            })
    return folder


def write(path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture()
def conf(tmp_path):
    hr = write_faces(str(tmp_path / "data" / "hr"), count=8, size=32, seed=0)
    real_lr = write_faces(str(tmp_path / "data" / "lr"), count=8, size=8, seed=1)
    root = tmp_path / "conf"
    write(root / "base.yaml", {"runtime": {"work_root": f"{tmp_path}/work"}, "tracking": {"experiment": "selfsr"}})
    write(root / "catalog.yaml", {"catalog": {
        "hr": {"uri": hr, "kind": "shards"}, "real_lr": {"uri": real_lr, "kind": "shards"},
    }})
    write(root / "pipelines" / "selfsr.yaml", {"pipeline": {"name": "selfsr", "stages": [
        {"name": "degradation", "uses": "selfsr_degradation", "inputs": {"hr": "hr", "real_lr": "real_lr"},
         "params": {**COMMON, "max_steps": 4, "degrader": DEGRADER,
                    "lr_discriminator": {"channels": 8, "max_channels": 16, "num_downsamples": 1},
                    "lr_size": 8, "scale": 4}},
        {"name": "sr", "uses": "selfsr_sr_pseudo_pairs",
         "inputs": {"hr": "hr", "degradation": "degradation.checkpoint"},
         "params": {**COMMON, "max_steps": 4, "degrader": DEGRADER, "generator": GENERATOR,
                    "discriminator": DISCRIMINATOR, "lr_size": 8, "grow_at": [2], "fade_steps": 1}},
        {"name": "register", "uses": "register_model", "inputs": {"checkpoint": "sr.checkpoint"},
         "params": {"restorer": "sr", "registered_name": "selfsr_sr", "alias": "challenger"}},
    ]}})
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_degradation_then_sr_on_pseudo_pairs_through_the_runner(ray_session, conf, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.model_registry import load_restorer

    config = load_config("selfsr", registry=REGISTRY, conf_dir=str(conf))
    result = run_pipeline(config, registry=REGISTRY, printer=None)
    assert result.executed == ["degradation", "sr", "register"]
    degradation, sr = result.stages["degradation"], result.stages["sr"]
    deg_folder, sr_folder = degradation.outputs["checkpoint"], sr.outputs["checkpoint"]

    assert set(read_json(os.path.join(deg_folder, "networks.json"))) == {"degrader", "lr_disc"}
    assert set(read_json(os.path.join(sr_folder, "networks.json"))) == {"generator", "discriminator", "degrader"}
    sr_state = read_json(os.path.join(sr_folder, "train_state.json"))
    assert (sr_state["step"], sr_state["restored_from"]) == (4, "init")
    assert ckpt.load_objective_state(sr_folder)["level"] == 2  # grown at step 2: x4
    assert read_json(os.path.join(sr_folder, "restorers.json"))["sr"]["scale"] == 4
    # the SR stage's frozen degrader is stage 1's trained one, carried unchanged
    trained = torch.load(ckpt.weights_path(deg_folder, "degrader"), weights_only=True)
    carried = torch.load(ckpt.weights_path(sr_folder, "degrader"), weights_only=True)
    assert all(torch.equal(trained[key], carried[key]) for key in trained)
    assert float(trained["flow_head.bias"].abs().sum()) > 0  # stage 1 did move the flow head

    client = MlflowClient(tracking_uri=result.tracking_uri)
    for plan, keys in ((degradation, ["identity", "smoothness", "degrader_gan", "lr_disc", "learning_rate"]),
                       (sr, ["reconstruction", "g_adversarial", "d_hinge", "r1", "level", "fade"])):
        for key in keys:
            assert [m.step for m in client.get_metric_history(plan.run_id, key)] == [1, 2, 3, 4], (plan.name, key)
    levels = {m.step: m.value for m in client.get_metric_history(sr.run_id, "level")}
    assert levels == {1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0}
    rates = [m.value for m in client.get_metric_history(degradation.run_id, "learning_rate")]
    assert rates == pytest.approx([2e-4, 2e-4, 2e-4, 1e-4])  # linear decay over the last half of 4 steps
    # sample grids: degradation (clean | intermediate | flow | degraded | genuine) at LR size, SR per level
    for plan, sizes in ((degradation, [(5 * 8, 2 * 8)] * 2), (sr, [(5 * 16, 2 * 16), (5 * 32, 2 * 32)])):
        samples = sorted(a.path for a in client.list_artifacts(plan.run_id, "samples"))
        assert samples == ["samples/step_00000002.png", "samples/step_00000004.png"]
        for sample, size in zip(samples, sizes):
            grid = cv2.imread(client.download_artifacts(plan.run_id, sample, str(tmp_path / plan.name)))
            assert grid.shape[:2] == size, (plan.name, sample)

    # the registered restorer runs the grown generator: 8 px LR in, x4 out
    restorer, info = load_restorer(result.stages["register"].outputs["model"], tracking_uri=result.tracking_uri)
    assert (info["scale"], info["input_size"]) == (4, 8)
    out = restorer.restore(np.full((2, 8, 8, 3), 128, np.uint8))
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8


def test_stage_kinds_and_params():
    assert SELFSR_DEGRADATION.inputs == ("hr", "real_lr")
    assert SELFSR_SR_PSEUDO_PAIRS.inputs == ("hr", "degradation")
    assert SELFSR_SR_PAIRED.inputs == ("hr",) and SELFSR_SR_UNPAIRED.inputs == ("hr", "lr")
    deg = SelFSRDegradationParams()
    assert (deg.max_steps, deg.lr, deg.decay_from, deg.batch_size, deg.betas) == (180_000, 2e-4, 0.5, 48, (0.5, 0.999))
    assert deg.objective_kwargs()["total_steps"] == 180_000
    # frequency separation is a named departure, off by default (the paper's whole-image D, full-band L1)
    assert (deg.objective_kwargs()["disc_highpass"], deg.objective_kwargs()["identity_lowpass"]) == (0.0, 0.0)
    assert SelFSRDegradationParams(disc_highpass=1.0).objective_kwargs()["disc_highpass"] == 1.0
    assert (deg.objective_kwargs()["flow_magnitude"], deg.objective_kwargs()["flow_lr_scale"]) == (0.0, 1.0)
    assert SelFSRDegradationParams(flow_lr_scale=0.1).objective_kwargs()["flow_lr_scale"] == 0.1
    with pytest.raises(ValidationError, match="flow_lr_scale"):
        SelFSRDegradationParams(flow_lr_scale=-0.5)
    with pytest.raises(ValidationError, match="disc_highpass"):
        SelFSRDegradationParams(disc_highpass=-1.0)
    paired, unpaired, pseudo = SelFSRPairedParams(), SelFSRUnpairedParams(), SelFSRPseudoPairsParams()
    assert (paired.max_steps, paired.grow_at, paired.lr, paired.r1_gamma) == (160_000, [20_000, 80_000], 0.003, 10.0)
    assert (unpaired.max_steps, unpaired.grow_at, unpaired.objective_kwargs()["mode"]) == (
        280_000, [40_000, 120_000], "unpaired")
    assert (pseudo.grow_at, pseudo.init) == ([60_000], {"degrader": "degradation.degrader"})
    assert pseudo.objective_kwargs()["degrader"] == {"channels": 64, "num_blocks": 6, "noise_channels": 0}
    with pytest.raises(ValidationError, match="extra"):
        SelFSRPairedParams(generator={"width": 8})
    with pytest.raises(ValidationError, match="extra"):
        SelFSRDegradationParams(flow_weight=1.0)
    with pytest.raises(ValidationError, match="widths"):
        SelFSRPairedParams(grow_at=[1, 2, 3])
    with pytest.raises(ValidationError, match="increasing"):
        SelFSRPairedParams(grow_at=[80_000, 20_000])


# ---------------------------------------------------------------------------- two workers, mid-growth
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_mid_growth_on_two_workers_continues_the_schedule(ray_session, tracking_uri, tmp_path):
    """Two workers (DDP, gloo, R1 through the wrapped discriminator); growth before steps 3 and 5,
    a checkpoint at step 3 (level 2, mid-fade); rank 1 fails before step 4; the restarted group
    resumes at level 2 and grows again on schedule."""
    from mlflow.tracking import MlflowClient

    from fsr_core.data.ray_datasets import read_face_dataset
    from fsr_core.training.trainer import fit

    hr = write_faces(str(tmp_path / "hr"), count=8, size=32, seed=0)
    datasets = {"hr": read_face_dataset(hr, split="train", size=32, keep_columns=()).select_columns(["image"])}
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("selfsr-growth", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    marker = tmp_path / "failed-once"
    result = fit(
        train_config={
            "objective": SelFSRObjective,
            "objective_kwargs": {"generator": GENERATOR, "discriminator": DISCRIMINATOR, "lr_size": 4,
                                 "grow_at": [2, 4], "fade_steps": 2},
            "max_steps": 5, "batch_size": 4, "report_every": 3, "log_every": 1, "sample_every": 5,
            "sample_count": 2, "torch_threads": 1, "tracking_uri": tracking_uri, "run_id": run_id,
            "fail_at_step": 4, "fail_marker_path": str(marker),
        },
        datasets=datasets, storage_path=str(tmp_path / "ray"), run_name="growth",
        num_workers=2, use_gpu=False, cpus_per_worker=0.5, max_failures=1, num_to_keep=1,
    )
    assert marker.exists()
    state = read_json(os.path.join(result.checkpoint_dir, "train_state.json"))
    assert (state["step"], state["world_size"]) == (5, 2)
    assert (state["attempt_start_step"], state["restored_from"]) == (3, "ray_checkpoint")
    assert ckpt.load_objective_state(result.checkpoint_dir)["level"] == 3
    history = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in ("level", "fade")}
    assert history["level"] == {1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0, 5: 3.0}
    assert history["fade"] == {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.5, 5: 0.0}
