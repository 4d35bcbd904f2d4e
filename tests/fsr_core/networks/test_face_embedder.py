"""The face embedder and its identity classifier: shapes, sizes, errors, rebuild from config (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch

from fsr_core.networks import build_network, network_class, network_spec
from fsr_core.networks.face_embedder import FaceEmbedder, IdentityClassifier

TINY = {"input_size": 32, "embedding_dim": 16, "channels": (4, 8, 8), "blocks_per_stage": 1}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registered_and_rebuilt_from_its_config() -> None:
    assert network_class("face_embedder") is FaceEmbedder
    assert network_class("identity_classifier") is IdentityClassifier
    net = FaceEmbedder(**TINY).eval()
    assert net.config == {**TINY, "channels": [4, 8, 8]}
    spec = network_spec(net)
    assert spec["class"] == "face_embedder"
    copy = build_network(spec).eval()
    copy.load_state_dict(net.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(copy(x), net(x))
    assert IdentityClassifier(embedding_dim=16, num_classes=5).config == {"embedding_dim": 16, "num_classes": 5}


def test_default_network_maps_64_px_crops_to_128_d() -> None:
    net = FaceEmbedder().eval()
    assert net(torch.rand(3, 3, 64, 64) * 2 - 1).shape == (3, 128)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.PReLU) for m in net.modules())


def test_other_crop_sizes_are_resized_to_the_input_size() -> None:
    net = FaceEmbedder(**TINY).eval()
    coords = torch.linspace(-1, 1, 128)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    weights = torch.rand(2, 3, 3, 1, 1) * 2 - 1
    x128 = (weights[:, :, 0] * 0.6 * xx + weights[:, :, 1] * 0.6 * yy + weights[:, :, 2] * 0.3).clamp(-1, 1)
    e128 = net(x128)
    assert e128.shape == (2, 16)
    resized = torch.nn.functional.interpolate(x128, size=(32, 32), mode="bilinear", align_corners=False,
                                              antialias=True)
    assert torch.equal(e128, net(resized))
    # a smooth face seen at 128 px and at 32 px gets (almost) the same embedding, unlike another face
    x32 = torch.nn.functional.interpolate(x128, size=(32, 32), mode="area")
    e32 = net(x32)
    same = (e128 - e32).norm(dim=1)
    other = (e128 - e32.flip(0)).norm(dim=1)
    assert bool((same < 0.2 * other).all()), (same, other)
    assert net(torch.rand(1, 3, 20, 20)).shape == (1, 16)  # enlarged


def test_gradients_reach_the_input() -> None:
    net = FaceEmbedder(**TINY)
    x = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    net(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 32, 16), (3, 32, 32), (0, 3, 32, 32)])
def test_wrong_input_is_a_value_error(shape) -> None:
    with pytest.raises(ValueError, match="FaceEmbedder"):
        FaceEmbedder(**TINY)(torch.zeros(shape))
    with pytest.raises(ValueError, match="float"):
        FaceEmbedder(**TINY)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="multiple of 2\\*\\*len\\(channels\\)=8"):
        FaceEmbedder(input_size=36, channels=(4, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        FaceEmbedder(channels=())
    with pytest.raises(ValueError, match="num_classes"):
        IdentityClassifier(embedding_dim=4, num_classes=1)


def test_classifier_shapes_and_errors() -> None:
    head = IdentityClassifier(embedding_dim=16, num_classes=7)
    assert head(torch.rand(5, 16)).shape == (5, 7)
    with pytest.raises(ValueError, match=r"\[N,16\]"):
        head(torch.rand(5, 8))
