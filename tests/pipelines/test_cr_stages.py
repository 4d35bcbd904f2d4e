"""CR's stages through the runner: the four stage-1 trainings (phi_sr, phi_fr, phi_cr, phi~_cr) run
concurrently, stage 2 starts from their four checkpoints, both restorers are registered and run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from fsr_core.data.codec import encode_png
from fsr_core.data.shards import ShardWriter
from fsr_core.training import checkpoint as ckpt
from pipelines.config import load_config
from pipelines.runner import run_pipeline
from pipelines.stages.cr import (
    CR_INVERSE,
    CR_JOINT,
    CR_JOINT_DLIB,
    CR_REGULARISER,
    CR_SR_PRETRAIN,
    CRInverseParams,
    CRJointDlibParams,
    CRJointParams,
    CRRegulariserParams,
    CRSRPretrainParams,
    paper_steps,
)
from pipelines.stages.face_embedder import FACE_EMBEDDER_TRAIN
from pipelines.stages.register import REGISTER_MODEL

REGISTRY = {stage.name: stage for stage in (CR_SR_PRETRAIN, CR_REGULARISER, CR_INVERSE, CR_JOINT, FACE_EMBEDDER_TRAIN,
                                            REGISTER_MODEL)}
SR = {"channels": 4, "blocks_per_group": [1, 1, 1]}
REG = {"channels": 4, "num_blocks": 1}
DISC = {"channels": 4, "num_blocks": 2, "num_downsamples": 1, "max_channels": 8}
EMB = {"input_size": 16, "embedding_dim": 6, "channels": [4, 4]}
COMMON = {"lr_size": 8, "max_steps": 3, "batch_size": 4, "report_every": 3, "log_every": 1, "sample_every": 3,
          "sample_count": 2, "num_workers": 0, "torch_threads": 1}


def write_faces(folder: str, *, count: int, size: int, seed: int) -> str:
    """``count`` smooth random colour-ramp crops of ``size`` px, two identities, one train-split shard."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    with ShardWriter(folder) as writer:
        for index in range(count):
            base, dx, dy = rng.uniform(0.1, 0.6, (3, 3))
            image = base + dx * ramp[None, :, None] * 0.6 + dy * ramp[:, None, None] * 0.6
            writer.write({
                "id": f"t{seed}-{index}", "image_png": encode_png((np.clip(image, 0, 1) * 255).astype(np.uint8)),
                "height": size, "width": size, "source": "test", "source_uri": f"mem://{seed}/{index}",
                "identity": f"person{index % 2}", "split": "train",
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
    write(root / "base.yaml", {"runtime": {"work_root": f"{tmp_path}/work"}, "tracking": {"experiment": "cr"}})
    write(root / "catalog.yaml", {"catalog": {
        "hr": {"uri": hr, "kind": "shards"}, "real_lr": {"uri": real_lr, "kind": "shards"},
    }})
    data = {"hr": "hr", "real_lr": "real_lr"}
    write(root / "pipelines" / "cr.yaml", {"pipeline": {"name": "cr", "stages": [
        {"name": "embedder", "uses": "face_embedder_train", "inputs": {"faces": "hr"},
         "params": {**{k: v for k, v in COMMON.items() if k != "lr_size"}, "embedder": EMB}},
        {"name": "sr", "uses": "cr_sr_pretrain", "inputs": {"hr": "hr"}, "params": {**COMMON, "sr": SR}},
        {"name": "regulariser", "uses": "cr_regulariser", "inputs": data,
         "params": {**COMMON, "regulariser": REG, "discriminator": DISC}},
        {"name": "inverse", "uses": "cr_inverse", "inputs": data,
         "params": {**COMMON, "regulariser": REG, "discriminator": DISC}},
        {"name": "joint", "uses": "cr_joint",
         "inputs": {**data, "sr": "sr.checkpoint", "regulariser": "regulariser.checkpoint",
                    "inverse": "inverse.checkpoint", "embedder": "embedder.checkpoint"},
         "params": {**COMMON, "sr": SR, "regulariser": REG, "discriminator": DISC, "embedder": EMB,
                    "feature_discriminator": {"hidden": 4, "num_layers": 2}}},
        {"name": "register", "uses": "register_model", "inputs": {"checkpoint": "joint.checkpoint"},
         "params": {"restorer": "cr_sr", "registered_name": "cr_with_regulariser", "alias": "challenger"}},
        {"name": "register_sr", "uses": "register_model", "inputs": {"checkpoint": "joint.checkpoint"},
         "params": {"restorer": "sr", "registered_name": "cr_without_regulariser", "alias": "challenger"}},
    ]}})
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_four_concurrent_pretrainings_then_joint_then_two_restorers(ray_session, conf, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.model_registry import load_restorer

    config = load_config("cr", registry=REGISTRY, conf_dir=str(conf))
    result = run_pipeline(config, registry=REGISTRY, printer=None)
    assert set(result.executed) == {"embedder", "sr", "regulariser", "inverse", "joint", "register", "register_sr"}
    client = MlflowClient(tracking_uri=result.tracking_uri)

    # stage 1: the four trainings overlap in time (each starts before any of them ends)
    first = ("embedder", "sr", "regulariser", "inverse")
    runs = {name: client.get_run(result.stages[name].run_id).info for name in first}
    assert max(r.start_time for r in runs.values()) < min(r.end_time for r in runs.values()), {
        name: (r.start_time, r.end_time) for name, r in runs.items()}

    # stage 2 starts from the four checkpoints; the frozen inverse and embedder are carried unchanged
    joint = result.stages["joint"].outputs["checkpoint"]
    state = read_json(os.path.join(joint, "train_state.json"))
    assert (state["step"], state["restored_from"]) == (3, "init")
    assert set(read_json(os.path.join(joint, "networks.json"))) == {"cr", "sr", "cr_disc", "fr_disc", "inverse",
                                                                    "embedder"}
    for network, source in (("inverse", "inverse"), ("embedder", "embedder")):
        trained = torch.load(ckpt.weights_path(result.stages[source].outputs["checkpoint"], network), weights_only=True)
        carried = torch.load(ckpt.weights_path(joint, network), weights_only=True)
        assert all(torch.equal(trained[key], carried[key]) for key in trained), network
    for key in ("sr", "cr_cycle", "cr_gan", "cr_sr", "semantic", "total", "cr_disc", "fr_disc"):
        assert [m.step for m in client.get_metric_history(result.stages["joint"].run_id, key)] == [1, 2, 3], key

    # both restorers, as the paper deploys: with phi_cr (genuine LR) and without it (artificial LR)
    lr = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    outputs = {}
    for stage in ("register", "register_sr"):
        restorer, info = load_restorer(result.stages[stage].outputs["model"], tracking_uri=result.tracking_uri)
        assert (info["scale"], info["input_size"]) == (4, 8)
        outputs[stage] = restorer.restore(lr)
        assert outputs[stage].shape == (2, 32, 32, 3) and outputs[stage].dtype == np.uint8
    assert restorer.card.networks == ("sr",)
    assert not np.array_equal(outputs["register"], outputs["register_sr"])  # phi_cr changed the input


def test_stage_kinds_and_params():
    assert CR_SR_PRETRAIN.inputs == ("hr",)
    assert CR_REGULARISER.inputs == CR_INVERSE.inputs == ("hr", "real_lr")
    assert CR_JOINT.inputs == ("hr", "real_lr", "sr", "regulariser", "inverse", "embedder")
    assert CR_JOINT_DLIB.inputs == ("hr", "real_lr", "sr", "regulariser", "inverse")
    sr, joint = CRSRPretrainParams(), CRJointParams()
    assert (sr.lr, sr.batch_size, sr.lr_size, sr.scale, sr.sr.blocks_per_group) == (1e-4, 16, 16, 4, (12, 3, 2))
    assert (sr.max_steps, CRRegulariserParams().max_steps, joint.max_steps) == (
        paper_steps(100), paper_steps(130), paper_steps(10)) == (1_266_244, 1_646_117, 126_625)
    assert joint.objective_kwargs()["loss"] == {"sr": 1.0, "cr": 0.06, "cr_sr": 0.01, "cr_gan": 0.03,
                                                "cr_cycle_gan": 0.2}
    assert CRRegulariserParams().objective_kwargs()["loss"] == {"pixel": 1.0, "gan": 0.2}
    assert CRInverseParams().objective_kwargs()["loss"] == {"pixel": 0.0, "gan": 1.0}
    assert CRInverseParams().objective_kwargs()["direction"] == "inverse"
    dlib = CRJointDlibParams(dlib_weights="/models/dlib.dat").objective_kwargs()
    assert (dlib["face_features"], dlib["dlib_weights"], "embedder" in dlib) == ("dlib", "/models/dlib.dat", False)
    with pytest.raises(ValidationError, match="extra"):
        CRJointParams(lambda_cr=0.1)
    with pytest.raises(ValidationError, match="extra"):
        CRSRPretrainParams(sr={"width": 8})
    with pytest.raises(ValidationError, match="groups"):
        CRSRPretrainParams(scale=8)
    with pytest.raises(ValidationError, match="num_downsamples"):
        CRRegulariserParams(lr_size=12)
