"""Cluster mode: on a Ray cluster every node must reach the same storage.

A stage runs on whichever node Ray picks, so once ``runtime.ray_address`` names a cluster (or
``fsr`` runs as a Ray job's entrypoint) a folder of the driver's machine is not where the stages
write: a shard written on one node is missing on the others, a SQLite MLflow store appears empty
on each node, a model's artifacts are "not found" by actors elsewhere. So in cluster mode the
work root, the MLflow store, the artifact location and the catalog inputs a pipeline reads must
be shared: ``s3://`` (or a tracking server / database for MLflow), or a folder under one of
``runtime.shared_filesystems``, folders that are mounted at the same path on every node (NFS, EFS,
a host path when every node runs on one machine). Anything else is refused before any work, with
the setting named (:func:`check_cluster_storage`, run by :func:`pipelines.config.load_config` and
again by the runner, which also checks the artifact location of an existing experiment).

A Ray job's entrypoint without ``runtime.ray_address`` would start a private Ray inside the
driver's pod and leave the cluster idle: refused too, asking for ``runtime.ray_address=auto``.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from fsr_core import storage

__all__ = ["JOB_ENV", "check_cluster_storage", "check_experiment_artifacts", "cluster_mode", "command_refusal",
           "node_local_settings"]

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the entrypoint of a submitted job (RayJob too)
_SHARED_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "wasbs://", "hdfs://", "mlflow-artifacts:",
                   "http://", "https://", "dbfs:", "models:/", "runs:/")
_TRACKING_SERVERS = ("http://", "https://", "postgresql", "mysql", "mssql", "databricks")


def cluster_mode(ray_address: str | None) -> str | None:
    """Why this run is on a cluster (``"runtime.ray_address='auto'"``, ``"a Ray job"``), or None."""
    if ray_address and ray_address != "local":
        return f"runtime.ray_address={ray_address!r}"
    if os.environ.get(JOB_ENV):
        return "a Ray job"
    return None


def _local_path(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        uri = uri[len("sqlite:///"):]
        uri = uri if uri.startswith("/") else os.path.abspath(uri)
    elif uri.startswith("file://"):
        uri = uri[len("file://"):]
    return os.path.abspath(storage.local_path(uri))


def _under(path: str, roots: Iterable[str]) -> bool:
    for root in roots:
        root = os.path.abspath(root).rstrip("/") or "/"
        if path == root or path.startswith(root + "/") or root == "/":
            return True
    return False


def node_local_settings(settings: Mapping[str, str | None], shared_filesystems: Iterable[str]) -> list[str]:
    """``["runtime.work_root='fsr-work' (/abs/fsr-work)", ...]``: the settings whose location is a
    folder of this machine only (None values are skipped)."""
    shared = list(shared_filesystems)
    found = []
    for name, uri in settings.items():
        if not uri or uri.startswith(_SHARED_SCHEMES) or uri.startswith(_TRACKING_SERVERS):
            continue
        if "://" in uri and not uri.startswith(("file://", "sqlite:///")):
            continue  # another remote scheme: reached over the network from every node
        path = _local_path(uri)
        if not _under(path, shared):
            found.append(f"{name}={uri!r}" + (f" ({path})" if path != uri else ""))
    return found


def _refusal(why: str, found: list[str], *, shared_setting: str) -> str:
    lines = "\n".join(f"  {item}" for item in found)
    return (f"{why} names a Ray cluster: every node must reach the same storage, but these settings are folders "
            f"of this machine only:\n{lines}\nUse s3://bucket/prefix (a tracking server for MLflow: "
            f"http://mlflow:5000), or declare a folder mounted at the same path on every node in {shared_setting}.")


def check_cluster_storage(config) -> None:
    """Raise :class:`~pipelines.config.ConfigError` when a cluster run's storage is node-local."""
    from pipelines.config import ConfigError
    from pipelines.dag import parse_reference

    runtime, tracking = config.runtime, config.tracking
    why = cluster_mode(runtime.ray_address)
    if why is None:
        return
    if why == "a Ray job" and not runtime.ray_address:
        raise ConfigError("runtime.ray_address is null, but fsr runs as a Ray job's entrypoint: set "
                          "runtime.ray_address=auto so that the stages run on the job's cluster, not on a private "
                          "Ray inside the driver's process")
    settings: dict[str, str | None] = {"runtime.work_root": runtime.work_root}
    if tracking.uri is None:
        if "://" not in runtime.work_root:
            settings["tracking.uri=null: the MLflow store"] = os.path.join(runtime.work_root, "mlflow.db")
    else:
        settings["tracking.uri"] = tracking.uri
    settings["tracking.artifact_location"] = tracking.artifact_location
    for spec in config.pipeline.stages:
        for ref in spec.inputs.values():
            producer, name = parse_reference(ref)
            if producer is None and name in config.catalog:
                settings[f"catalog.{name}.uri"] = config.catalog[name].uri
    found = node_local_settings(settings, runtime.shared_filesystems)
    if found:
        raise ConfigError(_refusal(why, found, shared_setting="runtime.shared_filesystems"))


def check_experiment_artifacts(config, tracking_uri: str) -> None:
    """In cluster mode, refuse an existing experiment whose artifact location (fixed when it was
    created) is a folder of this machine only."""
    from mlflow.tracking import MlflowClient

    from pipelines.config import ConfigError

    why = cluster_mode(config.runtime.ray_address)
    if why is None:
        return
    experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return
    found = node_local_settings({f"tracking.experiment={config.tracking.experiment!r}: its artifact location":
                                 experiment.artifact_location}, config.runtime.shared_filesystems)
    if found:
        raise ConfigError(_refusal(why, found, shared_setting="runtime.shared_filesystems")
                          + " An experiment keeps the artifact location it was created with: name another "
                            "experiment (tracking.experiment) with tracking.artifact_location set.")


def command_refusal(ray_address: str | None, settings: Mapping[str, str | None],
                    shared_filesystems: Iterable[str], *, shared_setting: str) -> str | None:
    """For ``fsr restore`` / ``fsr ingest``: the message refusing node-local ``settings`` (flags by
    name) when ``ray_address`` names a cluster, or None."""
    why = cluster_mode(ray_address)
    if why is None:
        return None
    if not ray_address:
        return "fsr runs as a Ray job's entrypoint: give the cluster's address (auto) so that the work runs on it"
    found = node_local_settings(settings, shared_filesystems)
    return _refusal(f"the Ray address {ray_address!r}", found, shared_setting=shared_setting) if found else None
