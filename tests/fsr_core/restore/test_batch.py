"""Batch restoration: pixel conversions, MATLAB-bicubic resizing, restorers, scoring, crop files,
and the callable classes (directly, inside a Ray Data actor pool and as batched tasks)."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import torch

from fsr_core import storage
from fsr_core.data.codec import decode_png
from fsr_core.degradation.resize import imresize
from fsr_core.metrics.psnr_ssim import psnr_y, ssim_y
from fsr_core.networks.two_step import L2HGenerator
from fsr_core.restore.batch import (
    SCORE_COLUMNS,
    SuperResolutionScorer,
    SuperResolver,
    crop_filename,
    degrade_bicubic,
    images_to_tensor,
    map_restorer,
    resize_images,
    score_super_resolution,
    side_by_side,
    tensor_to_images,
    write_crops,
)
from fsr_core.restore.restorer import FeedForwardRestorer, RestorerCard, load_bundle, save_bundle

TINY = dict(channels=8, blocks_per_section=(1, 1, 1, 1), reduction=4)


CARD = RestorerCard(kind="feed_forward", input_size=16, scale=8, networks=("l2h",), name="l2h")


@pytest.fixture(scope="module")
def network() -> L2HGenerator:
    torch.manual_seed(0)
    return L2HGenerator(**TINY).eval()


def restorer_of(network) -> FeedForwardRestorer:
    return FeedForwardRestorer(CARD, {"l2h": network})


def super_resolve(network, lr: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    return restorer_of(network).restore(lr, batch_size=batch_size)


def _images(n: int, height: int, width: int | None = None, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, height, width or height, 3), dtype=np.uint8)


def _smooth_hr(n: int, size: int = 128, *, seed: int = 0) -> np.ndarray:
    """Low-frequency colour fields plus mild noise: bicubic does well but not perfectly on them."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 220, (n, 6, 6, 3))
    smooth = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    return np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).round().astype(np.uint8)


def _objects(*arrays: np.ndarray) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = list(arrays)
    return out


def test_pixel_conversions_round_trip_exactly_and_clip():
    images = _images(3, 5, 7)
    x = images_to_tensor(images)
    assert x.shape == (3, 3, 5, 7) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert torch.allclose(x[1, :, 2, 3], torch.tensor(images[1, 2, 3] / 127.5 - 1.0, dtype=torch.float32))
    np.testing.assert_array_equal(tensor_to_images(x), images)
    clipped = tensor_to_images(torch.tensor([2.0, -3.0, 0.0]).view(1, 3, 1, 1))
    assert clipped.tolist() == [[[[255, 0, 128]]]]  # 0.0 -> 127.5 rounds half to even


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.uint8)])
def test_images_to_tensor_rejects_non_uint8_rgb_batches(bad):
    with pytest.raises(ValueError, match=r"uint8 \[N,H,W,3\]"):
        images_to_tensor(bad)


def test_resize_images_matlab_bicubic_only_for_other_sizes():
    same = _images(2, 16)
    assert resize_images(same, 16) is same  # stacked at the right size: untouched
    a, b, c = _images(1, 20)[0], _images(1, 16, seed=1)[0], _images(1, 25, 30, seed=2)[0]
    out = resize_images(_objects(a, b, c), 16)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], imresize(a, output_size=(16, 16)))
    np.testing.assert_array_equal(out[1], b)
    np.testing.assert_array_equal(out[2], imresize(c, output_size=(16, 16)))
    with pytest.raises(ValueError, match="crop 0"):
        resize_images(_objects(a.astype(np.float32)), 16)


