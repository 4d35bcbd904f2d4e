"""The generic Ray Train loop: iterate, checkpoint, report, log. It never knows a loss weight.

``train_loop_per_worker(config)`` runs on every Ray Train worker (or in the driver with
``ScalingConfig(num_workers=0)``). ``config`` (see :class:`LoopConfig`) carries an objective
*class* (an :class:`~fsr_core.training.objective.Objective`, pickled by reference) and its
constructor arguments; the loop imports no method. The objective owns networks, optimizers,
losses and its own state and declares the data sets it reads (``objective.datasets(kwargs)``).

Per worker:

1. build the objective on ``ray.train.torch.get_device()`` with the stage's ``data_info``
   (rows and identities of each data set);
2. restore, first match wins: ``ray.train.get_checkpoint()`` (Ray's own resume after a worker
   failure or a re-run under the same run name), else ``resume_checkpoint`` (a full checkpoint
   folder URI: objective state, weights, optimizers, step), else ``init`` (network by network from
   several named checkpoints: ``{network: {"checkpoint": uri, "network": name in it}}``, weights
   only; the step starts at 0);
3. DDP-wrap the trained networks when the world size is > 1 (``objective.wrap(prepare_model)``),
   and again whenever the objective's step-boundary hook ``on_step(step)`` says it rebuilt them
   (progressive growth);
4. read ``ray.train.get_dataset_shard(name).iter_torch_batches`` for each data set; ``batch_size``
   is the *global* batch (paper: 32), each worker takes ``batch_size / world_size``;
   ``shuffle_buffer`` rows of local shuffling, seeded from ``seed``, input, rank, epoch and the
   attempt's first step (with the trainer's ``deterministic_data`` the whole order repeats on a
   re-run). The first data set is the epoch stream; the others restart whenever they run out
   (cycled). A batch is ``{data set: {column: tensor}}``; uint8 NHWC images become float NCHW in
   [-1,1];
   ``precision="bf16"`` runs each ``train_step`` under ``torch.autocast`` in bfloat16 (weights,
   optimizer state, EMA and checkpoints stay float32; no loss scaling is needed at bf16's range;
   ``"auto"``: bf16 where the device computes it natively, tagged ``fsr_precision`` on the run),
   and ``channels_last`` puts the networks in channels-last memory format after the restore and
   after every rebuild (on 2 CPU cores the demo's joint two-step step runs 2.2-2.5x faster with both:
   ``bench/train_step_speed.py``);
5. every ``report_every`` steps and at ``max_steps``: every worker calls ``ray.train.report``
   (equally often: it is a barrier); rank 0 writes the checkpoint folder
   (:mod:`fsr_core.training.checkpoint` format) into a fresh temporary folder and passes it,
   the others pass ``checkpoint=None``; Ray uploads it to the run's storage and deletes the
   temporary folder. Report metrics are the loss means since the previous report, averaged over
   all workers (one ``all_reduce`` per report: :func:`global_means`), so rank 0's, which Ray
   keeps, are the global means. ``train_state.json`` holds ``step``, ``epoch`` (the pass over the
   first input that the last batch came from; Ray restarts the data of a resumed attempt, which
   therefore begins a new pass), ``objective`` (``module:Class``), ``objective_config``,
   ``world_size``, ``attempt_start_step``, ``restored_from`` (``scratch``, ``init``,
   ``resume_checkpoint``, ``ray_checkpoint``), the stage's ``data_info`` and ``mlflow_run_id``;
6. MLflow, rank 0 only, into the existing run ``run_id`` at ``tracking_uri``: loss means over all
   workers every ``log_every`` steps, a sample grid image every ``sample_every`` steps and at the end.

Test hook (for failure-injection tests only, never set in configuration): with
``fail_at_step=k`` and ``fail_marker_path=p``, the worker of rank ``min(1, world_size - 1)``
raises :class:`InjectedFailure` just before step ``k`` if the file ``p`` does not exist yet, after
creating it, so only the first attempt fails and ``FailureConfig`` retries resume from the last
checkpoint (the hook first waits until Ray Train has registered the reports made so far).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from fsr_core import storage
from fsr_core.training.objective import DataSpec, Objective

__all__ = ["InjectedFailure", "LoopConfig", "PRECISIONS", "autocast", "resolve_precision", "sample_grid",
           "to_channels_last", "to_float_images", "train_loop_per_worker"]


#: ``LoopConfig.precision`` -> the autocast dtype of ``train_step`` (None: autocast off)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


class InjectedFailure(RuntimeError):
    """Raised by the ``fail_at_step`` test hook."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """What ``train_loop_per_worker`` reads from its ``config`` dict; unknown keys are an error."""

    objective: type
    objective_kwargs: dict[str, Any]
    max_steps: int
    data_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 32
    report_every: int = 1000
    log_every: int = 10
    sample_every: int = 1000
    sample_count: int = 8
    seed: int = 0
    tracking_uri: str | None = None
    run_id: str | None = None
    init: dict[str, dict[str, str]] | None = None  # network -> {"checkpoint": uri, "network": name}
    resume_checkpoint: str | None = None
    torch_threads: int | None = None  # intra-op threads per worker; None keeps Ray's (OMP_NUM_THREADS = worker CPUs)
    precision: str = "fp32"  # "bf16": train_step under torch.autocast(bfloat16); weights, optimizers, checkpoints
    # stay fp32; "auto": bf16 where the worker's device computes it natively (resolve_precision), else fp32
    channels_last: bool = False  # networks (and their EMA copies) in channels-last memory format
    shuffle_buffer: int = 0  # rows in each worker's local shuffle buffer (0: the dataset's order)
    progress: Any = None  # progress(key, fields) from rank 0: step, max_steps, loss (the console's)
    progress_key: str | None = None
    fail_at_step: int | None = None  # test hook
    fail_marker_path: str | None = None  # test hook

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "LoopConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - names
        if unknown:
            raise ValueError(f"unknown training loop config key(s) {sorted(unknown)}; known: {sorted(names)}")
        out = cls(**config)
        if not (isinstance(out.objective, type) and issubclass(out.objective, Objective)):
            raise ValueError(f"objective must be an Objective subclass, got {out.objective!r}")
        for name in ("max_steps", "batch_size", "report_every", "log_every", "sample_every", "sample_count"):
            if int(getattr(out, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(out, name)}")
        for target, source in (out.init or {}).items():
            if set(source) != {"checkpoint", "network"}:
                raise ValueError(f"init[{target!r}] must be {{'checkpoint': uri, 'network': name}}, got {source}")
        if out.precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"precision must be one of {sorted(PRECISIONS) + ['auto']}, got {out.precision!r}")
        if (out.fail_at_step is None) != (out.fail_marker_path is None):
            raise ValueError("fail_at_step and fail_marker_path go together (test hook)")
        return out


def objective_path(cls: type) -> str:
    """``module:Class`` of an objective class (what ``train_state.json`` records)."""
    return f"{cls.__module__}:{cls.__qualname__}"


# ---------------------------------------------------------------------------- small helpers
def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N,H,W,3]`` -> float32 ``[N,3,H,W]`` in [-1,1] (same device)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [N,H,W,3] images, got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def sample_grid(images: dict[str, torch.Tensor]) -> np.ndarray:
    """One row per entry (in order), one column per sample, as uint8 ``[H,W,3]``; smaller images
    (LR) are nearest-upsampled to the largest size so pixels stay visible."""
    size = max(int(x.shape[-1]) for x in images.values())
    count = min(int(x.shape[0]) for x in images.values())
    rows = []
    for x in images.values():
        x = x[:count].detach().float().cpu()
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")
        rows.append(torch.cat(list(x), dim=-1))  # [3, size, count*size]
    grid = torch.cat(rows, dim=-2)
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


@contextlib.contextmanager
def _local_folder(checkpoint) -> Iterator[str]:
    """A ``ray.train.Checkpoint`` or a checkpoint folder URI (local or ``s3://``) as a local folder.

    A remote checkpoint is downloaded into a folder of this process, deleted afterwards. Not
    ``Checkpoint.as_directory``: in Ray 2.60 the workers of one node share its download folder,
    and a worker that finishes first can delete it while another is still reading (seen as
    "PytorchStreamReader failed reading file" on a restart from an S3 checkpoint).
    """
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    if isinstance(checkpoint, str):
        fs, path = storage.pyarrow_filesystem(checkpoint)
        checkpoint = Checkpoint(path, filesystem=fs)
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield checkpoint.path
        return
    local = tempfile.mkdtemp(prefix="fsr-restore-")
    try:
        yield checkpoint.to_directory(local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


_DTYPES = {"image": torch.uint8, "identity": torch.int64, "attributes": torch.float32, "landmarks": torch.float32}


def _batches(shard, *, name: str, spec: DataSpec, batch_size: int, shuffle_buffer: int = 0,
             seed: int | None = None) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Endless ``(epoch, {column: tensor})`` from a dataset shard, restarting it when it runs out;
    images become float ``[N,3,S,S]`` in [-1,1], the other columns keep their dtypes.

    ``shuffle_buffer > 0``: rows pass through a local shuffle buffer of that many rows, seeded per
    epoch from ``seed`` (a different order every pass, the same on a re-run)."""
    dtypes = {column: _DTYPES[column] for column in spec.columns}
    epoch = 0
    while True:
        count = 0
        shuffle = {}
        if shuffle_buffer > 0:
            shuffle = {"local_shuffle_buffer_size": shuffle_buffer,
                       "local_shuffle_seed": None if seed is None else seed * 100_003 + epoch}
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, dtypes=dtypes, **shuffle):
            count += 1
            columns = {column: batch[column] for column in spec.columns}
            columns["image"] = to_float_images(columns["image"])
            yield epoch, columns
        if count == 0:
            raise ValueError(
                f"dataset {name!r} yields no full batch of {batch_size} rows on this worker: "
                "use a smaller batch_size or fewer workers"
            )
        epoch += 1


