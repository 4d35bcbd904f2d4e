"""The face-embedder training stage: typed parameters, and a run through the runner on demo-world
faces (driver mode), whose checkpoint holds the embedder and the label map."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from fsr_core.data.demo_world import synthetic_face_rows
from fsr_core.data.shards import ShardWriter
from fsr_core.training.face_embedder_objective import load_face_embedder
from fsr_core.training.objective import DataSpec
from pipelines.config import load_config
from pipelines.runner import run_pipeline
from pipelines.stages import STAGES
from pipelines.stages.face_embedder import FACE_EMBEDDER_TRAIN, FaceEmbedderParams

REGISTRY = {FACE_EMBEDDER_TRAIN.name: FACE_EMBEDDER_TRAIN}


def test_params_are_the_papers_typed_and_checked():
    params = FaceEmbedderParams()
    assert (params.centre_weight, params.centre_rate, params.lr, params.momentum, params.weight_decay) == (
        0.003, 0.5, 0.1, 0.9, 5e-4)
    assert (params.lr_milestones, params.max_steps, params.batch_size) == ((16_000, 24_000), 28_000, 256)
    assert params.splits == {"faces": "train"}
    assert params.objective_kwargs()["embedder"] == {"input_size": 64, "embedding_dim": 128,
                                                     "channels": [32, 64, 128, 256], "blocks_per_stage": 1}
    with pytest.raises(ValidationError, match="extra"):
        FaceEmbedderParams(centre_lambda=0.01)
    with pytest.raises(ValidationError, match="extra"):
        FaceEmbedderParams(embedder={"width": 8})
    with pytest.raises(ValidationError, match="multiple of"):
        FaceEmbedderParams(embedder={"input_size": 72})
    with pytest.raises(ValidationError, match="centre_rate"):
        FaceEmbedderParams(centre_rate=2)
    with pytest.raises(ValidationError, match="lr_milestones"):
        FaceEmbedderParams(lr_milestones=(5, 5))
    assert STAGES["face_embedder_train"] is FACE_EMBEDDER_TRAIN
    assert FACE_EMBEDDER_TRAIN.inputs == ("faces",) and FACE_EMBEDDER_TRAIN.outputs == ("checkpoint", "train_run")
    spec = FACE_EMBEDDER_TRAIN.fn.keywords["objective"].datasets(params.objective_kwargs())
    assert spec == {"faces": DataSpec(size=64, columns=("image", "identity"))}


def write(path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trains_through_the_runner(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    faces = str(tmp_path / "data" / "faces")
    rows = list(synthetic_face_rows(range(4), renders_per_identity=6, size=32, seed=3, split_fractions={"train": 1.0}))
    for row in rows[::6]:  # one render of each identity has lost its label: skipped
        row["identity"] = None
    with ShardWriter(faces) as writer:
        writer.write_rows(rows)
    root = tmp_path / "conf"
    write(root / "base.yaml", {"runtime": {"work_root": f"{tmp_path}/work"}, "tracking": {"experiment": "embedder"}})
    write(root / "catalog.yaml", {"catalog": {"faces": {"uri": faces, "kind": "shards"}}})
    write(root / "pipelines" / "embedder.yaml", {"pipeline": {"name": "embedder", "stages": [
        {"name": "embedder", "uses": "face_embedder_train", "inputs": {"faces": "faces"},
         "params": {"embedder": {"input_size": 32, "embedding_dim": 16, "channels": [4, 8, 8]},
                    "max_steps": 6, "batch_size": 8, "lr": 0.03, "report_every": 3, "log_every": 1,
                    "sample_every": 6, "sample_count": 4, "num_workers": 0, "shuffle_buffer": 0}},
    ]}})

    config = load_config("embedder", registry=REGISTRY, conf_dir=str(root))
    result = run_pipeline(config, registry=REGISTRY, printer=None)
    assert result.executed == ["embedder"]
    stage = result.stages["embedder"]
    checkpoint = stage.outputs["checkpoint"]
    with open(os.path.join(checkpoint, "networks.json")) as fh:
        networks = json.load(fh)
    assert {name: spec["class"] for name, spec in networks.items()} == {"embedder": "face_embedder",
                                                                        "head": "identity_classifier"}
    assert networks["head"]["kwargs"] == {"embedding_dim": 16, "num_classes": 4}
    with open(os.path.join(checkpoint, "train_state.json")) as fh:
        state = json.load(fh)
    names = [f"synthetic-3-{i}" for i in range(4)]
    assert state["step"] == 6
    assert state["data_info"]["faces"]["identities"] == names and state["data_info"]["faces"]["rows"] == 24
    objective_state = torch.load(os.path.join(checkpoint, "objective_state.pt"), weights_only=True)
    assert objective_state["identities"] == names and tuple(objective_state["centres"].shape) == (4, 16)
    assert not os.path.exists(os.path.join(checkpoint, "restorers.json"))  # no restorer exported

    embedder = load_face_embedder(checkpoint)
    with torch.no_grad():
        assert embedder(torch.zeros(2, 3, 64, 64)).shape == (2, 16)

    client = MlflowClient(tracking_uri=result.tracking_uri)
    assert [m.step for m in client.get_metric_history(stage.run_id, "softmax")] == [1, 2, 3, 4, 5, 6]
    labelled = [m.value for m in client.get_metric_history(stage.run_id, "labelled")]
    assert min(labelled) < 1.0 and np.mean(labelled) == pytest.approx(20 / 24, abs=0.15)
    assert [a.path for a in client.list_artifacts(stage.run_id, "samples")] == ["samples/step_00000006.png"]
