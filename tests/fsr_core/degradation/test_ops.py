"""Degradation ops and chains: hand values, statistics, codecs, determinism and config errors."""

from __future__ import annotations

import hashlib
import json
import math

import cv2
import numpy as np
import pydantic
import pytest
import skimage.data

from fsr_core.degradation import ops as ops_module
from fsr_core.degradation.ops import (
    DegradationChain,
    anisotropic_kernel,
    crop_rng,
    degrade_crop,
    disk_kernel,
    load_chain,
    motion_kernel,
)
from fsr_core.degradation.resize import imresize


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A real photograph, 64x64 RGB uint8."""
    return cv2.resize(skimage.data.astronaut()[:256, 128:384], (64, 64), interpolation=cv2.INTER_AREA)


def single(op: dict) -> DegradationChain:
    return load_chain([op])


def run_op(op: dict, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """Apply one op at float level (no clipping or rounding), parameters sampled from ``seed``."""
    chain = single(op)
    rng = np.random.default_rng(seed)
    params = chain.sample(rng)
    return chain.ops[0].apply(image.astype(np.float32), params[0], rng)


def delta(size: int = 33) -> np.ndarray:
    image = np.zeros((size, size, 3), np.float32)
    image[size // 2, size // 2] = 255.0
    return image


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# -- blurs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        {"op": "gaussian_blur", "sigma": 0},
        {"op": "anisotropic_blur", "sigma_x": 0, "sigma_y": 0, "angle": 30},
        {"op": "motion_blur", "length": 0, "angle": 45},
        {"op": "motion_blur", "length": 1, "angle": 45},
        {"op": "defocus_blur", "radius": 0},
        {"op": "shift", "dx": 0, "dy": 0},
        {"op": "gaussian_noise", "sigma": 0},
    ],
)
def test_zero_width_is_exact_identity(op, face):
    lr, _ = degrade_crop(face, single(op), seed=3, key="k")
    np.testing.assert_array_equal(lr, face)
    float_image = face.astype(np.float32) + 0.25  # unrounded values pass through untouched too
    np.testing.assert_array_equal(run_op(op, float_image), float_image)


@pytest.mark.parametrize(
    "op",
    [
        {"op": "gaussian_blur", "sigma": 2.0},
        {"op": "anisotropic_blur", "sigma_x": 3.0, "sigma_y": 0.7, "angle": 30},
        {"op": "motion_blur", "length": 7, "angle": 20},
        {"op": "defocus_blur", "radius": 2.5},
    ],
)
def test_blur_of_a_delta_keeps_its_sum_and_spreads_it(op):
    out = run_op(op, delta())
    np.testing.assert_allclose(out.sum(axis=(0, 1)), [255.0] * 3, rtol=1e-5)
    assert out[16, 16, 0] < 0.5 * 255
    assert out.min() >= -1e-4


def test_gaussian_blur_of_a_delta_is_the_gaussian():
    out = run_op({"op": "gaussian_blur", "sigma": 1.5}, delta())[..., 0] / 255.0
    # separable Gaussian: out[c, c+1] / out[c, c] = exp(-1 / (2 sigma^2))
    assert out[16, 17] / out[16, 16] == pytest.approx(math.exp(-1 / (2 * 1.5**2)), rel=1e-3)
    np.testing.assert_allclose(out, out.T, atol=1e-7)


def test_anisotropic_kernel_hand_values():
    kernel = anisotropic_kernel(2.0, 1.0, 0.0)
    centre = kernel.shape[0] // 2
    assert kernel.shape == (13, 13)  # radius ceil(3 * 2)
    assert kernel.sum() == pytest.approx(1.0)
    assert kernel[centre, centre + 1] / kernel[centre, centre] == pytest.approx(math.exp(-1 / 8))  # along x
    assert kernel[centre + 1, centre] / kernel[centre, centre] == pytest.approx(math.exp(-1 / 2))  # across
    np.testing.assert_allclose(anisotropic_kernel(2.0, 1.0, 90.0), kernel.T, atol=1e-12)
    line = anisotropic_kernel(0.0, 1.5, 0.0)  # sigma_x = 0: a vertical line
    middle = line.shape[1] // 2
    assert np.count_nonzero(np.delete(line, middle, axis=1)) == 0 and np.count_nonzero(line[:, middle]) > 1


def test_motion_kernel_hand_values():
    np.testing.assert_allclose(motion_kernel(4, 0.0)[2], np.array([0.5, 1, 1, 1, 0.5]) / 4)
    np.testing.assert_allclose(motion_kernel(3, 0.0), np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]]) / 3)
    vertical = motion_kernel(5, 90.0)
    np.testing.assert_allclose(vertical[:, 2], np.full(5, 0.2), atol=1e-6)
    assert vertical.sum() == pytest.approx(1.0)
    diagonal = motion_kernel(9, 45.0)  # counter-clockwise as displayed: up and to the right
    assert diagonal[2, 6] == diagonal[6, 2] > 0.05 and diagonal[2, 2] == diagonal[6, 6] == 0


def test_motion_blur_of_a_delta_stays_on_its_line():
    out = run_op({"op": "motion_blur", "length": 5, "angle": 0}, delta())[..., 0]
    np.testing.assert_allclose(out[16, 14:19], np.full(5, 51.0), rtol=1e-5)
    assert np.count_nonzero(np.delete(out, 16, axis=0)) == 0


def test_disk_kernel():
    kernel = disk_kernel(3.0)
    assert kernel.shape == (7, 7)
    assert kernel.sum() == pytest.approx(1.0)
    assert kernel[3, 3] == pytest.approx(1 / (math.pi * 9), rel=0.02)  # full pixel / disk area
    assert kernel[0, 0] == 0.0  # corner pixel lies outside the disk
    np.testing.assert_allclose(kernel, kernel.T)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1])
    np.testing.assert_array_equal(disk_kernel(0.4), [[1.0]])


# -- resampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["matlab_bicubic", "area", "bilinear", "nearest"])
@pytest.mark.parametrize(
    ("amount", "expected"), [({"scale": 8}, (8, 6)), ({"scale": 5}, (13, 10)), ({"size": 16}, (16, 16))]
)
def test_downsample_sizes(method, amount, expected):
    image = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    chain = single({"op": "downsample", "method": method, **amount})
    lr, _ = degrade_crop(image, chain, seed=0, key="a")
    assert lr.shape == expected + (3,) and lr.dtype == np.uint8
    assert chain.output_size(64, 48) == expected


def test_downsample_area_averages_blocks():
    blocks = np.random.default_rng(1).integers(0, 64, (4, 4, 3)).astype(np.uint8) * 4
    image = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
    for method in ("area", "nearest", "bilinear"):
        lr, _ = degrade_crop(image, single({"op": "downsample", "scale": 4, "method": method}), seed=0, key="a")
        np.testing.assert_array_equal(lr, blocks, err_msg=method)


def test_matlab_bicubic_equals_imresize(face):
    lr, _ = degrade_crop(face, single({"op": "downsample", "scale": 4, "method": "matlab_bicubic"}), seed=0, key="a")
    expected = np.clip(np.rint(imresize(face.astype(np.float32), scale=0.25)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(lr, expected)
    # MATLAB's uint8 path rounds after each dimension, which the second pass can amplify a little
    difference = np.abs(lr.astype(int) - imresize(face, scale=0.25).astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.2
    sized, _ = degrade_crop(face, single({"op": "downsample", "size": 16, "method": "matlab_bicubic"}), seed=0, key="a")
    np.testing.assert_array_equal(sized, lr)


def test_downsample_never_enlarges(face):
    chain = single({"op": "downsample", "size": 128, "method": "area"})
    with pytest.raises(ValueError, match="enlarge"):
        chain.output_size(64, 64)
    with pytest.raises(ValueError, match="enlarge"):
        degrade_crop(face, chain, seed=0, key="a")


def test_shift_by_integers_moves_pixels(face):
    lr, _ = degrade_crop(face, single({"op": "shift", "dx": 3, "dy": -2}), seed=0, key="a")
    np.testing.assert_array_equal(lr[:-2, 3:], face[2:, :-3])


def test_shift_by_half_a_pixel_interpolates_a_ramp():
    ramp = np.broadcast_to((np.arange(32, dtype=np.float32) * 4)[None, :, None], (8, 32, 3))
    out = run_op({"op": "shift", "dx": 0.5}, ramp)
    np.testing.assert_allclose(out[:, 1:], ramp[:, 1:] - 2.0, atol=1e-4)


# -- noise ------------------------------------------------------------------------------------------


def test_gaussian_noise_statistics():
    flat = np.full((128, 128, 3), 128.0, np.float32)
    noise = run_op({"op": "gaussian_noise", "sigma": 10.0}, flat) - flat
    assert abs(noise.mean()) < 0.15  # 3 standard errors: 10 / sqrt(49152) = 0.045
    assert noise.std() == pytest.approx(10.0, rel=0.02)
    assert np.corrcoef(noise[..., 0].ravel(), noise[..., 1].ravel())[0, 1] < 0.05
    grey = run_op({"op": "gaussian_noise", "sigma": 10.0, "grey": True}, flat) - flat
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    assert grey.std() == pytest.approx(10.0, rel=0.03)


def test_poisson_noise_variance_is_255_x_over_peak():
    flat = np.full((128, 128, 3), 100.0, np.float32)
    variances = {}
    for peak in (50.0, 500.0):
        out = run_op({"op": "poisson_noise", "peak": peak}, flat)
        assert out.mean() == pytest.approx(100.0, abs=0.5)
        variances[peak] = out.var()
        assert variances[peak] == pytest.approx(255.0 * 100.0 / peak, rel=0.04)
    assert variances[50.0] / variances[500.0] == pytest.approx(10.0, rel=0.06)


def test_signal_noise_variance_grows_with_intensity():
    image = np.zeros((128, 128, 3), np.float32)
    image[:64] = 20.0
    image[64:] = 200.0
    noise = run_op({"op": "signal_noise", "shot": 0.5, "read": 3.0}, image) - image
    assert noise[:64].var() == pytest.approx(0.5 * 20 + 9, rel=0.04)
    assert noise[64:].var() == pytest.approx(0.5 * 200 + 9, rel=0.04)


# -- tone ------------------------------------------------------------------------------------------


def test_colour_cast_gamma_contrast_hand_values():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0] = 100
    image[1] = 200
    cast, _ = degrade_crop(image, single({"op": "colour_cast", "red": 1.5, "blue": 0.5}), seed=0, key="a")
    np.testing.assert_array_equal(cast[0, 0], [150, 100, 50])
    np.testing.assert_array_equal(cast[1, 0], [255, 200, 100])  # 300 clipped
    gamma, _ = degrade_crop(image, single({"op": "gamma", "gamma": 2.0}), seed=0, key="a")
    np.testing.assert_array_equal(gamma[:, 0, 0], [round(255 * (100 / 255) ** 2), round(255 * (200 / 255) ** 2)])
    contrast, _ = degrade_crop(image, single({"op": "contrast", "factor": 0.5}), seed=0, key="a")
    np.testing.assert_array_equal(contrast[:, 0, 0], [125, 175])  # about the mean 150
    flat, _ = degrade_crop(image, single({"op": "contrast", "factor": 0.0}), seed=0, key="a")
    np.testing.assert_array_equal(flat, np.full_like(image, 150))


def test_values_stay_float_between_ops():
    image = np.full((4, 4, 3), 100, np.uint8)
    chain = load_chain([{"op": "colour_cast", "red": 1.004, "green": 1.004, "blue": 1.004},
                        {"op": "colour_cast", "red": 1.004, "green": 1.004, "blue": 1.004}])
    lr, _ = degrade_crop(image, chain, seed=0, key="a")
    assert lr[0, 0, 0] == 101  # 100.4 -> 100.8016 -> 101; rounding in between would give 100


# -- codecs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
def test_image_codec_error_falls_with_quality(codec, face):
    errors = [
        mean_abs_error(degrade_crop(face, single({"op": codec, "quality": q}), seed=0, key="a")[0], face)
        for q in (95, 50, 10)
    ]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_jpeg_keeps_rgb_order():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 220
    lr, _ = degrade_crop(red, single({"op": "jpeg", "quality": 90}), seed=0, key="a")
    assert lr[..., 0].mean() > 200 and lr[..., 2].mean() < 20


def test_h264_error_grows_with_crf(face):
    errors = [
        mean_abs_error(degrade_crop(face, single({"op": "h264", "crf": crf}), seed=0, key="a")[0], face)
        for crf in (0, 23, 45)
    ]
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] < 5  # crf 0 is near-lossless up to yuv420p conversion


@pytest.mark.parametrize("shape", [(16, 16), (15, 17), (3, 5)])
def test_h264_tiny_and_odd_frames_are_deterministic(shape, face):
    image = np.ascontiguousarray(face[: shape[0], : shape[1]])
    chain = single({"op": "h264", "crf": 30})
    first, _ = degrade_crop(image, chain, seed=0, key="a")
    second, _ = degrade_crop(image, chain, seed=0, key="a")
    assert first.shape == image.shape
    np.testing.assert_array_equal(first, second)
    assert mean_abs_error(first, image) < 40


def test_h264_without_an_encoder_names_what_is_missing(monkeypatch):
    import av

    ops_module.h264_encoder.cache_clear()
    monkeypatch.setattr(av, "codecs_available", {"h264"})
    try:
        with pytest.raises(RuntimeError, match="libx264"):
            ops_module.h264_encoder()
    finally:
        monkeypatch.undo()
        ops_module.h264_encoder.cache_clear()
    assert ops_module.h264_encoder() == ("libx264", "crf")


# -- chains: sampling, determinism, sizes ---------------------------------------------------------


REALISTIC = [
    {"op": "gaussian_blur", "sigma": [0.5, 2]},
    {"op": "anisotropic_blur", "sigma_x": [0, 2], "sigma_y": [0, 1], "angle": [0, 180]},
    {"op": "motion_blur", "length": [0, 7], "angle": [0, 360]},
    {"op": "defocus_blur", "radius": [0, 1.5]},
    {"op": "downsample", "scale": 4, "method": ["area", "matlab_bicubic", "bilinear"]},
    {"op": "shift", "dx": [-0.5, 0.5], "dy": [-0.5, 0.5]},
    {"op": "gaussian_noise", "sigma": [1, 8], "grey": 0.5},
    {"op": "poisson_noise", "peak": [200, 2000]},
    {"op": "signal_noise", "shot": [0, 0.3], "read": [0, 2]},
    {"op": "colour_cast", "red": [0.9, 1.1], "blue": [0.9, 1.1]},
    {"op": "gamma", "gamma": [0.8, 1.2]},
    {"op": "contrast", "factor": [0.8, 1.2]},
    {"op": "jpeg", "quality": [40, 90]},
    {"op": "webp", "quality": [40, 90]},
    {"op": "h264", "crf": [18, 35]},
]


def test_determinism_from_seed_and_key(face):
    chain = load_chain(REALISTIC)
    lr, params = degrade_crop(face, chain, seed=7, key="celeba/000123.jpg#0")
    again, params_again = degrade_crop(face, chain, seed=7, key="celeba/000123.jpg#0")
    np.testing.assert_array_equal(lr, again)
    assert json.dumps(params) == json.dumps(params_again)
    other_key, other_params = degrade_crop(face, chain, seed=7, key="celeba/000123.jpg#1")
    other_seed, _ = degrade_crop(face, chain, seed=8, key="celeba/000123.jpg#0")
    assert other_params != params
    assert not np.array_equal(other_key, lr) and not np.array_equal(other_seed, lr)
    # apply with the recorded params and a generator advanced past sampling reproduces the crop
    rng = crop_rng(7, "celeba/000123.jpg#0")
    chain.sample(rng)
    np.testing.assert_array_equal(chain.apply(face, json.loads(json.dumps(params)), rng), lr)


def test_crop_rng_is_seeded_from_sha256_of_the_key():
    key_int = int.from_bytes(hashlib.sha256(b"img/1.png").digest(), "big")
    expected = np.random.default_rng(np.random.SeedSequence([5, key_int])).random(4)
    np.testing.assert_array_equal(crop_rng(5, "img/1.png").random(4), expected)
    with pytest.raises(ValueError, match="seed"):
        crop_rng(-1, "a")


def test_sampling_stays_in_ranges_and_types():
    chain = load_chain(REALISTIC + [{"op": "jpeg", "quality": [1, 3]}])
    rng = np.random.default_rng(0)
    seen_quality, seen_methods, seen_grey = set(), set(), set()
    for _ in range(300):
        params = chain.sample(rng)
        assert json.loads(json.dumps(params)) == params
        for config, drawn in zip(REALISTIC, params):
            assert drawn["op"] == config["op"]
            for name, value in config.items():
                if name == "op":
                    continue
                if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
                    assert value[0] <= drawn[name] <= value[1], (name, drawn[name])
                    integer = name in ("length", "quality", "crf")
                    assert type(drawn[name]) is (int if integer else float), (name, type(drawn[name]))
        seen_quality.add(params[-1]["quality"])
        seen_methods.add(params[4]["method"])
        seen_grey.add(params[6]["grey"])
        assert params[4]["scale"] == 4 and params[9]["green"] == 1.0  # fixed and default values kept
    assert seen_quality == {1, 2, 3}
    assert seen_methods == {"area", "matlab_bicubic", "bilinear"}
    assert seen_grey == {True, False}


def test_output_size_matches_apply(face):
    chain = load_chain([
        {"op": "gaussian_blur", "sigma": 1},
        {"op": "downsample", "scale": 3, "method": "area"},
        {"op": "jpeg", "quality": 80},
        {"op": "downsample", "size": 8, "method": "matlab_bicubic"},
    ])
    image = np.ascontiguousarray(face[:50, :40])
    lr, _ = degrade_crop(image, chain, seed=0, key="a")
    assert lr.shape[:2] == chain.output_size(50, 40) == (8, 8)
    realistic = load_chain(REALISTIC)
    assert realistic.output_size(64, 64) == degrade_crop(face, realistic, seed=0, key="a")[0].shape[:2] == (16, 16)


def test_describe():
    chain = load_chain({"ops": [
        {"op": "gaussian_blur", "sigma": [0.5, 2]},
        {"op": "downsample", "scale": 8, "method": "area"},
        {"op": "jpeg", "quality": [40, 70]},
    ]})
    assert chain.describe() == "gaussian_blur(sigma=[0.5,2]) > downsample(area, x8) > jpeg(quality=[40,70])"
    assert load_chain([]).describe() == "identity"


def test_config_round_trips_through_json():
    chain = load_chain(REALISTIC)
    assert load_chain(json.loads(chain.model_dump_json())) == chain
    assert load_chain(chain.model_dump()) == chain


def test_apply_checks_its_inputs(face):
    chain = single({"op": "gaussian_blur", "sigma": 1})
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        chain.apply(face.astype(np.float32), chain.sample(rng), rng)
    with pytest.raises(ValueError, match="parameter dicts"):
        chain.apply(face, [], rng)
    with pytest.raises(ValueError, match="jpeg"):
        chain.apply(face, [{"op": "jpeg", "quality": 50}], rng)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ([{"op": "gausian_blur", "sigma": 1}], "gausian_blur"),
        ([{"op": "gaussian_blur", "sigma": 1, "radius": 2}], "radius"),
        ([{"op": "gaussian_blur", "sigma": [2, 1]}], "sigma"),
        ([{"op": "gaussian_blur", "sigma": "wide"}], "sigma"),
        ([{"op": "gaussian_blur", "sigma": True}], "sigma"),
        ([{"op": "gaussian_blur", "sigma": -1}], "sigma"),
        ([{"op": "gaussian_blur", "sigma": [1, 2, 3]}], "sigma"),
        ([{"op": "gaussian_blur"}], "sigma"),
        ([{"op": "jpeg", "quality": 0}], "quality"),
        ([{"op": "jpeg", "quality": 50.5}], "quality"),
        ([{"op": "h264", "crf": [20, 60]}], "crf"),
        ([{"op": "motion_blur", "length": 2.5}], "length"),
        ([{"op": "gaussian_noise", "sigma": 1, "grey": 1.5}], "grey"),
        ([{"op": "downsample", "scale": 4, "method": "bicubic"}], "method"),
        ([{"op": "downsample", "scale": 4, "method": []}], "method"),
        ([{"op": "downsample", "scale": 2.5, "method": "area"}], "scale"),
        ([{"op": "downsample", "method": "area"}], "scale or size"),
        ([{"op": "gamma", "gamma": 0}], "gamma"),
        ({"ops": [{"op": "gamma", "gamma": 1}], "extra": 1}, "extra"),
    ],
)
def test_config_errors_name_the_key(config, named):
    with pytest.raises(pydantic.ValidationError) as error:
        load_chain(config)
    assert named in str(error.value)
