"""The one training stage: any objective, on Ray Train, with resume, failure recovery and MLflow.

A method declares its training stage kinds in a line each::

    TWO_STEP_PRETRAIN = training_stage("two_step_pretrain", TwoStepPretrainParams, TwoStepObjective,
                                       description="...")

from a parameter class (a :class:`TrainingParams` subclass whose :meth:`~TrainingParams.objective_kwargs`
gives the objective's constructor arguments) and an objective class
(:class:`~fsr_core.training.objective.Objective`). The kind's inputs are the objective's data sets
(``objective.datasets(kwargs)``, shard folders) followed by the ``checkpoints`` it initialises
from; its outputs:

``checkpoint``
    the final checkpoint folder (:mod:`fsr_core.training.checkpoint` format: weights, constructor
    JSON, optimizer, objective and train state, the restorers it exports), what later stages and
    the model registry read;
``train_run``
    the Ray Train storage of the run (its kept checkpoints, Ray's run state) plus ``fit.json``.

Shared by every method: which split each data set reads (``splits``, ``train`` by default, logged
with the row count of each input), initialisation network by network from named checkpoints
(``init: {network: "<checkpoint input>.<network>"}``), resume (a failed pipeline re-run continues a
half-trained stage: the runner gives a re-run with the same fingerprint the same output folders and
the Ray Train run name is the stage name, so Ray Train resumes from the newest checkpoint in
``train_run``; ``resume: false`` always starts afresh; driver mode ``num_workers: 0`` has no Ray
Train storage and so no resume), failure recovery (``max_failures``) bounded in time
(``worker_start_timeout_s`` x ``controller_failure_limit``: see :mod:`fsr_core.training.trainer`),
loss curves and sample grids
in the stage's MLflow run from Ray Train rank 0.

The kind's code version covers this module, the objective's module and the parameter class's
module (``Stage.code``), so editing a method re-runs that method's stages only.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from typing import Any, Literal, Mapping

from pydantic import Field, model_validator

from fsr_core import storage
from pipelines.stage import Stage, StageContext, StageParams

__all__ = ["TrainingParams", "train_objective", "training_stage"]


class TrainingParams(StageParams):
    """What every training stage takes; a method's parameter class adds its own and says how they
    become the objective's constructor arguments (:meth:`objective_kwargs`)."""

    max_steps: int = Field(..., ge=1)
    batch_size: int = Field(32, ge=1, description="global batch, split over the workers")
    splits: dict[str, str | None] = Field(
        default_factory=dict, description="split read from each data input (null: all rows); unnamed inputs: train")
    init: dict[str, str] = Field(
        default_factory=dict,
        description="networks initialised from a checkpoint input: {network: '<input>.<network in it>'}")
    report_every: int = Field(1000, ge=1, description="steps between checkpoints (ray.train.report)")
    log_every: int = Field(50, ge=1, description="steps between MLflow loss points")
    sample_every: int = Field(1000, ge=1, description="steps between MLflow sample grids")
    sample_count: int = Field(8, ge=1, description="columns of the sample grid")
    seed: int = Field(0, ge=0)
    shuffle_buffer: int = Field(
        1024, ge=0, description="rows of each worker's seeded local shuffle buffer (0: read order)")
    deterministic_data: bool = Field(
        True, description="Ray Data keeps the read order, so a re-run with the same seed sees the same batches")
    materialize_mb: float = Field(
        512, ge=0, description="a data set whose decoded images come to at most this many MB is read and decoded "
                               "once, kept in Ray's object store for every epoch (bench/epoch_overhead.py); a larger "
                               "one is streamed, read and decoded again each epoch; 0: always streamed")
    num_workers: int = Field(1, ge=0, description="Ray Train workers; 0 runs the loop in the stage's process")
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0, description="fractional on small machines, or data reads starve")
    torch_threads: int | None = Field(
        None, ge=1, description="PyTorch threads per worker (None: Ray's default, one per reserved CPU)")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="bf16: each step under torch.autocast(bfloat16) (CPUs with AVX512-BF16/AMX, recent GPUs); "
                            "weights, optimizers and checkpoints stay fp32; auto: bf16 where the worker's device "
                            "computes it natively, else fp32 (the run's tag fsr_precision says which)")
    channels_last: bool = Field(False, description="networks in channels-last memory format (faster convolutions)")
    max_failures: int = Field(2, ge=0, description="worker-group restarts, each from the newest checkpoint")
    worker_start_timeout_s: float = Field(
        120.0, gt=0, description="how long a (re)start of the workers waits for their resources (a lost node's "
                                 "replacement, an autoscaled GPU node) before it counts as a failed start")
    controller_failure_limit: int = Field(
        3, ge=-1, description="failed worker starts before the stage fails (-1: no limit, retried forever): the "
                              "stage ends within (limit + 1) x worker_start_timeout_s when workers cannot start")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept in train_run")
    resume: bool = Field(True, description="a re-run continues the stage's Ray Train run")

    @model_validator(mode="after")
    def _check_init(self) -> "TrainingParams":
        for target, source in self.init.items():
            if source.count(".") != 1 or not all(source.split(".")):
                raise ValueError(f"init.{target}: expected '<checkpoint input>.<network>', got {source!r}")
        return self

    def objective_kwargs(self) -> dict[str, Any]:
        """The objective's constructor arguments (without ``device`` and ``data_info``)."""
        raise NotImplementedError


