"""Stage ``promote_model``: the champion/challenger gate on real registered networks, real Ray Data
scoring and MLflow (SQLite), on genuine LR paired with its ground truth (``evaluate_sr`` with
``lr``): L2Hs that undo the LR's brightness offset fully, half or the wrong way, and a random one."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from fsr_core.data.codec import encode_png
from fsr_core.data.shards import ShardWriter
from fsr_core.degradation.resize import imresize
from fsr_core.networks.two_step import L2HGenerator
from pipelines.stages.evaluate import EVALUATE_SR, EvaluateSRParams
from pipelines.stages.promote import PROMOTE_MODEL, PromoteModelParams
from tests.pipelines.test_restore_evaluate import TINY, _context, _smooth, _write_shards
from tests.restorers import l2h_checkpoint

NAME = "gate_l2h"


OFFSET = 20  # grey levels the genuine LR of the gate's world is brighter than the bicubic downsampling


def _offset_l2h(correction: float) -> L2HGenerator:
    """MATLAB bicubic upsampling minus ``correction`` grey levels (global residual, zero tail weights)."""
    network = L2HGenerator(**TINY, global_residual=True).eval()
    torch.nn.init.zeros_(network.tail.weight)
    torch.nn.init.constant_(network.tail.bias, -correction / 127.5)
    return network


@pytest.fixture(scope="module")
def gate_world(tmp_path_factory):
    """HR crops and their genuine LR (bicubic downsampling + OFFSET, paired by meta.hr_id); L2Hs that
    undo the offset fully (good), half (half: beats bicubic, worse than good), add 3 more grey levels
    (worse: a little below bicubic) and an untrained one (bad: far below bicubic)."""
    root = tmp_path_factory.mktemp("gate")
    torch.manual_seed(0)
    networks = {"good": _offset_l2h(OFFSET), "half": _offset_l2h(OFFSET / 2), "worse": _offset_l2h(-3.0),
                "bad": L2HGenerator(**TINY).eval()}
    for name, network in networks.items():
        l2h_checkpoint(str(root / name), network)
    hr = _smooth(6, 128, seed=2)
    splits = ["test"] * 5 + ["train"]
    hr_ids = _write_shards(str(root / "hr"), hr, splits, "gate")
    lr_rows = []
    for index, (image, hr_id, split) in enumerate(zip(hr, hr_ids, splits)):
        lr = np.clip(imresize(image, output_size=(16, 16)).astype(int) + OFFSET, 0, 255).astype(np.uint8)
        lr_rows.append({"id": f"lr-{index}", "image_png": encode_png(lr), "height": 16, "width": 16,
                        "source": "gate", "source_uri": f"gate/lr/{index}.png", "split": split,
                        "meta": {"hr_id": hr_id}})
    lr_rows.append({"id": "lr-unpaired", "image_png": encode_png(np.zeros((16, 16, 3), np.uint8)), "height": 16,
                    "width": 16, "source": "gate", "source_uri": "gate/lr/x.png", "split": "test"})
    with ShardWriter(str(root / "lr")) as writer:
        writer.write_rows(lr_rows)
    return {**{name: str(root / name) for name in networks}, "hr": str(root / "hr"), "lr": str(root / "lr")}


def _register_and_evaluate(tracking_uri, checkpoint, world, tmp_path, tag):
    from mlflow import MlflowClient

    from pipelines.model_registry import register_restorer

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("train") or client.get_experiment(client.create_experiment("train"))
    uri = register_restorer(checkpoint_dir=checkpoint, restorer="l2h", registered_name=NAME, alias="challenger",
                           tracking_uri=tracking_uri, run_id=client.create_run(experiment.experiment_id).info.run_id)
    report = str(tmp_path / f"report-{tag}")
    EVALUATE_SR.fn(_context(tracking_uri, EvaluateSRParams(max_images=4, grid_images=0, batch_size=2),
                            {"report": report}, tmp_path), hr=world["hr"], lr=world["lr"], model=uri)
    return uri, report


def _gate(tracking_uri, report, hr, tmp_path, tag, **params):
    out = str(tmp_path / f"decision-{tag}")
    ctx = _context(tracking_uri, PromoteModelParams(batch_size=2, **params), {"decision": out}, tmp_path)
    assert PROMOTE_MODEL.fn(ctx, report=report, hr=hr) == {"decision": out}
    return json.loads(open(os.path.join(out, "decision.json")).read()), ctx, out


def test_genuine_pairs_are_scored_against_their_ground_truth(ray_session, gate_world, tracking_uri, tmp_path):
    """Paired evaluation reads each LR crop's own HR (meta.hr_id): the offset-undoing L2H restores
    them exactly as bicubic restores the bicubic downsampling, and the bicubic baseline pays the offset."""
    from fsr_core.metrics.psnr_ssim import psnr_y

    _, report = _register_and_evaluate(tracking_uri, gate_world["good"], gate_world, tmp_path, "pairs")
    summary = json.loads(open(os.path.join(report, "summary.json")).read())
    assert summary["pairs"] == "genuine" and summary["lr"] == gate_world["lr"] and summary["num_unpaired"] == 1
    per_image = pq.read_table(os.path.join(report, "per_image.parquet"))
    assert per_image["id"].to_pylist() == [f"lr-{i}" for i in range(4)]
    hr = _smooth(6, 128, seed=2)
    for i, (sr_psnr, bic_psnr) in enumerate(zip(per_image["psnr_y"].to_pylist(), per_image["bicubic_psnr_y"].to_pylist())):
        simulated = imresize(imresize(hr[i], output_size=(16, 16)), output_size=(128, 128))
        offset = np.clip(imresize(np.clip(imresize(hr[i], output_size=(16, 16)).astype(int) + OFFSET, 0, 255)
                                  .astype(np.uint8), output_size=(128, 128)), 0, 255)
        assert sr_psnr == pytest.approx(psnr_y(simulated, hr[i], crop_border=8), abs=0.3)
        assert bic_psnr == pytest.approx(psnr_y(offset, hr[i], crop_border=8), abs=1e-6)
        assert sr_psnr > bic_psnr + 5


def test_gate_never_promotes_a_restorer_that_does_not_beat_bicubic(ray_session, gate_world, tracking_uri, tmp_path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    hr = gate_world["hr"]
    for tag in ("worse", "bad"):
        _, report = _register_and_evaluate(tracking_uri, gate_world[tag], gate_world, tmp_path, f"first-{tag}")
        decision, _, _ = _gate(tracking_uri, report, hr, tmp_path, f"first-{tag}", min_gain=-100.0)
        assert not decision["promoted"] and "does not beat the bicubic baseline" in decision["reason"]
        assert decision["champion_after"] is None and decision["pairs"] == "genuine"
        with pytest.raises(MlflowException):
            client.get_model_version_by_alias(NAME, "champion")
    client.delete_registered_model(NAME)


def test_gate_promotes_first_keeps_better_champion_and_can_roll_forward(ray_session, gate_world, tracking_uri,
                                                                        tmp_path):
    from mlflow import MlflowClient

    hr = gate_world["hr"]
    good, good_report = _register_and_evaluate(tracking_uri, gate_world["good"], gate_world, tmp_path, "good")
    client = MlflowClient(tracking_uri)

    first, _, _ = _gate(tracking_uri, good_report, hr, tmp_path, "first")
    assert first["promoted"] and first["reason"] == "no champion yet" and first["champion_after"] == good
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1

    half, half_report = _register_and_evaluate(tracking_uri, gate_world["half"], gate_world, tmp_path, "half")
    kept, ctx, out = _gate(tracking_uri, half_report, hr, tmp_path, "kept")
    assert not kept["promoted"] and kept["champion_after"] == good and kept["gain"] < 0
    assert kept["challenger_value"] > kept["bicubic_value"]
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    # the champion was scored now on the challenger's genuine pairs: its value is its own report's mean
    good_summary = json.loads(open(os.path.join(good_report, "summary.json")).read())
    assert kept["champion_value"] == pytest.approx(good_summary["means"]["psnr_y"], abs=1e-6)
    champion_rows = pq.read_table(os.path.join(out, "champion_per_image.parquet"))
    report_rows = pq.read_table(os.path.join(half_report, "per_image.parquet"))
    assert champion_rows["id"].to_pylist() == report_rows["id"].to_pylist() and champion_rows.num_rows == 4
    run = client.get_run(ctx.run_id)
    assert run.data.tags["fsr_decision"] == "kept" and run.data.metrics["promoted"] == 0.0
    assert run.data.metrics["gain"] == pytest.approx(kept["gain"])

    same, _, _ = _gate(tracking_uri, good_report, hr, tmp_path, "same")
    assert not same["promoted"] and same["reason"] == "the challenger already is the champion"

    # a negative margin lets a worse model through (an operator's override), with a rollback alias
    forced, _, _ = _gate(tracking_uri, half_report, hr, tmp_path, "forced", min_gain=-100.0)
    assert forced["promoted"] and forced["champion_before"] == good and forced["champion_after"] == half
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 2
    assert int(client.get_model_version_by_alias(NAME, "previous_champion").version) == 1

    with pytest.raises(ValueError, match="not the given hr"):
        _gate(tracking_uri, half_report, str(tmp_path / "elsewhere"), tmp_path, "wrong-hr")


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
    _, report = _register_and_evaluate(tracking_uri, gate_world["good"], gate_world, tmp_path, "good")
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
