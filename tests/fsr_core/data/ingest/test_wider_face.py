"""WIDER FACE reader: the annotation syntax and its edge cases, crop geometry, pixel-exact crops
against OpenCV, flags, filters, splits and quarantine reasons, on a local tree and on S3."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from fsr_core.data.codec import decode_png
from fsr_core.data.ingest.base import Quarantined
from fsr_core.data.ingest.wider_face import WiderFaceReader, crop_region, parse_bbx_gt
from fsr_core.degradation.resize import imresize
from tests.fsr_core.data.ingest.trees import WIDER_TRAIN_GT, build_wider, upload_tree


def run_reader(reader, root):
    rows, records = [], []
    for item in reader.list_items(root):
        for out in reader.process(item):
            (records if isinstance(out, Quarantined) else rows).append(out)
    return rows, records


def name_of(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def local_path(local_root: str, row) -> str:
    return os.path.join(local_root, *row["meta"]["relative_path"].split("/"))


def reference_crop(path: str, box) -> np.ndarray:
    """A direct OpenCV crop: imread, BGR -> RGB, slice."""
    image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    left, top, right, bottom = (int(v) for v in box)
    return image[top:bottom, left:right]


@pytest.fixture(scope="module")
def local_tree(tmp_path_factory) -> str:
    return build_wider(str(tmp_path_factory.mktemp("wider")))


@pytest.fixture(params=["local", "s3"])
def tree(request, local_tree):
    """``(root to read, local copy of the same files)``."""
    if request.param == "local":
        return local_tree, local_tree
    bucket = request.getfixturevalue("s3_bucket")
    return upload_tree(local_tree, f"{bucket}/datasets/wider"), local_tree


# ---------------------------------------------------------------------------- syntax
def test_parse_real_syntax_and_edge_cases():
    blocks, stray = parse_bbx_gt(WIDER_TRAIN_GT)
    assert stray == []
    by_name = {block.name: block for block in blocks}
    assert len(blocks) == 11
    parade = by_name["0--Parade/0_Parade_a.jpg"]
    assert parade.line == 1 and parade.error is None
    assert parade.faces == ((10, 12, 30, 36, 0, 0, 0, 0, 0, 0), (60, 20, 24, 24, 2, 1, 1, 0, 1, 1),
                            (80, 50, 20, 20, 0, 0, 0, 1, 0, 0))
    # a 0 count is followed by one line of ten zeros: no faces, no error, and the next block is intact
    assert by_name["0--Parade/0_Parade_b.jpg"].faces == () and by_name["0--Parade/0_Parade_b.jpg"].error is None
    assert len(by_name["1--Handshaking/1_c.jpg"].faces) == 4
    wrong_fields = by_name["1--Handshaking/1_d.jpg"].error
    assert wrong_fields[0] == "malformed_annotation" and "line 18" in wrong_fields[1] and "got 9" in wrong_fields[1]
    assert "face count 3, but 2 box line(s)" in by_name["1--Handshaking/1_e.jpg"].error[1]
    assert "non-integer" in by_name["1--Handshaking/1_f.jpg"].error[1]
    assert by_name["2--Demo/2_grey.jpg"].faces == ((20, 16, 40, 40, 0, 0, 0, 0, 2, 0),)


def test_parse_tolerates_missing_zero_line_and_reports_the_rest():
    text = ("junk before anything\n"
            "a/1.jpg\n0\n"                      # 0 count without the zeros line (tolerated)
            "a/2.jpg\n0\n5 5 10 10 0 0 0 0 0 0\n"  # 0 count but a real box follows
            "a/3.jpg\n"                          # no count line at all
            "a/4.jpg\n-1\n"
            "a/5.jpg\r\n1\r\n1 2 3 4 0 0 0 0 0 0")  # CRLF, no final newline
    blocks, stray = parse_bbx_gt(text)
    assert stray == [(1, "junk before anything")]
    errors = {block.name: block.error for block in blocks}
    assert errors["a/1.jpg"] is None
    assert "face count 0" in errors["a/2.jpg"][1]
    assert "without a face-count line" in errors["a/3.jpg"][1]
    assert "negative" in errors["a/4.jpg"][1]
    assert errors["a/5.jpg"] is None and blocks[-1].faces == ((1, 2, 3, 4, 0, 0, 0, 0, 0, 0),)


def test_crop_region_geometry():
    # an integer box with no margin and no squaring is returned as it is
    assert crop_region((10, 12, 40, 48), margin=0, square=False, image_size=(96, 120)) == ((10, 12, 40, 48), False)
    # square around the centre: side = the longer side (36), centre (25, 30)
    assert crop_region((10, 12, 40, 48), margin=0, square=True, image_size=(96, 120)) == ((7, 12, 43, 48), False)
    # margin 0.25 on each side: 30 x 36 -> 45 x 54 around the centre
    assert crop_region((10, 12, 40, 48), margin=0.25, square=False, image_size=(96, 120)) == ((3, 3, 48, 57), False)
    # clipped at the right edge, and flagged
    assert crop_region((100, 30, 132, 62), margin=0, square=True, image_size=(90, 120)) == ((100, 30, 120, 62), True)
    with pytest.raises(ValueError, match="no area"):
        crop_region((5, 5, 5, 9), margin=0, square=True, image_size=(10, 10))


# ---------------------------------------------------------------------------- reader
def test_rows_flags_and_quarantine_reasons(tree):
    root, _ = tree
    rows, records = run_reader(WiderFaceReader(), root)
    kept = sorted((name_of(row["source_uri"]), tuple(row["bbox"])) for row in rows)
    assert kept == [
        ("0_Parade_a.jpg", (7.0, 12.0, 43.0, 48.0)),
        ("0_Parade_a.jpg", (60.0, 20.0, 84.0, 44.0)),
        ("1_c.jpg", (100.0, 30.0, 120.0, 62.0)),
        ("2_grey.jpg", (20.0, 16.0, 60.0, 56.0)),
        ("3_Riot_v.jpg", (8.0, 8.0, 56.0, 56.0)),
    ]
    reasons = sorted((name_of(r.source_uri), r.reason) for r in records)
    assert reasons == [
        ("0_Parade_a.jpg", "flag_invalid"),
        ("1_c.jpg", "box_outside_image"),
        ("1_c.jpg", "empty_box"),
        ("1_c.jpg", "face_too_small"),
        ("1_d.jpg", "malformed_annotation"),
        ("1_e.jpg", "malformed_annotation"),
        ("1_f.jpg", "malformed_annotation"),
        ("2_empty.jpg", "empty_file"),
        ("2_missing.jpg", "missing_file"),
        ("2_text.jpg", "not_an_image"),
        ("2_truncated.jpg", "truncated_image"),
    ]
    # skipped faces carry their annotated box
    outside = next(r for r in records if r.reason == "box_outside_image")
    assert outside.bbox == [200.0, 10.0, 220.0, 30.0]

    for row in rows:
        assert row["height"] == row["width"] == 16 and row["source"] == "wider_face"
        assert decode_png(row["image_png"]).shape == (16, 16, 3)
        assert row["split"] == ("val" if "WIDER_val" in row["source_uri"] else "train")
        assert set(row["quality"]) == {"blur", "expression", "illumination", "invalid", "occlusion", "pose", "clipped"}
        assert len(row["meta"]["content_sha256"]) == 64
    flagged = next(row for row in rows if row["bbox"][0] == 60.0)
    assert flagged["quality"] == {"blur": 2, "expression": 1, "illumination": 1, "invalid": 0, "occlusion": 1,
                                  "pose": 1, "clipped": False}
    clipped = next(row for row in rows if name_of(row["source_uri"]) == "1_c.jpg")
    assert clipped["quality"]["clipped"] is True
    assert clipped["meta"]["crop_size"] == [32, 20] and clipped["meta"]["image_size"] == [90, 120]
    assert clipped["meta"]["face_box_xywh"] == [100, 30, 32, 32]
    grey = next(row for row in rows if name_of(row["source_uri"]) == "2_grey.jpg")
    assert grey["meta"]["decode"]["mode"] == "grey"
    assert len({row["id"] for row in rows}) == len(rows)


def test_crops_are_pixel_exact_against_opencv(tree):
    root, local_root = tree
    rows, _ = run_reader(WiderFaceReader(), root)
    for row in rows:
        direct = reference_crop(local_path(local_root, row), row["bbox"])
        assert list(direct.shape[:2]) == row["meta"]["crop_size"]
        np.testing.assert_array_equal(decode_png(row["image_png"]), imresize(direct, output_size=(16, 16)))


def test_margin_without_resize_is_the_direct_crop(local_tree):
    reader = WiderFaceReader(margin=0.25, square=False, lr_size=None, min_size=1, splits=("train",))
    rows, _ = run_reader(reader, local_tree)
    first = next(row for row in rows if name_of(row["source_uri"]) == "0_Parade_a.jpg")
    assert first["bbox"] == [3.0, 3.0, 48.0, 57.0] and (first["height"], first["width"]) == (54, 45)
    np.testing.assert_array_equal(decode_png(first["image_png"]),
                                  reference_crop(local_path(local_tree, first), first["bbox"]))
    # min_size=1 keeps the 8x8 face too; every crop keeps its own size
    assert any(row["meta"]["face_box_xywh"] == [5, 5, 8, 8] and row["height"] == 12 for row in rows)


def test_flag_filters(local_tree):
    reader = WiderFaceReader(drop_invalid=False, max_blur=1, allow_atypical_pose=False, max_occlusion=1)
    rows, records = run_reader(reader, local_tree)
    reasons = {(name_of(r.source_uri), r.reason) for r in records}
    assert ("0_Parade_a.jpg", "flag_blur") in reasons          # blur 2 > 1 (checked before pose)
    assert ("2_grey.jpg", "flag_occlusion") in reasons          # occlusion 2 > 1
    assert any(row["quality"]["invalid"] == 1 for row in rows)  # the invalid box is kept now
    strict = WiderFaceReader(max_blur=2, allow_atypical_pose=False, allow_exaggerated_expression=False)
    _, records = run_reader(strict, local_tree)
    assert ("0_Parade_a.jpg", "flag_atypical_pose") in {(name_of(r.source_uri), r.reason) for r in records}


def test_splits_and_the_test_split(local_tree):
    rows, records = run_reader(WiderFaceReader(splits=("val",)), local_tree)
    assert [row["split"] for row in rows] == ["val"] and records == []
    with pytest.raises(ValueError, match="WIDER FACE test has no annotations"):
        WiderFaceReader(splits=("train", "test"))
    with pytest.raises(ValueError, match="subset"):
        WiderFaceReader(splits=("dev",))


def test_missing_layout_is_a_setup_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wider_face_train_bbx_gt.txt"):
        WiderFaceReader().list_items(str(tmp_path))


def test_duplicate_annotation_block_keeps_the_first(tmp_path):
    root = build_wider(str(tmp_path / "w"))
    gt = tmp_path / "w" / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    gt.write_text(gt.read_text() + "3--Riot/3_Riot_v.jpg\n1\n1 1 40 40 0 0 0 0 0 0\n")
    rows, records = run_reader(WiderFaceReader(splits=("val",)), root)
    assert [row["bbox"] for row in rows] == [[8.0, 8.0, 56.0, 56.0]]
    assert [r.reason for r in records] == ["duplicate_annotation"] and "line 1 is used" in records[0].detail


def test_ids_do_not_depend_on_where_the_data_lives(local_tree, s3_bucket):
    local_rows, _ = run_reader(WiderFaceReader(), local_tree)
    s3_rows, _ = run_reader(WiderFaceReader(), upload_tree(local_tree, f"{s3_bucket}/elsewhere"))
    assert [row["id"] for row in local_rows] == [row["id"] for row in s3_rows]
    assert [row["image_png"] for row in local_rows] == [row["image_png"] for row in s3_rows]
    assert all(row["source_uri"].startswith(s3_bucket) for row in s3_rows)
    assert json.dumps([r["meta"]["content_sha256"] for r in local_rows]) == json.dumps(
        [r["meta"]["content_sha256"] for r in s3_rows])


def test_images_whose_faces_all_fail_the_pixel_free_rules_are_not_read(tmp_path):
    root = build_wider(str(tmp_path / "w"))
    gt = tmp_path / "w" / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    # absent file: with only a tiny and an invalid face it is never opened, so no missing_file
    gt.write_text(gt.read_text() + "3--Riot/absent.jpg\n2\n1 1 6 6 0 0 0 0 0 0\n1 1 40 40 0 0 0 1 0 0\n")
    _, records = run_reader(WiderFaceReader(splits=("val",)), root)
    assert sorted((name_of(r.source_uri), r.reason) for r in records) == [
        ("absent.jpg", "face_too_small"), ("absent.jpg", "flag_invalid")]
