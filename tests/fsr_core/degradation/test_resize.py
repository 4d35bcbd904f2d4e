"""MATLAB-style bicubic imresize, checked against values derived by hand from MATLAB's definition.

The reference numbers below are not taken from another library. They follow from ``imresize.m``:
Keys cubic with a = -0.5, kernel stretched by 1/scale when downscaling, u = x/scale +
0.5 (1 - 1/scale) (1-based), taps floor(u - width/2) + (0 .. ceil(width)+1), normalised weights,
mirrored indices (0 -> 1, -1 -> 2, n+1 -> n).

Worked values used throughout (all exact binary fractions):

* cubic(0.25) = 111/128, cubic(0.75) = 29/128, cubic(1.25) = -9/128, cubic(1.75) = -3/128.
* x1/2 with antialias: h(t) = cubic(t/2)/2, u = 2i - 1/2, distances +-0.5 .. +-3.5 map to
  cubic(+-0.25 .. +-1.75); they sum to 2 * 128/128 / 2 = 1, so the taps are
  [-3, -9, 29, 111, 111, 29, -9, -3] / 256 on input pixels 2i-4 .. 2i+3.
* x2: u = x/2 + 1/4, distances 0.25/0.75/1.25/1.75, taps [-3, 29, 111, -9] / 128 (or reversed).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from fsr_core.degradation.resize import contributions, cubic, imresize, imresize_torch, weight_matrix


def keys_cubic(t: float) -> float:
    """MATLAB's cubic, written out independently of the module for the hand references."""
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t <= 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def mirror(index_1based: int, n: int) -> int:
    """One reflection of MATLAB's aux = [1:n, n:-1:1], returned 0-based."""
    if index_1based < 1:
        index_1based = 1 - index_1based
    elif index_1based > n:
        index_1based = 2 * n + 1 - index_1based
    return index_1based - 1


# x1/2 (8 -> 4) operator, worked out by hand from the taps above and mirroring. Row 1: pixels
# -2..5 -> 3,2,1,1,2,3,4,5: pixel 1 gets 29+111, pixel 2 gets -9+111, pixel 3 gets -3+29.
DOWN_HALF_8 = (
    np.array(
        [
            [140, 102, 26, -9, -3, 0, 0, 0],
            [-12, 29, 111, 111, 29, -9, -3, 0],
            [0, -3, -9, 29, 111, 111, 29, -12],
            [0, 0, 0, -3, -9, 26, 102, 140],
        ],
        dtype=np.float64,
    )
    / 256
)

# x2 (3 -> 6) operator, by hand: u = 0.75, 1.25, ..., 3.25 with mirrored taps.
UP_TWO_3 = (
    np.array(
        [
            [140, -12, 0],
            [102, 29, -3],
            [26, 111, -9],
            [-9, 111, 26],
            [-3, 29, 102],
            [0, -12, 140],
        ],
        dtype=np.float64,
    )
    / 128
)


def test_cubic_kernel_values_by_hand() -> None:
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, -0.25, -1.75])
    expected = np.array(
        [1.0, 111 / 128, 0.5625, 29 / 128, 0.0, -9 / 128, -0.0625, -3 / 128, 0.0, 0.0, 111 / 128, -3 / 128]
    )
    np.testing.assert_array_equal(cubic(t), expected)


def test_half_taps_are_the_normalised_stretched_kernel() -> None:
    offsets = np.arange(-3.5, 4.0, 1.0)  # u - index for the 8 non-zero taps
    raw = np.array([0.5 * keys_cubic(0.5 * d) for d in offsets])
    assert raw.sum() == pytest.approx(1.0, abs=0)  # already normalised: the factor 1/2 cancels
    np.testing.assert_array_equal(raw * 256, [-3, -9, 29, 111, 111, 29, -9, -3])

    weights, indices = contributions(in_length=8, out_length=4, scale=0.5, antialias=True)
    np.testing.assert_array_equal(weights * 256, np.tile([-3, -9, 29, 111, 111, 29, -9, -3], (4, 1)))
    # 1-based pixels 2i-4 .. 2i+3, mirrored: 0 -> 1, -1 -> 2, 9 -> 8, 10 -> 7 (here 0-based).
    np.testing.assert_array_equal(
        indices,
        [[2, 1, 0, 0, 1, 2, 3, 4], [0, 0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7, 7], [3, 4, 5, 6, 7, 7, 6, 5]],
    )
    np.testing.assert_array_equal(
        weight_matrix(in_length=8, out_length=4, scale=0.5, antialias=True), DOWN_HALF_8
    )


