"""Face-crop shards: schema checks, round trips locally and on S3, Ray Dataset decoding."""

from __future__ import annotations


import numpy as np
import pytest

from fsr_core.data.codec import decode_png, encode_png
from fsr_core.data.schema import FACE_SCHEMA, SchemaError, decode_json_column, make_face_id, rows_to_table
from fsr_core.data.shards import ShardWriter, iter_batches, list_shards, read_faces


def _rows(n: int, size: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size + i % 3, 3), dtype=np.uint8)
        rows.append(
            {
                "id": make_face_id("test", f"file{i}.png", bbox=[i, 0, 10, 10]),
                "image_png": encode_png(image),
                "height": image.shape[0],
                "width": image.shape[1],
                "source": "test",
                "source_uri": f"file{i}.png",
                "frame_index": i if i % 2 else None,
                "bbox": [float(i), 0.0, 10.0, 10.0],
                "landmarks": [1.0, 2.0, 3.0, 4.0] if i % 3 == 0 else None,
                "identity": f"person{i % 4}",
                "attributes": {"smiling": i % 2},
                "quality": {"blur": 1},
                "meta": {"orig_size": [100 + i, 80]},
                "split": ("train", "val", "test")[i % 3],
            }
        )
    return rows


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "shards")
    return request.getfixturevalue("s3_bucket") + "/faces"


def test_round_trip_bytes_and_metadata(folder):
    rows = _rows(11)
    with ShardWriter(folder, max_rows_per_shard=4, row_group_size=2) as writer:
        writer.write_rows(rows)
    assert len(writer.written) == 3 and writer.rows_written == 11
    assert list_shards(folder) == writer.written
    table = read_faces(folder)
    assert table.schema.equals(FACE_SCHEMA, check_metadata=False)
    assert table["id"].to_pylist() == [r["id"] for r in rows]
    assert table["image_png"].to_pylist() == [r["image_png"] for r in rows]  # bytes identical
    for name in ("height", "width", "source", "source_uri", "frame_index", "bbox", "landmarks", "identity", "split"):
        assert table[name].to_pylist() == [r[name] for r in rows], name
    assert decode_json_column(table["attributes"]) == [r["attributes"] for r in rows]
    assert decode_json_column(table["meta"]) == [r["meta"] for r in rows]
    decoded = decode_png(table["image_png"][5].as_py())
    assert decoded.shape == (12, 14, 3)


def test_split_filter_and_streaming(folder):
    rows = _rows(9)
    with ShardWriter(folder, max_rows_per_shard=5) as writer:
        writer.write_rows(rows)
    val = read_faces(folder, columns=["id"], split="val")
    assert val.column_names == ["id"]
    assert val["id"].to_pylist() == [r["id"] for r in rows if r["split"] == "val"]
    streamed = [rid for batch in iter_batches(folder, batch_size=2, columns=["id"]) for rid in batch.column("id").to_pylist()]
    assert streamed == [r["id"] for r in rows]


def test_writer_drops_pending_rows_on_error(tmp_path):
    folder = str(tmp_path / "s")
    with pytest.raises(RuntimeError):
        with ShardWriter(folder, max_rows_per_shard=3) as writer:
            writer.write_rows(_rows(4))  # first shard of 3 written, 1 pending
            raise RuntimeError("crash")
    assert len(list_shards(folder)) == 1
    assert read_faces(folder).num_rows == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"split": "training"}, "split"),
        ({"image_png": b"not a png"}, "PNG"),
        ({"bbox": [1.0, 2.0]}, "bbox"),
        ({"landmarks": [1.0, 2.0, 3.0]}, "landmarks"),
        ({"colour": "red"}, "unknown column"),
        ({"attributes": "[1, 2]"}, "JSON object"),
        ({"height": 0}, "height"),
    ],
)
def test_invalid_rows_are_rejected_with_the_column_named(change, message):
    row = {**_rows(1)[0], **change}
    with pytest.raises(SchemaError, match=message):
        rows_to_table([row])


def test_missing_required_column():
    row = _rows(1)[0]
    del row["source"]
    with pytest.raises(SchemaError, match="'source' is required"):
        rows_to_table([row])


def test_face_id_is_stable_and_distinguishes_boxes():
    a = make_face_id("wider", "img/1.jpg", bbox=[1, 2, 3, 4])
    assert a == make_face_id("wider", "img/1.jpg", bbox=[1, 2, 3, 4])
    assert a != make_face_id("wider", "img/1.jpg", bbox=[1, 2, 3, 5])
    assert a != make_face_id("wider", "img/1.jpg", bbox=[1, 2, 3, 4], frame_index=0)


def test_ray_dataset_decodes_and_resizes(ray_session, folder):
    from fsr_core.data.ray_datasets import read_face_dataset

    rows = _rows(10)
    with ShardWriter(folder, max_rows_per_shard=4) as writer:
        writer.write_rows(rows)
    ds = read_face_dataset(folder, size=16, keep_columns=("id", "identity"), batch_size=3, num_blocks=2)
    out = ds.take_all()
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
    assert all(r["image"].shape == (16, 16, 3) and r["image"].dtype == np.uint8 for r in out)
    train = read_face_dataset(folder, split="train", size=None, batch_size=1).take_all()
    expected = {r["id"]: decode_png(r["image_png"]) for r in rows if r["split"] == "train"}
    assert {r["id"] for r in train} == set(expected)
    for r in train:  # size=None keeps pixels exactly
        np.testing.assert_array_equal(r["image"], expected[r["id"]])
