"""The ingest_crops stage through the real runner, Ray Data and MLflow: crops of any size kept as
they are, quarantine, pairing (meta.hr_id, missing files counted), resume of a lost shard, its own
shards re-ingested as a source, and a malformed pairing file refused before any work."""

from __future__ import annotations

import os
from collections import Counter

import cv2
import numpy as np
import pytest

from fsr_core import storage
from fsr_core.data.codec import decode_png
from fsr_core.data.schema import decode_json_column
from fsr_core.data.shards import list_shards, read_faces
from pipelines.config import load_config
from pipelines.runner import run_pipeline
from pipelines.stage import StageContext
from pipelines.stages.ingest import INGEST_STAGES, read_quarantine
from tests.fsr_core.data.ingest.test_crops import build_crops
from tests.fsr_core.data.ingest.trees import write_text
from tests.pipelines.test_ingest_stages import snapshot, stage_metrics, write_conf

pytestmark = pytest.mark.timeout(240)

PIPELINE = """
    pipeline:
      name: p
      stages:
        - name: lr
          uses: ingest_crops
          inputs: {root: lr_crops}
          params: {source: my_lr, pairing: pairing.csv, unit_size: 2, task_cpus: 1.0}
        - name: again
          uses: ingest_crops
          inputs: {root: lr.faces}
          params: {unit_size: 1, task_cpus: 1.0}
    """


def test_crops_round_trip_pairing_resume_and_shards_as_source(ray_session, tmp_path, tracking_uri):
    data = str(tmp_path / "crops")
    pixels = build_crops(data)
    conf = write_conf(tmp_path / "conf", work_root=str(tmp_path / "work"), tracking_uri=tracking_uri,
                      catalog={"lr_crops": data}, pipeline=PIPELINE)
    cfg = load_config("p", registry=INGEST_STAGES, conf_dir=conf)
    first = run_pipeline(cfg, registry=INGEST_STAGES, printer=None)
    faces, quarantine = first.stages["lr"].outputs["faces"], first.stages["lr"].outputs["quarantine"]

    table = read_faces(faces)
    metas = decode_json_column(table["meta"])
    rows = {meta["relative_path"]: (row, meta) for row, meta in zip(table.to_pylist(), metas)}
    assert sorted(rows) == ["a/lr16.png", "b/lr25.jpg", "c40x30.png", "grey.png"]
    for name, rgb in pixels.items():  # PNG crops: the same pixels, any size, no resize
        assert np.array_equal(decode_png(rows[name][0]["image_png"]), rgb), name
    assert {n: (r["width"], r["height"]) for n, (r, _) in rows.items()} == {
        "a/lr16.png": (16, 16), "b/lr25.jpg": (25, 25), "c40x30.png": (40, 30), "grey.png": (16, 16)}
    jpeg = cv2.cvtColor(cv2.imread(os.path.join(data, "b", "lr25.jpg")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decode_png(rows["b/lr25.jpg"][0]["image_png"]), jpeg)  # the decoded JPEG, losslessly kept
    assert rows["grey.png"][1]["grey"] is True
    assert {n: m.get("hr_id") for n, (_, m) in rows.items()} == {
        "a/lr16.png": "ffhq-aaaa", "b/lr25.jpg": "ffhq-bbbb", "c40x30.png": "ffhq-cccc", "grey.png": None}
    assert set(table["source"].to_pylist()) == {"my_lr"}

    records = read_quarantine(quarantine).to_pylist()
    assert Counter(r["reason"] for r in records) == {"not_an_image": 1, "pairing_missing_file": 1}
    corrupt = next(r for r in records if r["reason"] == "not_an_image")
    assert corrupt["source_uri"] == os.path.join(data, "corrupt.png") and corrupt["detail"]
    metrics = stage_metrics(first, "lr")
    assert metrics["items"] == 6 and metrics["rows"] == 4 and metrics["shards_written"] == 3
    assert metrics["quarantined_pairing_missing_file"] == 1 and metrics["quarantined_not_an_image"] == 1

    # its own shards as the source: the same rows, one output shard per input shard
    again = read_faces(first.stages["again"].outputs["faces"])
    assert again.to_pylist() == table.to_pylist()
    assert len(list_shards(first.stages["again"].outputs["faces"])) == 3
    assert read_quarantine(first.stages["again"].outputs["quarantine"]).num_rows == 0

    # same config and data: reused; a lost shard: only its unit is redone, byte for byte
    before = snapshot(faces, quarantine)
    assert run_pipeline(cfg, registry=INGEST_STAGES, printer=None).executed == []
    storage.delete(list_shards(faces)[1])
    resumed = run_pipeline(cfg, registry=INGEST_STAGES, force={"lr"}, printer=None)
    metrics = stage_metrics(resumed, "lr")
    assert metrics["shards_written"] == 1 and metrics["shards_reused"] == 2 and metrics["rows"] == 4
    assert metrics["quarantined_pairing_missing_file"] == 1  # counted from the reused shards too
    assert snapshot(faces, quarantine) == before


def test_malformed_pairing_fails_before_any_work(ray_session, tmp_path):
    data = str(tmp_path / "crops")
    build_crops(data)
    write_text(os.path.join(data, "pairs.csv"), "lr,hr\na/lr16.png,ffhq-aaaa\n")
    stage = INGEST_STAGES["ingest_crops"]
    out = tmp_path / "out"
    ctx = StageContext(pipeline="t", stage="crops", params=stage.params(pairing="pairs.csv"), work_dir=str(out),
                       outputs={"faces": str(out / "faces"), "quarantine": str(out / "quarantine")})
    with pytest.raises(ValueError, match=rf"{os.path.join(data, 'pairs.csv')}: a pairing file needs the header "
                                         r"'lr,hr_id'.*missing \['hr_id'\]"):
        stage.fn(ctx, root=data)
    assert not os.path.exists(out)  # nothing written, not even the plan


def test_params_reject_unknown_keys_and_bad_values():
    params = INGEST_STAGES["ingest_crops"].params
    with pytest.raises(ValueError, match="pairng"):
        params(pairng="pairing.csv")
    with pytest.raises(ValueError, match="sum to 1"):
        params(split={"train": 0.5})
    with pytest.raises(ValueError, match="source"):
        params(source="My LR")
