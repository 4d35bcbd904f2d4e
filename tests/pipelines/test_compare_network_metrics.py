"""``fsr compare --inception-weights --lpips-backbone``: FID, KID and LPIPS columns computed by the
Ray actors on the weight files given (random weights in the real files' layouts, written by the
tests), the same numbers as the metric functions on the same crops, the files' sha256 on every run."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest

from tests.fsr_core.metrics.test_inception import alexnet_file, inception_file  # noqa: F401 - shared fixtures
from tests.pipelines.test_restore_evaluate import NAME, _register, world  # noqa: F401 - the shared fixture

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="the lpips wheel is not installed")]


def test_compare_shows_fid_kid_lpips_only_when_their_weights_are_given(  # noqa: F811
        ray_session, world, tracking_uri, tmp_path, capsys, inception_file, alexnet_file):
    from mlflow import MlflowClient

    from fsr_core.degradation.resize import imresize
    from fsr_core.metrics.distribution import fid_from_features, kid_from_features
    from fsr_core.metrics.inception import inception_features
    from fsr_core.metrics.lpips import load_lpips, lpips_distance
    from fsr_core.networks.inception_fid import load_fid_inception
    from pipelines.cli import main

    (ckpt0, _), _ = world["networks"]
    hr_folder, hr = world["hr"]
    _register(tracking_uri, ckpt0, alias="champion")
    report = tmp_path / "report"
    argv = ["compare", f"models:/{NAME}@champion", "--hr", hr_folder, "--max-images", "2", "--tracking-uri",
            tracking_uri, "--report-dir", str(report), "--inception-weights", inception_file,
            "--lpips-backbone", alexnet_file, "--experiment", "network-metrics"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("  method"))
    assert {"LPIPS", "FID", "KID"} <= set(header.split())

    results = json.loads((report / "compare.json").read_text())
    bicubic, model = (r["means"] for r in results)
    # the baseline, scored as a method, against the metric functions on the same two crops
    truth = np.stack([x for _, x in hr[:2]])
    bicubics = np.stack([imresize(imresize(x, scale=1 / 8), scale=8) for x in truth])
    lpips = lpips_distance(load_lpips(alexnet_file), bicubics, truth)
    assert bicubic["lpips_alex"] == pytest.approx(float(lpips.mean()), rel=1e-5)
    assert bicubic["lpips_alex"] == pytest.approx(bicubic["bicubic_lpips_alex"])
    network = load_fid_inception(inception_file)
    f_bicubic, f_truth = inception_features(network, bicubics), inception_features(network, truth)
    assert bicubic["fid_inception"] == pytest.approx(fid_from_features(f_bicubic, f_truth), rel=1e-4)
    assert bicubic["kid_inception"] == pytest.approx(kid_from_features(f_bicubic, f_truth)[0], rel=1e-4, abs=1e-9)
    assert model["bicubic_fid_inception"] == pytest.approx(bicubic["fid_inception"], rel=1e-6)
    assert model["fid_inception"] >= 0 and model["lpips_alex"] > 0
    page = (report / "report.html").read_text()
    assert "<th>LPIPS</th>" in page and "<th>FID</th>" in page and "<th>KID</th>" in page

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("network-metrics")
    children = client.search_runs([experiment.experiment_id], "tags.fsr_kind = 'compare_method'")
    assert len(children) == 2

    def sha(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    for child in children:
        assert {"fid_inception", "kid_inception", "lpips_alex"} <= set(child.data.metrics)
        assert child.data.tags["fid_inception_weights_sha256"] == sha(inception_file)
        assert child.data.tags["lpips_alex_backbone_sha256"] == sha(alexnet_file)