def training_stage(name: str, params: type[TrainingParams], objective: type, *, description: str,
                   checkpoints: tuple[str, ...] = ()) -> Stage:
    """A stage kind that trains ``objective`` with parameters ``params`` (see the module docstring)."""
    data = tuple(objective.datasets(params.model_construct().objective_kwargs()))
    clash = set(data) & set(checkpoints)
    if clash:
        raise ValueError(f"{name}: inputs {sorted(clash)} are both data sets and checkpoints")
    return Stage(
        name=name,
        fn=functools.partial(train_objective, objective=objective, data=data, checkpoints=checkpoints),
        params=params,
        inputs=data + tuple(checkpoints),
        outputs=("checkpoint", "train_run"),
        description=description,
        code=(objective.__module__, params.__module__),
        held_cpus=lambda p: p.num_workers * p.cpus_per_worker,
    )


def _upload_folder(local_dir: str, uri: str) -> None:
    """Copy a local checkpoint folder to ``uri`` file by file; ``networks.json`` (what marks a
    checkpoint folder) goes last."""
    files = []
    for folder, _, names in os.walk(local_dir):
        for name in names:
            files.append(os.path.relpath(os.path.join(folder, name), local_dir))
    files.sort(key=lambda rel: (rel == "networks.json", rel))
    for rel in files:
        storage.upload_file(os.path.join(local_dir, rel), storage.join(uri, *rel.split(os.sep)))


def _data_info(uri: str, split: str | None, columns: tuple[str, ...]) -> dict[str, Any]:
    """Rows of ``split`` in ``uri`` and, when the objective reads identities, their sorted list."""
    from fsr_core.data.shards import read_faces

    wanted = ["id", "height", "width"] + (["identity"] if "identity" in columns else [])
    table = read_faces(uri, columns=wanted, split=split)
    info: dict[str, Any] = {"uri": uri, "split": split, "rows": table.num_rows}
    sides = [max(int(h or 0), int(w or 0)) for h, w in zip(table["height"].to_pylist(), table["width"].to_pylist())]
    info["max_side"] = max(sides, default=0)
    if "identity" in columns:
        identities = sorted({str(v) for v in table["identity"].to_pylist() if v is not None})
        info.update(identities=identities, num_identities=len(identities))
    return info


def _init_sources(p: TrainingParams, checkpoints: tuple[str, ...], inputs: Mapping[str, str]) -> dict[str, dict]:
    out = {}
    for target, source in p.init.items():
        checkpoint, network = source.split(".")
        if checkpoint not in checkpoints:
            raise ValueError(f"init.{target} names {checkpoint!r}, not a checkpoint input of this stage "
                             f"({list(checkpoints) or 'none'})")
        out[target] = {"checkpoint": inputs[checkpoint], "network": network}
    return out


def _materialize(dataset):
    """``dataset`` read and decoded now, in read order, its blocks kept in Ray's object store: each epoch
    then iterates them instead of listing, reading and decoding the shards again (measured on 2 cores,
    384 crops of 64 px: 2.20 s of Ray Data work per epoch streamed, 0.06 s materialised)."""
    dataset.context.execution_options.preserve_order = True  # the dataset's own copy of the DataContext
    return dataset.materialize()


