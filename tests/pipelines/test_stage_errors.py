"""A failed stage is summarised by its root cause (type and message of the first failure, from
inside Ray Data's and Ray Train's wrappers) and says where its whole error is: the stage's MLflow
run, and with `fsr run` the engine log (real Ray, Ray Data, Ray Train, SQLite MLflow)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.runner import PipelineError, result_json, run_pipeline
from tests.conftest import ROOT
from tests.pipelines.failing_stages import STAGES

pytestmark = pytest.mark.timeout(240)

DATA_CAUSE = "ValueError: shard part-00002.parquet: row 2 is not a PNG"
TRAIN_CAUSE = "KeyError: \"objective state has no 'centres'\""


def _conf(tmp_path, tracking_uri, stages: str) -> str:
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(textwrap.dedent(f"""
        runtime: {{work_root: {tmp_path}/work}}
        tracking: {{uri: '{tracking_uri}', experiment: errors}}
        """))
    (root / "pipelines" / "failing.yaml").write_text(f"pipeline: {{name: failing, stages: {stages}}}\n")
    return str(root)


def test_the_summary_names_the_first_failure_inside_ray_data_and_ray_train(ray_session, tmp_path, tracking_uri):
    conf = _conf(tmp_path, tracking_uri, "[{name: decode, uses: fail_in_ray_data}, {name: train, uses: fail_in_ray_train}]")
    lines: list[str] = []
    with pytest.raises(PipelineError) as info:
        run_pipeline(load_config("failing", registry=STAGES, conf_dir=conf), registry=STAGES, printer=lines.append)
    error = info.value
    runs = {name: plan.run_id for name, plan in error.result.stages.items()}
    assert f"stage 'decode' failed: {DATA_CAUSE} (whole traceback: artifact stage_error.txt of MLflow run " \
           f"{runs['decode']})" in error.summary
    assert f"stage 'train' failed: {TRAIN_CAUSE} (whole traceback: artifact stage_error.txt of MLflow run " \
           f"{runs['train']})" in error.summary
    assert "To change retry attempts" not in error.summary and "UserCodeException" not in error.summary
    assert any(line.startswith("  [FAILED]  decode after") and line.endswith(DATA_CAUSE) for line in lines)
    assert {stage["name"]: stage["cause"] for stage in result_json(error.result)["stages"]} == \
        {"decode": DATA_CAUSE, "train": TRAIN_CAUSE}

    client = MlflowClient(tracking_uri)
    run = client.get_run(runs["decode"])
    assert run.info.status == "FAILED" and run.data.tags["fsr_root_cause"] == DATA_CAUSE
    whole = open(client.download_artifacts(runs["decode"], "stage_error.txt", str(tmp_path))).read()
    assert "Traceback" in whole or "File " in whole
    assert DATA_CAUSE in whole and "UserCodeException" in whole  # the whole error, wrappers included


@pytest.mark.timeout(180)
def test_fsr_run_prints_the_root_cause_and_where_the_log_is(tmp_path, _mlflow_template):
    import shutil

    shutil.copyfile(_mlflow_template, tmp_path / "mlflow.db")
    conf = _conf(tmp_path, f"sqlite:///{tmp_path}/mlflow.db", "[{name: decode, uses: fail_in_ray_data}]")
    env = {**os.environ, "PYTHONPATH": ROOT, "FSR_PLUGINS": "tests.pipelines.failing_stages"}
    env.pop("RAY_ADDRESS", None)
    job = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "failing", "--conf-dir", conf,
                          "runtime.num_cpus=1"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=170)
    assert job.returncode == 1, job.stdout + job.stderr
    assert f"stage 'decode' failed: {DATA_CAUSE} (whole traceback: artifact stage_error.txt" in job.stderr
    assert "To change retry attempts" not in job.stdout + job.stderr
    (log_name,) = os.listdir(tmp_path / "work" / "logs")
    log_path = tmp_path / "work" / "logs" / log_name
    assert f"fsr: the full error and the engine's output: {log_path}" in job.stderr
    log = log_path.read_text()
    assert DATA_CAUSE in log and "UserCodeException" in log
