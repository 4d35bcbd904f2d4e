"""No credential reaches a log, a Ray session file, an MLflow param/tag/metric/artifact or an output.

An ingest, a pipeline run and a restore run as the user runs them (``fsr`` in a subprocess, each
with its own private Ray) against the S3 server with a sentinel secret key and session token (the
moto server accepts any credentials); then every file they could have written is searched for
the sentinels: the Ray session folder (logs, runtime-environment agent, GCS), the SQLite MLflow
store, the MLflow artifacts, the outputs on S3, the engine logs and the console output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid

import boto3
import pytest

from tests.conftest import ROOT
from tests.fsr_core.data.ingest.trees import build_celeba_hq, upload_tree
from tests.pipelines.test_archive_restore import NAME, _astronaut, _encode, register_tiny

pytestmark = pytest.mark.timeout(600)


def _files_holding(root: str, needles: list[bytes]) -> list[str]:
    hits = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            hits += [f"{path} holds {needle.decode()}" for needle in needles if needle in data]
    return hits


def test_a_sentinel_secret_never_reaches_a_log_a_ray_file_mlflow_or_an_output(s3_server, s3_bucket, tmp_path):
    secret = f"SENTINELsecret{uuid.uuid4().hex}"
    token = f"SENTINELtoken{uuid.uuid4().hex}"
    needles = [secret.encode(), token.encode()]
    ray_tmp = tempfile.mkdtemp(prefix="fsrsec", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update({"AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": token, "RAY_TMPDIR": ray_tmp,
                "PYTHONPATH": ROOT, "MLFLOW_TRACKING_URI": tracking_uri})

    def fsr(*argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-3000:])
        return done

    try:
        # the data: a CelebA-HQ tree and a small photo archive on S3
        data = upload_tree(build_celeba_hq(str(tmp_path / "hq")), f"{s3_bucket}/datasets/hq")
        client = boto3.client("s3", endpoint_url=s3_server)
        bucket = s3_bucket[len("s3://"):]
        for key, blob in {"archive/a.jpg": _encode(_astronaut(256), ".jpg"),
                          "archive/b.png": _encode(_astronaut(200), ".png"), "archive/bad.jpg": b"oops"}.items():
            client.put_object(Bucket=bucket, Key=key, Body=blob)
        register_tiny(tracking_uri, tmp_path)

        outputs = [fsr("ingest", "celeba_hq", "--root", data, "--out", f"{s3_bucket}/ingested",
                       "--tracking-uri", tracking_uri, "--conf-dir", str(tmp_path / "no-conf"), "size=16")]
        conf = tmp_path / "conf"
        (conf / "pipelines").mkdir(parents=True)
        (conf / "base.yaml").write_text(textwrap.dedent(f"""
            runtime: {{work_root: '{s3_bucket}/work'}}
            tracking: {{uri: '{tracking_uri}', experiment: secrets}}
            """))
        (conf / "catalog.yaml").write_text(f"catalog:\n  hq: {{uri: '{data}', kind: dataset_root}}\n")
        (conf / "pipelines" / "p.yaml").write_text(textwrap.dedent("""
            pipeline:
              name: p
              stages:
                - name: hq
                  uses: ingest_celeba_hq
                  inputs: {root: hq}
                  params: {size: 16, unit_size: 4}
            """))
        outputs.append(fsr("run", "p", "--conf-dir", str(conf)))
        outputs.append(fsr("restore", "--input", f"{s3_bucket}/archive", "--output", f"{s3_bucket}/restored",
                           "--model", f"models:/{NAME}@champion", "--tracking-uri", tracking_uri,
                           "--unit-size", "2", "--num-cpus", "2"))

        # the jobs did their work with these credentials
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        assert any(k.startswith("ingested/faces/") for k in keys)
        assert any(k.startswith("work/") for k in keys)
        assert any(k.startswith("restored/manifest/") for k in keys)
        assert os.listdir(ray_tmp), "the private Ray instances wrote their session files elsewhere"

        assert os.listdir(tmp_path / "fsr-logs")  # the engine logs of the S3 jobs (searched below)
        hits = _files_holding(ray_tmp, needles) + _files_holding(str(tmp_path), needles)
        for key in keys:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            hits += [f"s3://{bucket}/{key} holds {n.decode()}" for n in needles if n in body]
        for done in outputs:
            hits += [f"console output holds {n.decode()}" for n in needles
                     if n.decode() in done.stdout or n.decode() in done.stderr]
        assert not hits, hits
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
