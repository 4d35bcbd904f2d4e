"""``fsr compare``: the same numbers as evaluate_sr for each method, bicubic included, a report with
the best values in bold, one MLflow run per method with the same metric names."""

from __future__ import annotations

import json
import re

import pytest

from tests.pipelines.test_restore_evaluate import NAME, _register, world  # noqa: F401 - the shared fixture

pytestmark = pytest.mark.timeout(300)


def test_compare_prints_reports_and_logs_every_method(ray_session, world, tracking_uri, tmp_path, capsys):  # noqa: F811
    from mlflow import MlflowClient

    from pipelines.cli import main

    (ckpt0, _), (ckpt1, _) = world["networks"]
    hr_folder, _ = world["hr"]
    _register(tracking_uri, ckpt0, alias="champion")
    _register(tracking_uri, ckpt1, alias="challenger")
    import torch

    from fsr_core.networks.face_embedder import FaceEmbedder
    from fsr_core.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    embedder = save_checkpoint(str(tmp_path / "embedder"), train_state={},
                               networks={"embedder": FaceEmbedder(input_size=32, embedding_dim=8, channels=(4, 8))})
    report = tmp_path / "report"
    argv = ["compare", f"models:/{NAME}@champion", f"models:/{NAME}@challenger", "bicubic", "--hr", hr_folder,
            "--max-images", "4", "--tracking-uri", tracking_uri, "--report-dir", str(report),
            "--face-embedder", embedder]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("  ") and "PSNR" not in line]
    assert [line.split()[0] for line in lines] == ["bicubic:x8", f"models:/{NAME}/1", f"models:/{NAME}/2"]

    results = json.loads((report / "compare.json").read_text())
    assert [r["uri"] for r in results] == ["bicubic:x8", f"models:/{NAME}/1", f"models:/{NAME}/2"]
    bicubic = results[0]["means"]
    assert bicubic["psnr_y"] == pytest.approx(bicubic["bicubic_psnr_y"])  # the baseline scored as a method
    # each method's numbers are evaluate_sr's numbers on the same pairs
    from pipelines.stage import StageContext
    from pipelines.stages.evaluate import EVALUATE_SR, EvaluateSRParams

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("stages") or client.get_experiment(client.create_experiment("stages"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    ctx = StageContext(pipeline="t", stage="e", params=EvaluateSRParams(max_images=4, face_embedder=embedder),
                       work_dir=str(tmp_path),
                       outputs={"report": str(tmp_path / "eval")}, run_id=run_id, tracking_uri=tracking_uri)
    EVALUATE_SR.fn(ctx, hr=hr_folder, model=f"models:/{NAME}@champion")
    evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())["means"]
    for metric in ("psnr_y", "ssim_y", "lr_consistency_psnr_y", "identity_sim_dlib", "identity_sim_face_embedder",
                   "niqe_skvideo", "hr_niqe_skvideo"):
        assert results[1]["means"][metric] == pytest.approx(evaluated[metric], rel=1e-6, abs=1e-6), metric

    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and page.count("<tr>") == 4
    assert "identity (own embedder)" in page and "LR consistency (dB)" in page
    assert bicubic["lr_consistency_psnr_y"] == pytest.approx(bicubic["bicubic_lr_consistency_psnr_y"])
    best_psnr = max(results, key=lambda r: r["means"]["psnr_y"])["means"]["psnr_y"]
    assert f"<b>{best_psnr:.2f}</b>" in page
    best_niqe = min(results, key=lambda r: r["means"]["niqe_skvideo"])["means"]["niqe_skvideo"]
    assert f"<b>{best_niqe:.2f}</b>" in page  # NIQE: lower is better

    compare_exp = client.get_experiment_by_name("fsr-compare")
    (parent,) = client.search_runs([compare_exp.experiment_id], "tags.fsr_kind = 'compare'")
    children = client.search_runs([compare_exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["fsr_model_uri"] for c in children) == sorted(r["uri"] for r in results)
    run_tags = client.get_run(ctx.run_id).data.tags
    weight_tags = ("identity_sim_dlib_weights_sha256", "niqe_skvideo_params_sha256",
                   "identity_sim_face_embedder_weights_sha256")
    for child in children:
        assert {"psnr_y", "ssim_y", "lr_consistency_psnr_y", "identity_sim_dlib", "identity_sim_face_embedder",
                "niqe_skvideo"} <= set(child.data.metrics)
        assert {t: child.data.tags[t] for t in weight_tags} == {t: run_tags[t] for t in weight_tags}
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert re.search(r"MLflow run \w+ \(experiment 'fsr-compare'\)", out)
