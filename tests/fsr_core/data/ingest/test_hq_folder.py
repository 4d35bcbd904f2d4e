"""CelebA-HQ / FFHQ folder reader: recursive listing, odd pixel formats converted, pixel-exact
MATLAB-bicubic resizes, deterministic hash splits, FFHQ metadata (splits, landmarks, provenance,
MD5), CelebA-HQ's image list with CelebA's partition and identities, quarantine; local and S3."""

from __future__ import annotations

import os
import re
import shutil

import cv2
import numpy as np
import pytest

from fsr_core.data.codec import decode_png
from fsr_core.data.ingest.base import Quarantined
from fsr_core.data.ingest.hq_folder import HQFolderReader, celeba_hq_index
from fsr_core.data.schema import rows_to_table
from fsr_core.data.splits import assign_split
from fsr_core.degradation.resize import imresize
from tests.fsr_core.data.ingest.trees import (
    build_celeba_hq, build_ffhq, picture, upload_tree, write_jpeg, write_png, write_text,
)


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


# ---------------------------------------------------------------------------- CelebA-HQ official split
# the release's header and rows (a blank line inside is skipped; line numbers still count it)
IMAGE_LIST = """\
idx    orig_idx  orig_file   proc_md5                          final_md5
0      3         000004.jpg  0123456789abcdef0123456789abcdef  fedcba9876543210fedcba9876543210
1      0         000001.jpg  0123456789abcdef0123456789abcdef  fedcba9876543210fedcba9876543210
2      6         000007.jpg  0123456789abcdef0123456789abcdef  fedcba9876543210fedcba9876543210

3      1         000002.jpg  0123456789abcdef0123456789abcdef  fedcba9876543210fedcba9876543210
4      8         000009.jpg  0123456789abcdef0123456789abcdef  fedcba9876543210fedcba9876543210
5      4         000005.jpg  0123456789abcdef0123456789abcdef  fedcba9876543210fedcba9876543210
"""
# CelebA's files: 000004 test, 000001 train, 000007 val, 000002 test; 000009 is not partitioned;
# 000005 is listed as .png (a PNG re-encode of CelebA) and matches by stem. 000007 has no identity.
PARTITION = "000001.jpg 0\n000002.jpg 2\n000004.jpg 2\n000007.jpg 1\n000005.png 0\n000004.jpg 0\n"
IDENTITY = "000001.jpg 2880\n000002.jpg 17\n000004.jpg 2880\n000005.jpg 5\n000009.jpg 1\n"
CELEBA_FILES = {"image_list_file": "image_list.txt", "partition_file": "meta/list_eval_partition.txt",
                "identity_file": "meta/identity_CelebA.txt"}


@pytest.fixture(scope="module")
def official_tree(tmp_path_factory) -> str:
    """CelebA-HQ faces in every recognised naming variant, the release's image list and CelebA's lists."""
    root = str(tmp_path_factory.mktemp("celeba_hq_official"))

    def png(seed: int) -> np.ndarray:
        return cv2.cvtColor(picture(32, 32, seed), cv2.COLOR_RGB2BGR)

    write_png(os.path.join(root, "imgHQ00000.png"), png(30))                       # official name, idx 0
    write_jpeg(os.path.join(root, "CelebA-HQ-img", "1.jpg"), picture(32, 32, 31))  # CelebAMask-HQ, idx 1
    write_png(os.path.join(root, "more", "00002.png"), png(32))                    # zero-padded, idx 2
    write_jpeg(os.path.join(root, "more", "IMGHQ00003.JPEG"), picture(32, 32, 33))  # any case, idx 3
    write_png(os.path.join(root, "4.png"), png(34))                               # original not partitioned
    write_png(os.path.join(root, "5.png"), png(35))                               # partition line names .png
    write_png(os.path.join(root, "29999.png"), png(36))                           # idx not in the list
    write_png(os.path.join(root, "face.png"), png(37))                            # not a CelebA-HQ name
    write_text(os.path.join(root, "image_list.txt"), IMAGE_LIST)
    write_text(os.path.join(root, "meta", "list_eval_partition.txt"), PARTITION)
    write_text(os.path.join(root, "meta", "identity_CelebA.txt"), IDENTITY)
    return root


@pytest.fixture(params=["local", "s3"])
def official_root(request, official_tree):
    if request.param == "local":
        return official_tree
    return upload_tree(official_tree, f"{request.getfixturevalue('s3_bucket')}/celeba-hq-official")


