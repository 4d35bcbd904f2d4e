"""The demo-world ingest stages through the real runner: rows, splits, determinism, resume."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from fsr_core import storage
from fsr_core.data.codec import decode_png
from fsr_core.data.schema import decode_json_column
from fsr_core.data.shards import list_shards, read_faces
from pipelines.config import load_config
from pipelines.runner import run_pipeline
from pipelines.stages import STAGES

pytestmark = pytest.mark.timeout(240)


@pytest.fixture()
def conf(tmp_path, tracking_uri):
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(textwrap.dedent(f"""
        runtime: {{work_root: {tmp_path}/work}}
        tracking: {{uri: '{tracking_uri}', experiment: ingest-test}}
        """))
    (root / "pipelines" / "world.yaml").write_text(textwrap.dedent("""
        pipeline:
          name: world
          stages:
            - name: synthetic
              uses: ingest_synthetic_faces
              params: {num_identities: 6, renders_per_identity: 2, size: 32, identities_per_shard: 2, task_cpus: 0.5,
                       split: {train: 0.5, val: 0.25, test: 0.25}}
            - name: lfw
              uses: ingest_lfw_faces
              params: {count: 100}
        """))
    return str(root)


def test_demo_world_ingest(ray_session, conf):
    cfg = load_config("world", registry=STAGES, conf_dir=conf)
    result = run_pipeline(cfg, registry=STAGES, printer=None)
    synthetic_uri = result.stages["synthetic"].outputs["faces"]
    assert len(list_shards(synthetic_uri)) == 3
    table = read_faces(synthetic_uri)
    assert table.num_rows == 12
    assert set(table["height"].to_pylist()) == {32} and set(table["source"].to_pylist()) == {"synthetic"}
    # split by identity: no identity in two splits
    by_identity: dict[str, set[str]] = {}
    for identity, split in zip(table["identity"].to_pylist(), table["split"].to_pylist()):
        by_identity.setdefault(identity, set()).add(split)
    assert len(by_identity) == 6 and all(len(s) == 1 for s in by_identity.values())
    attributes = decode_json_column(table["attributes"])
    assert all(set(a) == {"smiling", "mouth_open", "eyeglasses"} for a in attributes)
    assert decode_png(table["image_png"][0].as_py()).shape == (32, 32, 3)

    lfw = read_faces(result.stages["lfw"].outputs["faces"])
    assert lfw.num_rows == 100 and set(lfw["height"].to_pylist()) == {25}
    from skimage.data import lfw_subset

    first = decode_png(lfw["image_png"][0].as_py())
    np.testing.assert_array_equal(first[:, :, 0], np.rint(lfw_subset()[0] * 255).astype(np.uint8))
    assert set(lfw["split"].to_pylist()) == {"train", "val", "test"}


def test_synthetic_ingest_is_deterministic_and_resumes(ray_session, conf):
    cfg = load_config("world", registry=STAGES, conf_dir=conf)
    first = run_pipeline(cfg, registry=STAGES, printer=None)
    uri = first.stages["synthetic"].outputs["faces"]
    shards = list_shards(uri)
    before = {s: storage.read_bytes(s) for s in shards}
    # an interrupted ingest: one shard missing; the forced re-run renders only that one, identically
    storage.delete(shards[1])
    again = run_pipeline(cfg, registry=STAGES, force={"synthetic"}, printer=None)
    assert again.executed == ["synthetic"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(again.tracking_uri).get_run(again.stages["synthetic"].run_id)
    assert run.data.metrics["shards_reused"] == 2
    assert {s: storage.read_bytes(s) for s in list_shards(uri)} == before
