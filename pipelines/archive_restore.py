"""``fsr restore``: mass offline restoration of an archive of photos and videos, on Ray Data.

::

    driver   list the archive as a stream (folder or s3:// prefix, nested): images + videos
             unsafe names -> quarantined (unsafe_path) at listing; images in units of unit_size; videos
             probed (header only, Ray tasks) and split into chunks of ~chunk_seconds, a unit each;
             units streamed to <out>/_plan/units-*.parquet (pipelines.archive_plan), then the plan
             (counts, settings, concrete model version) -> <out>/_restore.json
             skip units whose manifest/part-<k>.parquet exists (resume)
    Ray Data from_items(blocks of the unfinished units' numbers) -> read_units (each task reads its
             units' row groups of the plan; pipelines.archive_plan.plan_dataset)

    fused execution (the default on CPU, ``execution="fused"``):
             .flat_map(restore_unit)         tasks, unit_cpus (1) each, ``units_per_task`` units (4) a task,
                                             at least a task per CPU: the three steps below in one process,
                                             the restorer loaded once per worker process; only manifest rows
                                             leave the task. Measured (bench/restore_throughput.py, 2 CPUs,
                                             1,000 images): the staged chain below moves crops through the
                                             object store and keeps a model actor and write tasks beside the
                                             detect tasks, which on CPUs costs more than it overlaps; Ray's
                                             gap between tasks makes a unit of 8 images too small a task.

    staged execution (the default with use_gpu, and for latent-search restorers):
             .flat_map(detect_unit)          tasks, detect_cpus: read -> decode (images) or PyAV stream
                                             (a video chunk from a seek to its start; S3 by byte ranges)
                                             -> detect -> track -> align; one row per image / frame with
                                             faces (all its crops), one per quarantined file, and an "end"
                                             row with the unit's count (and a chunk's sampled frames)
             .map_batches(ArchiveRestorer)   feed-forward restorers: actor pool (ActorPoolStrategy(size=
                                             num_actors), actor_cpus, 1 GPU each with use_gpu), the
                                             restorer loaded once per actor from the version resolved
                                             once in the driver; latent-search restorers: batched tasks
                                             (fsr_core.restore.batch.map_restorer)
             .map_batches(write_outputs)     tasks, write_cpus: crops/<safe>/<tag>_face<k>.png, and for
                                             images the paste-back frames/<safe>/<tag>.png; returns the
                                             manifest rows
    driver   collects rows per unit; a unit is complete when its end row and all its rows arrived.
             Images: manifest/part-<k>.parquet written atomically, last. Video chunks: one Ray task
             each, chained chunk after chunk (fsr_core.restore.video_chunks.finish_video_chunk:
             tracks continued, optional temporal smoothing, paste-back, encoding, the last chunk joins
             the chunk videos), then the part. A part means the unit's outputs are all there.

Exactly once: every output is addressed by (input file, frame index, face index) and written
atomically, so a re-run overwrites, never adds; a unit's manifest part is written after all of its
outputs and a re-run only runs the units without a part. Every listed file appears in at least one
part and every face in exactly one (as ``restored`` rows, one per face, or ``quarantined`` rows with
the reason; a chunk's file-level record carries the chunk's first frame index).

Memory: files are read one at a time inside a unit and video frames are streamed (decoded, detected
and handed on one at a time; Ray Data's streaming executor bounds what is in flight; the ordered
pass decodes and encodes frame by frame), so memory does not grow with the archive's size or a
video's length. The driver never holds the archive's listing: the plan is streamed to Parquet and
read back by Ray Data; it keeps counts, the finished unit numbers and the small manifest rows of
unfinished units.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import time
from collections import Counter
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fsr_core import storage
from fsr_core.data.shards import write_parquet
from fsr_core.restore.archive import ArchiveSettings, join_under
from fsr_core.restore.batch import map_restorer
from fsr_core.restore.costs import StepClock
from fsr_core.restore.video_chunks import WORK_FOLDER
from pipelines.archive_chains import VideoChains
from pipelines.archive_plan import iter_archive, list_archive, plan_dataset, write_plan_units
from pipelines.archive_units import FAIL_ENV, ArchiveRestorer, detect_unit, restore_unit, write_outputs

__all__ = [
    "FAIL_ENV",
    "MANIFEST_SCHEMA",
    "ArchiveRestorer",
    "detect_unit",
    "list_archive",
    "manifest_text",
    "read_manifest",
    "restore_archive",
    "write_outputs",
]

PLAN_FILE = "_restore.json"
#: how the steps are spread over Ray (``restore_archive(execution=)``, the module docstring)
EXECUTIONS = ("auto", "fused", "staged")
MANIFEST_FOLDER = "manifest"
MAX_UNIT_BLOCKS = 4096  # Ray Data blocks of plan units: one unit a block up to this many units
KILL_ENV = "FSR_TEST_KILL_AFTER_UNITS"  # test-only: SIGKILL the driver after this many parts
#: reasons that are not the file's fault (a read that failed after retries): the unit gets no part
#: and the next run redoes it, instead of a quarantine record for good
RETRY_REASONS = frozenset({"read_error"})

MANIFEST_SCHEMA = pa.schema([
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("relative_path", pa.string(), nullable=False),
    pa.field("media", pa.string(), nullable=False),  # image | video
    pa.field("frame_index", pa.int64()),  # null for images
    pa.field("face_index", pa.int32()),  # per image / frame, best detector score first
    pa.field("track_id", pa.int64()),  # videos: IoU track over the sampled frames
    pa.field("box", pa.list_(pa.float32())),  # detector box [x0, y0, x1, y1] in the source
    pa.field("landmarks", pa.list_(pa.float32())),  # 5 x (x, y) in the source
    pa.field("score", pa.float64()),
    pa.field("region", pa.list_(pa.float32())),  # bounds of the aligned crop in the source
    pa.field("matrix", pa.list_(pa.float64())),  # 2x3 source -> LR crop, row-major
    pa.field("model_name", pa.string(), nullable=False),
    pa.field("model_version", pa.int64()),
    pa.field("model_uri", pa.string(), nullable=False),
    pa.field("output_uri", pa.string()),  # the restored crop
    pa.field("smoothed_output_uri", pa.string()),  # videos with temporal smoothing: the smoothed crop
    pa.field("frame_output_uri", pa.string()),  # the pasted-back frame
    pa.field("video_output_uri", pa.string()),  # the restored video
    pa.field("lr_consistency", pa.float64()),  # PSNR-Y (dB) of the input vs the restored crop degraded back
    pa.field("detected_on", pa.string()),  # Ray node id of the task that decoded, detected and aligned
    pa.field("restored_on", pa.string()),  # Ray node id of the model actor that restored the crop
    pa.field("status", pa.string(), nullable=False),  # restored | quarantined
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
])


# ---------------------------------------------------------------------------- listing and plan
def plan_video_chunks(uri: str, settings: ArchiveSettings) -> list[dict[str, Any]]:
    """The chunks of one video: ``[{chunk, chunks, start_s, end_s, first_frame, end_frame, fps}]`` from its header.

    One chunk when the video cannot be probed (the detection pass then quarantines it with the
    reason), is short, declares no stream duration or frame rate, or ``settings.max_frames`` is
    set. ``first_frame``/``end_frame``: the indices at the chunk's bounds on the stream's index
    grid (:func:`~fsr_core.data.ingest.video.index_rate`)."""
    from fsr_core.data.ingest.video import VideoError, probe_video
    from fsr_core.data.ingest.video import open_video
    from fsr_core.restore.video_io import chunk_ranges

    try:
        with open_video(uri) as source:
            info = probe_video(source)
    except (VideoError, FileNotFoundError, OSError):
        info = {}
    fps, rate, duration = info.get("fps"), info.get("index_fps"), info.get("duration_s")
    seconds = settings.chunk_seconds if settings.max_frames is None and rate else None
    ranges = chunk_ranges(duration, chunk_seconds=seconds or None, sample_fps=settings.sample_fps)
    if len(ranges) == 1:
        return [{"chunk": 0, "chunks": 1, "start_s": 0.0, "end_s": None, "first_frame": None, "end_frame": None,
                 "fps": fps}]
    return [{"chunk": k, "chunks": len(ranges), "start_s": start, "end_s": end, "first_frame": int(round(start * rate)),
             "end_frame": None if end is None else int(round(end * rate)), "fps": fps}
            for k, (start, end) in enumerate(ranges)]


def part_name(unit: int) -> str:
    return f"part-{unit:05d}.parquet"


def manifest_text(value: Any) -> Any:
    """A string as the manifest holds it: a local name whose bytes are not UTF-8 (decoded by Python
    with ``surrogateescape``) gets those bytes written as ``\\xNN``; other values unchanged."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _write_part(uri: str, rows: list[dict[str, Any]]) -> None:
    columns = {field.name: [manifest_text(row.get(field.name)) for row in rows] for field in MANIFEST_SCHEMA}
    write_parquet(uri, pa.table(columns, schema=MANIFEST_SCHEMA))