def test_downscale_half_2d_matches_hand_operator() -> None:
    image = np.arange(64, dtype=np.float64).reshape(8, 8) ** 1.5 % 17.0  # arbitrary, non-linear
    expected = DOWN_HALF_8 @ image @ DOWN_HALF_8.T
    np.testing.assert_allclose(imresize(image, scale=0.5), expected, rtol=0, atol=1e-12)


def test_downscale_half_ramp_border_values_by_hand() -> None:
    # The ramp 1..8 shrunk to 4: a linear function would give u = 2i - 1/2 = 1.5, 3.5, 5.5, 7.5,
    # but every output of this short signal reaches a mirrored border pixel:
    # row 1: (140*1 + 102*2 + 26*3 - 9*4 - 3*5) / 256 = 371/256,
    # row 2: (-12*1 + 29*2 + 111*3 + 111*4 + 29*5 - 9*6 - 3*7) / 256 = 893/256.
    ramp = np.arange(1, 9, dtype=np.float64)[:, None]
    out = imresize(ramp, output_size=(4, 1))[:, 0]
    np.testing.assert_array_equal(out, [371 / 256, 893 / 256, 9 - 893 / 256, 9 - 371 / 256])


def test_downscale_quarter_explicit_weights_and_mirroring() -> None:
    n = 16
    rng = np.random.default_rng(3)
    image = rng.random((n, n))
    # x1/4: h(t) = cubic(t/4)/4, width 16, u = 4i - 3/2; the 16 taps at distances +-0.5 .. +-7.5
    # sum to 1 (four interleaved unit-spaced sums of the cubic, each 1, times 1/4).
    operator = np.zeros((4, n))
    for i in range(1, 5):
        u = 4 * i - 1.5
        taps = [(j, 0.25 * keys_cubic(0.25 * (u - j))) for j in range(math.floor(u - 8), math.floor(u - 8) + 18)]
        total = sum(w for _, w in taps)
        assert total == pytest.approx(1.0, abs=1e-15)
        for j, w in taps:
            operator[i - 1, mirror(j, n)] += w / total
    # A few of the weights in closed form: cubic(1/8)/4 = 987/4096, cubic(15/8)/4 = -7/4096.
    assert operator[1, 5] == pytest.approx(987 / 4096)  # i=2: u=6.5, pixel 6 (0-based 5)
    assert operator[1, 13] == pytest.approx(-7 / 4096)  # i=2: pixel 14 is at distance 7.5
    expected = operator @ image @ operator.T
    np.testing.assert_allclose(imresize(image, scale=0.25), expected, rtol=0, atol=1e-12)


