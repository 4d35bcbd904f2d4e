"""Session fixtures: one local Ray, one moto S3 server on 127.0.0.1, a fresh SQLite MLflow per test.

Real components, no mocks: Ray workers talk to the moto server over HTTP on loopback.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Before anything imports Ray: workers must import the tests package too, and Train reports fast.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ["FSR_PLUGINS"] = "tests.toy_method"  # the test-only method on the method shape (tests/toy_method.py)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback; AWS_* variables point boto3, pyarrow and MLflow at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def s3_bucket(s3_server) -> str:
    """A fresh bucket; returns ``s3://name``."""
    import boto3

    name = f"fsr-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray per test session (started after the S3 variables are set, so workers inherit them)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=True,
                 runtime_env={"env_vars": {k: os.environ[k] for k in (
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                     "MLFLOW_S3_ENDPOINT_URL", "PYTHONPATH", "FSR_PLUGINS")}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> str:
    """An empty, fully migrated SQLite MLflow store, made once: creating one runs MLflow's schema
    migrations (1-3 s), copying the file takes milliseconds."""
    from mlflow import MlflowClient

    path = str(tmp_path_factory.mktemp("mlflow-template") / "mlflow.db")
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def tracking_uri(tmp_path, _mlflow_template) -> str:
    """A fresh SQLite MLflow store in the test's temp folder (4 slashes: absolute path), copied from
    the session's migrated template."""
    shutil.copyfile(_mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"
