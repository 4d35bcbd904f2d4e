"""Face detection (dlib HOG/CNN, MTCNN), landmarks and alignment on real photos from scikit-image.

Reference geometry of ``skimage.data.astronaut()`` (512x512), measured once with the detectors:
HOG box (175, 76, 266, 167), CNN box (168, 69, 264, 165), MTCNN box (181, 63, 267, 174); eye
centres from dlib's 68-point model (203.2, 101.5) and (246.5, 104.2), mouth corners (201, 139) and
(246, 141). The HOG detector also fires weakly (score 0.12 at upsample 1) on the mission patch.
"""

from __future__ import annotations

import importlib.util
import pickle

import cv2
import numpy as np
import pytest
import skimage.data

from fsr_core.data.detection import (
    TEMPLATES,
    FaceDetector,
    align_face,
    crop_box,
    crop_face,
    default_model_path,
    invert_affine,
    similarity_transform,
    transform_points,
    unalign,
)
from fsr_core.degradation.resize import imresize

FACE = (172.0, 66.0, 268.0, 172.0)  # the astronaut's face, union of the three detectors' boxes, shrunk a little
LEFT_EYE, RIGHT_EYE = np.array([203.2, 101.5]), np.array([246.5, 104.2])
MOUTH = np.array([[201.0, 139.0], [246.0, 141.0]])
HAS_MTCNN = importlib.util.find_spec("facenet_pytorch") is not None
needs_mtcnn = pytest.mark.skipif(not HAS_MTCNN, reason="facenet-pytorch (MTCNN weights) is not installed")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def scaled(image: np.ndarray, factor: float) -> np.ndarray:
    return np.ascontiguousarray(imresize(image, scale=factor))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def hog() -> FaceDetector:
    return FaceDetector("hog", upsample=1, score_threshold=0.3)


@pytest.fixture(scope="module")
def mtcnn() -> FaceDetector:
    return FaceDetector("mtcnn")


def assert_inside(points: np.ndarray, box) -> None:
    assert np.all(points[:, 0] >= box[0]) and np.all(points[:, 0] <= box[2]), (points, box)
    assert np.all(points[:, 1] >= box[1]) and np.all(points[:, 1] <= box[3]), (points, box)


# ---------------------------------------------------------------------------- detectors
def test_hog_finds_the_astronaut_with_five_landmarks(hog, astronaut):
    found = hog.detect(astronaut)
    assert len(found) == 1
    face = found[0]
    assert face.detector == "hog" and face.landmark_model == "dlib5"
    assert iou(face.box, FACE) > 0.6
    assert 85 <= face.height <= 100 and face.score > 1.0
    assert face.landmarks.shape == (5, 2) and face.raw_landmarks.shape == (5, 2)
    assert_inside(face.landmarks, face.box)
    # dlib5: eye centres measured (corner midpoints), nose tip and mouth corners estimated
    assert face.measured == (True, True, False, False, False)
    assert np.linalg.norm(face.landmarks[0] - LEFT_EYE) < 3 and np.linalg.norm(face.landmarks[1] - RIGHT_EYE) < 3
    assert np.allclose(face.landmarks[0], face.raw_landmarks[2:4].mean(0))  # raw: image-left eye = points 2, 3
    assert face.landmarks[0, 0] < face.landmarks[2, 0] < face.landmarks[1, 0]  # left eye, nose, right eye
    assert face.landmarks[2, 1] < face.landmarks[3, 1]  # nose above mouth
    assert np.all(np.linalg.norm(face.landmarks[3:] - MOUTH, axis=1) < 12)  # a mean-face estimate


def test_hog_score_threshold_drops_the_weak_false_positive(astronaut):
    everything = FaceDetector("hog", upsample=1).detect(astronaut)  # dlib's default threshold 0
    assert len(everything) == 2
    assert everything[0].score > 1.0 and everything[1].score < 0.3  # the mission patch
    assert iou(everything[1].box, FACE) == 0


def test_dlib68_landmarks_are_all_measured(astronaut):
    face = FaceDetector("hog", upsample=0, landmark_model="dlib68").detect(astronaut)[0]
    assert face.measured == (True,) * 5 and face.raw_landmarks.shape == (68, 2)
    assert np.linalg.norm(face.landmarks[0] - LEFT_EYE) < 2 and np.linalg.norm(face.landmarks[1] - RIGHT_EYE) < 2
    assert np.all(np.linalg.norm(face.landmarks[3:] - MOUTH, axis=1) < 2)


