"""MLflow helpers for the runner: experiments, parent/nested runs, the stage cache.

Tags written by the runner (underscores, so MLflow filter strings need no quoting):

=====================  ==============================================================
``fsr_kind``           ``pipeline`` (parent run) or ``stage`` (nested run)
``fsr_pipeline``       pipeline name
``fsr_stage``          stage name (nested runs)
``fsr_uses``           stage kind
``fsr_fingerprint``    stage fingerprint (see :mod:`pipelines.fingerprint`)
``fsr_status``         ``executed``, ``cached`` (reused a finished run) or ``failed``
``fsr_cached_from``    run id whose outputs a cached stage reused
``fsr_output_<name>``  reference (URI) of each output
``fsr_manifest``       the executed run's output manifest (files, sizes, checksums: :mod:`pipelines.outputs`)
``fsr_code_version``   sources a stage can reach (stage runs) or all sources (pipeline)
=====================  ==============================================================
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

__all__ = [
    "OUTPUT_TAG_PREFIX",
    "flatten_params",
    "get_or_create_experiment",
    "find_cached_run",
    "create_run",
    "default_artifact_location",
    "end_run",
    "log_dict",
    "log_metrics",
    "log_params",
    "set_tags",
]

OUTPUT_TAG_PREFIX = "fsr_output_"


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (values cut to MLflow's 6000 characters)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def default_artifact_location(tracking_uri: str, configured: str | None = None) -> str | None:
    """``configured``, else for a SQLite store ``mlflow-artifacts`` beside the database file, else None
    (the tracking server's default)."""
    if configured is None and tracking_uri.startswith("sqlite:///"):
        return os.path.join(os.path.dirname(tracking_uri[len("sqlite:///"):]) or ".", "mlflow-artifacts")
    return configured


def get_or_create_experiment(tracking_uri: str, name: str, *, artifact_location: str | None) -> str:
    if tracking_uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(tracking_uri[len("sqlite:///"):]) or ".", exist_ok=True)
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_cached_run(tracking_uri: str, experiment_id: str, fingerprint: str):
    """The newest finished, executed stage run with this fingerprint, or None."""
    client = _client(tracking_uri)
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.fsr_fingerprint = '{fingerprint}' and tags.fsr_status = 'executed' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def run_outputs(run) -> dict[str, str]:
    return {k[len(OUTPUT_TAG_PREFIX):]: v for k, v in run.data.tags.items() if k.startswith(OUTPUT_TAG_PREFIX)}


def create_run(
    tracking_uri: str,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    all_tags = dict(tags)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = _client(tracking_uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, *, status: str, tags: Mapping[str, str] | None = None) -> None:
    client = _client(tracking_uri)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, str(value)[:5000])
    client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))


def process_tags() -> dict[str, str]:
    """``fsr_host`` and ``fsr_pid`` of this process: what :func:`close_abandoned_runs` checks later."""
    import socket

    return {"fsr_host": socket.gethostname(), "fsr_pid": str(os.getpid())}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def close_abandoned_runs(tracking_uri: str, experiment_id: str, tags: Mapping[str, str], *,
                         successor: str) -> tuple[list, list]:
    """End as KILLED the RUNNING runs carrying all of ``tags`` whose process is gone.

    A run can only be judged here when it was started on this host (its ``fsr_host``/``fsr_pid``
    tags, :func:`process_tags`) and that process no longer exists: a SIGKILL, an out-of-memory kill
    or a lost machine leaves a run RUNNING forever otherwise. Each closed run is tagged
    ``fsr_resumed_by`` = ``successor`` (the run that found it). Returns ``(closed run ids, run ids
    left RUNNING because they belong to another host or a live process)``.
    """
    import socket

    client = _client(tracking_uri)
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50000)
    host = socket.gethostname()
    closed, left = [], []
    for run in runs:  # tag values compared here, not in the filter: a path may hold any quote
        run_id, found = run.info.run_id, run.data.tags
        if run_id == successor or any(found.get(k) != v for k, v in tags.items()):
            continue
        pid = found.get("fsr_pid", "")
        if found.get("fsr_host") == host and pid.isdigit() and not _process_alive(int(pid)):
            end_run(tracking_uri, run_id, status="KILLED",
                    tags={"fsr_status": "killed", "fsr_resumed_by": successor,
                          "fsr_error": f"process {pid} on {host} ended without closing the run (killed)"})
            closed.append(run_id)
        else:
            left.append(run_id)
    return closed, left


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    client = _client(tracking_uri)
    items = [Param(k[:250], v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
    """Log finite numeric metrics in one batch (names cut to MLflow's 250 characters)."""
    import math

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k[:250], float(v), now, int(step)) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    for start in range(0, len(items), 500):
        _client(tracking_uri).log_batch(run_id, metrics=items[start : start + 500])


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    _client(tracking_uri).log_batch(run_id, tags=[RunTag(k[:250], str(v)[:5000]) for k, v in tags.items()])


def log_dict(tracking_uri: str, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
    _client(tracking_uri).log_dict(run_id, dict(data), artifact_file)