def test_upscale_two_matches_hand_operator() -> None:
    image = np.array([[1.0, 5.0, 2.0], [7.0, 3.0, 9.0], [4.0, 8.0, 6.0]])
    expected = UP_TWO_3 @ image @ UP_TWO_3.T
    np.testing.assert_allclose(imresize(image, scale=2), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(weight_matrix(in_length=3, out_length=6, scale=2.0, antialias=True), UP_TWO_3)


@pytest.mark.parametrize("scale", [0.5, 0.25, 1 / 3, 2.0, 3.0])
def test_cubic_reproduces_linear_ramp_away_from_borders(scale: float) -> None:
    n = 48
    rows, cols = np.meshgrid(np.arange(1, n + 1), np.arange(1, n + 1), indexing="ij")
    plane = 3.0 * rows - 2.0 * cols + 7.0
    out = imresize(plane, scale=scale)
    u = np.arange(1, out.shape[0] + 1) / scale + 0.5 * (1 - 1 / scale)  # mapped 1-based coordinates
    expected = 3.0 * u[:, None] - 2.0 * u[None, :] + 7.0
    half_width = 2.0 / min(scale, 1.0)  # taps reach u +- half_width
    inner = (u - half_width >= 1) & (u + half_width <= n)  # no mirrored tap
    assert inner.sum() >= out.shape[0] // 2
    np.testing.assert_allclose(out[np.ix_(inner, inner)], expected[np.ix_(inner, inner)], rtol=0, atol=1e-9)
    assert np.abs(out - expected).max() > 1e-3  # while at the borders the mirror bends the ramp


@pytest.mark.parametrize(
    "kwargs", [{"scale": 0.5}, {"scale": 0.125}, {"scale": 0.37}, {"scale": 3.0}, {"output_size": (7, 13)}]
)
def test_constant_image_stays_constant(kwargs: dict) -> None:
    image = np.full((24, 20, 3), 0.625)
    np.testing.assert_allclose(imresize(image, **kwargs), 0.625, rtol=0, atol=1e-14)
    batch = torch.full((2, 3, 24, 20), -0.25, dtype=torch.float64)
    torch.testing.assert_close(imresize_torch(batch, **kwargs), torch.full_like(imresize_torch(batch, **kwargs), -0.25))
    constant_u8 = np.full((24, 20), 200, dtype=np.uint8)
    np.testing.assert_array_equal(imresize(constant_u8, **kwargs), 200)


def test_output_sizes() -> None:
    assert imresize(np.zeros((128, 128, 3)), scale=1 / 8).shape == (16, 16, 3)
    assert imresize(np.zeros((16, 16, 3)), scale=8).shape == (128, 128, 3)
    assert imresize(np.zeros((15, 9)), scale=0.5).shape == (8, 5)  # ceil(7.5), ceil(4.5)
    assert imresize(np.zeros((30, 30)), scale=0.1).shape == (3, 3)  # 0.1 * 30 = 3.0000000000000004
    assert imresize(np.zeros((20, 30)), output_size=(7, 13)).shape == (7, 13)
    assert imresize_torch(torch.zeros(1, 3, 128, 128), scale=1 / 8).shape == (1, 3, 16, 16)
    assert imresize_torch(torch.zeros(1, 3, 16, 16), scale=8).shape == (1, 3, 128, 128)


def test_scale_one_is_identity() -> None:
    image = np.random.default_rng(0).random((9, 11, 3))
    np.testing.assert_array_equal(imresize(image, scale=1.0), image)


def round_half_away(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255)


def test_uint8_rounds_half_away_from_zero() -> None:
    # Column [1, 30, 0, ...]: row 1 = (140*1 + 102*30) / 256 = 12.5 -> MATLAB 13 (np.round gives 12);
    # row 2 = (-12*1 + 29*30) / 256 = 3.35 -> 3; row 3 = -3*30/256 < 0 -> 0; row 4 = 0.
    column = np.array([1, 30, 0, 0, 0, 0, 0, 0], dtype=np.uint8)[:, None]
    out = imresize(column, output_size=(4, 1))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 0], [13, 3, 0, 0])


def test_uint8_saturates_overshoot() -> None:
    step = np.zeros((4, 8), dtype=np.uint8)
    step[:, 4:] = 255
    as_float = imresize(step.astype(np.float64), scale=2)
    assert as_float.min() < 0 and as_float.max() > 255  # cubic rings at the edge
    out = imresize(step, scale=2)
    np.testing.assert_array_equal(out, round_half_away(as_float))


@pytest.mark.parametrize("shape, output_size", [((8, 3), (4, 6)), ((3, 8), (6, 4))])
def test_uint8_rounds_after_each_dimension_in_matlab_order(shape: tuple, output_size: tuple) -> None:
    # MATLAB resizes the dimension with the smaller scale (here the x1/2 one) first and its mex
    # returns uint8, so the intermediate is rounded too.
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, size=shape).astype(np.uint8)
    x = image.astype(np.float64)
    if shape[0] == 8:  # rows shrink 8 -> 4 (scale 1/2), columns grow 3 -> 6 (scale 2): rows first
        matlab_order = round_half_away(round_half_away(DOWN_HALF_8 @ x) @ UP_TWO_3.T)
        other_order = round_half_away(DOWN_HALF_8 @ round_half_away(x @ UP_TWO_3.T))
    else:  # columns shrink: columns first
        matlab_order = round_half_away(UP_TWO_3 @ round_half_away(x @ DOWN_HALF_8.T))
        other_order = round_half_away(round_half_away(UP_TWO_3 @ x) @ DOWN_HALF_8.T)
    assert not np.array_equal(matlab_order, other_order)  # the order is observable for uint8
    np.testing.assert_array_equal(imresize(image, output_size=output_size), matlab_order)