def test_a_feed_forward_restorer_equals_the_network_forward_pass(network):
    lr = _images(5, 16)
    with torch.no_grad():
        expected = tensor_to_images(network(images_to_tensor(lr)))
    sr = super_resolve(network, lr, batch_size=64)
    assert sr.shape == (5, 128, 128, 3) and sr.dtype == np.uint8
    np.testing.assert_array_equal(sr, expected)
    # Chunking changes only the float batch composition: at most one grey level, rarely.
    chunked = super_resolve(network, lr, batch_size=2)
    diff = np.abs(chunked.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert super_resolve(network, lr[:0]).shape == (0, 128, 128, 3)


def test_super_resolver_loads_once_and_resizes_each_crop(network):
    calls = []

    def loader(model_uri, *, tracking_uri, device):
        calls.append((model_uri, tracking_uri, device))
        return restorer_of(network), {"scale": 8}

    resolver = SuperResolver(model_uri="models:/x/3", loader=loader, tracking_uri="sqlite:////t.db")  # card: 16
    crops = _objects(_images(1, 16)[0], _images(1, 24, seed=1)[0], _images(1, 20, 18, seed=2)[0])
    batch = {"id": np.array(["a", "b", "c"], dtype=object), "image": crops}
    out = resolver(batch)
    again = resolver(batch)
    assert calls == [("models:/x/3", "sqlite:////t.db", "cpu")]
    assert out["id"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(out["image"], super_resolve(network, resize_images(crops, 16)))
    np.testing.assert_array_equal(out["image"], again["image"])
    np.testing.assert_array_equal(out["image"][:1], super_resolve(network, crops[0][None]))  # 16x16: not resized


def test_score_super_resolution_matches_direct_metrics(network):
    hr = _smooth_hr(3)
    scores = score_super_resolution(restorer_of(network), hr, scale=8, crop_border=8)
    sr = super_resolve(network, np.stack([imresize(image, scale=1 / 8) for image in hr]))
    np.testing.assert_array_equal(scores["sr"], sr)
    for i in range(3):
        lr = imresize(hr[i], scale=1 / 8)
        np.testing.assert_array_equal(scores["lr"][i], lr)
        np.testing.assert_array_equal(scores["bicubic"][i], imresize(lr, scale=8))
        assert scores["bicubic_psnr_y"][i] == psnr_y(imresize(lr, scale=8), hr[i], crop_border=8)
        assert scores["bicubic_ssim_y"][i] == ssim_y(imresize(lr, scale=8), hr[i], crop_border=8)
        assert scores["psnr_y"][i] == psnr_y(scores["sr"][i], hr[i], crop_border=8)
        assert scores["ssim_y"][i] == ssim_y(scores["sr"][i], hr[i], crop_border=8)
    assert 25 < scores["bicubic_psnr_y"].mean() < 60  # smooth images: bicubic is good, not exact
    flat = np.full((1, 128, 128, 3), (90, 140, 200), np.uint8)  # bicubic down and up is exact here
    exact = score_super_resolution(restorer_of(network), flat, scale=8, crop_border=8)
    assert exact["bicubic_psnr_y"][0] == np.inf and exact["bicubic_ssim_y"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scale"):
        score_super_resolution(restorer_of(network), hr[:, :64, :64], scale=4, crop_border=4)  # x8, x4 asked
    with pytest.raises(ValueError, match="not divisible"):
        degrade_bicubic(hr[:, :100, :100], 8)


def test_resize_output_scores_an_x8_restorer_on_x4_pairs_at_the_hr_size(network):
    """x4 pairs (64 px HR, its 16 px bicubic LR): the x8 restorer maps 16 -> 128 and its output is
    brought down to 64 with MATLAB bicubic before scoring; LR and baseline are the x4 ones."""
    hr = _smooth_hr(3, size=64)
    scores = score_super_resolution(restorer_of(network), hr, scale=4, crop_border=4, resize_output=True)
    lr = np.stack([imresize(image, scale=1 / 4) for image in hr])
    np.testing.assert_array_equal(scores["lr"], lr)
    expected = np.stack([imresize(image, output_size=(64, 64)) for image in super_resolve(network, lr)])
    np.testing.assert_array_equal(scores["sr"], expected)
    assert scores["psnr_y"][0] == psnr_y(expected[0], hr[0], crop_border=4)
    np.testing.assert_array_equal(scores["bicubic"][0], imresize(lr[0], scale=4))
    # a genuine LR of another size is first brought to the restorer's input size (16 px)
    genuine = np.stack([imresize(image, output_size=(24, 24)) for image in hr])
    resized = score_super_resolution(restorer_of(network), hr, scale=4, crop_border=4, lr=genuine,
                                     resize_output=True)
    assert resized["sr"].shape == hr.shape
    loader = lambda uri, *, tracking_uri, device: (restorer_of(network), {"scale": 8})  # noqa: E731
    scorer = SuperResolutionScorer(model_uri="m", loader=loader, scale=4, crop_border=4, resize_output=True)
    out = scorer({"id": np.array(["a", "b", "c"], dtype=object), "image": hr})
    np.testing.assert_array_equal(out["psnr_y"], scores["psnr_y"])


def test_scorer_returns_scores_and_grid_strips_only_for_grid_ids(network):
    loader = lambda uri, *, tracking_uri, device: (restorer_of(network), {"scale": 8})  # noqa: E731
    scorer = SuperResolutionScorer(model_uri="m", loader=loader, scale=8, crop_border=8, grid_ids=["b"])
    hr = _smooth_hr(2, seed=3)
    out = scorer({"id": np.array(["a", "b"], dtype=object), "image": hr})
    direct = score_super_resolution(restorer_of(network), hr, scale=8, crop_border=8)
    for name in SCORE_COLUMNS:
        np.testing.assert_array_equal(out[name], direct[name])
    assert out["grid_png"][0] == b""
    strip = decode_png(out["grid_png"][1])
    np.testing.assert_array_equal(strip, side_by_side(direct["lr"][1], direct["bicubic"][1], direct["sr"][1], hr[1]))
    with pytest.raises(ValueError, match="x8.*x4"):
        SuperResolutionScorer(model_uri="m", loader=loader, scale=4, crop_border=4)


def test_side_by_side_repeats_small_panels():
    lr, hr = _images(1, 16)[0], _images(1, 128, seed=1)[0]
    strip = side_by_side(lr, hr, gap=2)
    assert strip.shape == (128, 128 + 2 + 128, 3)
    np.testing.assert_array_equal(strip[:8, :8], np.broadcast_to(lr[0, 0], (8, 8, 3)))
    assert (strip[:, 128:130] == 255).all()
    np.testing.assert_array_equal(strip[:, 130:], hr)


def test_write_crops_addresses_files_by_id(tmp_path):
    folder = str(tmp_path / "crops")
    images = _images(2, 32)
    batch = {"id": np.array(["face-1", "odd/id"], dtype=object), "image": images}
    first = write_crops(batch, folder=folder)
    second = write_crops(batch, folder=folder)  # same ids: same files, overwritten
    assert first["output_uri"].tolist() == second["output_uri"].tolist()
    assert [crop_filename(i) for i in batch["id"]] == ["face-1.png", "odd%2Fid.png"]
    files = storage.list_files(folder)
    assert sorted(os.path.basename(f.uri) for f in files) == ["face-1.png", "odd%2Fid.png"]
    for uri, image in zip(first["output_uri"], images):
        np.testing.assert_array_equal(decode_png(storage.read_bytes(uri)), image)


# ---------------------------------------------------------------------------- inside Ray Data
def bundle_loader(model_uri, *, tracking_uri, device):
    """Test loader: ``model_uri`` is a restorer bundle folder; each call leaves a marker file."""
    with open(os.path.join(tracking_uri, f"load-{os.getpid()}-{uuid.uuid4().hex}"), "w"):
        pass
    restorer = load_bundle(model_uri, device=device)
    return restorer, {"scale": restorer.card.scale}


@pytest.mark.parametrize("kind", ["feed_forward", "latent_search"])
def test_map_restorer_loads_once_per_actor_or_task_worker(ray_session, network, tmp_path, kind):
    """Feed-forward restorers run in an actor pool (one load per actor); latent-search ones as
    batched tasks (one load per worker process, reused by the tasks it runs)."""
    import ray

    folder = save_bundle(str(tmp_path / "bundle"), CARD, {"l2h": network})
    markers = tmp_path / "loads"
    markers.mkdir()
    lr = _images(24, 16, seed=5)
    ds = ray.data.from_items([{"id": f"f{i:02d}", "image": lr[i]} for i in range(24)], override_num_blocks=6)
    ds = map_restorer(ds, SuperResolver,
                      fn_kwargs={"model_uri": folder, "loader": bundle_loader, "tracking_uri": str(markers),
                                 "input_size": 16},
                      kind=kind, num_actors=2, num_cpus=0.5, batch_size=4)
    rows = sorted(ds.take_all(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == [f"f{i:02d}" for i in range(24)]
    restored = np.stack([row["image"] for row in rows])
    expected = super_resolve(network, lr)
    diff = np.abs(restored.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    loads = os.listdir(markers)
    processes = {name.split("-")[1] for name in loads}
    if kind == "feed_forward":
        # 6 batches, a pool of 2 actors: one load per actor that started (the second may still be
        # pending on a loaded machine when the first has run every batch)
        assert len(loads) == len(processes) and 1 <= len(loads) <= 2
    else:
        assert len(loads) == len(processes) < 6  # 6 tasks, each worker process loads once
