"""LPIPS: the package's definition computed independently on a backbone written here (ImageNet
AlexNet weights cannot be obtained in this environment), with the official heads of the lpips wheel."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsr_core.metrics.lpips import load_lpips, lpips_distance

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="the lpips wheel is not installed")

SHAPES = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}


@pytest.fixture()
def backbone(tmp_path) -> tuple[str, dict]:
    """An AlexNet-shaped state dict in torchvision's layout (random: a stand-in for the ImageNet file)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for index, shape in SHAPES.items():
        state[f"features.{index}.weight"] = torch.randn(shape, generator=g) * (2.0 / np.prod(shape[1:])) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    state["classifier.1.weight"] = torch.zeros(4, 4)  # a full torchvision file carries these too
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    return str(path), state


def _by_hand(state: dict, heads: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        x = (x - shift) / scale
        out = []
        x = F.relu(F.conv2d(x, state["features.0.weight"], state["features.0.bias"], stride=4, padding=2))
        out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), state["features.3.weight"], state["features.3.bias"], padding=2))
        out.append(x)
        x = F.relu(F.conv2d(F.max_pool2d(x, 3, 2), state["features.6.weight"], state["features.6.bias"], padding=1))
        out.append(x)
        for index in (8, 10):
            x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
            out.append(x)
        return out

    total = 0
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + (F.conv2d((fa - fb) ** 2, heads[f"lin{k}.model.1.weight"])).mean(dim=(2, 3))
    return total.flatten()


def test_matches_the_definition_and_is_zero_for_identical_images(backbone):
    from fsr_core.metrics.lpips import default_heads_path

    path, state = backbone
    model = load_lpips(path)
    heads = torch.load(default_heads_path(), map_location="cpu", weights_only=True)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    got = lpips_distance(model, a, b)
    x, y = (torch.from_numpy(t).permute(0, 3, 1, 2).float() / 127.5 - 1 for t in (a, b))
    np.testing.assert_allclose(got, _by_hand(state, heads, x, y).numpy(), rtol=1e-5)
    assert np.all(got > 0)
    np.testing.assert_array_equal(lpips_distance(model, a, a.copy()), 0.0)
    np.testing.assert_allclose(lpips_distance(model, b, a), got, rtol=1e-6)


def test_missing_or_wrong_weights_are_named(tmp_path, backbone):
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        load_lpips(None)
    with pytest.raises(FileNotFoundError, match="AlexNet ImageNet weights .* not found: .*absent.pth"):
        load_lpips(str(tmp_path / "absent.pth"))
    torch.save({"something": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not AlexNet features and LPIPS v0.1 heads"):
        load_lpips(str(tmp_path / "wrong.pth"))