def test_cnn_finds_the_astronaut_on_a_downscaled_image(astronaut):
    factor = 0.75  # 384x384: the MMOD CNN is slow on CPU
    found = FaceDetector("cnn", upsample=0).detect(scaled(astronaut, factor))
    assert len(found) == 1
    face = found[0]
    assert face.detector == "cnn"
    assert iou(face.box / factor, FACE) > 0.6
    assert_inside(face.landmarks, face.box)
    assert np.linalg.norm(face.landmarks[0] / factor - LEFT_EYE) < 4


@needs_mtcnn
def test_mtcnn_finds_the_astronaut_with_measured_landmarks(mtcnn, astronaut):
    found = mtcnn.detect(astronaut)
    assert len(found) == 1
    face = found[0]
    assert face.detector == "mtcnn" and face.measured == (True,) * 5 and face.score > 0.99
    assert iou(face.box, FACE) > 0.6
    assert_inside(face.landmarks, face.box)
    assert np.linalg.norm(face.landmarks[0] - LEFT_EYE) < 3 and np.linalg.norm(face.landmarks[1] - RIGHT_EYE) < 3
    assert np.all(np.linalg.norm(face.landmarks[3:] - MOUTH, axis=1) < 4)


def test_small_faces_need_upsampling_with_hog(astronaut):
    factor = 0.25  # 128x128, the face ~23 px tall
    small = scaled(astronaut, factor)
    assert FaceDetector("hog", upsample=0).detect(small) == []
    found = FaceDetector("hog", upsample=2, score_threshold=0.3).detect(small)
    assert len(found) == 1
    assert 18 <= found[0].height <= 30
    assert iou(found[0].box / factor, FACE) > 0.5
    assert_inside(found[0].landmarks, found[0].box + np.array([-1, -1, 1, 1]))


@needs_mtcnn
def test_mtcnn_finds_a_15_pixel_face(mtcnn, astronaut):
    factor = 0.15  # 77x77, the face ~15 px tall
    found = mtcnn.detect(scaled(astronaut, factor))
    assert len(found) == 1
    assert found[0].height < 20
    assert iou(found[0].box / factor, FACE) > 0.5


@needs_mtcnn
@pytest.mark.parametrize("side", [160, 128, 96, 80, 64])
def test_the_restore_default_finds_the_astronaut_in_small_photos(astronaut, side):
    """The archive default (``mtcnn-tiny``): one face, the right one, down to a 64 px photo (a 13 px
    face box); the reference MTCNN settings and HOG lose it sooner (bench/detection_recall.py)."""
    from fsr_core.restore.archive import ArchiveSettings

    factor = side / 512
    found = ArchiveSettings().face_detector().detect(scaled(astronaut, factor))
    assert len(found) == 1
    assert iou(found[0].box / factor, FACE) > 0.5
    eyes = (found[0].landmarks[:2] + 0.5) / factor - 0.5
    error = np.linalg.norm(eyes - np.stack([LEFT_EYE, RIGHT_EYE]), axis=1).max()
    assert error < max(0.12 * 43, 1.0 / factor)  # 12% of the eye distance, or one pixel of the small photo


@needs_mtcnn
def test_upscale_maps_boxes_and_landmarks_back(astronaut, mtcnn):
    plain = mtcnn.detect(astronaut)[0]
    enlarged = FaceDetector("mtcnn", upscale=2.0).detect(astronaut)[0]
    assert iou(plain.box, enlarged.box) > 0.85
    assert np.abs(plain.landmarks - enlarged.landmarks).max() < 3.0
    assert np.abs(enlarged.raw_landmarks - enlarged.landmarks).max() == 0  # MTCNN's own points, mapped alike
    assert FaceDetector("hog", upscale=2.0, upsample=0).detect(scaled(astronaut, 0.3))  # a 30 px face: HOG u0 needs ~70


def test_detector_names_and_presets():
    from fsr_core.data.detection import DETECTOR_NAMES, make_detector

    assert "mtcnn-tiny" in DETECTOR_NAMES and "hog" in DETECTOR_NAMES
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        make_detector("yolo")
    with pytest.raises(ValueError, match=r"preset 'mtcnn-tiny' sets \['upscale'\] itself"):
        make_detector("mtcnn-tiny", upscale=3.0)
    with pytest.raises(ValueError, match="thresholds must be 3 probabilities"):
        FaceDetector("hog", thresholds=(0.5, 0.5))
    with pytest.raises(ValueError, match="upscale must be in"):
        FaceDetector("hog", upscale=0.5)
    hog = make_detector("hog", upsample=0)
    assert hog.kind == "hog" and hog.upscale == 1.0