def train_objective(ctx: StageContext, *, objective: type, data: tuple[str, ...], checkpoints: tuple[str, ...],
                    **inputs: str) -> dict[str, str]:
    """The body of every training stage kind (see the module docstring)."""
    from fsr_core.data.ray_datasets import training_dataset
    from fsr_core.training.trainer import fit

    p: TrainingParams = ctx.params  # type: ignore[assignment]
    kwargs = p.objective_kwargs()
    specs = objective.datasets(kwargs)
    if tuple(specs) != data:
        raise ValueError(f"stage {ctx.stage!r}: the objective reads {list(specs)}, the stage kind declares {list(data)}")
    unknown = set(p.splits) - set(data)
    if unknown:
        raise ValueError(f"splits names {sorted(unknown)}, which are not data inputs of this stage ({list(data)})")
    data_info, datasets = {}, {}
    for name, spec in specs.items():
        split = p.splits.get(name, "train")
        info = _data_info(inputs[name], split, spec.columns)
        if not info["rows"]:
            raise ValueError(f"input {name!r} ({inputs[name]}) has no rows of split {split!r}")
        data_info[name] = info
        datasets[name] = training_dataset(inputs[name], size=spec.size, columns=spec.columns, split=split,
                                          identities=tuple(info.get("identities", ())), attributes=spec.attributes)
        side = spec.size or info["max_side"]
        decoded_mb = info["rows"] * side * side * 3 / 2**20
        info["decoded_mb"] = round(decoded_mb, 3)
        info["materialized"] = p.materialize_mb > 0 and decoded_mb <= p.materialize_mb
        if info["materialized"]:
            datasets[name] = _materialize(datasets[name])
    ctx.log_params({f"data.{name}.mode": "materialized" if info["materialized"] else "streamed"
                    for name, info in data_info.items()})
    ctx.log_params({f"data.{name}": f"{info['rows']} rows of split {info['split']}" for name, info in data_info.items()})
    train_config: dict[str, Any] = {
        "objective": objective,
        "objective_kwargs": kwargs,
        "data_info": data_info,
        "max_steps": p.max_steps,
        "batch_size": p.batch_size,
        "report_every": p.report_every,
        "log_every": p.log_every,
        "sample_every": p.sample_every,
        "sample_count": p.sample_count,
        "seed": p.seed,
        "tracking_uri": ctx.tracking_uri,
        "run_id": ctx.run_id,
        "torch_threads": p.torch_threads,
        "precision": p.precision,
        "channels_last": p.channels_last,
        "shuffle_buffer": p.shuffle_buffer,
        "init": _init_sources(p, checkpoints, inputs) or None,
        "progress": ctx.progress,
        "progress_key": ctx.stage,
    }
    run_name = ctx.stage if p.resume else f"{ctx.stage}-{uuid.uuid4().hex[:8]}"
    result = fit(
        train_config=train_config,
        datasets=datasets,
        storage_path=ctx.outputs["train_run"],
        run_name=run_name,
        num_workers=p.num_workers,
        use_gpu=p.use_gpu,
        cpus_per_worker=p.cpus_per_worker,
        max_failures=p.max_failures,
        controller_failure_limit=p.controller_failure_limit,
        worker_start_timeout_s=p.worker_start_timeout_s,
        num_to_keep=p.num_to_keep,
        deterministic_data=p.deterministic_data,
    )
    _upload_folder(result.checkpoint_dir, ctx.outputs["checkpoint"])
    with open(os.path.join(result.checkpoint_dir, "train_state.json")) as fh:
        final_state = json.load(fh)
    summary = {
        "ray_run_name": run_name,
        "ray_run_path": result.run_path,
        "final_step": final_state["step"],
        "final_epoch": final_state.get("epoch", 0),
        "metrics": result.metrics,
        "data": {name: {k: v for k, v in info.items() if k != "identities"} for name, info in data_info.items()},
    }
    storage.write_bytes(storage.join(ctx.outputs["train_run"], "fit.json"), json.dumps(summary, indent=2).encode())
    ctx.set_tags({"fsr_ray_train_run": result.run_path or "local-mode", "fsr_final_step": final_state["step"]})
    if result.temporary:
        shutil.rmtree(result.checkpoint_dir, ignore_errors=True)
    return {"checkpoint": ctx.outputs["checkpoint"], "train_run": ctx.outputs["train_run"]}
