"""The step-1 training stages through the runner: pretrain (a real 1-worker Ray Train fit) ->
joint (driver mode, initialised from the pretrain checkpoint, L2H registered in MLflow)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from fsr_core.data.codec import encode_png
from fsr_core.data.shards import ShardWriter
from pipelines.config import load_config
from pipelines.runner import run_pipeline
from pipelines.stages.register import REGISTER_MODEL
from pipelines.stages.two_step import (
    TWO_STEP_JOINT,
    TWO_STEP_PRETRAIN,
    TwoStepJointParams,
    TwoStepPretrainParams,
)

REGISTRY = {stage.name: stage for stage in (TWO_STEP_PRETRAIN, TWO_STEP_JOINT, REGISTER_MODEL)}

TINY = {
    "l2h": {"channels": 8, "blocks_per_section": [1, 1, 1, 1], "reduction": 4},
    "l2h_disc": {"channels": 8, "max_channels": 16},
    "max_steps": 4,
    "batch_size": 4,
    "report_every": 2,
    "log_every": 1,
    "sample_every": 2,
    "sample_count": 2,
}


def write_faces(folder: str, *, count: int, size: int, seed: int, rows_per_shard: int = 2048) -> str:
    """``count`` smooth random colour-ramp crops of ``size`` px as train-split shards (one by default)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    with ShardWriter(folder, max_rows_per_shard=rows_per_shard) as writer:
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


@pytest.fixture()
def conf(tmp_path):
    hr = write_faces(str(tmp_path / "data" / "hr"), count=16, size=128, seed=0)
    real_lr = write_faces(str(tmp_path / "data" / "lr"), count=16, size=16, seed=1)
    root = tmp_path / "conf"
    write(root / "base.yaml", {"runtime": {"work_root": f"{tmp_path}/work"}, "tracking": {"experiment": "two-step"}})
    write(root / "catalog.yaml", {"catalog": {
        "hr": {"uri": hr, "kind": "shards"}, "real_lr": {"uri": real_lr, "kind": "shards"},
    }})
    write(root / "pipelines" / "two_step.yaml", {"pipeline": {"name": "two-step", "stages": [
        {"name": "pretrain", "uses": "two_step_pretrain", "inputs": {"hr": "hr"},
         "params": {**TINY, "num_workers": 1}},
        {"name": "joint", "uses": "two_step_joint",
         "inputs": {"hr": "hr", "real_lr": "real_lr", "init": "pretrain.checkpoint"},
         "params": {**TINY, "h2l": {"channels": 8, "noise_dim": 8, "reduction": 4},
                    "h2l_disc": {"channels": 8, "max_channels": 16}, "num_workers": 0}},
        {"name": "register", "uses": "register_model", "inputs": {"checkpoint": "joint.checkpoint"},
         "params": {"restorer": "l2h", "registered_name": "two_step_l2h", "alias": "challenger"}},
    ]}})
    return root


def read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pretrain_then_joint_through_the_runner(ray_session, conf, tmp_path):
    from mlflow.tracking import MlflowClient

    config = load_config("two_step", registry=REGISTRY, conf_dir=str(conf))
    result = run_pipeline(config, registry=REGISTRY, printer=None)
    assert result.executed == ["pretrain", "joint", "register"]
    pretrain, joint = result.stages["pretrain"], result.stages["joint"]

    # checkpoints: the folder format, the networks each mode trains, the final step
    assert set(read_json(os.path.join(pretrain.outputs["checkpoint"], "networks.json"))) == {"l2h", "l2h_disc"}
    assert set(read_json(os.path.join(joint.outputs["checkpoint"], "networks.json"))) == {
        "l2h", "l2h_disc", "h2l", "h2l_disc"
    }
    pre_state = read_json(os.path.join(pretrain.outputs["checkpoint"], "train_state.json"))
    joint_state = read_json(os.path.join(joint.outputs["checkpoint"], "train_state.json"))
    assert (pre_state["step"], pre_state["restored_from"]) == (4, "scratch")
    assert (joint_state["step"], joint_state["restored_from"]) == (4, "init")  # from pretrain's L2H
    assert joint_state["data_info"]["real_lr"]["rows"] == 16 and joint_state["data_info"]["hr"]["split"] == "train"
    assert joint_state["objective_config"]["mode"] == "unsupervised"
    # the pretrain fit ran on a Ray Train worker with its storage in the stage's train_run output
    fit_summary = read_json(os.path.join(pretrain.outputs["train_run"], "fit.json"))
    assert fit_summary["ray_run_name"] == "pretrain" and fit_summary["final_step"] == 4
    ray_run = os.path.join(pretrain.outputs["train_run"], "pretrain")
    assert 1 <= len([n for n in os.listdir(ray_run) if os.path.isdir(os.path.join(ray_run, n))]) <= 2

    # MLflow: loss curves and sample grids in each stage's run (4 rows pretrain, 7 rows joint)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    expected = ((pretrain, ["l2h_pixel", "l2h_disc"], 4), (joint, ["l2h_pixel", "h2l_pixel", "h2l_disc"], 7))
    for plan, keys, rows in expected:
        for key in keys:
            assert [m.step for m in client.get_metric_history(plan.run_id, key)] == [1, 2, 3, 4], (plan.name, key)
        samples = sorted(a.path for a in client.list_artifacts(plan.run_id, "samples"))
        assert samples == ["samples/step_00000002.png", "samples/step_00000004.png"]
        local = client.download_artifacts(plan.run_id, samples[-1], str(tmp_path / plan.name))
        grid = cv2.imread(local)
        assert grid.shape == (rows * 128, 2 * 128, 3)

    # the register stage registered the joint L2H and pointed the alias at it
    version = client.get_model_version_by_alias("two_step_l2h", "challenger")
    register = result.stages["register"]
    assert version.run_id == register.run_id
    assert register.outputs["model"] == f"models:/two_step_l2h/{version.version}"

    # a second run reuses every finished stage and registers nothing new, also after the data sets
    # were written again with the same content (new files, new modification times)
    write_faces(str(tmp_path / "data" / "hr"), count=16, size=128, seed=0)
    write_faces(str(tmp_path / "data" / "lr"), count=16, size=16, seed=1)
    again = run_pipeline(config, registry=REGISTRY, printer=None)
    assert again.cached == ["pretrain", "joint", "register"] and again.executed == []
    assert len(client.search_model_versions("name = 'two_step_l2h'")) == 1


