"""FID/KID features of images on pytorch-fid's Inception (random weights in the file's layout: the
real file cannot be obtained here), and the scorer's LPIPS and Inception columns, which appear
only when their weight files are given."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pytest
import torch

from fsr_core.metrics.distribution import fid_from_features, kid_from_features
from fsr_core.metrics.inception import inception_features
from fsr_core.networks.inception_fid import FID_WEIGHTS_FILE, load_fid_inception
from tests.fsr_core.networks.test_inception_fid import random_state

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inception") / FID_WEIGHTS_FILE
    torch.save(random_state(seed=1), path)
    return str(path)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory) -> str:
    """An AlexNet-shaped state dict in torchvision's layout (random weights)."""
    from tests.fsr_core.metrics.test_lpips import SHAPES

    g = torch.Generator().manual_seed(0)
    state = {}
    for index, shape in SHAPES.items():
        state[f"features.{index}.weight"] = torch.randn(shape, generator=g) * (2.0 / np.prod(shape[1:])) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    path = tmp_path_factory.mktemp("alexnet") / "alexnet.pth"
    torch.save(state, path)
    return str(path)


def test_features_are_the_network_on_images_in_minus_one_one(inception_file):
    model = load_fid_inception(inception_file)
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    features = inception_features(model, images, batch_size=1)
    assert features.shape == (2, 2048) and features.dtype == np.float64
    with torch.no_grad():
        direct = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).double().numpy()
    np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6)
    assert inception_features(model, images[:0]).shape == (0, 2048)
    with pytest.raises(ValueError, match="uint8"):
        inception_features(model, images.astype(np.float32))


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="the lpips wheel (LPIPS heads) is not installed")
def test_scorer_columns_only_with_their_weight_files(inception_file, alexnet_file):
    from fsr_core.metrics.lpips import load_lpips, lpips_distance
    from fsr_core.restore.batch import INCEPTION_COLUMNS, LPIPS_COLUMNS, SuperResolutionScorer, score_super_resolution
    from pipelines.stages.evaluate import mean_scores, pooled_inception
    from fsr_core.networks.two_step import L2HGenerator
    from tests.fsr_core.restore.test_batch import TINY, _smooth_hr, restorer_of

    torch.manual_seed(0)
    restorer = restorer_of(L2HGenerator(**TINY).eval())
    loader = lambda uri, *, tracking_uri, device: (restorer, {})  # noqa: E731
    hr = _smooth_hr(3, seed=5)
    batch = {"id": np.array(["a", "b", "c"], dtype=object), "image": hr}

    plain = SuperResolutionScorer(model_uri="m", loader=loader, scale=8, crop_border=8)(batch)
    assert not set(LPIPS_COLUMNS + INCEPTION_COLUMNS) & set(plain)

    out = SuperResolutionScorer(model_uri="m", loader=loader, scale=8, crop_border=8, batch_size=2,
                                inception_weights=inception_file, lpips_backbone=alexnet_file)(batch)
    direct = score_super_resolution(restorer, hr, scale=8, crop_border=8)
    lpips = load_lpips(alexnet_file)
    inception = load_fid_inception(inception_file)
    for name, images in zip(LPIPS_COLUMNS, (direct["sr"], direct["bicubic"])):
        np.testing.assert_allclose(out[name], lpips_distance(lpips, images, hr), rtol=1e-6)
        assert out[name].shape == (3,) and np.all(out[name] > 0)
    features = {name: inception_features(inception, images)
                for name, images in zip(INCEPTION_COLUMNS, (direct["sr"], direct["bicubic"], hr))}
    for name in INCEPTION_COLUMNS:
        np.testing.assert_allclose(out[name], features[name], rtol=1e-5, atol=1e-6)

    table = pa.table({"id": ["a", "b", "c"], **{k: out[k] for k in ("psnr_y", "bicubic_psnr_y", *LPIPS_COLUMNS)},
                      **{k: out[k].tolist() for k in INCEPTION_COLUMNS}})
    means = mean_scores(table)
    assert means["lpips_alex"] == pytest.approx(float(np.mean(out["lpips_alex"])))
    pooled = pooled_inception(table)
    assert set(pooled) == {"fid_inception", "kid_inception", "bicubic_fid_inception", "bicubic_kid_inception"}
    truth = features["hr_inception_features"]
    assert pooled["fid_inception"] == pytest.approx(fid_from_features(features["inception_features"], truth), rel=1e-6)
    assert pooled["bicubic_kid_inception"] == pytest.approx(
        kid_from_features(features["bicubic_inception_features"], truth)[0], rel=1e-6, abs=1e-12)
    same = table.drop(["inception_features"]).append_column("inception_features", table["hr_inception_features"])
    assert pooled_inception(same)["fid_inception"] == pytest.approx(0.0, abs=1e-6)  # a set against itself
    assert pooled_inception(table.drop(["hr_inception_features"])) == {}


def test_evaluate_params_default_to_no_network_and_name_missing_files(tmp_path, capsys, inception_file,
                                                                      alexnet_file):
    from pipelines.stages.evaluate import EvaluateSRParams, metric_files

    p = EvaluateSRParams()
    assert p.inception_weights is None and p.lpips_backbone is None
    assert not any(k.startswith(("fid_inception", "lpips_alex")) for k in metric_files(p, quality=False))
    import hashlib

    tags = metric_files(EvaluateSRParams(inception_weights=inception_file), quality=False)
    assert tags == {"fid_inception_weights_sha256": hashlib.sha256(open(inception_file, "rb").read()).hexdigest()}
    if importlib.util.find_spec("lpips") is not None:
        from fsr_core.metrics.lpips import default_heads_path

        tags = metric_files(EvaluateSRParams(lpips_backbone=alexnet_file), quality=False)
        assert tags == {"lpips_alex_backbone_sha256": hashlib.sha256(open(alexnet_file, "rb").read()).hexdigest(),
                        "lpips_alex_heads_sha256": hashlib.sha256(open(default_heads_path(), "rb").read()).hexdigest()}
    with pytest.raises(FileNotFoundError, match=f"{FID_WEIGHTS_FILE}.*absent.pth"):
        metric_files(EvaluateSRParams(inception_weights=str(tmp_path / "absent.pth")), quality=False)
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth.*absent.pth"):
        metric_files(EvaluateSRParams(lpips_backbone=str(tmp_path / "absent.pth")), quality=False)
    from pipelines.cli import main

    absent = str(tmp_path / "pt_absent.pth")
    assert main(["compare", "bicubic", "--hr", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                 "--inception-weights", absent]) == 2  # refused before Ray or MLflow start
    assert f"not found: {absent}" in capsys.readouterr().err