def read_manifest(out: str) -> pa.Table:
    """The union of all manifest parts of a restore output."""
    parts = [info.uri for info in storage.list_files(storage.join(out, MANIFEST_FOLDER), suffix=".parquet")]
    if not parts:
        return MANIFEST_SCHEMA.empty_table()
    tables = []
    for uri in parts:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
        for field in MANIFEST_SCHEMA:  # parts written before a column existed: nulls there
            if field.name not in table.column_names:
                table = table.append_column(field, pa.nulls(len(table), field.type))
        tables.append(table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA))
    return pa.concat_tables(tables)


_ABSENT = object()


def consistency_summary(out: str) -> dict[str, float]:
    """Mean and 5/50/95 % quantiles of ``lr_consistency`` over every restored face of the output's
    manifest (reused units included), reading that column only; empty when no face was restored."""
    values = []
    for info in storage.list_files(storage.join(out, MANIFEST_FOLDER), suffix=".parquet"):
        table = pq.read_table(io.BytesIO(storage.read_bytes(info.uri)))
        if "lr_consistency" in table.column_names:
            values.extend(v for v in table.column("lr_consistency").to_pylist() if v is not None)
    if not values:
        return {}
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "p05": float(np.quantile(array, 0.05)),
            "p50": float(np.quantile(array, 0.5)), "p95": float(np.quantile(array, 0.95))}


