"""The DAG runner on a real local Ray and a real SQLite MLflow, with stages that record each execution."""

from __future__ import annotations

import os
import shutil
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from fsr_core import storage
from pipelines.config import load_config
from pipelines.runner import PipelineError, run_pipeline
from tests.pipelines.toy_stages import TOY_STAGES

pytestmark = pytest.mark.timeout(180)


def executions(log_dir) -> list[str]:
    path = os.path.join(log_dir, "executions.log")
    return open(path).read().split() if os.path.exists(path) else []


@pytest.fixture()
def conf(tmp_path, tracking_uri):
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(textwrap.dedent(f"""
        runtime:
          work_root: {tmp_path}/work
        tracking:
          uri: {tracking_uri}
          experiment: runner-test
        """))
    (root / "pipelines" / "toy.yaml").write_text(textwrap.dedent(f"""
        pipeline:
          name: toy
          stages:
            - name: left
              uses: produce
              params: {{value: 2, log_dir: {tmp_path}, wait_for: right}}
            - name: right
              uses: produce
              params: {{value: 3, log_dir: {tmp_path}, wait_for: left}}
            - name: sum
              uses: combine
              inputs: {{a: left.data, b: right.data}}
              params: {{value: 10, log_dir: {tmp_path}}}
        """))
    return str(root)


def load(conf, *overrides):
    return load_config("toy", registry=TOY_STAGES, conf_dir=conf, overrides=list(overrides))


def read_value(uri: str) -> int:
    return int(storage.read_bytes(storage.join(uri, "value.txt")))


def test_runs_caches_and_tracks(ray_session, conf, tmp_path, tracking_uri):
    # left and right wait for each other's start marker: this passes only if they run concurrently
    first = run_pipeline(load(conf), registry=TOY_STAGES, printer=None)
    assert sorted(executions(tmp_path)) == ["left", "right", "sum"]
    assert first.executed == ["left", "right", "sum"]
    assert read_value(first.stages["sum"].outputs["data"]) == 2 + 3 + 10

    client = MlflowClient(tracking_uri)
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["fsr_kind"] == "pipeline"
    children = client.search_runs([first.experiment_id], f"tags.mlflow.parentRunId = '{first.parent_run_id}'")
    assert sorted(r.data.tags["fsr_stage"] for r in children) == ["left", "right", "sum"]
    left = next(r for r in children if r.data.tags["fsr_stage"] == "left")
    assert left.data.params["value"] == "2" and left.data.metrics["value"] == 2.0
    assert left.data.tags["fsr_output_data"] == first.stages["left"].outputs["data"]
    artifacts = [a.path for a in client.list_artifacts(first.parent_run_id)]
    assert "resolved_config.yaml" in artifacts

    # same config again: every stage reused, nothing executed
    second = run_pipeline(load(conf), registry=TOY_STAGES, printer=None)
    assert sorted(executions(tmp_path)) == ["left", "right", "sum"]
    assert second.cached == ["left", "right", "sum"]
    assert second.stages["sum"].outputs == first.stages["sum"].outputs
    cached_runs = client.search_runs([second.experiment_id], f"tags.mlflow.parentRunId = '{second.parent_run_id}'")
    assert {r.data.tags["fsr_status"] for r in cached_runs} == {"cached"}

    # a changed parameter re-runs that stage and what depends on it, nothing else
    os.remove(tmp_path / "started-left")  # barrier: left now runs alone, without a peer
    third = run_pipeline(load(conf, "right.value=4", "right.wait_for=null"), registry=TOY_STAGES, printer=None)
    assert third.executed == ["right", "sum"] and third.cached == ["left"]
    assert read_value(third.stages["sum"].outputs["data"]) == 2 + 4 + 10
    assert read_value(first.stages["sum"].outputs["data"]) == 15  # earlier outputs untouched


def test_failed_stage_then_rerun_continues_from_it(ray_session, conf, tmp_path, tracking_uri):
    (tmp_path / "fail-sum").touch()
    with pytest.raises(PipelineError, match=r"(?s)stage\(s\) \['sum'\] failed.*injected failure in sum"):
        run_pipeline(load(conf), registry=TOY_STAGES, printer=None)
    assert sorted(executions(tmp_path)) == ["left", "right", "sum"]
    client = MlflowClient(tracking_uri)
    failed = client.search_runs(client.get_experiment_by_name("runner-test").experiment_id,
                                "tags.fsr_stage = 'sum'")
    assert failed[0].info.status == "FAILED" and "injected failure" in failed[0].data.tags["fsr_error"]

    (tmp_path / "fail-sum").unlink()
    result = run_pipeline(load(conf), registry=TOY_STAGES, printer=None)
    assert result.cached == ["left", "right"] and result.executed == ["sum"]
    assert sorted(executions(tmp_path)) == ["left", "right", "sum", "sum"]


