"""CelebA-HQ / FFHQ folder reader: recursive listing, odd pixel formats converted, pixel-exact
MATLAB-bicubic resizes, deterministic hash splits, FFHQ metadata (splits, landmarks, provenance,
MD5), quarantine; local and S3."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from fsr_core.data.codec import decode_png
from fsr_core.data.ingest.base import Quarantined
from fsr_core.data.ingest.hq_folder import HQFolderReader
from fsr_core.data.splits import assign_split
from fsr_core.degradation.resize import imresize
from tests.fsr_core.data.ingest.trees import build_celeba_hq, build_ffhq, upload_tree


def run_reader(reader, root):
    rows, records = [], []
    for item in reader.list_items(root):
        for out in reader.process(item):
            (records if isinstance(out, Quarantined) else rows).append(out)
    return rows, records


def name_of(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def reference_rgb(path: str) -> np.ndarray:
    """What the file holds as RGB 8-bit, by OpenCV directly: grey expanded, alpha dropped, 16 -> 8 bit."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def hq_tree(tmp_path_factory) -> str:
    return build_celeba_hq(str(tmp_path_factory.mktemp("celeba_hq")))


@pytest.fixture(scope="module")
def ffhq_tree(tmp_path_factory) -> dict:
    return build_ffhq(str(tmp_path_factory.mktemp("ffhq")))


@pytest.fixture(params=["local", "s3"])
def hq_root(request, hq_tree):
    if request.param == "local":
        return hq_tree
    return upload_tree(hq_tree, f"{request.getfixturevalue('s3_bucket')}/celeba-hq")


def test_celeba_hq_rows_conversions_and_quarantine(hq_root, hq_tree):
    rows, records = run_reader(HQFolderReader("celeba_hq", size=32), hq_root)
    assert [row["meta"]["relative_path"] for row in rows] == [
        "0.jpg", "1.png", "more/2.PNG", "more/deep16.png", "more/grey.png", "more/rgba.png"]
    assert sorted((r.reason, name_of(r.source_uri)) for r in records) == [
        ("empty_file", "zero.png"), ("image_too_small", "tiny.png"), ("not_square", "wide.png")]
    decode = {name_of(row["source_uri"]): row["meta"]["decode"] for row in rows}
    assert decode["grey.png"]["mode"] == "grey" and decode["rgba.png"]["mode"] == "rgba"
    assert decode["deep16.png"]["bit_depth"] == 16
    for row in rows:
        assert (row["height"], row["width"]) == (32, 32) and row["source"] == "celeba_hq"
        assert row["bbox"] == [0.0, 0.0, 64.0, 64.0] and row["meta"]["image_size"] == [64, 64]
        path = os.path.join(hq_tree, *row["meta"]["relative_path"].split("/"))
        np.testing.assert_array_equal(decode_png(row["image_png"]),
                                      imresize(reference_rgb(path), output_size=(32, 32)))
        name = name_of(row["source_uri"])
        assert row["split"] == assign_split(name, {"train": 0.9, "val": 0.05, "test": 0.05}, salt="celeba_hq")
        assert row["meta"]["split_from"] == "hash"


def test_hash_split_fractions_and_native_size(hq_tree):
    rows, _ = run_reader(HQFolderReader("celeba_hq", size=None, split_fractions={"test": 1.0}), hq_tree)
    assert {row["split"] for row in rows} == {"test"}
    first = rows[0]
    assert first["height"] == 64
    np.testing.assert_array_equal(decode_png(first["image_png"]), reference_rgb(os.path.join(hq_tree, "0.jpg")))
    # a listing and its splits are the same on every call
    again, _ = run_reader(HQFolderReader("celeba_hq", size=None, split_fractions={"test": 1.0}), hq_tree)
    assert [row["id"] for row in rows] == [row["id"] for row in again]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_ffhq_metadata(where, ffhq_tree, request):
    root = ffhq_tree["root"]
    if where == "s3":
        root = upload_tree(root, f"{request.getfixturevalue('s3_bucket')}/ffhq")
    rows, records = run_reader(HQFolderReader("ffhq", size=32), root)
    by_name = {name_of(row["source_uri"]): row for row in rows}
    assert sorted(by_name) == ["00000.png", "00001.png", "00003.png"]
    assert [(name_of(r.source_uri), r.reason) for r in records] == [("00002.png", "checksum_mismatch")]
    assert by_name["00000.png"]["split"] == "train" and by_name["00001.png"]["split"] == "val"
    assert by_name["00000.png"]["meta"]["split_from"] == "official"
    assert by_name["00003.png"]["meta"]["split_from"] == "hash" and by_name["00003.png"]["landmarks"] is None
    provenance = by_name["00001.png"]["meta"]["provenance"]
    assert provenance["photo_url"] == "https://www.flickr.com/photos/x/1/" and provenance["license"] == "Attribution License"
    points = np.asarray(ffhq_tree["records"]["0"]["image"]["face_landmarks"], dtype=np.float64)
    np.testing.assert_allclose(by_name["00000.png"]["landmarks"], ((points + 0.5) * 0.5 - 0.5).reshape(-1))
    assert len(by_name["00000.png"]["landmarks"]) == 136


def test_ffhq_without_metadata_or_checks(ffhq_tree):
    rows, records = run_reader(HQFolderReader("ffhq", size=32, verify_md5=False), ffhq_tree["root"])
    assert len(rows) == 4 and records == []
    rows, _ = run_reader(HQFolderReader("ffhq", size=32, metadata_file=None), ffhq_tree["root"])
    assert all(row["meta"]["split_from"] == "hash" and row["landmarks"] is None for row in rows)
    # CelebA-HQ never reads FFHQ's metadata, even if the file is there
    rows, _ = run_reader(HQFolderReader("celeba_hq", size=32), ffhq_tree["root"])
    assert all(row["meta"]["split_from"] == "hash" for row in rows)


def test_setup_errors(tmp_path):
    with pytest.raises(ValueError, match="source must be one of"):
        HQFolderReader("lfw")
    with pytest.raises(ValueError, match="sum to 1"):
        HQFolderReader("ffhq", split_fractions={"train": 0.5})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no PNG/JPEG images"):
        HQFolderReader("ffhq").list_items(str(tmp_path))