def test_celeba_hq_index_name_forms():
    assert [celeba_hq_index(n) for n in ("imgHQ00000.png", "imghq00012.jpg", "IMGHQ29999.PNG", "7.jpg",
                                         "00042.png", "a/b/00003.jpeg")] == [0, 12, 29999, 7, 42, 3]
    assert [celeba_hq_index(n) for n in ("face.png", "imgHQ.png", "img00001.png", "1_2.png", "١٢.png")] == [None] * 5


def test_official_splits_identities_and_quarantine(official_root):
    rows, records = run_reader(HQFolderReader("celeba_hq", size=16, **CELEBA_FILES), official_root)
    by_name = {name_of(row["source_uri"]): row for row in rows}
    assert {name: (row["split"], row["identity"], row["meta"]["orig_file"], row["meta"]["celeba_hq_idx"])
            for name, row in by_name.items()} == {
        "imgHQ00000.png": ("test", "2880", "000004.jpg", 0),   # the first partition line of a file wins
        "1.jpg": ("train", "2880", "000001.jpg", 1),
        "00002.png": ("val", None, "000007.jpg", 2),            # no identity line: empty, as in CelebA
        "IMGHQ00003.JPEG": ("test", "17", "000002.jpg", 3),
        "5.png": ("train", "5", "000005.jpg", 5),
    }
    assert all(row["meta"]["split_from"] == "official" and row["height"] == 16 for row in rows)
    table = rows_to_table(rows)  # the shard schema takes the identities and the meta
    assert table["identity"].to_pylist() == [row["identity"] for row in rows]
    assert by_name["1.jpg"]["meta"]["relative_path"] == "CelebA-HQ-img/1.jpg"
    assert sorted((name_of(r.source_uri), r.reason) for r in records) == [
        ("29999.png", "not_in_image_list"), ("4.png", "not_in_partition"), ("face.png", "not_in_image_list")]
    details = {name_of(r.source_uri): r.detail for r in records}
    assert "idx 29999 has no row in" in details["29999.png"] and "image_list.txt" in details["29999.png"]
    assert "not a CelebA-HQ file name" in details["face.png"]
    assert "000009.jpg" in details["4.png"] and "list_eval_partition.txt" in details["4.png"]


def test_image_list_without_partition_or_identity(official_tree):
    # identities only: splits stay hashed, rows carry identities
    rows, records = run_reader(HQFolderReader("celeba_hq", size=16, image_list_file="image_list.txt",
                                              identity_file="meta/identity_CelebA.txt"), official_tree)
    assert len(rows) == 6 and [r.reason for r in records] == ["not_in_image_list"] * 2
    for row in rows:
        assert row["meta"]["split_from"] == "hash"
        assert row["split"] == assign_split(name_of(row["source_uri"]), {"train": 0.9, "val": 0.05, "test": 0.05},
                                            salt="celeba_hq")
    assert {name_of(r["source_uri"]): r["identity"] for r in rows}["4.png"] == "1"
    # the list alone: orig_file recorded, no identities
    rows, _ = run_reader(HQFolderReader("celeba_hq", size=16, image_list_file="image_list.txt"), official_tree)
    assert all(row["identity"] is None and row["meta"]["orig_file"].endswith(".jpg") for row in rows)


def test_without_the_files_nothing_changes(official_tree):
    """Not configured: the lists lying under the root are not read, every image is hash-split."""
    rows, records = run_reader(HQFolderReader("celeba_hq", size=16), official_tree)
    assert len(rows) == 8 and records == []
    for row in rows:
        assert row["meta"]["split_from"] == "hash" and row["identity"] is None and "orig_file" not in row["meta"]
        assert row["split"] == assign_split(name_of(row["source_uri"]), {"train": 0.9, "val": 0.05, "test": 0.05},
                                            salt="celeba_hq")


def _copy_with(tmp_path, official_tree, relative: str, text: str) -> str:
    root = tmp_path / "root"
    shutil.copytree(official_tree, root)
    (root / relative).write_text(text)
    return str(root)