class _Means:
    """Running means of float metrics."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def pop(self, *, device: Any = "cpu") -> dict[str, float]:
        """The means since the last pop, over every worker when a process group is up (a collective:
        all ranks call it at the same steps, with the same keys)."""
        out = global_means(self.sums, self.count, device=device)
        self.sums, self.count = {}, 0
        return out


def global_means(sums: dict[str, float], count: int, *, device: Any = "cpu") -> dict[str, float]:
    """``sums / count`` summed over all ranks of the default ``torch.distributed`` process group
    (one ``all_reduce``), or this process's alone without one. ``device``: where the collective's
    tensor lives (the worker's device: NCCL needs CUDA tensors)."""
    import torch.distributed as dist

    keys = sorted(sums)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {key: sums[key] / max(count, 1) for key in keys}
    packed = torch.tensor([sums[key] for key in keys] + [float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    values = packed.tolist()
    total = max(values[-1], 1.0)
    return {key: value / total for key, value in zip(keys, values[:-1])}


class _Tracker:
    """MLflow logging into an existing run (rank 0 only; a no-op without a run id)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, enabled: bool) -> None:
        self.run_id = run_id if enabled else None
        self.client = None
        if self.run_id is not None:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri)

    @property
    def active(self) -> bool:
        return self.client is not None

    def metrics(self, values: dict[str, float], *, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def tag(self, key: str, value: str) -> None:
        if self.client is not None:
            self.client.set_tag(self.run_id, key, value)

    def image(self, image: np.ndarray, *, step: int) -> None:
        if self.client is None:
            return
        self.client.log_image(self.run_id, image, artifact_file=f"samples/step_{step:08d}.png")


class _Progress:
    """Step, max_steps and one loss to the console's progress callable, at most once a second."""

    def __init__(self, report: Any, key: str, total: int, loss: str | None) -> None:
        self.report, self.key, self.total, self.loss = report, key, total, loss
        self.last = 0.0

    def note(self, step: int, text: str) -> None:
        if self.report is not None:
            self.report(self.key, {"done": step, "total": self.total, "unit": "steps", "note": text})

    def step(self, step: int, losses: dict[str, float]) -> None:
        now = time.time()
        if self.report is None or (now - self.last < 1.0 and step < self.total):
            return
        self.last = now
        key = self.loss if self.loss in losses else next(iter(losses), None)
        fields = {"done": step, "total": self.total, "unit": "steps"}
        if key is not None:  # a loss named like a progress field ("total") must not replace it
            fields[key if key not in fields and key != "note" else f"{key}_loss"] = losses[key]
        try:
            self.report(self.key, fields)
        except Exception:  # noqa: BLE001 - progress never fails training
            pass


def _maybe_fail(marker_path: str, *, step: int, rank: int) -> None:
    """The test hook: raise once (the marker file records that it did). It first waits until Ray
    Train has registered every report made so far, so that the retry deterministically resumes
    from the newest checkpoint (a real crash right after a report may lose that report)."""
    import ray.train

    if os.path.exists(marker_path):
        return
    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=60
    )
    open(marker_path, "w").close()
    raise InjectedFailure(f"injected failure before step {step} on rank {rank} (test hook)")


# ---------------------------------------------------------------------------- the loop
def _restore(objective: Objective, cfg: LoopConfig) -> tuple[int, int, str]:
    """Restore the objective (see the module docstring, step 2); returns ``(step, epoch, source)``."""
    import ray.train

    ray_checkpoint = ray.train.get_checkpoint()
    if ray_checkpoint is not None:
        with _local_folder(ray_checkpoint) as folder:
            state = objective.load(folder)
        return int(state["step"]), int(state.get("epoch", 0)), "ray_checkpoint"
    if cfg.resume_checkpoint:
        with _local_folder(cfg.resume_checkpoint) as folder:
            state = objective.load(folder)
        return int(state["step"]), int(state.get("epoch", 0)), "resume_checkpoint"
    if cfg.init:
        with contextlib.ExitStack() as stack:
            folders = {uri: stack.enter_context(_local_folder(uri))
                       for uri in sorted({source["checkpoint"] for source in cfg.init.values()})}
            objective.init_from({target: (folders[source["checkpoint"]], source["network"])
                                 for target, source in cfg.init.items()})
        return 0, 0, "init"
    return 0, 0, "scratch"


def to_channels_last(objective: Objective) -> None:
    """Put every network of ``objective`` and its EMA copies in channels-last memory format, in place
    (the parameters stay the same objects, so the optimizers keep them). Inputs need nothing: the
    loop's images are already NHWC-strided (:func:`to_float_images` permutes uint8 NHWC)."""
    for network in list(objective.networks.values()) + list(objective.ema.values()):
        network.to(memory_format=torch.channels_last)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` itself, or for ``"auto"``: ``"bf16"`` where ``device`` computes bfloat16 natively
    (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX, where oneDNN runs bf16 convolutions
    faster than fp32), else ``"fp32"`` (on other CPUs bf16 is emulated and slower)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        native = any(getattr(torch.cpu, name, lambda: False)()
                     for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return "bf16" if native else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a training step runs in: ``torch.autocast`` at ``precision``'s dtype, or nothing (fp32)."""
    dtype = PRECISIONS[resolve_precision(precision, device)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _slice(batch: Mapping[str, Mapping[str, torch.Tensor]], count: int) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {column: x[:count].clone() for column, x in columns.items()} for name, columns in batch.items()}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function; see the module docstring."""
    import ray.train
    import ray.train.torch

    cfg = LoopConfig.from_dict(config)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {world_size} workers")
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))

    specs = cfg.objective.datasets(cfg.objective_kwargs)
    objective = cfg.objective(**cfg.objective_kwargs, device=device, data_info=cfg.data_info)
    step, epoch, source = _restore(objective, cfg)
    if cfg.channels_last:
        to_channels_last(objective)
    start_step = step
    # epoch: the pass over the first input that the last batch came from. Ray restarts the data
    # iterators of a resumed attempt from the beginning, so a resumed attempt begins a new pass.
    first_epoch = epoch + 1 if step > 0 else 0
    if world_size > 1:
        objective.wrap(ray.train.torch.prepare_model)

    tracker = _Tracker(cfg.tracking_uri, cfg.run_id, enabled=rank == 0)  # MLflow from rank 0 only
    precision = resolve_precision(cfg.precision, device)
    tracker.tag("fsr_precision", precision)  # what "auto" became on this worker's device
    per_worker = cfg.batch_size // world_size
    streams = {  # shuffle seeds differ per input, per rank and per attempt (a resumed attempt restarts the data)
        name: _batches(ray.train.get_dataset_shard(name), name=name, spec=spec, batch_size=per_worker,
                       shuffle_buffer=cfg.shuffle_buffer,
                       seed=(cfg.seed * 1_000 + index) * 1_000 + rank + 7_919 * start_step)
        for index, (name, spec) in enumerate(specs.items())
    }
    epoch_stream = next(iter(specs))
    progress = _Progress(cfg.progress if rank == 0 else None, cfg.progress_key or "train", cfg.max_steps,
                         objective.progress_loss)
    if step > 0:
        progress.note(step, f"resumed from the checkpoint at step {step} ({source})")
    log_means, report_means = _Means(), _Means()
    sample_batch: dict[str, dict[str, torch.Tensor]] | None = None
    previous_folder: str | None = None

    def train_state() -> dict[str, Any]:
        return {
            "step": step,
            "epoch": epoch,
            "objective": objective_path(cfg.objective),
            "objective_config": objective.config,
            "world_size": world_size,
            "attempt_start_step": start_step,
            "restored_from": source,
            "data_info": cfg.data_info,
            "mlflow_run_id": cfg.run_id,
        }

    while step < cfg.max_steps:
        if cfg.fail_at_step == step + 1 and rank == min(1, world_size - 1):
            _maybe_fail(cfg.fail_marker_path, step=step + 1, rank=rank)
        if objective.on_step(step):  # networks rebuilt (growth): convert and wrap them again
            if cfg.channels_last:
                to_channels_last(objective)
            if world_size > 1:
                objective.wrap(ray.train.torch.prepare_model)
        batch = {}
        for name, stream in streams.items():
            stream_epoch, batch[name] = next(stream)
            if name == epoch_stream:
                epoch = first_epoch + stream_epoch
        if sample_batch is None:
            sample_batch = _slice(batch, cfg.sample_count)
        with autocast(device, precision):
            losses = objective.train_step(batch, step=step)
        step += 1
        log_means.add(losses)
        report_means.add(losses)
        progress.step(step, losses)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            tracker.metrics({**log_means.pop(device=device), "epoch": epoch}, step=step)
        if tracker.active and (step % cfg.sample_every == 0 or step == cfg.max_steps):
            tracker.image(sample_grid(objective.sample(sample_batch, seed=cfg.seed)), step=step)
        if step % cfg.report_every == 0 or step == cfg.max_steps:
            metrics = {**report_means.pop(device=device), "step": step, "epoch": epoch}
            folder = None
            if rank == 0:
                folder = tempfile.mkdtemp(prefix=f"fsr-checkpoint-{step:08d}-")
                objective.save(folder, train_state=train_state())
            checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
            ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)
            # Ray deletes an uploaded folder; in driver mode (num_workers=0) nothing is uploaded and
            # the newest reported folder is the result: delete the older ones.
            if previous_folder is not None:
                shutil.rmtree(previous_folder, ignore_errors=True)
            previous_folder = folder
