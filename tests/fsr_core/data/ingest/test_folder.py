"""Folder-of-images reader: faces detected in real photos at several sizes and formats, bad files quarantined."""

from __future__ import annotations

import json
import math
import os
import pickle

import cv2
import numpy as np
import pytest
import skimage.data

from fsr_core import storage
from fsr_core.data.codec import decode_png
from fsr_core.data.detection import TEMPLATES, invert_affine, transform_points
from fsr_core.data.ingest.base import Quarantined
from fsr_core.data.ingest.folder import FolderReader
from fsr_core.data.schema import rows_to_table
from fsr_core.data.splits import assign_split
from fsr_core.degradation.resize import imresize

FACE = (172.0, 66.0, 268.0, 172.0)  # the astronaut's face in the 512x512 original (see test_detection.py)
SIZE = 64
# file -> scale of the astronaut in it (faces), or the quarantine reason expected
FACES = {"astronaut.png": 1.0, "grey.png": 0.75, "rgba.png": 0.6, "sub/small.jpg": 0.5}
BAD = {
    "broken.jpg": "corrupt_image",
    "cut.png": "truncated_image",
    "coffee.png": "no_face",
    "empty.png": "empty_file",
    "sub/notes.jpg": "not_an_image",
}


def build_folder(root: str) -> None:
    astronaut = skimage.data.astronaut()
    os.makedirs(os.path.join(root, "sub"))

    def write(name: str, image: np.ndarray) -> None:
        assert cv2.imwrite(os.path.join(root, name), image)

    write("astronaut.png", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    write("grey.png", cv2.cvtColor(imresize(astronaut, scale=0.75), cv2.COLOR_RGB2GRAY))
    rgba = cv2.cvtColor(imresize(astronaut, scale=0.6), cv2.COLOR_RGB2BGRA)
    rgba[..., 3] = 200
    write("rgba.png", rgba)
    write("sub/small.jpg", cv2.cvtColor(imresize(astronaut, scale=0.5), cv2.COLOR_RGB2BGR))
    write("coffee.png", cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR))
    png = open(os.path.join(root, "astronaut.png"), "rb").read()
    with open(os.path.join(root, "cut.png"), "wb") as fh:
        fh.write(png[: len(png) // 2])
    with open(os.path.join(root, "broken.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(3000) + b"\xff\xd9")
    with open(os.path.join(root, "empty.png"), "wb"):
        pass
    with open(os.path.join(root, "sub", "notes.jpg"), "w") as fh:
        fh.write("not a picture\n")
    with open(os.path.join(root, "readme.txt"), "w") as fh:
        fh.write("not listed\n")
    with open(os.path.join(root, ".hidden.png"), "wb") as fh:
        fh.write(png)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("photos"))
    build_folder(root)
    return root


@pytest.fixture(scope="module")
def reader() -> FolderReader:
    return FolderReader(size=SIZE, upsample=1, score_threshold=0.3)


@pytest.fixture(scope="module")
def results(folder, reader) -> dict[str, list]:
    return {item.annotations["relative_path"]: list(reader.process(item)) for item in reader.list_items(folder)}


def test_lists_images_recursively_sorted_with_hash_splits(folder, reader):
    items = reader.list_items(folder)
    relative = [item.annotations["relative_path"] for item in items]
    assert relative == sorted(FACES.keys() | BAD.keys())  # not readme.txt, not .hidden.png
    for item in items:
        assert item.split == assign_split(item.annotations["relative_path"], reader.split_fractions, salt="folder")
        assert item.uri == os.path.join(folder, *item.annotations["relative_path"].split("/"))


def test_one_row_per_face_with_crop_landmarks_and_box(results):
    for name, scale in FACES.items():
        out = results[name]
        assert len(out) == 1 and isinstance(out[0], dict), (name, out)
        row = out[0]
        crop = decode_png(row["image_png"])
        assert crop.shape == (SIZE, SIZE, 3) and (row["height"], row["width"]) == (SIZE, SIZE)
        points = np.asarray(row["landmarks"]).reshape(5, 2)
        assert np.all((points >= 0) & (points < SIZE))
        assert np.all(np.linalg.norm(points[:2] - TEMPLATES["ffhq"][:2] * SIZE, axis=1) < 1.5)  # aligned eyes
        quality, meta = json.loads(json.dumps(row["quality"])), row["meta"]
        assert quality["detector"] == "hog" and quality["detector_score"] > 0.3 and not quality["clipped"]
        assert quality["face_size"] == pytest.approx(91 * scale, rel=0.2)
        assert meta["image_size"] == [math.ceil(512 * scale)] * 2
        assert meta["landmark_model"] == "dlib5" and meta["landmarks_estimated"] == [2, 3, 4]
        assert meta["crop"] == {"mode": "align", "template": "ffhq"}
        # the detected face lies on the astronaut's face, and the crop region contains it
        x0, y0, x1, y1 = (v / scale for v in meta["face_box"])
        assert x0 < (FACE[0] + FACE[2]) / 2 < x1 and y0 < (FACE[1] + FACE[3]) / 2 < y1
        bx0, by0, bx1, by1 = row["bbox"]
        assert bx0 <= meta["face_box"][0] and bx1 >= meta["face_box"][2]
        # meta.matrix maps the crop's landmarks back into the source, inside the face box
        source_points = transform_points(points, invert_affine(np.asarray(meta["matrix"])))
        fx0, fy0, fx1, fy1 = meta["face_box"]
        assert np.all((source_points[:, 0] > fx0) & (source_points[:, 0] < fx1))
        assert row["split"] == assign_split(name, {"train": 0.9, "val": 0.05, "test": 0.05}, salt="folder")
        assert row["frame_index"] is None and row["source"] == "folder"
    assert results["grey.png"][0]["meta"]["decode"]["mode"] == "grey"
    assert results["rgba.png"][0]["meta"]["decode"]["mode"] == "rgba"
    assert results["sub/small.jpg"][0]["meta"]["decode"]["format"] == "jpeg"
    grey_crop = decode_png(results["grey.png"][0]["image_png"])
    assert np.array_equal(grey_crop[..., 0], grey_crop[..., 1])
    rows = [row for name in FACES for row in results[name]]
    table = rows_to_table(rows)  # the schema accepts them
    assert table.num_rows == len(FACES) and len(set(table.column("id").to_pylist())) == len(FACES)


def test_bad_files_and_faceless_images_are_quarantined(results):
    for name, reason in BAD.items():
        out = results[name]
        assert len(out) == 1 and isinstance(out[0], Quarantined), (name, out)
        assert out[0].reason == reason, (name, out[0])
        assert out[0].source_uri.endswith(name.split("/")[-1])
    assert "600x400" in results["coffee.png"][0].detail


def test_processing_is_deterministic_and_survives_pickling(folder, reader, results):
    copy = pickle.loads(pickle.dumps(reader))
    for item in copy.list_items(folder)[:2]:
        again = list(copy.process(item))
        before = results[item.annotations["relative_path"]]
        assert [r["id"] if isinstance(r, dict) else r for r in again] == [
            r["id"] if isinstance(r, dict) else r for r in before
        ]
        assert [r["image_png"] for r in again if isinstance(r, dict)] == [
            r["image_png"] for r in before if isinstance(r, dict)
        ]


def test_margin_crops_are_squares_around_the_box(folder):
    reader = FolderReader(size=48, crop="margin", margin=0.25, upsample=1, score_threshold=0.3)
    item = next(i for i in reader.list_items(folder) if i.annotations["relative_path"] == "astronaut.png")
    (row,) = list(reader.process(item))
    x0, y0, x1, y1 = row["bbox"]
    fx0, fy0, fx1, fy1 = row["meta"]["face_box"]
    assert x1 - x0 == y1 - y0 == math.floor((fy1 - fy0) * 1.5 + 0.5)  # rounded half up
    assert (x0 + x1) / 2 == pytest.approx((fx0 + fx1) / 2, abs=1)
    assert (y0 + y1) / 2 == pytest.approx((fy0 + fy1) / 2, abs=1)
    astronaut = skimage.data.astronaut()
    expected = imresize(astronaut[int(y0):int(y1), int(x0):int(x1)], output_size=(48, 48))
    assert np.array_equal(decode_png(row["image_png"]), expected)
    assert row["meta"]["crop"] == {"mode": "margin", "margin": 0.25}


def test_max_faces_and_settings_errors(folder):
    reader = FolderReader(size=32, upsample=1, max_faces=1)  # dlib's default threshold: the patch also fires
    item = next(i for i in reader.list_items(folder) if i.annotations["relative_path"] == "astronaut.png")
    rows = list(reader.process(item))
    assert len(rows) == 1 and rows[0]["quality"]["detector_score"] > 1.0
    assert len(list(FolderReader(size=32, upsample=1).process(item))) == 2
    with pytest.raises(ValueError, match="crop must be one of"):
        FolderReader(crop="stretch")
    with pytest.raises(FileNotFoundError, match="shape_predictor_5_face_landmarks.dat"):
        FolderReader(model_paths={"dlib5": os.path.join(folder, "missing.dat")})
    with pytest.raises(FileNotFoundError, match="no image files"):
        FolderReader().list_items(os.path.join(folder, "nowhere"))


def test_reads_the_same_rows_from_s3(folder, reader, results, s3_bucket):
    prefix = f"{s3_bucket}/photos"
    for name in ("astronaut.png", "sub/small.jpg", "empty.png", "coffee.png", "readme.txt"):
        storage.upload_file(os.path.join(folder, *name.split("/")), f"{prefix}/{name}")
    items = reader.list_items(prefix)
    relative = [i.annotations["relative_path"] for i in items]
    assert relative == ["astronaut.png", "coffee.png", "empty.png", "sub/small.jpg"]
    assert items[0].uri == f"{prefix}/astronaut.png"
    for item in items:
        out = list(reader.process(item))
        local = results[item.annotations["relative_path"]]
        assert [(r["id"], r["image_png"], r["split"]) if isinstance(r, dict) else r.reason for r in out] == [
            (r["id"], r["image_png"], r["split"]) if isinstance(r, dict) else r.reason for r in local
        ]
        assert all(r["source_uri"] == item.uri for r in out if isinstance(r, dict))


def test_symbolic_links_are_followed_only_inside_the_folder(tmp_path, reader):
    root = tmp_path / "photos"
    root.mkdir()
    astronaut = cv2.cvtColor(imresize(skimage.data.astronaut(), scale=0.5), cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(root / "face.png"), astronaut)
    assert cv2.imwrite(str(tmp_path / "private.png"), astronaut)
    os.symlink(root / "face.png", root / "inside.png")
    os.symlink(tmp_path / "private.png", root / "outside.png")
    os.symlink(root / "gone.png", root / "broken.png")
    os.symlink(tmp_path, root / "up")  # a folder link: not descended into (up/private.png is not listed)
    items = reader.list_items(str(root))
    assert [i.annotations["relative_path"] for i in items] == ["broken.png", "face.png", "inside.png", "outside.png"]
    outcome = {}
    for item in items:
        (first, *_) = list(reader.process(item))
        outcome[item.annotations["relative_path"]] = getattr(first, "reason", "face")
    assert outcome == {"broken.png": "broken_link", "face.png": "face", "inside.png": "face",
                       "outside.png": "link_outside_root"}