def _existing_plan(out: str, settings_plan: Mapping[str, Any]) -> dict[str, Any] | None:
    """The recorded plan (resume), or None; one recorded with other settings is an error, raised
    before anything is listed or written."""
    try:
        existing = json.loads(storage.read_bytes(storage.join(out, PLAN_FILE)))
    except FileNotFoundError:
        return None
    for key, value in settings_plan.items():
        before = existing.get(key)
        if before == value:
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):  # name the setting, not the dict
            changed = sorted(k for k in set(value) | set(before) if before.get(k, _ABSENT) != value.get(k, _ABSENT))
            key, before, value = (f"{key}.{changed[0]}", before.get(changed[0], "(unset)"),
                                  value.get(changed[0], "(unset)"))
        raise ValueError(f"{out} holds a restore with another {key} ({before!r}, now {value!r});"
                         " write to a new output, or delete it to start over")
    if "plan_files" not in existing:
        raise ValueError(f"{out}/{PLAN_FILE} is from an older fsr (units inline): restore into a new output")
    return existing


def _part_unit(name: str) -> int | None:
    """The unit of a manifest part's file name (``part-00012.parquet`` -> 12), None for other files."""
    stem = name[len("part-"):-len(".parquet")] if name.startswith("part-") and name.endswith(".parquet") else ""
    return int(stem) if stem.isdigit() else None