def test_runs_a_killed_process_left_running_are_marked_killed_by_the_next_run(ray_session, conf, tmp_path,
                                                                           tracking_uri):
    """What a SIGKILLed `fsr run` leaves: its parent and a stage run RUNNING, tagged with a process
    that no longer exists. The next run of the pipeline into the same work root ends them KILLED."""
    import socket
    import subprocess
    import sys

    from pipelines import tracking

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a real pid, and its process is gone
    client = MlflowClient(tracking_uri)
    experiment = tracking.get_or_create_experiment(tracking_uri, "runner-test", artifact_location=None)
    stale = {"fsr_host": socket.gethostname(), "fsr_pid": str(gone.pid)}
    parent = tracking.create_run(tracking_uri, experiment, run_name="toy-killed", tags={
        "fsr_kind": "pipeline", "fsr_pipeline": "toy", "fsr_work_root": f"{tmp_path}/work", **stale})
    stage = tracking.create_run(tracking_uri, experiment, run_name="left", parent_run_id=parent,
                                tags={"fsr_kind": "stage", "fsr_stage": "left", **stale})
    elsewhere = tracking.create_run(tracking_uri, experiment, run_name="toy-other-host", tags={
        "fsr_kind": "pipeline", "fsr_pipeline": "toy", "fsr_work_root": f"{tmp_path}/work",
        "fsr_host": "another-host", "fsr_pid": str(gone.pid)})
    lines = []
    result = run_pipeline(load(conf), registry=TOY_STAGES, printer=lines.append)
    for run_id in (parent, stage):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["fsr_resumed_by"] == result.parent_run_id
    assert client.get_run(result.parent_run_id).data.tags["fsr_resumes"] == parent
    assert client.get_run(elsewhere).info.status == "RUNNING"  # another host's process: not judged here
    assert any(f"MLflow run {parent} of a killed run of this pipeline (and 1 stage run(s))" in line for line in lines)


def test_missing_output_invalidates_the_cache(ray_session, conf, tmp_path):
    first = run_pipeline(load(conf), registry=TOY_STAGES, printer=None)
    storage.delete(first.stages["sum"].outputs["data"], recursive=True)
    second = run_pipeline(load(conf), registry=TOY_STAGES, printer=None)
    assert second.executed == ["sum"]
    assert read_value(second.stages["sum"].outputs["data"]) == 15


def test_dry_run_marks_cached_stages_and_runs_nothing(ray_session, conf, tmp_path, capsys):
    lines: list[str] = []
    run_pipeline(load(conf), registry=TOY_STAGES, dry_run=True, printer=lines.append)
    assert executions(tmp_path) == []
    assert lines[0].count("will run") == 3 and "cached (run" not in lines[0]
    run_pipeline(load(conf), registry=TOY_STAGES, printer=None)
    lines.clear()
    run_pipeline(load(conf, "sum.value=11"), registry=TOY_STAGES, dry_run=True, printer=lines.append)
    plan = lines[0]
    assert plan.count("cached (run") == 2 and plan.count("will run") == 1
    assert sorted(executions(tmp_path)) == ["left", "right", "sum"]


def test_force_reruns_a_cached_stage(ray_session, conf, tmp_path):
    run_pipeline(load(conf), registry=TOY_STAGES, printer=None)
    result = run_pipeline(load(conf), registry=TOY_STAGES, force={"sum"}, printer=None)
    assert result.executed == ["sum"]
    with pytest.raises(PipelineError, match="unknown stage"):
        run_pipeline(load(conf), registry=TOY_STAGES, force={"nope"}, printer=None)


def test_max_parallel_stages_runs_one_at_a_time(ray_session, conf, tmp_path):
    cfg = load(conf, "runtime.max_parallel_stages=1", "left.wait_for=null", "right.wait_for=null")
    result = run_pipeline(cfg, registry=TOY_STAGES, printer=None)
    assert result.executed == ["left", "right", "sum"]
    events = (tmp_path / "events.log").read_text().split("\n")
    assert events[:4] == ["start left", "end left", "start right", "end right"]