def test_min_face_size_filters_detections(astronaut):
    assert FaceDetector("hog", upsample=0, min_face_size=100).detect(astronaut) == []
    assert len(FaceDetector("hog", upsample=0, min_face_size=80).detect(astronaut)) == 1


@pytest.mark.parametrize("kind", ["hog", pytest.param("mtcnn", marks=needs_mtcnn)])
def test_no_face_gives_an_empty_list(kind, hog, mtcnn):
    detector = hog if kind == "hog" else mtcnn
    assert detector.detect(skimage.data.coffee()) == []
    assert detector.detect(np.full((200, 300, 3), 128, np.uint8)) == []


def test_detector_pickles_as_its_settings(hog, astronaut):
    copy = pickle.loads(pickle.dumps(hog))
    assert repr(copy) == repr(hog)
    a, b = hog.detect(astronaut), copy.detect(astronaut)
    assert [d.to_dict() for d in a] == [d.to_dict() for d in b]


def test_wrong_settings_and_inputs_raise(hog):
    with pytest.raises(ValueError, match="unknown detector kind"):
        FaceDetector("yolo")
    with pytest.raises(ValueError, match="landmark_model 'mtcnn' needs kind='mtcnn'"):
        FaceDetector("hog", landmark_model="mtcnn")
    with pytest.raises(ValueError, match="unknown model_paths key"):
        FaceDetector("hog", model_paths={"retina": "x"})
    with pytest.raises(ValueError, match="uint8 RGB"):
        hog.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        hog.detect(np.zeros((64, 64, 3), np.float32))


# ---------------------------------------------------------------------------- model files
def test_missing_model_file_names_the_file_and_how_to_get_it(tmp_path):
    missing = tmp_path / "models" / "mmod_human_face_detector.dat"
    with pytest.raises(FileNotFoundError, match="mmod_human_face_detector.dat") as info:
        FaceDetector("cnn", model_paths={"cnn": str(missing)})
    assert str(missing) in str(info.value) and "face-recognition-models" in str(info.value)
    with pytest.raises(FileNotFoundError, match="shape_predictor_5_face_landmarks.dat"):
        FaceDetector("hog", model_paths={"dlib5": str(tmp_path / "nope.dat")})
    with pytest.raises(FileNotFoundError, match="pnet.pt.*--no-deps facenet-pytorch"):
        FaceDetector("mtcnn", model_paths={"pnet": str(tmp_path / "pnet.pt")})


def test_missing_package_names_the_file(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="shape_predictor_5_face_landmarks.dat.*not installed"):
        default_model_path("dlib5")


def test_model_files_can_live_on_s3(s3_bucket, hog, astronaut):
    from fsr_core import storage

    uri = f"{s3_bucket}/models/shape_predictor_5_face_landmarks.dat"
    storage.upload_file(default_model_path("dlib5"), uri)
    detector = FaceDetector("hog", upsample=1, score_threshold=0.3, model_paths={"dlib5": uri})
    assert [d.to_dict() for d in detector.detect(astronaut)] == [d.to_dict() for d in hog.detect(astronaut)]
    with pytest.raises(FileNotFoundError, match="mmod_human_face_detector.dat"):
        FaceDetector("cnn", model_paths={"cnn": f"{s3_bucket}/models/mmod_human_face_detector.dat"})


def test_damaged_model_file_is_a_clear_error(tmp_path):
    damaged = tmp_path / "shape_predictor_5_face_landmarks.dat"
    damaged.write_bytes(b"not a dlib model")
    with pytest.raises(ValueError, match="could not be loaded by dlib"):
        FaceDetector("hog", model_paths={"dlib5": str(damaged)})


