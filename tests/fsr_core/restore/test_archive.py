"""Per-file restoration logic: safe output names, tracking, feathered paste-back, detect -> align records."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from fsr_core.data.detection import align_face
from fsr_core.restore.archive import (
    ArchiveSettings,
    FrameRecord,
    IoUTracker,
    Quarantine,
    UnsafePath,
    feather_mask,
    iter_file_records,
    join_under,
    media_kind,
    paste_back,
    restored_matrix,
    safe_relative_path,
)


@pytest.mark.parametrize("name", ["../evil.jpg", "a/../../evil.jpg", "/etc/passwd.jpg", "a//b.jpg", "./a.jpg",
                                  "C:/x.jpg", "\\\\server\\x.jpg", "a/..", "", "a\x00b.jpg", "a\nb.jpg",
                                  "a\\..\\..\\evil.jpg"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafePath):
        safe_relative_path(name)


@pytest.mark.parametrize("name", ["..%2f..%2fevil.jpg", "ph otos/été/x?.jpg", ".hidden.png", "a/b/c.JPG",
                                  "x" * 300 + ".png", "...jpg"])
def test_safe_names_stay_below_the_root(name, tmp_path):
    safe = safe_relative_path(name)
    assert safe == safe_relative_path(name)  # deterministic
    parts = safe.split("/")
    assert all(part and not part.startswith(".") and ".." not in part for part in parts)
    assert all(c.isalnum() and c.isascii() or c in "._-/" for c in safe)
    assert len(parts[-1]) <= 110
    path = join_under(str(tmp_path), safe)
    assert os.path.realpath(path).startswith(os.path.realpath(tmp_path) + os.sep)


def test_names_that_sanitise_alike_do_not_collide():
    assert safe_relative_path("a b.jpg") != safe_relative_path("a?b.jpg")
    assert safe_relative_path("a b.jpg").startswith("a_b.jpg-")


@pytest.mark.parametrize("relative", ["../x.png", "a/../../x.png", "/abs.png", "a/./b.png", ""])
def test_join_under_refuses_escapes(relative, tmp_path):
    with pytest.raises(UnsafePath):
        join_under(str(tmp_path), relative)


def test_media_kind():
    assert media_kind("a/b.JPG") == "image" and media_kind("x.webp") == "image" and media_kind("c.tiff") == "image"
    assert media_kind("v/clip.MKV") == "video" and media_kind("m.mov") == "video"
    assert media_kind("notes.txt") is None and media_kind("archive.zip") is None


def test_tracker_keeps_ids_and_starts_new_tracks():
    tracker = IoUTracker(iou_threshold=0.3, max_gap=1)
    assert tracker.update([[0, 0, 10, 10], [50, 50, 60, 60]]) == [0, 1]
    assert tracker.update([[51, 51, 61, 61], [1, 1, 11, 11]]) == [1, 0]  # order does not matter
    assert tracker.update([[100, 100, 110, 110]]) == [2]  # a new face
    assert tracker.update([]) == []
    assert tracker.update([[1, 0, 11, 10]]) == [3]  # track 0 was gone for more than max_gap frames


def test_tracker_state_continues_exactly():
    import json

    boxes = [[[0, 0, 10, 10], [50, 50, 60, 60]], [[1, 1, 11, 11]], [], [[52, 52, 62, 62], [2, 1, 12, 11]],
             [[90, 90, 99, 99]]]
    whole = IoUTracker(iou_threshold=0.3, max_gap=2)
    expected = [whole.update(b) for b in boxes]
    first = IoUTracker(iou_threshold=0.3, max_gap=2)
    ids = [first.update(b) for b in boxes[:2]]
    second = IoUTracker.from_state(json.loads(json.dumps(first.state())))  # through JSON, as between chunks
    ids += [second.update(b) for b in boxes[2:]]
    assert ids == expected == [[0, 1], [0], [], [1, 0], [2]]


def test_feather_mask_ramps_from_edges():
    mask = feather_mask(20, 0.25)
    assert mask.shape == (20, 20) and mask.dtype == np.float32
    assert mask[10, 10] == 1.0 and mask[0, 0] < 0.2 and np.all(np.diff(mask[10, :10]) >= 0)
    assert np.all(feather_mask(8, 0.0) == 1.0)
    with pytest.raises(ValueError):
        feather_mask(8, 0.7)


def test_restored_matrix_puts_an_upscaled_crop_back_in_place():
    """A bicubic x4 of the LR crop (pixel-edge convention, like the network's output) pasted back with
    :func:`restored_matrix` lands on the frame; the naive ``4 * matrix`` is off by 1.5 px."""
    from fsr_core.degradation.resize import imresize

    rng = np.random.default_rng(0)
    frame = cv2.resize(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8).astype(np.float32), (120, 100),
                       interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    landmarks = np.array([[50.0, 40.0], [70.0, 41.0], [60.0, 52.0], [52.0, 62.0], [68.0, 62.0]])
    crop, matrix = align_face(frame, landmarks, size=32)
    sr = imresize(crop, output_size=(128, 128))[None]
    image, mask = paste_back(frame, sr, [matrix], scale=4, feather=0.0)
    inside = mask == 1
    error = np.abs(image[inside].astype(float) - frame[inside]).mean()
    naive = np.asarray(matrix) * 4
    warped = cv2.warpAffine(sr[0], naive, (120, 100), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
    naive_error = np.abs(warped[inside].astype(float) - frame[inside]).mean()
    assert error < 0.6 * naive_error
    np.testing.assert_allclose(restored_matrix(matrix, 4)[:, :2], naive[:, :2])


def test_paste_back_changes_only_inside_the_masks():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
    landmarks = np.array([[90.0, 70.0], [110.0, 70.0], [100.0, 82.0], [92.0, 92.0], [108.0, 92.0]])
    crop, matrix = align_face(frame, landmarks, size=16)
    restored = np.full((1, 64, 64, 3), 200, np.uint8)
    image, mask = paste_back(frame, restored, [matrix], scale=4, feather=0.1)
    assert image.dtype == np.uint8 and image.shape == frame.shape
    assert np.array_equal(image[mask == 0], frame[mask == 0])
    assert (mask == 0).sum() > 0.5 * mask.size and (mask == 1).sum() > 100
    inside = mask == 1
    assert np.abs(image[inside].astype(int) - 200).max() <= 1  # fully restored where the mask is 1
    ramp = (mask > 0) & (mask < 1)
    assert ramp.sum() > 0  # feathered edge
    # no faces: the frame comes back unchanged
    same, empty = paste_back(frame, restored[:0], [], scale=4)
    assert np.array_equal(same, frame) and not empty.any()


def test_records_of_images_and_bad_files(tmp_path):
    import skimage.data

    astronaut = cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    good = tmp_path / "astro.png"
    good.write_bytes(cv2.imencode(".png", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))[1].tobytes())
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"hello")
    settings = ArchiveSettings(input_size=16)
    (record,) = iter_file_records(str(good), "image", settings)
    assert isinstance(record, FrameRecord) and record.frame_index is None
    assert record.crops.shape == (1, 16, 16, 3) and len(record.faces) == 1
    face = record.faces[0]
    assert face.score > 0.3 and len(face.landmarks) == 10 and face.track_id is None
    assert 80 < face.box[0] < face.box[2] < 140  # the face, not the mission patch
    (bad,) = iter_file_records(str(tmp_path / "empty.jpg"), "image", settings)
    assert isinstance(bad, Quarantine) and bad.reason == "empty_file"
    (bad,) = iter_file_records(str(tmp_path / "text.png"), "image", settings)
    assert bad.reason == "not_an_image"
    (missing,) = iter_file_records(str(tmp_path / "gone.png"), "image", settings)
    assert missing.reason == "missing_file"
    with pytest.raises(ValueError):
        ArchiveSettings(sample_fps=0)
