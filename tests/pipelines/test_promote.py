"""Stage ``promote_model``: the champion/challenger gate on real registered networks, real Ray Data
scoring and MLflow (SQLite). A bicubic-exact L2H (global residual, zero tail) against a random one."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from fsr_core.networks.two_step import L2HGenerator
from pipelines.stages.evaluate import EVALUATE_SR, EvaluateSRParams
from pipelines.stages.promote import PROMOTE_MODEL, PromoteModelParams
from tests.pipelines.test_restore_evaluate import TINY, _context, _smooth, _write_shards
from tests.restorers import l2h_checkpoint

NAME = "gate_l2h"


@pytest.fixture(scope="module")
def gate_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    bicubic = L2HGenerator(**TINY, global_residual=True).eval()
    torch.nn.init.zeros_(bicubic.tail.weight)
    torch.nn.init.zeros_(bicubic.tail.bias)  # exactly MATLAB bicubic upsampling: a good model here
    torch.manual_seed(0)
    noisy = L2HGenerator(**TINY).eval()  # untrained: far below bicubic
    for name, network in (("good", bicubic), ("bad", noisy)):
        l2h_checkpoint(str(root / name), network)
    hr = _smooth(6, 128, seed=2)
    _write_shards(str(root / "hr"), hr, ["test"] * 5 + ["train"], "gate")
    return {"good": str(root / "good"), "bad": str(root / "bad"), "hr": str(root / "hr")}


def _register_and_evaluate(tracking_uri, checkpoint, hr, tmp_path, tag):
    from mlflow import MlflowClient

    from pipelines.model_registry import register_restorer

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("train") or client.get_experiment(client.create_experiment("train"))
    uri = register_restorer(checkpoint_dir=checkpoint, restorer="l2h", registered_name=NAME, alias="challenger",
                           tracking_uri=tracking_uri, run_id=client.create_run(experiment.experiment_id).info.run_id)
    report = str(tmp_path / f"report-{tag}")
    EVALUATE_SR.fn(_context(tracking_uri, EvaluateSRParams(max_images=4, grid_images=0, batch_size=2),
                            {"report": report}, tmp_path), hr=hr, model=uri)
    return uri, report


def _gate(tracking_uri, report, hr, tmp_path, tag, **params):
    out = str(tmp_path / f"decision-{tag}")
    ctx = _context(tracking_uri, PromoteModelParams(batch_size=2, **params), {"decision": out}, tmp_path)
    assert PROMOTE_MODEL.fn(ctx, report=report, hr=hr) == {"decision": out}
    return json.loads(open(os.path.join(out, "decision.json")).read()), ctx, out


def test_gate_promotes_first_keeps_better_champion_and_can_roll_forward(ray_session, gate_world, tracking_uri,
                                                                        tmp_path):
    from mlflow import MlflowClient

    hr = gate_world["hr"]
    good, good_report = _register_and_evaluate(tracking_uri, gate_world["good"], hr, tmp_path, "good")
    client = MlflowClient(tracking_uri)

    first, _, _ = _gate(tracking_uri, good_report, hr, tmp_path, "first")
    assert first["promoted"] and first["reason"] == "no champion yet" and first["champion_after"] == good
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1

    bad, bad_report = _register_and_evaluate(tracking_uri, gate_world["bad"], hr, tmp_path, "bad")
    kept, ctx, out = _gate(tracking_uri, bad_report, hr, tmp_path, "kept")
    assert not kept["promoted"] and kept["champion_after"] == good and kept["gain"] < 0
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    # the champion was scored now on the challenger's crops: its value is its own report's mean
    good_summary = json.loads(open(os.path.join(good_report, "summary.json")).read())
    assert kept["champion_value"] == pytest.approx(good_summary["means"]["psnr_y"], abs=1e-6)
    assert kept["challenger_value"] < kept["champion_value"] - 1.0
    champion_rows = pq.read_table(os.path.join(out, "champion_per_image.parquet"))
    report_rows = pq.read_table(os.path.join(bad_report, "per_image.parquet"))
    assert champion_rows["id"].to_pylist() == report_rows["id"].to_pylist() and champion_rows.num_rows == 4
    run = client.get_run(ctx.run_id)
    assert run.data.tags["fsr_decision"] == "kept" and run.data.metrics["promoted"] == 0.0
    assert run.data.metrics["gain"] == pytest.approx(kept["gain"])

    same, _, _ = _gate(tracking_uri, good_report, hr, tmp_path, "same")
    assert not same["promoted"] and same["reason"] == "the challenger already is the champion"

    # a negative margin lets the worse model through (an operator's override), with a rollback alias
    forced, _, _ = _gate(tracking_uri, bad_report, hr, tmp_path, "forced", min_gain=-100.0)
    assert forced["promoted"] and forced["champion_before"] == good and forced["champion_after"] == bad
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    assert int(client.get_model_version_by_alias(NAME, "previous_champion").version) == 1

    with pytest.raises(ValueError, match="not the given hr"):
        _gate(tracking_uri, bad_report, str(tmp_path / "elsewhere"), tmp_path, "wrong-hr")


def test_gate_params_are_checked():
    with pytest.raises(ValidationError):
        PromoteModelParams(metric="lpips")
    with pytest.raises(ValidationError):
        PromoteModelParams(alias="champion!")
    for reserved in ("latest", "v3"):
        with pytest.raises(ValidationError, match="reserved"):
            PromoteModelParams(alias=reserved)
    with pytest.raises(ValidationError):
        PromoteModelParams(unknown=1)


def test_capped_mean_keeps_one_exact_crop_from_deciding():
    import pyarrow as pa

    from pipelines.stages.promote import PSNR_CAP_DB, capped_mean

    scores = pa.table({"psnr_y": [30.0, float("inf")], "ssim_y": [0.5, 1.0]})
    assert capped_mean(scores, "psnr_y") == (30.0 + PSNR_CAP_DB) / 2
    assert capped_mean(scores, "ssim_y") == 0.75


def test_a_champion_that_cannot_be_resolved_stops_the_gate(ray_session, gate_world, tracking_uri, tmp_path):
    """Only a missing alias means "no champion": a hand-made version without a logged model fails
    the gate instead of being replaced without a comparison (and without a rollback alias)."""
    from mlflow import MlflowClient

    from pipelines.model_registry import ModelNotFoundError

    hr = gate_world["hr"]
    _, report = _register_and_evaluate(tracking_uri, gate_world["good"], hr, tmp_path, "good")
    client = MlflowClient(tracking_uri)
    hand = client.create_model_version(NAME, source=str(tmp_path / "nowhere"))
    client.set_registered_model_alias(NAME, "champion", hand.version)
    with pytest.raises(ModelNotFoundError, match="has no logged model"):
        _gate(tracking_uri, report, hr, tmp_path, "hand")
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == int(hand.version)


def test_the_gate_stops_when_the_alias_moves_while_it_runs(tracking_uri):
    from mlflow import MlflowClient

    from pipelines.stages.promote import _check_alias_unchanged

    client = MlflowClient(tracking_uri)
    client.create_registered_model("moving")
    for _ in range(2):
        client.create_model_version("moving", source="file:///nowhere")
    client.set_registered_model_alias("moving", "champion", 1)

    class Ref:  # the champion's version as resolved when the gate started (ModelRef.version)
        version = 1

    _check_alias_unchanged(client, "moving", "champion", Ref())  # unchanged: fine
    client.set_registered_model_alias("moving", "champion", 2)  # a hand rollback meanwhile
    with pytest.raises(RuntimeError, match="moved from version 1 to 2"):
        _check_alias_unchanged(client, "moving", "champion", Ref())
