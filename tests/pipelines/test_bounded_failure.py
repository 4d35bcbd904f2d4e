"""Bounded failure: a training stage whose workers cannot start (a lost node never replaced) fails
after `controller_failure_limit + 1` starts of `worker_start_timeout_s` each, with a message that
says so, instead of Ray Train's endless retries (real Ray Train on the session's 2-CPU Ray)."""

from __future__ import annotations

import os

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.runner import PipelineError, run_pipeline
from pipelines.stages import stage_kinds
from tests.pipelines.test_method_shape import _write_hr

pytestmark = pytest.mark.timeout(180)


def test_workers_that_cannot_start_fail_the_stage_within_the_configured_tries(ray_session, tmp_path, tracking_uri):
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(yaml.safe_dump({
        "runtime": {"work_root": str(tmp_path / "work")}, "tracking": {"uri": tracking_uri, "experiment": "bounded"}}))
    (root / "catalog.yaml").write_text(yaml.safe_dump({"catalog": {
        "hr": {"uri": _write_hr(str(tmp_path / "hr"), count=8), "kind": "shards"}}}))
    # 4 CPUs per worker on a 2-CPU cluster: the worker group never starts, like workers whose node is gone
    (root / "pipelines" / "train.yaml").write_text(yaml.safe_dump({"pipeline": {"name": "train", "stages": [
        {"name": "train", "uses": "toy_train", "inputs": {"hr": "hr"},
         "params": {"num_workers": 1, "cpus_per_worker": 4, "max_steps": 2, "report_every": 1,
                    "worker_start_timeout_s": 2, "controller_failure_limit": 1}}]}}))
    kinds = stage_kinds()
    config = load_config("train", registry=kinds, conf_dir=str(root))
    assert config.stage_params["train"].worker_start_timeout_s == 2.0
    with pytest.raises(PipelineError) as info:
        run_pipeline(config, registry=kinds, printer=None)
    summary = info.value.summary
    assert ("stage 'train' failed: WorkersUnavailable: training run 'train' stopped: its 1 worker(s) (4.0 CPU each) "
            "could not start within 2 s, 2 time(s) in a row (controller_failure_limit=1)") in summary
    run = MlflowClient(tracking_uri).get_run(info.value.result.stages["train"].run_id)
    assert run.info.status == "FAILED" and run.data.tags["fsr_root_cause"].startswith("WorkersUnavailable: ")

    # the defaults bound it too: never Ray's unlimited controller retries
    defaults = kinds["toy_train"].params.model_validate({"max_steps": 1})
    assert defaults.controller_failure_limit == 3 and defaults.worker_start_timeout_s == 120.0
    assert "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S" not in os.environ  # set only while a fit runs