def test_stage_returning_wrong_outputs_fails_clearly(ray_session, tmp_path, tracking_uri):
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(f"runtime: {{work_root: {tmp_path}/w}}\ntracking: {{uri: '{tracking_uri}'}}\n")
    (root / "pipelines" / "bad.yaml").write_text(
        f"pipeline: {{name: bad, stages: [{{name: b, uses: bad_outputs, params: {{log_dir: {tmp_path}}}}}]}}\n")
    cfg = load_config("bad", registry=TOY_STAGES, conf_dir=str(root))
    with pytest.raises(PipelineError, match=r"returned outputs \['wrong'\], declared \['data'\]"):
        run_pipeline(cfg, registry=TOY_STAGES, printer=None)


def test_outputs_on_s3(ray_session, conf, s3_bucket):
    """work_root on the moto S3 server: stages in Ray workers write there, the cache finds it."""
    first = run_pipeline(load(conf, f"runtime.work_root={s3_bucket}/work"), registry=TOY_STAGES, printer=None)
    uri = first.stages["sum"].outputs["data"]
    assert uri.startswith(s3_bucket) and read_value(uri) == 15
    second = run_pipeline(load(conf, f"runtime.work_root={s3_bucket}/work"), registry=TOY_STAGES, printer=None)
    assert second.cached == ["left", "right", "sum"]


def test_catalog_inputs_by_content_and_a_wrong_pinned_sha256_stops_before_any_work(ray_session, conf, tmp_path):
    """A catalog input regenerated with identical content keeps the stage cached; a changed one re-runs
    it; a pinned sha256 that does not match stops the run before any stage, naming the entry."""
    from pipelines.fingerprint import content_digest

    data = tmp_path / "catalog-data"
    data.mkdir()
    (data / "value.txt").write_text("5")
    root = os.path.join(conf, "..", "conf2")
    os.makedirs(os.path.join(root, "pipelines"))
    with open(os.path.join(conf, "base.yaml")) as fh:
        base = fh.read()
    with open(os.path.join(root, "base.yaml"), "w") as fh:
        fh.write(base)

    def write_catalog(sha256: str | None) -> None:
        entry = {"uri": str(data), "kind": "file", **({"sha256": sha256} if sha256 else {})}
        with open(os.path.join(root, "catalog.yaml"), "w") as fh:
            fh.write(f"catalog:\n  five: {entry}\n")

    with open(os.path.join(root, "pipelines", "toy.yaml"), "w") as fh:
        fh.write(textwrap.dedent(f"""
            pipeline:
              name: toy-catalog
              stages:
                - name: left
                  uses: produce
                  params: {{value: 2, log_dir: {tmp_path}}}
                - name: sum
                  uses: combine
                  inputs: {{a: left.data, b: five}}
                  params: {{value: 10, log_dir: {tmp_path}}}
            """))
    write_catalog(None)
    first = run_pipeline(load_config("toy", registry=TOY_STAGES, conf_dir=root), registry=TOY_STAGES, printer=None)
    assert read_value(first.stages["sum"].outputs["data"]) == 17
    shutil.rmtree(data)
    data.mkdir()
    (data / "value.txt").write_text("5")  # regenerated, identical
    again = run_pipeline(load_config("toy", registry=TOY_STAGES, conf_dir=root), registry=TOY_STAGES, printer=None)
    assert again.cached == ["left", "sum"]
    (data / "value.txt").write_text("6")
    changed = run_pipeline(load_config("toy", registry=TOY_STAGES, conf_dir=root), registry=TOY_STAGES, printer=None)
    assert changed.cached == ["left"] and changed.executed == ["sum"]

    write_catalog(content_digest(str(data)))
    pinned = run_pipeline(load_config("toy", registry=TOY_STAGES, conf_dir=root), registry=TOY_STAGES, printer=None)
    assert pinned.executed == ["sum"]  # pinning changes the fingerprint's form, not the content
    write_catalog("f" * 64)
    before = executions(tmp_path)
    with pytest.raises(PipelineError, match=r"catalog entry 'five'.*pins f{64}"):
        run_pipeline(load_config("toy", registry=TOY_STAGES, conf_dir=root), registry=TOY_STAGES, printer=None)
    assert executions(tmp_path) == before  # nothing ran
