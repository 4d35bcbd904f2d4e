"""Stage ``degrade``: real HR shards through a real chain on a real local Ray; pairing, determinism,
resume, quarantine, the named chain files of ``conf/degradations``."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from fsr_core.data.codec import decode_png, encode_png
from fsr_core.data.shards import ShardWriter, list_shards, read_faces
from fsr_core.degradation.ops import degrade_crop, load_chain
from pipelines.stage import StageContext
from pipelines.stages.degrade import DEGRADE, DegradeParams
from tests.pipelines.test_restore_evaluate import _smooth, _write_shards

CHAIN = [{"op": "gaussian_blur", "sigma": [0.5, 1.5]}, {"op": "downsample", "scale": 8, "method": "area"},
         {"op": "gaussian_noise", "sigma": [1.0, 4.0]}, {"op": "jpeg", "quality": [40, 80]}]


def _run(hr: str, out: str, tmp_path, **params) -> StageContext:
    outputs = {"lr": out, "quarantine": out + "-quarantine"}
    ctx = StageContext(pipeline="test", stage="degrade", params=DegradeParams(chain=CHAIN, **params),
                       outputs=outputs, work_dir=str(tmp_path))
    assert DEGRADE.fn(ctx, hr=hr) == outputs
    return ctx


@pytest.fixture()
def hr_world(tmp_path):
    images = _smooth(10, 128, seed=3)
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    ids = _write_shards(str(tmp_path / "hr"), images, splits, "hr", rows_per_shard=4)
    return {"uri": str(tmp_path / "hr"), "images": images, "ids": ids, "splits": splits}


def test_degrade_keeps_pairing_and_is_deterministic(ray_session, hr_world, tmp_path):
    _run(hr_world["uri"], str(tmp_path / "lr"), tmp_path, seed=7)
    lr = read_faces(str(tmp_path / "lr"))
    assert lr.num_rows == 10 and len(list_shards(str(tmp_path / "lr"))) == 3
    by_hr = {json.loads(meta)["hr_id"]: row for row, meta in zip(lr.to_pylist(), lr["meta"].to_pylist())}
    assert sorted(by_hr) == sorted(hr_world["ids"])
    chain = load_chain(CHAIN)
    for hr_id, image, split in zip(hr_world["ids"], hr_world["images"], hr_world["splits"]):
        row = by_hr[hr_id]
        expected, params = degrade_crop(image, chain, seed=7, key=hr_id)
        assert np.array_equal(decode_png(row["image_png"]), expected) and (row["height"], row["width"]) == (16, 16)
        meta = json.loads(row["meta"])
        assert meta["degradation"] == params and meta["seed"] == 7 and row["split"] == split
        assert row["id"] != hr_id
    # the same seed elsewhere: the same bytes; another seed: other samples
    _run(hr_world["uri"], str(tmp_path / "again"), tmp_path, seed=7)
    _run(hr_world["uri"], str(tmp_path / "other"), tmp_path, seed=8)
    again, other = read_faces(str(tmp_path / "again")), read_faces(str(tmp_path / "other"))
    assert again["image_png"].to_pylist() == lr["image_png"].to_pylist()
    assert other["image_png"].to_pylist() != lr["image_png"].to_pylist()


def test_degrade_resumes_splits_and_quarantines_a_bad_row(ray_session, hr_world, tmp_path):
    out = str(tmp_path / "lr")
    _run(hr_world["uri"], out, tmp_path, splits=["test", "val"])
    assert sorted(read_faces(out)["split"].to_pylist()) == ["test", "test", "val", "val"]
    first = list_shards(out)[0]
    before = {uri: os.path.getmtime(uri) for uri in list_shards(out)}
    os.remove(first)
    _run(hr_world["uri"], out, tmp_path, splits=["test", "val"])
    assert all(os.path.getmtime(uri) == t for uri, t in before.items() if uri != first) and os.path.exists(first)

    bad_hr = str(tmp_path / "bad_hr")
    good = {"id": "good", "image_png": encode_png(hr_world["images"][0]), "height": 128, "width": 128,
            "source": "hr", "source_uri": "hr/good.png", "split": "test"}
    bad = {**good, "id": "bad", "image_png": b"\x89PNG\r\n\x1a\n" + b"garbage", "source_uri": "hr/bad.png"}
    with ShardWriter(bad_hr) as writer:
        writer.write_rows([good, bad])
    _run(bad_hr, str(tmp_path / "bad_lr"), tmp_path)
    assert read_faces(str(tmp_path / "bad_lr"))["source_uri"].to_pylist() == ["hr/good.png"]
    records = pq.read_table(os.path.join(tmp_path, "bad_lr-quarantine", "part-00000.parquet"))
    assert records["source_uri"].to_pylist() == ["hr/bad.png"]
    assert records["reason"].to_pylist() == ["corrupt_image"] and "bad" in records["detail"][0].as_py()


def test_chain_parameter_reads_named_files_and_refuses_bad_keys():
    camera = DegradeParams(chain="camera")
    assert [op.op for op in camera.chain.ops] == ["gaussian_blur", "downsample", "signal_noise", "gamma", "jpeg"]
    assert camera.chain.output_size(128, 128) == (16, 16)
    assert DegradeParams(chain="phone_video").chain.output_size(128, 128) == (16, 16)
    assert camera.model_dump(mode="json")["chain"]["ops"][0] == {"op": "gaussian_blur", "sigma": [1.0, 2.0]}
    with pytest.raises(ValidationError, match="not found"):
        DegradeParams(chain="no_such_camera")
    with pytest.raises(ValidationError, match="sigmaa"):
        DegradeParams(chain=[{"op": "gaussian_blur", "sigmaa": 1.0}])
    with pytest.raises(ValidationError, match="chian"):
        DegradeParams(chain=CHAIN, chian=1)
