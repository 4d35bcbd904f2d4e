"""The cluster shape on one machine: a Ray cluster of a head without CPUs and worker nodes
(`ray.cluster_utils.Cluster`), each run in its own process (`tests/pipelines/cluster_runs.py`):
a smoke pipeline spreads its tasks over two nodes, carries the driver's settings to them (never its
secrets) and is reused on a re-run, and `fsr restore` runs on the same cluster; a node lost during training is replaced and the training
recovers from its newest checkpoint (a loss that is never replaced ends within the stage's bounds:
tests/pipelines/test_bounded_failure.py). Under load these take minutes: marked `cluster`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.cluster


def _run(scenario: str, work, timeout: int) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "FSR_PLUGINS": "tests.toy_method", "RAY_AUTH_MODE": "disabled",
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    for name in ("RAY_ADDRESS", "FSR_TEST_SETTING", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name, None)
    job = subprocess.run([sys.executable, "-m", "tests.pipelines.cluster_runs", scenario, str(work)], cwd=str(work),
                         env=env, capture_output=True, text=True, timeout=timeout)
    assert job.returncode == 0, (job.stdout + job.stderr)[-6000:]
    return json.loads(job.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(420)
def test_a_smoke_pipeline_spreads_over_two_nodes_with_the_environment_carried(tmp_path):
    out = _run("pipeline", tmp_path, 400)
    assert sorted(out["executed"]) == ["faces", "lr", "probe"] and sorted(out["cached_again"]) == ["faces", "lr", "probe"]
    assert len(out["worker_nodes"]) == 2 and out["probe_nodes"] == out["worker_nodes"]  # both nodes worked
    assert out["carried"] == ["carried"] and out["secret"] == ["None"]  # runtime.carry_env yes, a secret never
    assert out["faces_shards"] == 4 and out["lr_rows"] == 4
    # a half-written shard: that stage is redone (the shard rewritten), never reused; the others stay cached
    assert out["after_truncation"] == {"executed": ["faces"], "cached": ["lr", "probe"], "rows": 4}
    assert out["restore_exit"] == 0 and out["restored_faces"] == 8  # fsr restore on the same cluster
    # the manifest says where: detection tasks on both nodes, the model actors on worker nodes
    assert out["detect_nodes"] == out["worker_nodes"], out
    assert out["restore_nodes"] and set(out["restore_nodes"]) <= set(out["worker_nodes"]), out


@pytest.mark.timeout(600)
def test_a_node_lost_during_training_is_replaced_and_training_recovers(tmp_path):
    out = _run("node_loss", tmp_path, 590)
    assert out["checkpoints_at_loss"] >= 1 and out["finished"], out
    assert out["error"] is None and out["executed"] == ["train"] and out["final_step"] == 8, out
    assert out["restored_from"] == "ray_checkpoint" and out["attempt_start_step"] >= 1, out  # not from scratch