# ---------------------------------------------------------------------------- geometry
def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = np.deg2rad(25), 1.7, np.array([12.0, -30.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = similarity_transform(src, src @ rot.T + shift)
    assert np.allclose(matrix[:, :2], rot) and np.allclose(matrix[:, 2], shift)
    assert np.allclose(transform_points(transform_points(src, matrix), invert_affine(matrix)), src)


def test_alignment_puts_image_features_on_the_template():
    """Five bright dots placed by a rotated, scaled template land on the template after alignment."""
    size = 96
    target = TEMPLATES["ffhq"] * size
    angle, scale = np.deg2rad(-20), 1.8
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = target @ rot.T + np.array([40.0, 25.0])
    yy, xx = np.mgrid[0:260, 0:260]
    image = np.zeros((260, 260), np.float64)
    for x, y in points:
        image += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0**2))
    rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    crop, matrix = align_face(rgb, points, size=size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    assert np.allclose(transform_points(points, matrix), target, atol=1e-6)
    grey = crop[..., 0].astype(np.float64)
    cy, cx = np.mgrid[0:size, 0:size]
    for x, y in target:  # the intensity centroid of each dot, within a 6 px window
        window = (np.abs(cx - x) <= 6) & (np.abs(cy - y) <= 6)
        weight = grey * window
        centroid = np.array([(weight * cx).sum(), (weight * cy).sum()]) / weight.sum()
        assert np.linalg.norm(centroid - [x, y]) < 1.0, (centroid, (x, y))


@pytest.mark.parametrize("kind", ["hog", pytest.param("mtcnn", marks=needs_mtcnn)])
def test_aligned_astronaut_has_its_eyes_on_the_template(kind, hog, mtcnn, astronaut):
    face = (hog if kind == "hog" else mtcnn).detect(astronaut)[0]
    for size in (64, 128):
        crop, matrix = align_face(astronaut, face.landmarks, size=size)
        eyes = transform_points(face.landmarks[:2], matrix)
        assert np.all(np.linalg.norm(eyes - TEMPLATES["ffhq"][:2] * size, axis=1) < 2.0 * size / 128)
        assert crop.shape == (size, size, 3)
    # the aligned crop lies around the face in the source
    assert iou(crop_box(matrix, 128), FACE) > 0.2
    region = crop_box(matrix, 128)
    assert region[0] < FACE[0] and region[2] > FACE[2]


def test_margin_crop_is_an_exact_square_of_source_pixels(astronaut):
    box = np.array([175.0, 76.0, 266.0, 167.0])
    crop, matrix = crop_face(astronaut, box, size=100, margin=0.25)
    left, top, right, bottom = crop_box(matrix, 100)
    assert (left, top, right, bottom) == pytest.approx((152, 53, 289, 190))  # side 91 * 1.5 = 136.5 -> 137
    assert np.array_equal(crop, imresize(astronaut[53:190, 152:289], output_size=(100, 100)))
    # landmarks map with the same matrix as the pixels: a source pixel centre lands on its crop pixel
    small, m = crop_face(astronaut, box, size=64, margin=0.25)
    x, y = transform_points(np.array([[220.0, 120.0]]), m)[0]
    assert 0 < x < 64 and 0 < y < 64


def test_crop_outside_the_image_is_reflected(astronaut):
    crop, matrix = crop_face(astronaut, np.array([0.0, 0.0, 40.0, 40.0]), size=80, margin=0.5)
    left, top, _, _ = crop_box(matrix, 80)
    assert left == -20 and top == -20
    assert np.array_equal(crop[:20, 20:], astronaut[:20, :60][::-1])  # rows above the image mirror rows 0..19


def test_unalign_pastes_a_crop_back(astronaut):
    face_box = np.array([175.0, 76.0, 266.0, 167.0])
    crop, matrix = crop_face(astronaut, face_box, size=182, margin=0.5)  # native size: no resampling
    back, mask = unalign(crop, matrix, shape=astronaut.shape[:2])
    inside = mask > 0.999
    assert inside.sum() == 182 * 182
    assert np.array_equal(back[inside], astronaut[inside])
    # a rotated alignment round-trips closely away from the edges
    face = FaceDetector("hog", upsample=0).detect(astronaut)[0]
    aligned, m = align_face(astronaut, face.landmarks, size=256)
    back, mask = unalign(aligned, m, shape=astronaut.shape[:2])
    interior = cv2.erode((mask > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    diff = np.abs(back[interior].astype(np.int16) - astronaut[interior].astype(np.int16))
    assert diff.mean() < 6


def test_alignment_rejects_bad_input(astronaut):
    with pytest.raises(ValueError, match="unknown template"):
        align_face(astronaut, np.zeros((5, 2)) + np.arange(5)[:, None], size=64, template="nope")
    with pytest.raises(ValueError, match="coincide"):
        align_face(astronaut, np.zeros((5, 2)), size=64)
    with pytest.raises(ValueError, match="x1 > x0"):
        crop_face(astronaut, np.array([10.0, 10.0, 5.0, 20.0]), size=64)
