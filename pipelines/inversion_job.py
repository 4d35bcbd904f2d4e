"""Batched Ray inversion tasks: many faces inverted into a generator's latent space, a batch per task,
results written as shards with the latent codes, resumable per batch.

:func:`invert_faces` plans the batches (each set of faces in its own batches, in a fixed order; face ``j``
of the plan gets seed ``seed + j``), records the plan in ``<out>/_inversion.json`` and runs one Ray task
per batch that has no part yet: the task inverts its faces on one device in one optimisation loop
(:class:`~fsr_core.inversion.batch.BatchInverter`, loaded once per worker process as latent-search
restorers are: :func:`fsr_core.restore.batch._call_in_task`) and writes ``<out>/part-<k>.parquet``
atomically, last. So archive restoration's exactly-once rule holds (:mod:`pipelines.archive_restore`,
whose part names this job shares): a batch with a part is done and never redone, a killed job's re-run
inverts only the batches without one, and every face is in exactly one part. A plan recorded with other
faces or settings is an error, raised before any task starts. ``num_gpus`` may be fractional: several
inversion tasks share a GPU on a cluster.

Part columns: ``id``, ``set``, ``seed``, ``target_size``, and per space (``w``, ``w_plus``) the code
(``list<float32>``: W ``D`` values, W+ ``L x D`` row-major), ``error_<space>`` (the projection's MSE)
and ``steps_<space>``.
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fsr_core import storage
from fsr_core.data.shards import write_parquet
from pipelines.archive_restore import _part_unit, part_name

__all__ = ["PLAN_FILE", "invert_faces", "plan_batches", "read_codes"]

PLAN_FILE = "_inversion.json"


def plan_batches(ids: Mapping[str, list[str]], *, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """``[{"set", "start", "ids", "seeds"}]``: each set (in sorted order) cut into batches of ``batch_size``;
    seeds ``seed + j`` for the ``j``-th face of the plan."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches, j = [], 0
    for name in sorted(ids):
        rows = list(ids[name])
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batches.append({"set": name, "start": start, "ids": chunk, "seeds": list(range(seed + j, seed + j + len(chunk)))})
            j += len(chunk)
    return batches


def _run_batch(uri: str, batch: dict[str, Any], inverter: dict[str, Any]) -> int:
    from fsr_core.inversion.batch import BatchInverter
    from fsr_core.restore.batch import _call_in_task

    columns = _call_in_task(batch, fn_cls=BatchInverter, fn_kwargs=inverter)
    table = pa.table({key: (pa.array([list(map(float, row)) for row in value], pa.list_(pa.float32()))
                            if isinstance(value, np.ndarray) and value.ndim == 2 else pa.array(list(value)))
                      for key, value in columns.items()})
    write_parquet(uri, table)  # atomic, and last: the batch is done once its part exists
    return table.num_rows


def _check_plan(out: str, plan: dict[str, Any]) -> None:
    try:
        existing = json.loads(storage.read_bytes(storage.join(out, PLAN_FILE)))
    except FileNotFoundError:
        storage.write_bytes(storage.join(out, PLAN_FILE), json.dumps(plan, indent=1, sort_keys=True).encode())
        return
    for key in sorted(set(plan) | set(existing)):
        if existing.get(key) != plan.get(key):
            raise ValueError(f"{out} holds an inversion with another {key}; write to a new output, or delete it "
                             "to start over")


def invert_faces(
    out: str,
    images: Mapping[str, np.ndarray],
    ids: Mapping[str, list[str]],
    *,
    inverter: Mapping[str, Any],
    step1: Mapping[str, bool] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    report: Callable[[int, int, int], None] | None = None,
) -> dict[str, Any]:
    """Invert every face of ``images`` (set name -> uint8 ``[n,s,s,3]``, ``ids`` the rows' ids in the same
    order) into ``out`` (see the module docstring). ``inverter``: :class:`~fsr_core.inversion.batch.BatchInverter`'s
    keywords (its ``device`` is set here: ``cuda`` when ``num_gpus > 0``); ``step1[set]``: that set's crops
    are LR and go through the L2H first. ``report(batches_done, batches_todo, faces)`` after each batch.
    Returns ``{"batches", "batches_run", "batches_reused", "faces"}``."""
    import ray

    if set(images) != set(ids) or any(len(images[k]) != len(ids[k]) for k in ids):
        raise ValueError("images and ids must name the same sets with one id per image")
    step1 = dict(step1 or {})
    inverter = {**dict(inverter), "device": "cuda" if num_gpus > 0 else "cpu"}
    batches = plan_batches(ids, batch_size=batch_size, seed=seed)
    plan = {"sets": {k: list(v) for k, v in sorted(ids.items())}, "batch_size": batch_size, "seed": seed,
            "step1": {k: bool(step1.get(k, False)) for k in sorted(ids)},
            "inverter": {k: v for k, v in sorted(inverter.items()) if k not in ("device", "torch_threads")}}
    _check_plan(out, json.loads(json.dumps(plan)))
    done = {u for u in (_part_unit(info.uri.rsplit("/", 1)[-1]) for info in storage.list_files(out, suffix=".parquet"))
            if u is not None}
    todo = [k for k in range(len(batches)) if k not in done]
    remote = ray.remote(_run_batch).options(num_cpus=num_cpus, num_gpus=num_gpus)
    refs = []
    for k in todo:
        batch = batches[k]
        rows = images[batch["set"]][batch["start"]:batch["start"] + len(batch["ids"])]
        payload = {"id": batch["ids"], "image": np.ascontiguousarray(rows), "set": [batch["set"]] * len(rows),
                   "seed": batch["seeds"], "step1": [bool(step1.get(batch["set"], False))] * len(rows)}
        refs.append(remote.remote(storage.join(out, part_name(k)), payload, inverter))
    faces = finished = 0
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        faces += ray.get(ready[0])
        finished += 1
        if report is not None:
            report(finished, len(todo), faces)
    return {"batches": len(batches), "batches_run": len(todo), "batches_reused": len(batches) - len(todo),
            "faces": faces}


def read_codes(out: str) -> pa.Table:
    """Every part of an inversion output, in batch order."""
    parts = sorted((u, info.uri) for info in storage.list_files(out, suffix=".parquet")
                   if (u := _part_unit(info.uri.rsplit("/", 1)[-1])) is not None)
    if not parts:
        raise FileNotFoundError(f"no inversion parts under {out}")
    return pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(uri))) for _, uri in parts])
