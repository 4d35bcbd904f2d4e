"""Ready-made crops reader: crops of any size kept pixel for pixel, grey as RGB, bad files
quarantined, pairing (meta.hr_id, splits), face-crop shards validated row by row; local and S3."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fsr_core.data.codec import decode_png, encode_png
from fsr_core.data.ingest.base import Quarantined
from fsr_core.data.ingest.crops import CropsReader, parse_pairing
from fsr_core.data.schema import make_face_id, rows_to_table
from fsr_core.data.shards import write_table
from fsr_core.data.splits import assign_split
from tests.fsr_core.data.ingest.trees import picture, upload_tree, write_jpeg, write_png, write_text

PAIRING = """\
lr,hr_id
a/lr16.png,ffhq-aaaa
b/lr25.jpg,ffhq-bbbb
c40x30.png,ffhq-cccc
gone.png,ffhq-dddd
"""


def build_crops(root: str) -> dict[str, np.ndarray]:
    """16x16 PNG, 25x25 JPEG, 40 wide x 30 high PNG, a 16x16 grey PNG, a corrupt file, a non-image
    and the pairing file; returns the RGB content of the PNGs by relative path."""
    pixels = {"a/lr16.png": picture(16, 16, 1), "c40x30.png": picture(30, 40, 3)}
    for name, rgb in pixels.items():
        write_png(os.path.join(root, name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    write_jpeg(os.path.join(root, "b", "lr25.jpg"), picture(25, 25, 2))
    grey = picture(16, 16, 4)[..., 0]
    write_png(os.path.join(root, "grey.png"), grey)
    pixels["grey.png"] = np.repeat(grey[..., None], 3, axis=2)
    write_text(os.path.join(root, "corrupt.png"), "this is not a png")
    write_text(os.path.join(root, "notes.txt"), "not listed")
    write_text(os.path.join(root, "pairing.csv"), PAIRING)
    return pixels


def run_reader(reader: CropsReader, root: str) -> tuple[dict[str, dict], list[Quarantined]]:
    rows, records = {}, []
    for item in reader.list_items(root):
        for out in reader.process(item):
            if isinstance(out, Quarantined):
                records.append(out)
            else:
                meta = out["meta"] if isinstance(out["meta"], dict) else json.loads(out["meta"])  # shard rows: JSON
                rows[meta.get("relative_path") or out["id"]] = out
    return rows, records


@pytest.fixture()
def crops(tmp_path) -> tuple[str, dict[str, np.ndarray]]:
    root = str(tmp_path / "crops")
    return root, build_crops(root)


def test_crops_are_kept_as_they_are_and_bad_files_quarantined(crops):
    root, pixels = crops
    rows, records = run_reader(CropsReader(source="my_lr"), root)
    assert sorted(rows) == ["a/lr16.png", "b/lr25.jpg", "c40x30.png", "grey.png"]  # not notes.txt, pairing.csv
    for name, rgb in pixels.items():  # PNG: the exact pixels, any size
        assert np.array_equal(decode_png(rows[name]["image_png"]), rgb), name
    assert [(rows[n]["width"], rows[n]["height"]) for n in sorted(rows)] == [(16, 16), (25, 25), (40, 30), (16, 16)]
    assert decode_png(rows["b/lr25.jpg"]["image_png"]).shape == (25, 25, 3)
    assert rows["grey.png"]["meta"]["grey"] is True and "grey" not in rows["a/lr16.png"]["meta"]
    row = rows["c40x30.png"]
    assert row["id"] == make_face_id("my_lr", "c40x30.png") and row["source"] == "my_lr"
    assert row["bbox"] == [0.0, 0.0, 40.0, 30.0] and row["source_uri"] == os.path.join(root, "c40x30.png")
    assert row["split"] == assign_split("c40x30.png", {"train": 0.9, "val": 0.05, "test": 0.05}, salt="my_lr")
    assert row["meta"]["split_from"] == "hash" and "hr_id" not in row["meta"]
    assert [(r.source_uri.rsplit("/", 1)[-1], r.reason) for r in records] == [("corrupt.png", "not_an_image")]
    assert rows_to_table(list(rows.values())).num_rows == 4  # the shard schema takes them


def test_pairing_sets_hr_id_and_split_and_reports_missing_files(crops):
    root, _ = crops
    reader = CropsReader(pairing="pairing.csv", split_fractions={"train": 0.5, "val": 0.5})
    rows, records = run_reader(reader, root)
    assert {name: row["meta"].get("hr_id") for name, row in rows.items()} == {
        "a/lr16.png": "ffhq-aaaa", "b/lr25.jpg": "ffhq-bbbb", "c40x30.png": "ffhq-cccc", "grey.png": None}
    for name in ("a/lr16.png", "b/lr25.jpg", "c40x30.png"):  # the split follows the HR id
        assert rows[name]["split"] == assign_split(rows[name]["meta"]["hr_id"], {"train": 0.5, "val": 0.5})
        assert rows[name]["meta"]["split_from"] == "hr_id"
    assert rows["grey.png"]["meta"]["split_from"] == "hash"
    missing = [r for r in records if r.reason == "pairing_missing_file"]
    assert len(missing) == 1 and "line 5 pairs gone.png with HR ffhq-dddd" in missing[0].detail

    # an explicit split column wins (exact for any HR set, e.g. exported from the HR shards)
    write_text(os.path.join(root, "pairing.csv"), "hr_id,split,lr\nffhq-aaaa,test,a/lr16.png\nffhq-bbbb,,b/lr25.jpg\n")
    rows, records = run_reader(reader, root)
    assert rows["a/lr16.png"]["split"] == "test" and rows["a/lr16.png"]["meta"]["split_from"] == "pairing"
    assert rows["b/lr25.jpg"]["meta"]["split_from"] == "hr_id" and not any(
        r.reason == "pairing_missing_file" for r in records)


@pytest.mark.parametrize("text, message", [
    ("lr,hr\na.png,x\n", r"pairing.csv: a pairing file needs the header 'lr,hr_id'.*missing \['hr_id'\]"),
    ("a.png,x\n", r"pairing.csv: a pairing file needs the header"),
    ("", r"pairing.csv: a pairing file needs the header.*no header"),
    ("lr,hr_id,note\na.png,x,y\n", r"unknown \['note'\]"),
    ("lr,hr_id\na.png\n", r"pairing.csv: line 2: expected 2 fields"),
    ("lr,hr_id\na.png,\n", r"line 2: lr and hr_id must not be empty"),
    ("lr,hr_id\n../a.png,x\n", r"line 2: lr '../a.png' must be a path relative to the root"),
    ("lr,hr_id,split\na.png,x,dev\n", r"line 2: split 'dev' is not one of"),
    ("lr,hr_id\na.png,x\na.png,y\n", r"line 3: a.png is already paired with 'x' on line 2"),
])
def test_malformed_pairing_files_raise_naming_the_file(text, message):
    with pytest.raises(ValueError, match=message):
        parse_pairing(text, "/data/pairing.csv")


def test_pairing_file_errors_come_before_any_work(crops):
    root, _ = crops
    write_text(os.path.join(root, "bad.csv"), "file,hr\na/lr16.png,x\n")
    with pytest.raises(ValueError, match=f"{os.path.join(root, 'bad.csv')}: a pairing file needs the header"):
        CropsReader(pairing="bad.csv").list_items(root)
    with pytest.raises(FileNotFoundError, match="pairing file missing: .*absent.csv"):
        CropsReader(pairing="absent.csv").list_items(root)
    with pytest.raises(ValueError, match="must be a path below the root"):
        CropsReader(pairing="/elsewhere/pairing.csv").list_items(root)


def test_size_caps_quarantine_oversized_files(crops):
    root, _ = crops
    rows, records = run_reader(CropsReader(max_side=25), root)
    assert sorted(rows) == ["a/lr16.png", "b/lr25.jpg", "grey.png"]
    assert [r.reason for r in records if r.source_uri.endswith("c40x30.png")] == ["image_too_large"]
    size = os.path.getsize(os.path.join(root, "c40x30.png"))
    reader = CropsReader(max_bytes=size - 1)
    item = next(i for i in reader.list_items(root) if i.uri.endswith("c40x30.png"))
    assert item.annotations["quarantine"][0][0] == "file_too_large"  # decided at listing: never read
    assert [r.reason for r in reader.process(item)] == ["file_too_large"]


def shard_row(index: int, **changes) -> dict:
    rgb = picture(12, 20, 10 + index)
    row = {"id": f"other-{index}", "image_png": encode_png(rgb), "height": 12, "width": 20, "source": "other_tool",
           "source_uri": f"/made/elsewhere/{index}.png", "split": "val", "meta": {"hr_id": f"ffhq-{index}"}}
    row.update(changes)
    return row


def test_face_crop_shards_are_validated_row_by_row(tmp_path):
    root = str(tmp_path / "shards")
    good = [shard_row(0), shard_row(1)]
    write_table(rows_to_table(good), os.path.join(root, "part-00000.parquet"))
    # rows a validating writer refuses, written as a plain Parquet file by "another tool"
    bad = [shard_row(2, split="dev"), shard_row(3, height=13), shard_row(4)]
    for row in bad:
        row["meta"] = json.dumps(row["meta"])
        row.update(attributes="{}", quality="{}", frame_index=None, bbox=None, landmarks=None, identity=None)
    os.makedirs(os.path.join(root, "x"))
    pq.write_table(pa.Table.from_pylist(bad, schema=rows_to_table(good).schema), os.path.join(root, "x", "b.parquet"))
    pq.write_table(pa.table({"name": ["a"]}), os.path.join(root, "y.parquet"))
    write_text(os.path.join(root, "z.parquet"), "not parquet")

    reader = CropsReader()
    items = reader.list_items(root)
    assert [i.annotations["relative_path"] for i in items] == ["part-00000.parquet", "x/b.parquet", "y.parquet",
                                                              "z.parquet"]
    rows, records = run_reader(reader, root)
    assert sorted(rows) == ["other-0", "other-1", "other-4"]  # no relative_path in their meta: keyed by id
    for index in (0, 1):  # kept as they were: id, source, split, pixels, meta.hr_id
        assert rows[f"other-{index}"]["image_png"] == good[index]["image_png"]
        assert rows[f"other-{index}"]["source"] == "other_tool" and rows[f"other-{index}"]["split"] == "val"
        assert json.loads(rows[f"other-{index}"]["meta"]) == {"hr_id": f"ffhq-{index}"}
    details = [(r.source_uri.rsplit("/", 1)[-1], r.reason, r.detail) for r in records]
    assert [d[:2] for d in details] == [("b.parquet", "invalid_row"), ("b.parquet", "invalid_row"),
                                        ("y.parquet", "invalid_shard"), ("z.parquet", "invalid_shard")]
    assert "row 0 (id 'other-2')" in details[0][2] and "split" in details[0][2]
    assert "row 1 (id 'other-3'): the PNG is 20x12, the row says 20x13" in details[1][2]
    assert "missing columns" in details[2][2] and "readable Parquet" in details[3][2]


def test_reads_the_same_rows_from_s3(crops, s3_bucket):
    root, _ = crops
    prefix = upload_tree(root, f"{s3_bucket}/crops")
    reader = CropsReader(pairing="pairing.csv")
    local_rows, local_records = run_reader(reader, root)
    rows, records = run_reader(reader, prefix)
    assert {k: (r["id"], r["image_png"], r["split"], r["meta"]) for k, r in rows.items()} == {
        k: (r["id"], r["image_png"], r["split"], r["meta"]) for k, r in local_rows.items()}
    assert rows["a/lr16.png"]["source_uri"] == f"{prefix}/a/lr16.png"
    assert sorted(r.reason for r in records) == sorted(r.reason for r in local_records)
