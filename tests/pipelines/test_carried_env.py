"""What the driver gives a cluster's workers: the settings stages read, never a secret (the
multi-node run that checks them on another node is tests/pipelines/test_cluster_shape.py)."""

from __future__ import annotations

import json

import pytest

from pipelines.config import RuntimeConfig
from pipelines.ray_runtime import CARRIED, carried_env


def test_the_settings_are_carried_and_secrets_never(monkeypatch):
    for name in CARRIED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://minio.minio:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://fsr:hunter2@mlflow:5000")  # a password in a URI
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never")
    monkeypatch.setenv("FSR_EXTRA", "x")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert carried_env(["FSR_EXTRA"]) == {"MLFLOW_S3_ENDPOINT_URL": "http://minio.minio:9000",
                                          "AWS_DEFAULT_REGION": "eu-west-3",
                                          "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "FSR_EXTRA": "x"}
    # a Ray job's own runtime environment wins (ray.init refuses the same key twice)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"AWS_DEFAULT_REGION": "x"}}}))
    assert "AWS_DEFAULT_REGION" not in carried_env()
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY looks like a secret"):
        carried_env(["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_TOKEN looks like a secret"):
        RuntimeConfig(carry_env=["MLFLOW_TRACKING_TOKEN"])
    assert not any(word in name for name in CARRIED for word in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY"))
