"""Cluster mode is explicit: with a cluster address (or as a Ray job's entrypoint) a node-local work
root, MLflow store, artifact location or catalog input is refused before any work, naming the
setting; s3://, a tracking server and declared shared filesystems are accepted."""

from __future__ import annotations

import os
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from pipelines.cluster import JOB_ENV
from pipelines.config import ConfigError, load_config
from pipelines.runner import run_pipeline
from tests.pipelines.toy_stages import TOY_STAGES


@pytest.fixture()
def conf(tmp_path):
    root = tmp_path / "conf"
    (root / "pipelines").mkdir(parents=True)
    (root / "base.yaml").write_text(textwrap.dedent(f"""
        runtime: {{work_root: {tmp_path}/work}}
        tracking: {{experiment: cluster-test}}
        """))
    (root / "catalog.yaml").write_text(f"catalog:\n  five: {{uri: {tmp_path}/five, kind: file}}\n")
    (root / "pipelines" / "toy.yaml").write_text(textwrap.dedent(f"""
        pipeline:
          name: toy
          stages:
            - name: left
              uses: produce
              params: {{log_dir: {tmp_path}}}
            - name: sum
              uses: combine
              inputs: {{a: left.data, b: five}}
              params: {{log_dir: {tmp_path}}}
        """))
    return str(root)


def load(conf, *overrides):
    return load_config("toy", registry=TOY_STAGES, conf_dir=conf, overrides=list(overrides))


def test_node_local_storage_is_refused_naming_each_setting(conf, tmp_path):
    load(conf)  # a private local Ray: anything goes
    with pytest.raises(ConfigError) as info:
        load(conf, "runtime.ray_address=auto")
    message = str(info.value)
    assert message.startswith("runtime.ray_address='auto' names a Ray cluster: every node must reach the same storage")
    assert f"runtime.work_root='{tmp_path}/work'" in message
    assert f"tracking.uri=null: the MLflow store='{tmp_path}/work/mlflow.db'" in message
    assert f"catalog.five.uri='{tmp_path}/five'" in message
    assert "runtime.shared_filesystems" in message and "s3://bucket/prefix" in message

    remote = ["runtime.ray_address=ray://head:10001", "runtime.work_root=s3://bucket/fsr-work",
              "tracking.uri=http://mlflow:5000", "catalog.five.uri=s3://bucket/five"]
    load(conf, *remote)  # all shared: accepted
    with pytest.raises(ConfigError, match=r"(?s)tracking\.uri='sqlite:///relative\.db' \(/.*/relative\.db\)"):
        load(conf, *remote[:-2], "tracking.uri=sqlite:///relative.db", remote[-1])
    with pytest.raises(ConfigError, match=r"tracking\.artifact_location='/srv/mlruns'"):
        load(conf, *remote, "tracking.artifact_location=/srv/mlruns")
    load(conf, *remote, "tracking.artifact_location=s3://bucket/mlflow")

    # the two-node cluster on one machine: a folder every node sees, declared
    shared = [f"runtime.shared_filesystems=['{tmp_path}']", "runtime.ray_address=auto"]
    config = load(conf, *shared)
    assert config.runtime.shared_filesystems == [str(tmp_path)]
    with pytest.raises(ConfigError, match=r"catalog\.five\.uri='/elsewhere/five'"):
        load(conf, *shared, "catalog.five.uri=/elsewhere/five")


def test_a_ray_job_entrypoint_must_join_its_cluster(conf, tmp_path, monkeypatch):
    monkeypatch.setenv(JOB_ENV, '{"runtime_env": {}}')
    with pytest.raises(ConfigError, match=r"runtime\.ray_address is null, but fsr runs as a Ray job's entrypoint"):
        load(conf)
    with pytest.raises(ConfigError, match=r"runtime\.work_root="):
        load(conf, "runtime.ray_address=auto")


def test_fsr_run_refuses_before_any_work(conf, tmp_path, capsys):
    with open(os.path.join(conf, "pipelines", "faces.yaml"), "w") as fh:
        fh.write("pipeline: {name: faces, stages: [{name: faces, uses: ingest_synthetic_faces}]}\n")
    code = main(["run", "faces", "--conf-dir", conf, "runtime.ray_address=auto"])
    assert code == 2
    err = capsys.readouterr().err
    assert "fsr: invalid configuration" in err and f"runtime.work_root='{tmp_path}/work'" in err
    assert not os.path.exists(tmp_path / "work") and not os.path.exists(tmp_path / "executions.log")


def test_an_existing_experiment_with_local_artifacts_is_refused_before_any_stage(conf, tmp_path, _mlflow_template):
    """The experiment keeps the artifact location it was created with: a local one is refused on a
    cluster even when every configured setting is shared."""
    import shutil

    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copyfile(_mlflow_template, shared / "mlflow.db")
    uri = f"sqlite:///{shared}/mlflow.db"
    MlflowClient(uri).create_experiment("cluster-test", artifact_location=str(tmp_path / "node-local-artifacts"))
    config = load(conf, f"runtime.shared_filesystems=['{shared}']", f"runtime.work_root={shared}/work",
                  f"tracking.uri={uri}", f"catalog.five.uri={shared}/five", "runtime.ray_address=auto")
    with pytest.raises(ConfigError, match=r"tracking\.experiment='cluster-test': its artifact location="
                                          rf"'{tmp_path}/node-local-artifacts'"):
        run_pipeline(config, registry=TOY_STAGES, printer=None)  # raises before connecting to any Ray
    assert not os.path.exists(shared / "work") and not os.path.exists(tmp_path / "executions.log")


def test_fsr_restore_refuses_local_paths_on_a_cluster(tmp_path, capsys):
    from pipelines.cluster import command_refusal

    code = main(["restore", "--input", str(tmp_path / "archive"), "--output", "s3://bucket/out", "--model", "bicubic",
                 "--no-tracking", "--ray-address", "auto"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--input='{tmp_path}/archive'" in err and "--output" not in err and "--shared-fs" in err
    assert not os.path.exists(tmp_path / "archive")
    paths = {"--input": str(tmp_path / "archive"), "--output": str(tmp_path / "out"),
             "--tracking-uri": f"sqlite:///{tmp_path}/x.db"}
    assert command_refusal(None, paths, [], shared_setting="--shared-fs") is None  # a private Ray
    assert command_refusal("auto", paths, [str(tmp_path)], shared_setting="--shared-fs") is None
    assert "--tracking-uri='sqlite:///" in command_refusal("auto", paths, [str(tmp_path / "out"), str(tmp_path / "archive")],
                                                          shared_setting="--shared-fs")