def test_params_are_typed_and_checked():
    params = TwoStepPretrainParams()
    assert (params.batch_size, params.lr, params.betas, params.l2h_loss.pixel, params.l2h_loss.gan) == (
        32, 1e-3, (0.9, 0.999), 1.0, 0.001
    )
    joint = TwoStepJointParams(h2l_loss={"gan": 0.01})
    assert (joint.h2l_loss.gan, joint.l2h_loss.gan) == (0.01, 0.001)  # one generator's weight alone
    assert joint.objective_kwargs()["h2l_loss"] == {"pixel": 1.0, "gan": 0.01}
    assert joint.splits == {"hr": "train", "real_lr": "train"}
    assert params.l2h.blocks_per_section == (6, 3, 2, 1) and params.gan_loss == "relativistic_average"
    with pytest.raises(ValidationError, match="lr_size"):
        TwoStepPretrainParams(hr_size=64)
    with pytest.raises(ValidationError, match="H2L"):
        TwoStepJointParams(h2l={"encoder_blocks": 4})
    with pytest.raises(ValidationError, match="extra"):
        TwoStepPretrainParams(l2h={"width": 8})
    assert TwoStepJointParams().init == {"l2h": "init.l2h", "l2h_disc": "init.l2h_disc"}
    with pytest.raises(ValidationError, match="init"):
        TwoStepJointParams(init={"l2h": "init"})
    assert TWO_STEP_PRETRAIN.inputs == ("hr",) and TWO_STEP_JOINT.inputs == ("hr", "real_lr", "init")
    assert TWO_STEP_PRETRAIN.outputs == TWO_STEP_JOINT.outputs == ("checkpoint", "train_run")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_small_data_set_is_materialised_once_and_gives_the_batches_of_the_streamed_one(ray_session, conf, tmp_path):
    """Below ``materialize_mb`` the decoded crops are kept in the object store for every epoch (16 rows in
    4 shards, several blocks, at batch 4: 4 epochs in 16 steps); the batches, hence the losses, are those
    of the same stage streaming its data (``materialize_mb: 0``), epoch after epoch: read order kept."""
    from mlflow.tracking import MlflowClient

    write_faces(str(tmp_path / "data" / "hr4"), count=16, size=128, seed=0, rows_per_shard=4)
    catalog = yaml.safe_load((conf / "catalog.yaml").read_text())
    catalog["catalog"]["hr"]["uri"] = str(tmp_path / "data" / "hr4")
    write(conf / "catalog.yaml", catalog)
    with open(conf / "pipelines" / "two_step.yaml") as fh:
        spec = yaml.safe_load(fh)
    pretrain = spec["pipeline"]["stages"][0]
    long = {**pretrain["params"], "max_steps": 16, "report_every": 16, "sample_every": 16}
    spec["pipeline"]["stages"] = [
        {**pretrain, "name": "materialised", "params": long},
        {**pretrain, "name": "streamed", "params": {**long, "materialize_mb": 0}},
    ]
    write(conf / "pipelines" / "epochs.yaml", spec)
    config = load_config("epochs", registry=REGISTRY, conf_dir=str(conf))
    result = run_pipeline(config, registry=REGISTRY, printer=None)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = {name: result.stages[name].run_id for name in ("materialised", "streamed")}
    assert client.get_run(runs["materialised"]).data.params["data.hr.mode"] == "materialized"
    assert client.get_run(runs["streamed"]).data.params["data.hr.mode"] == "streamed"
    state = read_json(os.path.join(result.stages["materialised"].outputs["checkpoint"], "train_state.json"))
    assert state["data_info"]["hr"]["materialized"] and state["data_info"]["hr"]["decoded_mb"] == pytest.approx(
        16 * 128 * 128 * 3 / 2**20, abs=1e-3)
    curves = {name: [m.value for m in sorted(client.get_metric_history(run, "l2h_pixel"), key=lambda m: m.step)]
              for name, run in runs.items()}
    assert len(curves["materialised"]) == 16
    assert curves["materialised"] == pytest.approx(curves["streamed"], rel=1e-4)