# ---------------------------------------------------------------------------- the job
def restore_archive(
    input_uri: str,
    out: str,
    model: str,
    *,
    tracking_uri: str | None = None,
    settings: ArchiveSettings = ArchiveSettings(),
    unit_size: int = 8,
    paste: bool = True,
    write_video: bool = True,
    feather: float = 0.1,
    batch_size: int | None = None,
    frames_per_batch: int = 16,
    num_actors: int = 1,
    actor_cpus: float = 0.5,
    detect_cpus: float = 0.5,
    write_cpus: float = 0.25,
    use_gpu: bool = False,
    execution: str = "auto",
    unit_cpus: float = 1.0,
    units_per_task: int = 4,
    loader: Callable | None = None,
    restorer_inputs: Mapping[str, str] | None = None,
    printer: Callable[[str], None] | None = print,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Restore every face of an archive into ``out`` (see the module docstring); resumable.

    ``model``: ``models:/NAME@ALIAS`` (or ``/VERSION``), or ``bicubic``, resolved once to a concrete
    version that every manifest row names; a resumed run keeps the version recorded in
    ``out/_restore.json``. ``settings.input_size`` None: the restorer card's input size.
    ``loader(model_ref, device=) -> (restorer, info)`` defaults to
    :func:`pipelines.model_registry.load_restorer`; ``restorer_inputs`` (``--identity``, ``--references``:
    what a custom loader puts into the restorer) are recorded in the plan, so a resume with other ones
    is refused. A custom loader, and any latent-search restorer, is loaded once in the driver before any
    work: a bad pool or identity, or a restorer that reads a per-face condition nobody gives, fails
    there. ``frames_per_batch``: images / frames (rows) per actor call (their faces go through the
    network together, ``batch_size`` faces per forward); a unit's manifest part is written once its
    last row is through, so smaller values finish units sooner and larger ones batch better. Returns a
    summary dict (also printed).

    ``execution``: ``"fused"``, ``"staged"`` or ``"auto"`` (fused unless ``use_gpu`` or a
    latent-search restorer; the module docstring); fused tasks take ``unit_cpus`` and run
    ``units_per_task`` units each; ``batch_size`` None: 1 on CPU (measured no slower per face, and
    each face's pixels then do not depend on which faces share its forward), 64 with ``use_gpu``.
    The summary's ``step_cpu_seconds`` (:mod:`fsr_core.restore.costs`) is the CPU each step took,
    summed over every task and actor, and ``driver_cpu_seconds`` this process's.

    ``on_progress(event)`` (e.g. MLflow logging in :mod:`pipelines.restore_cli`) is called once with
    ``{"event": "plan", ...}`` (the resolved model, unit counts) before any work, after each finished
    unit with ``{"event": "unit", ...}`` (running totals) and at the end with ``{"event": "done",
    **summary}``.
    """
    import ray

    from pipelines.model_registry import resolve_model

    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    if batch_size is None:  # measured (bench/restore_throughput.py): on CPU one face per forward is no slower
        batch_size = 64 if use_gpu else 1
    if unit_size < 1 or frames_per_batch < 1 or batch_size < 1 or units_per_task < 1:
        raise ValueError(f"unit_size, frames_per_batch, batch_size and units_per_task must be >= 1, got {unit_size}, "
                         f"{frames_per_batch}, {batch_size}, {units_per_task}")
    if write_video and not paste:
        raise ValueError("write_video needs paste=True (the restored video is made of pasted-back frames)")
    say = printer or (lambda text: None)
    started = time.perf_counter()
    input_uri = input_uri.rstrip("/") if storage.is_s3(input_uri) else os.path.abspath(input_uri)
    out = out.rstrip("/") if storage.is_s3(out) else os.path.abspath(out)
    if (out + "/").startswith(input_uri.rstrip("/") + "/") or (input_uri + "/").startswith(out.rstrip("/") + "/"):
        raise ValueError(f"the output {out} and the archive {input_uri} overlap: a re-run would list the outputs "
                         "as inputs (and inputs are never to be written); choose an output outside the archive")

    requested = resolve_model(model, tracking_uri=tracking_uri)
    if settings.input_size is None:
        settings = dataclasses.replace(settings, input_size=requested.input_size or 16)
    settings_plan = {"input": input_uri, "settings": dataclasses.asdict(settings), "unit_size": unit_size,
                     "paste_back": paste, "write_video": write_video, "feather": feather,
                     "restorer_inputs": dict(restorer_inputs) if restorer_inputs else None}
    plan = _existing_plan(out, settings_plan)
    ref = requested if plan is None else resolve_model(plan["model_uri"], tracking_uri=tracking_uri)
    if loader is not None or ref.kind == "latent_search":  # before any work, not once per unit
        _check_restorer(ref, loader or _load_restorer)
    if plan is not None:
        if requested.uri != ref.uri:
            say(f"note: {model} now resolves to {requested.uri}; resuming with {ref.uri}, the plan's version")
    else:
        probe = ray.remote(plan_video_chunks).options(num_cpus=detect_cpus)

        def probe_all(uris: list[str]) -> dict[str, list]:
            return dict(zip(uris, ray.get([probe.remote(uri, settings) for uri in uris])))

        counts = write_plan_units(out, iter_archive(input_uri), unit_size=unit_size, probe=probe_all)
        if not counts["files"]:
            raise FileNotFoundError(f"no images or videos under {input_uri}")
        plan = {**settings_plan, "model_uri": ref.uri, "model_requested": model, **counts}
        storage.write_bytes(storage.join(out, PLAN_FILE), json.dumps(plan, indent=1, sort_keys=True).encode())
    n_units = int(plan["units"])
    model_info = {"name": ref.name, "version": ref.version, "uri": ref.uri}

    done = {info.uri.rsplit("/", 1)[-1] for info in storage.list_files(storage.join(out, MANIFEST_FOLDER),
                                                                       suffix=".parquet")}
    done_units = frozenset(k for k in (_part_unit(name) for name in done) if k is not None and k < n_units)
    todo = n_units - len(done_units)
    say(f"restore: {plan['files']} file(s) in {n_units} unit(s) from {input_uri} with {ref.uri}; "
        f"{len(done_units)} already done, {todo} to run")
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    progress = on_progress or (lambda event: None)
    progress({"event": "plan", "model_uri": ref.uri, "model_name": ref.name, "model_version": ref.version,
              "files": plan["files"], "units": n_units, "units_todo": todo, "units_reused": len(done_units)})

    totals = {"faces": 0, "frames": 0, "finished": 0}
    retry: list[int] = []
    failed: dict[int, str] = {}
    reasons: Counter = Counter()
    ray_started = time.perf_counter()
    driver_cpu = time.process_time()
    step_costs = StepClock()  # every step's CPU seconds, wherever it ran (rows carry them here)

    def unit_done(unit: int, rows: list[dict[str, Any]]) -> None:
        transient = sorted({r["relative_path"] for r in rows if r.get("reason") in RETRY_REASONS})
        if transient:  # not the files' fault: no part, so the next run redoes the unit
            retry.append(unit)
            say(f"  unit {unit}: read error(s) in {', '.join(map(manifest_text, transient))}; left for the next run")
            return
        rows.sort(key=lambda r: (r["relative_path"], -1 if r["frame_index"] is None else r["frame_index"],
                                 -1 if r.get("face_index") is None else r["face_index"], r["status"]))
        with step_costs("manifest"):
            _write_part(join_under(out, f"{MANIFEST_FOLDER}/{part_name(unit)}"), rows)  # last: marks the unit done
        totals["finished"] += 1
        restored = sum(r["status"] == "restored" for r in rows)
        totals["faces"] += restored
        totals["frames"] += len({(r["source_uri"], r["frame_index"]) for r in rows if r["status"] == "restored"})
        reasons.update(r["reason"] for r in rows if r["status"] == "quarantined")
        elapsed = time.perf_counter() - ray_started
        if on_progress is None:  # with a progress callback, that draws the progress
            say(f"  unit {unit}: {restored} face(s); {totals['finished']}/{todo} unit(s), {totals['faces']} face(s), "
                f"{totals['faces'] / max(elapsed, 1e-9):.1f} faces/s")
        progress({"event": "unit", "unit": unit, "units_finished": totals["finished"], "units_todo": todo,
                  "faces": totals["faces"], "frames": totals["frames"], "quarantined": sum(reasons.values()),
                  "seconds": elapsed, "faces_per_second": totals["faces"] / max(elapsed, 1e-9)})
        if kill_after and totals["finished"] >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # test-only crash hook (KILL_ENV)

    def chunk_done(unit: int, rows: list[dict[str, Any]] | Exception) -> None:
        if isinstance(rows, Exception):
            failed[unit] = f"video chunk: {type(rows).__name__}: {rows}"[:2000]
            say(f"  unit {unit}: failed: {failed[unit]}")
        else:
            unit_done(unit, rows)

    if todo:
        fused = execution == "fused" or (execution == "auto" and not use_gpu and ref.kind != "latent_search")
        chains = VideoChains(out, done_units, settings=settings, paste=paste, write_video=write_video,
                              feather=feather, num_cpus=write_cpus)
        blocks = todo
        if fused:  # a task per block: a few units each (Ray's cost per task), yet at least a task per CPU
            slots = max(1, int(ray.cluster_resources().get("CPU", 1) // max(unit_cpus, 1e-3)))
            blocks = min(todo, max(-(-todo // units_per_task), slots))
        ds = plan_dataset(out, plan, skip=done_units, num_cpus=unit_cpus if fused else detect_cpus,
                          blocks=min(blocks, MAX_UNIT_BLOCKS))
        detect_kwargs = {"settings": settings, "keep_frames": paste}
        restorer_kwargs = {"model_ref": ref, "loader": loader or _load_restorer, "device": "cuda" if use_gpu else "cpu",
                           "input_size": settings.input_size, "batch_size": batch_size}
        write_kwargs = {"out": out, "model": model_info, "input_size": settings.input_size, "paste": paste,
                        "feather": feather}
        if fused:
            ds = ds.flat_map(restore_unit, fn_kwargs={"detect": detect_kwargs, "restorer": restorer_kwargs,
                                                      "write": write_kwargs, "frames_per_batch": frames_per_batch},
                             num_cpus=unit_cpus, num_gpus=1 if use_gpu else 0)
        else:
            ds = ds.flat_map(detect_unit, fn_kwargs=detect_kwargs, num_cpus=detect_cpus)
            ds = map_restorer(ds, ArchiveRestorer, fn_kwargs=restorer_kwargs, kind=ref.kind, num_actors=num_actors,
                              num_cpus=actor_cpus, use_gpu=use_gpu, batch_size=frames_per_batch)
            ds = ds.map_batches(write_outputs, fn_kwargs=write_kwargs, num_cpus=write_cpus, batch_size=None,
                                batch_format="numpy")  # the actors' blocks
        pending: dict[int, dict[str, Any]] = {}
        for row in ds.iter_rows():
            unit = int(row["unit"])
            step_costs.add(row["costs_json"])
            if unit in failed:
                continue
            if row["kind"] == "failed":  # an unforeseen error, twice: no part, the next run retries the unit
                failed[unit] = json.loads(row["manifest_json"])[0]["error"]
                pending.pop(unit, None)
                say(f"  unit {unit}: failed: {failed[unit]}")
                continue
            state = pending.setdefault(unit, {"rows": [], "seen": 0, "expected": None})
            if row["kind"] == "end":
                state.update(expected=int(row["count"]), sampled=json.loads(row["sampled_json"]),
                             fps=float(row["fps"]), item=json.loads(row["item_json"]) if row["item_json"] else None)
            else:
                state["seen"] += 1
                state["rows"].extend(json.loads(row["manifest_json"]))
            if state["expected"] is not None and state["seen"] >= state["expected"]:
                state = pending.pop(unit)
                if state["item"] is not None:  # a video chunk: the ordered pass, then its part
                    chains.submit(unit, state["rows"], state["sampled"], state["fps"], model_info, state["item"])
                else:
                    unit_done(unit, state["rows"])
            for unit, rows in chains.poll(timeout=0):
                chunk_done(unit, rows)
        for unit, rows in chains.poll(timeout=None):
            chunk_done(unit, rows)
        for unit in sorted(chains.waiting):  # parked behind a failed chunk of the same video
            if unit - 1 not in failed:
                raise RuntimeError(f"video chunk of unit {unit} never submitted (its predecessor did not fail)")
            failed[unit] = f"the previous chunk of this video (unit {unit - 1}) failed"
            say(f"  unit {unit}: failed: {failed[unit]}")
        if totals["finished"] == todo:
            storage.delete(storage.join(out, WORK_FOLDER), recursive=True)  # chunk videos and states: all used
    faces, frames = totals["faces"], totals["frames"]
    ray_seconds = time.perf_counter() - ray_started
    summary = {"input": input_uri, "output": out, "model_uri": ref.uri, "model_name": ref.name,
               "model_version": ref.version, "units": n_units,
               "units_run": todo, "units_reused": len(done_units), "faces": faces, "frames": frames,
               "quarantined": dict(sorted(reasons.items())), "seconds": time.perf_counter() - started,
               "faces_per_second": faces / ray_seconds if todo and ray_seconds > 0 else 0.0,
               "units_to_retry": sorted(retry),
               "units_failed": [{"unit": unit, "error": error} for unit, error in sorted(failed.items())],
               "lr_consistency": consistency_summary(out),
               "step_cpu_seconds": {k: round(v, 4) for k, v in sorted(step_costs.seconds.items())},
               "driver_cpu_seconds": round(time.process_time() - driver_cpu, 4)}
    say(f"restore: {faces} face(s) restored in {todo} unit(s) ({summary['faces_per_second']:.1f} faces/s), "
        f"quarantined {summary['quarantined']}; manifest: {storage.join(out, MANIFEST_FOLDER)}")
    if summary["lr_consistency"]:
        fidelity = summary["lr_consistency"]
        say(f"restore: lr_consistency (input vs restored degraded back, PSNR-Y) mean {fidelity['mean']:.1f} dB, "
            f"5% {fidelity['p05']:.1f}, median {fidelity['p50']:.1f}, 95% {fidelity['p95']:.1f}")
    if retry:
        say(f"restore: {len(retry)} unit(s) hit read errors and are not done: run the same command again")
    if failed:
        say(f"restore: {len(failed)} unit(s) failed (an error that is not a bad file, twice); every other unit is "
            f"done; a re-run retries only these: "
            + "; ".join(f"unit {unit}: {error}" for unit, error in sorted(failed.items())[:5])
            + (" ..." if len(failed) > 5 else ""))
    progress({"event": "done", **summary})
    return summary


def _check_restorer(ref: Any, loader: Callable) -> None:
    """Load the restorer once with ``loader`` (its errors: a pool that does not fit, an identity the pool
    lacks) and refuse one whose card names per-face conditions that no fixed value supplies."""
    from fsr_core.restore.restorer import FixedConditions

    restorer, _ = loader(ref, device="cpu")
    fixed = restorer.fixed if isinstance(restorer, FixedConditions) else {}
    missing = [name for name in restorer.card.conditions if name not in fixed]
    if missing:
        raise ValueError(f"{ref.uri} reads each face's {', '.join(missing)} (a per-face condition of its card); an "
                         f"archive has none: give it with fsr restore --{missing[0]} NAME")


def _load_restorer(model_ref: Any, *, device: str = "cpu"):
    from pipelines.model_registry import load_restorer

    return load_restorer(model_ref, device=device)
