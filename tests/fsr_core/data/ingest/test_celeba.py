"""CelebA reader: list files with their header lines and padded spacing, pixel-exact centre crops,
landmarks in crop coordinates, identities, attributes, official splits, quarantine; local and S3."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from fsr_core.data.codec import decode_png
from fsr_core.data.ingest.base import Quarantined
from fsr_core.data.ingest.celeba import CelebAReader, parse_table
from fsr_core.degradation.resize import imresize
from tests.fsr_core.data.ingest.trees import (
    CELEBA_ATTRIBUTES,
    build_celeba,
    celeba_attribute_values,
    upload_tree,
)


def run_reader(reader, root):
    rows, records = [], []
    for item in reader.list_items(root):
        for out in reader.process(item):
            (records if isinstance(out, Quarantined) else rows).append(out)
    return rows, records


def name_of(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def local_tree(tmp_path_factory) -> dict:
    return build_celeba(str(tmp_path_factory.mktemp("celeba")))


@pytest.fixture(params=["local", "s3"])
def tree(request, local_tree):
    if request.param == "local":
        return local_tree["root"], local_tree
    bucket = request.getfixturevalue("s3_bucket")
    return upload_tree(local_tree["root"], f"{bucket}/celeba"), local_tree


def test_parse_table_headers_and_double_spaces():
    text = ("2\n5_o_Clock_Shadow Smiling \n"
            "000001.jpg -1  1\n"
            "000002.jpg  1 -1\n"
            "000003.jpg  1\n"
            "garbage\n")
    names, rows, errors = parse_table(text, columns=None, header=True)
    assert names == ["5_o_Clock_Shadow", "Smiling"]
    assert rows == {"000001.jpg": ["-1", "1"], "000002.jpg": ["1", "-1"]}
    assert "got 1" in errors["000003.jpg"] and "#L6" in errors
    # some mirrors drop the two header lines
    names, rows, _ = parse_table("000001.jpg 69  109\n", columns=2, header=True)
    assert names is None and rows == {"000001.jpg": ["69", "109"]}
    with pytest.raises(ValueError, match="header names 1 columns"):
        parse_table("1\nx\n000001.jpg 1 2\n", columns=2, header=True)


def test_rows_splits_annotations_and_quarantine(tree):
    root, info = tree
    rows, records = run_reader(CelebAReader(), root)
    assert [name_of(row["source_uri"]) for row in rows] == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    assert [row["split"] for row in rows] == ["train", "train", "val", "test"]
    assert sorted((name_of(r.source_uri), r.reason) for r in records) == [
        ("000005.jpg", "missing_file"),
        ("000006.jpg", "not_in_partition"),
        ("000007.jpg", "truncated_image"),
        ("000008.jpg", "malformed_annotation"),
    ]
    assert "list_landmarks_align_celeba.txt" in next(r.detail for r in records if r.reason == "malformed_annotation")
    for row in rows:
        index = int(name_of(row["source_uri"])[:6])
        assert (row["height"], row["width"]) == (128, 128) and row["source"] == "celeba"
        assert row["identity"] == str(1000 + index % 3)
        assert row["attributes"] == {name.lower(): int(v == 1)
                                     for name, v in zip(CELEBA_ATTRIBUTES, celeba_attribute_values(index))}
        assert len(row["attributes"]) == 40 and "5_o_clock_shadow" in row["attributes"]
        assert row["bbox"] == [0.0, 20.0, 178.0, 198.0]
        assert row["meta"]["image_size"] == [218, 178] and row["meta"]["crop_size"] == [178, 178]
        # landmarks: (x - left + 0.5) * 128/178 - 0.5, (y - top + 0.5) * 128/178 - 0.5
        source = np.asarray(info["landmarks"][index], dtype=np.float64).reshape(-1, 2)
        expected = ((source - (0, 20) + 0.5) * (128 / 178) - 0.5).reshape(-1)
        np.testing.assert_allclose(row["landmarks"], expected, atol=1e-9)


def test_crops_are_pixel_exact_against_opencv(tree):
    root, info = tree
    rows, _ = run_reader(CelebAReader(), root)
    for row in rows:
        path = os.path.join(info["root"], "img_align_celeba", name_of(row["source_uri"]))
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(decode_png(row["image_png"]),
                                      imresize(image[20:198, 0:178], output_size=(128, 128)))


def test_crop_settings_and_split_filter(local_tree):
    reader = CelebAReader(size=None, crop_size=100, crop_top=50, crop_left=30, splits=("test",))
    rows, records = run_reader(reader, local_tree["root"])
    assert [name_of(row["source_uri"]) for row in rows] == ["000004.jpg"]
    row = rows[0]
    assert row["bbox"] == [30.0, 50.0, 130.0, 150.0] and (row["height"], row["width"]) == (100, 100)
    image = cv2.cvtColor(cv2.imread(os.path.join(local_tree["root"], "img_align_celeba", "000004.jpg")),
                         cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_png(row["image_png"]), image[50:150, 30:130])
    lefteye = local_tree["landmarks"][4][:2]
    assert row["landmarks"][:2] == [lefteye[0] - 30, lefteye[1] - 50]  # no resize: a pure shift
    # other splits are not listed; the image without a partition still is (its split is unknown)
    assert [name_of(r.source_uri) for r in records] == ["000006.jpg"]
    _, records = run_reader(CelebAReader(crop_size=200), local_tree["root"])
    assert {r.reason for r in records} >= {"image_too_small"}


def test_optional_annotation_files(tmp_path):
    info = build_celeba(str(tmp_path / "c"))
    for name in ("list_landmarks_align_celeba.txt", "identity_CelebA.txt", "list_attr_celeba.txt"):
        os.unlink(os.path.join(info["root"], name))
    rows, records = run_reader(CelebAReader(size=32), info["root"])
    assert len(rows) == 5  # 000008 is no longer malformed
    assert all(row["landmarks"] is None and row["identity"] is None and row["attributes"] == {} for row in rows)
    os.unlink(os.path.join(info["root"], "list_eval_partition.txt"))
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        CelebAReader().list_items(info["root"])


def test_attribute_file_without_header_and_a_broken_header(tmp_path):
    info = build_celeba(str(tmp_path / "c"))
    path = os.path.join(info["root"], "list_attr_celeba.txt")
    with open(path) as fh:
        lines = fh.readlines()
    with open(path, "w") as fh:
        fh.writelines(lines[2:])  # a mirror without the count and names lines: the standard names apply
    rows, _ = run_reader(CelebAReader(size=32), info["root"])
    assert rows[0]["attributes"] == {name.lower(): int(v == 1)
                                     for name, v in zip(CELEBA_ATTRIBUTES, celeba_attribute_values(1))}
    with open(path, "w") as fh:
        fh.writelines(lines[:1] + ["Smiling Young\n"] + lines[2:])
    with pytest.raises(ValueError, match="list_attr_celeba.txt: the header names 2 columns but no row has 2"):
        CelebAReader().list_items(info["root"])
    with open(path, "w") as fh:
        fh.writelines(lines)
    os.unlink(os.path.join(info["root"], "list_landmarks_align_celeba.txt"))
    with open(os.path.join(info["root"], "list_landmarks_align_celeba.txt"), "w") as fh:
        fh.write("8\nlefteye_x lefteye_y\n")
    with pytest.raises(ValueError, match="list_landmarks_align_celeba.txt: the header names 2 columns"):
        CelebAReader().list_items(info["root"])