@pytest.mark.parametrize("relative, text, message", [
    ("image_list.txt", IMAGE_LIST.replace("2      6         000007.jpg", "2      6"), "line 4: expected 5 fields"),
    ("image_list.txt", IMAGE_LIST.replace("\n4      8", "\nfour   8"), "line 7: idx and orig_idx must be"),
    ("image_list.txt", IMAGE_LIST.replace("\n4      8", "\n1      8"), "line 7: idx 1 is already listed on line 3"),
    ("image_list.txt", IMAGE_LIST.replace("000009.jpg", "000009"), "line 7: orig_file '000009' is not"),
    ("image_list.txt", "index orig file\n" + IMAGE_LIST, "line 1: expected the header"),
    ("image_list.txt", "\n", "no rows"),
    ("meta/list_eval_partition.txt", PARTITION.replace("000007.jpg 1", "000007.jpg 3"),
     "line 4: partition '3' is not one of"),
    ("meta/list_eval_partition.txt", PARTITION.replace("000002.jpg 2", "000002.jpg 2 x"), "line 2: expected"),
    ("meta/identity_CelebA.txt", IDENTITY + "2880\n", "line 6: expected '<file name> <identity>'"),
])
def test_malformed_lines_raise_naming_file_and_line(tmp_path, official_tree, relative, text, message):
    root = _copy_with(tmp_path, official_tree, relative, text)
    reader = HQFolderReader("celeba_hq", size=16, **CELEBA_FILES)
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        reader.list_items(root)
    assert str(caught.value).startswith(os.path.join(root, *relative.split("/")) + ": ")


def test_header_optional_and_missing_files(tmp_path, official_tree):
    root = _copy_with(tmp_path, official_tree, "image_list.txt", IMAGE_LIST.split("\n", 1)[1])
    rows, _ = run_reader(HQFolderReader("celeba_hq", size=16, **CELEBA_FILES), root)
    assert len(rows) == 5
    for key in CELEBA_FILES:
        files = dict(CELEBA_FILES, **{key: "nowhere/absent.txt"})
        with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(root, "nowhere", "absent.txt"))):
            HQFolderReader("celeba_hq", **files).list_items(root)


def test_celeba_files_setup_errors():
    with pytest.raises(ValueError, match="need image_list_file"):
        HQFolderReader("celeba_hq", partition_file="list_eval_partition.txt")
    with pytest.raises(ValueError, match="need image_list_file"):
        HQFolderReader("celeba_hq", identity_file="identity_CelebA.txt")
    with pytest.raises(ValueError, match="not read for source 'ffhq'"):
        HQFolderReader("ffhq", image_list_file="image_list.txt")
    # the stage's parameters refuse it at configuration time, and pass the files to the reader
    from pipelines.stages.ingest import CelebAHQParams

    with pytest.raises(ValueError, match="need image_list_file"):
        CelebAHQParams(partition_file="list_eval_partition.txt")
    params = CelebAHQParams(**CELEBA_FILES)
    assert (params.image_list_file, params.partition_file, params.identity_file) == tuple(CELEBA_FILES.values())


def test_celebamask_hq_mapping_file_gives_the_same_rows(tmp_path, official_tree):
    """CelebAMask-HQ ships ``CelebA-HQ-to-CelebA-mapping.txt``: the first three columns of the list."""
    mapping = "\n".join(" ".join(line.split()[:3]) for line in IMAGE_LIST.splitlines()) + "\n"
    root = _copy_with(tmp_path, official_tree, "CelebA-HQ-to-CelebA-mapping.txt", mapping)
    files = dict(CELEBA_FILES, image_list_file="CelebA-HQ-to-CelebA-mapping.txt")
    rows, records = run_reader(HQFolderReader("celeba_hq", size=16, **files), root)
    expected, expected_records = run_reader(HQFolderReader("celeba_hq", size=16, **CELEBA_FILES), official_tree)
    assert [(r["id"], r["split"], r["identity"]) for r in rows] == \
        [(r["id"], r["split"], r["identity"]) for r in expected]
    assert [(r.reason, r.detail.split(":")[0]) for r in records if r.reason != "not_in_image_list"] == \
        [(r.reason, r.detail.split(":")[0]) for r in expected_records if r.reason != "not_in_image_list"]
    bad = _copy_with(tmp_path / "bad", official_tree, "CelebA-HQ-to-CelebA-mapping.txt",
                     mapping.replace("\n2 6 000007.jpg", "\n2 6 000007.jpg x y"))
    with pytest.raises(ValueError, match="line 4: expected 3 fields"):
        HQFolderReader("celeba_hq", **files).list_items(bad)


@pytest.mark.parametrize("name", ["../celeba/list_eval_partition.txt", "/abs/list_eval_partition.txt",
                                  "s3://bucket/list_eval_partition.txt", "meta/../../x.txt"])
def test_annotation_files_must_lie_below_the_root(official_tree, name):
    with pytest.raises(ValueError, match="must be a path below the root"):
        HQFolderReader("celeba_hq", **dict(CELEBA_FILES, partition_file=name)).list_items(official_tree)
