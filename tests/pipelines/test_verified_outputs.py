"""A stage is reused only when its outputs are complete: a shard missing, truncated or rewritten, a
checkpoint file missing, an S3 object replaced, or no manifest at all: the stage runs again (real
runner, Ray, SQLite MLflow and moto S3)."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch
from mlflow.tracking import MlflowClient

from fsr_core import storage
from fsr_core.data.shards import list_shards, read_faces
from pipelines.config import load_config
from pipelines.outputs import MANIFEST_FILE, record_outputs, verify_outputs
from pipelines.runner import run_pipeline
from pipelines.stages import STAGES

pytestmark = pytest.mark.timeout(240)


@pytest.fixture()
def conf(tmp_path, tracking_uri):
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(textwrap.dedent(f"""
        runtime: {{work_root: {tmp_path}/work}}
        tracking: {{uri: '{tracking_uri}', experiment: verified-outputs}}
        """))
    (root / "pipelines" / "faces.yaml").write_text(textwrap.dedent("""
        pipeline:
          name: faces
          stages:
            - name: synthetic
              uses: ingest_synthetic_faces
              params: {num_identities: 6, renders_per_identity: 1, size: 24, identities_per_shard: 2, task_cpus: 0.5}
        """))
    return str(root)


def _run(conf, lines=None):
    cfg = load_config("faces", registry=STAGES, conf_dir=conf)
    return run_pipeline(cfg, registry=STAGES, printer=None if lines is None else lines.append)


def _reused(result) -> float:
    run = MlflowClient(result.tracking_uri).get_run(result.stages["synthetic"].run_id)
    return run.data.metrics["shards_reused"]


def test_a_half_written_shard_output_is_redone_never_reused(ray_session, conf):
    first = _run(conf)
    faces = first.stages["synthetic"].outputs["faces"]
    shards = list_shards(faces)
    assert first.executed == ["synthetic"] and len(shards) == 3
    original = {uri: storage.read_bytes(uri) for uri in shards}
    manifest_uri = os.path.join(os.path.dirname(faces), MANIFEST_FILE)
    manifest = json.loads(storage.read_bytes(manifest_uri))
    listed = {entry["path"]: entry for entry in manifest["outputs"]["faces"]["files"]}
    assert set(listed) == {os.path.basename(uri) for uri in shards}
    for uri in shards:  # the manifest holds each shard's size and checksum
        import hashlib

        entry = listed[os.path.basename(uri)]
        assert entry["size"] == len(original[uri]) and entry["sha256"] == hashlib.sha256(original[uri]).hexdigest()
    assert _run(conf).cached == ["synthetic"]

    # a truncated shard: the plan says why, the run removes it and renders it again, keeps the others
    with open(shards[1], "r+b") as fh:
        fh.truncate(len(original[shards[1]]) // 2)
    plan_lines: list[str] = []
    run_pipeline(load_config("faces", registry=STAGES, conf_dir=conf), registry=STAGES, dry_run=True,
                 printer=plan_lines.append)
    assert "will run (outputs of its last run incomplete: output 'faces'" in plan_lines[0]
    assert f"{shards[1]} has {len(original[shards[1]]) // 2} bytes, {len(original[shards[1]])} were written" \
        in plan_lines[0]
    lines: list[str] = []
    again = _run(conf, lines)
    assert again.executed == ["synthetic"] and _reused(again) == 2
    assert any("synthetic: the outputs of its last run are incomplete" in line and "1 changed file(s) removed" in line
               for line in lines)
    assert {uri: storage.read_bytes(uri) for uri in list_shards(faces)} == original
    assert read_faces(faces).num_rows == 6

    # a missing shard
    os.remove(shards[2])
    again = _run(conf)
    assert again.executed == ["synthetic"] and _reused(again) == 2 and storage.read_bytes(shards[2]) == original[shards[2]]

    # same size, other bytes: found by the checksum (the modification time moved)
    data = bytearray(original[shards[0]])
    data[len(data) // 2] ^= 0xFF
    with open(shards[0], "wb") as fh:
        fh.write(bytes(data))
    again = _run(conf)
    assert again.executed == ["synthetic"] and storage.read_bytes(shards[0]) == original[shards[0]]

    # no manifest (a run killed before writing it, or made before manifests existed): not reused
    os.remove(manifest_uri)
    again = _run(conf)
    assert again.executed == ["synthetic"] and _reused(again) == 3 and os.path.exists(manifest_uri)
    assert _run(conf).cached == ["synthetic"]


def test_a_checkpoint_missing_a_file_is_incomplete(tmp_path):
    from fsr_core.networks.face_embedder import FaceEmbedder
    from fsr_core.training.checkpoint import save_checkpoint

    folder = str(tmp_path / "stage" / "checkpoint")
    network = FaceEmbedder(input_size=16, channels=(4,), embedding_dim=8)
    save_checkpoint(folder, networks={"embedder": network}, train_state={"step": 3},
                    optimizers={"opt": torch.optim.SGD(network.parameters(), lr=0.1)})
    manifest = str(tmp_path / "stage" / MANIFEST_FILE)
    record_outputs(manifest, {"checkpoint": folder, "model": "models:/x/1"}, stage="train", fingerprint="f" * 64)
    ok = verify_outputs(manifest, {"checkpoint": folder, "model": "models:/x/1"}, fingerprint="f" * 64)
    assert ok.ok and ok.problems == []
    assert not verify_outputs(manifest, {"checkpoint": folder, "model": "models:/x/1"}, fingerprint="e" * 64).ok
    os.remove(os.path.join(folder, "optimizers.pt"))
    check = verify_outputs(manifest, {"checkpoint": folder, "model": "models:/x/1"}, fingerprint="f" * 64)
    assert check.problems == [f"output 'checkpoint': {folder}/optimizers.pt is missing"] and check.changed == []


def test_an_s3_object_replaced_is_found_by_its_etag(s3_bucket):
    folder = f"{s3_bucket}/work/stage/abc/faces"
    for name in ("part-00000.parquet", "part-00001.parquet"):
        storage.write_bytes(f"{folder}/{name}", b"0123456789" * 10)
    manifest = f"{s3_bucket}/work/stage/abc/{MANIFEST_FILE}"
    record_outputs(manifest, {"faces": folder}, stage="s", fingerprint="a" * 64)
    assert verify_outputs(manifest, {"faces": folder}, fingerprint="a" * 64).ok
    storage.write_bytes(f"{folder}/part-00001.parquet", b"9876543210" * 10)  # same size
    check = verify_outputs(manifest, {"faces": folder}, fingerprint="a" * 64)
    assert check.changed == [f"{folder}/part-00001.parquet"]
    assert "other content than was written" in check.problems[0]