def test_float_dtype_is_preserved() -> None:
    image = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    out = imresize(image, scale=0.5)
    assert out.dtype == np.float32
    reference = imresize(image.astype(np.float64), scale=0.5)
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{"scale": 0.5}, {"scale": 0.25}, {"scale": 1 / 3}, {"scale": 0.37}, {"scale": 2.0}, {"output_size": (10, 50)}],
)
@pytest.mark.parametrize("antialias", [True, False])
def test_numpy_and_torch_agree(kwargs: dict, antialias: bool) -> None:
    rng = np.random.default_rng(5)
    images = rng.random((2, 37, 29, 3))
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    out_torch = imresize_torch(batch, antialias=antialias, **kwargs).permute(0, 2, 3, 1).numpy()
    for k in range(2):
        out_numpy = imresize(images[k], antialias=antialias, **kwargs)
        np.testing.assert_allclose(out_torch[k], out_numpy, rtol=0, atol=1e-12)
    out_float32 = imresize_torch(batch.float(), antialias=antialias, **kwargs)
    assert out_float32.dtype == torch.float32
    np.testing.assert_allclose(out_float32.permute(0, 2, 3, 1).numpy(), out_torch, rtol=0, atol=1e-5)


def test_antialias_false_uses_the_plain_kernel_when_downscaling() -> None:
    weights, _ = contributions(in_length=8, out_length=4, scale=0.5, antialias=False)
    # u = 2i - 1/2: distances 1.5, 0.5, -0.5, -1.5 -> cubic = -1/16, 9/16, 9/16, -1/16.
    np.testing.assert_array_equal(weights, np.tile([-0.0625, 0.5625, 0.5625, -0.0625], (4, 1)))


def test_torch_gradcheck() -> None:
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize_torch(t, scale=0.5), (x,))
    assert torch.autograd.gradcheck(lambda t: imresize_torch(t, output_size=(9, 3)), (x,))


def test_torch_gradient_is_the_transposed_operator() -> None:
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    imresize_torch(x, scale=0.5)[0, 0, 0, 0].backward()
    expected = np.outer(DOWN_HALF_8[0], DOWN_HALF_8[0])
    np.testing.assert_allclose(x.grad[0, 0].numpy(), expected, rtol=0, atol=1e-15)


def test_rejects_bad_arguments() -> None:
    image = np.zeros((8, 8))
    with pytest.raises(ValueError, match="exactly one"):
        imresize(image)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(image, scale=0.5, output_size=(4, 4))
    with pytest.raises(ValueError, match="positive"):
        imresize(image, scale=-0.5)
    with pytest.raises(ValueError, match="output_size"):
        imresize(image, output_size=(0, 4))
    with pytest.raises(ValueError, match="output_size"):
        imresize(image, output_size=4)
    with pytest.raises(ValueError, match="shape"):
        imresize(np.zeros((2, 8, 8, 3)), scale=0.5)
    with pytest.raises(ValueError, match="dtype"):
        imresize(np.zeros((8, 8), dtype=np.int16), scale=0.5)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        imresize_torch(torch.zeros(3, 8, 8), scale=0.5)
    with pytest.raises(ValueError, match="floating"):
        imresize_torch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), scale=0.5)


def test_opencv_inter_cubic_is_not_matlab_bicubic() -> None:
    """Documents why cv2.resize is not used for SLR: a = -0.75 and no antialiasing."""
    rng = np.random.default_rng(0)
    image = rng.random((6, 6))
    upscaled_cv2 = cv2.resize(image, (6, 12), interpolation=cv2.INTER_CUBIC)  # rows x2 only
    assert np.abs(upscaled_cv2 - imresize(image, output_size=(12, 6))).max() > 1e-2
    # OpenCV's interior rows follow the a = -0.75 kernel at distances 1.75, 0.75, 0.25, 1.25:
    # weights -0.03515625, 0.26171875, 0.87890625, -0.10546875.
    taps_a075 = np.array([-0.03515625, 0.26171875, 0.87890625, -0.10546875])
    np.testing.assert_allclose(upscaled_cv2[4], taps_a075 @ image[0:4], rtol=0, atol=1e-6)

    # Aliasing: stripes with period 3 shrunk by 1/3. OpenCV samples one phase of the stripes
    # (cubic(0) = 1, cubic(+-1) = cubic(+-2) = 0) and returns all ones; the antialiased kernel
    # returns the stripe mean 1/3 exactly (each coset of the stretched kernel sums to 1/3).
    stripes = np.zeros((24, 24))
    stripes[1::3, :] = 1.0
    aliased = cv2.resize(stripes, (24, 8), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(aliased, 1.0, atol=1e-6)
    np.testing.assert_allclose(imresize(stripes, output_size=(8, 24)), 1 / 3, atol=1e-12)
