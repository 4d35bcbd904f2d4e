"""Run the training loop with Ray Train's ``TorchTrainer`` and bring back the final checkpoint.

``fit`` is the one place that builds a ``TorchTrainer``: workers and their CPUs/GPUs
(``ScalingConfig``), where checkpoints go and how failures are retried (``RunConfig``), and the
Ray Datasets (built by the caller, outside the trainer, and split across workers by Ray).

Resuming: Ray Train 2.60 resumes a run automatically when ``fit`` is called again with the same
``run_name`` and ``storage_path`` (from that run's newest checkpoint); a fresh run needs a new
name. ``num_workers=0`` runs the loop in the calling process (Ray Train's local mode, for tests
and debugging): nothing is written to ``storage_path`` then.

Bounded failure: a worker that dies (its node lost) costs one of ``max_failures`` restarts, each
from the newest checkpoint. A restart first waits for the worker group to start; Ray Train gives up
after ``worker_start_timeout_s`` (its ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, read by the
controller: set in this process while ``fit`` runs, Ray Train passes it on) and counts that against
the controller's failure limit, unbounded in Ray (a lost node never replaced: a retry every timeout,
forever). Here the limit is ``controller_failure_limit``, so a fit whose workers cannot start ends
after at most ``(controller_failure_limit + 1) x worker_start_timeout_s`` with
:class:`WorkersUnavailable`, or recovers as soon as the cluster has the resources again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from typing import Any, Iterator

from fsr_core import storage
from fsr_core.training.loop import train_loop_per_worker

__all__ = ["FitResult", "WorkersUnavailable", "fit"]

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


class WorkersUnavailable(RuntimeError):
    """The training workers could not be started again within the configured time and tries."""


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What a finished fit gives back."""

    checkpoint_dir: str  # the final checkpoint as a local folder
    metrics: dict[str, Any]  # the last reported metrics (rank 0's)
    run_path: str | None  # the Ray Train run folder in storage (None in local mode)
    temporary: bool  # checkpoint_dir is a temporary copy (downloaded, or local mode) the caller may delete


def _run_config_storage(storage_path: str) -> dict[str, Any]:
    """``RunConfig`` storage arguments: S3 goes through our pyarrow filesystem (endpoint and
    credentials from the AWS environment), so the path is ``bucket/prefix``."""
    if storage.is_s3(storage_path):
        fs, path = storage.pyarrow_filesystem(storage_path)
        return {"storage_path": path, "storage_filesystem": fs}
    return {"storage_path": os.path.abspath(storage_path)}


def _data_config(data_config_class, deterministic: bool):
    if not deterministic:
        return data_config_class()
    options = data_config_class.default_ingest_options()  # Ray Train's defaults, with the order kept
    options.preserve_order = True
    return data_config_class(execution_options=options)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside, restored after (Ray reuses this worker process)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def fit(
    *,
    train_config: dict[str, Any],
    datasets: dict[str, Any],
    storage_path: str,
    run_name: str,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float = 0.5,
    max_failures: int = 0,
    num_to_keep: int = 2,
    deterministic_data: bool = False,
    controller_failure_limit: int = 3,
    worker_start_timeout_s: float = 120.0,
) -> FitResult:
    """Train with ``train_loop_per_worker(train_config)`` on ``num_workers`` Ray Train workers.

    Args:
        train_config: the loop's config (:class:`~fsr_core.training.loop.LoopConfig` keys).
        datasets: Ray Datasets by name (``"hr"``, ``"real_lr"``), rows with a uint8 ``image``.
        storage_path: where Ray Train keeps the run (a folder or ``s3://bucket/prefix``).
        run_name: the Ray Train run name; reusing one resumes that run.
        num_workers: training workers; 0 runs the loop in this process.
        use_gpu: one GPU per worker.
        cpus_per_worker: CPUs reserved per worker; keep it fractional on small machines, or the
            dataset read tasks get no CPU and everything waits.
        max_failures: worker-group restarts allowed (each resumes from the newest checkpoint).
        controller_failure_limit: times the worker group may fail to start (within
            ``worker_start_timeout_s``) before the fit fails (-1: without limit, Ray's default).
        worker_start_timeout_s: how long a (re)start waits for every worker's resources.
        num_to_keep: checkpoints kept in storage (newest).
        deterministic_data: Ray Data keeps the datasets' order (``preserve_order``), so with a seeded
            shuffle a re-run sees the same batches (a little less read parallelism).

    Returns:
        :class:`FitResult`; ``checkpoint_dir`` is local (downloaded when storage is remote).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
    if worker_start_timeout_s <= 0 or controller_failure_limit < -1:
        raise ValueError(f"worker_start_timeout_s must be > 0 and controller_failure_limit >= -1, got "
                         f"{worker_start_timeout_s}, {controller_failure_limit}")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dict(train_config),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run_name,
            failure_config=FailureConfig(max_failures=max_failures,
                                         controller_failure_limit=controller_failure_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
            **_run_config_storage(storage_path),
        ),
        datasets=datasets,
        dataset_config=_data_config(DataConfig, deterministic_data),
    )
    try:
        with _environment(START_TIMEOUT_ENV, str(float(worker_start_timeout_s))):
            result = trainer.fit()
    except Exception as exc:
        cause = getattr(exc, "controller_failure", None)
        if type(cause).__name__ != "WorkerGroupStartupTimeoutError":
            raise
        raise WorkersUnavailable(
            f"training run {run_name!r} stopped: its {num_workers} worker(s) ({cpus_per_worker} CPU"
            f"{', 1 GPU' if use_gpu else ''} each) could not start within {worker_start_timeout_s:g} s, "
            f"{controller_failure_limit + 1} time(s) in a row (controller_failure_limit={controller_failure_limit}): "
            "the cluster lacks those resources (a node lost and not replaced?). Its newest checkpoint is kept: "
            "the same command again resumes from it once the cluster has them."
        ) from None
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError(f"training run {run_name!r} finished without reporting a checkpoint")
    import pyarrow.fs as pafs

    if num_workers == 0:  # local mode: the loop's own temporary folder
        local, temporary = checkpoint.path, True
    elif isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        local, temporary = checkpoint.path, False
    else:
        local, temporary = checkpoint.to_directory(tempfile.mkdtemp(prefix=f"fsr-{run_name}-")), True
    return FitResult(
        checkpoint_dir=local, metrics=dict(result.metrics or {}), run_path=result.path, temporary=temporary
    )
