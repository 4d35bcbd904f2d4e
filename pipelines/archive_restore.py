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
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fsr_core import storage
from fsr_core.data.shards import write_parquet
from fsr_core.metrics.psnr_ssim import lr_consistency
from fsr_core.restore.archive import (
    ArchiveSettings,
    FrameRecord,
    Quarantine,
    iter_file_records,
    join_under,
    write_restored,
)
from fsr_core.restore.batch import map_restorer
from fsr_core.restore.costs import StepClock, merge_costs
from fsr_core.restore.video_chunks import WORK_FOLDER
from pipelines.archive_chains import VideoChains
from pipelines.archive_plan import iter_archive, list_archive, plan_dataset, write_plan_units

__all__ = [
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
#: test-only: ``name=N,...``: the first N attempts at a file whose relative path ends with ``name`` raise
FAIL_ENV = "FSR_TEST_FAIL_FILES"


def _injected_failure(item: Mapping[str, Any], attempt: int) -> None:
    for spec in filter(None, os.environ.get(FAIL_ENV, "").split(",")):
        name, _, times = spec.partition("=")
        if str(item.get("relative", "")).endswith(name) and attempt <= int(times or 1):
            raise RuntimeError(f"injected failure {attempt} ({FAIL_ENV})")
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


# ---------------------------------------------------------------------------- Ray Data functions
def _row(unit: int, kind: str, item: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    row = {"unit": unit, "kind": kind, "source_uri": item.get("uri", ""), "relative": item.get("relative", ""),
           "safe": item.get("safe", ""), "media": item.get("media", ""), "frame_index": -1, "faces_json": "[]",
           "crops": b"", "frame": b"", "height": 0, "width": 0, "reason": "", "detail": "", "count": 0,
           "fps": 0.0, "sampled_json": "[]", "item_json": "", "detected_on": "", "costs_json": "{}"}
    row.update(values)
    return row


def detect_unit(row: Mapping[str, Any], *, settings: ArchiveSettings, keep_frames: bool) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map``: the rows of one unit (see the module docstring), streamed.

    Video chunks: only frames with faces become rows (the ordered pass re-decodes the chunk); the
    end row lists every sampled frame index (``sampled_json``) and the stream's rate (``fps``). A
    file-level quarantine of a chunk after the first carries the chunk's first frame index, so each
    chunk's record has a key of its own."""
    unit = int(row["unit"])
    state = {"count": 0, "sampled": [], "fps": 0.0}
    clock = StepClock()
    for item in json.loads(row["items"]):
        saved = {**state, "sampled": list(state["sampled"])}
        for attempt in (1, 2):  # an unforeseen error: the file once more, then the unit is failed
            emitted = 0
            state.update(saved, sampled=list(saved["sampled"]))
            try:
                _injected_failure(item, attempt)
                for out in _item_rows(unit, item, state, settings=settings, keep_frames=keep_frames, clock=clock):
                    emitted += 1
                    yield out
                break
            except Exception as exc:  # noqa: BLE001 - any error of one unit must not stop the others
                if emitted or attempt == 2:
                    error = f"{item.get('relative', '?')!r}: {type(exc).__name__}: {exc}"[:2000]
                    yield _row(unit, "failed", item, detail=error)
                    return  # no end row: the driver records the unit as failed, a re-run retries it
    items = json.loads(row["items"])
    video_item = items[0] if len(items) == 1 and items[0]["media"] == "video" and "quarantine" not in items[0] else None
    yield _row(unit, "end", {}, count=state["count"], sampled_json=json.dumps(state["sampled"]), fps=state["fps"],
               item_json=json.dumps(video_item) if video_item else "", costs_json=clock.to_json())


def _item_rows(unit: int, item: Mapping[str, Any], state: dict[str, Any], *, settings: ArchiveSettings,
               keep_frames: bool, clock: StepClock) -> Iterator[dict[str, Any]]:
    """The rows of one file of a unit (:func:`detect_unit`); ``state`` carries the unit's row count,
    a video's sampled frame indices and rate; ``clock`` the unit's step costs."""
    if "quarantine" in item:
        state["count"] += 1
        yield _row(unit, "quarantine", item, reason=item["quarantine"][0], detail=item["quarantine"][1])
        return
    video = item["media"] == "video"
    chosen = dataclasses.replace(settings, keep_faceless_frames=True) if video else settings
    for record in iter_file_records(item["uri"], item["media"], chosen, start_s=item.get("start_s"),
                                    end_s=item.get("end_s"), report_no_face=not video, clock=clock):
        if isinstance(record, Quarantine):
            state["count"] += 1
            frame_index = record.frame_index
            if item.get("chunk"):  # at least the chunk's first frame: a key of its own per chunk
                frame_index = max(int(item["first_frame"]), -1 if frame_index is None else int(frame_index))
            yield _row(unit, "quarantine", item, reason=record.reason, detail=record.detail,
                       frame_index=-1 if frame_index is None else int(frame_index))
            continue
        assert isinstance(record, FrameRecord)
        if video and item.get("end_frame") is not None and record.frame_index >= item["end_frame"]:
            state["count"] += 1  # a variable-rate video the header did not reveal: indices would overlap the next chunk's
            yield _row(unit, "quarantine", item, reason="variable_frame_rate", frame_index=int(record.frame_index),
                       detail=f"frame index {record.frame_index} at {record.time_s:.3f} s reaches the next chunk's "
                              f"first frame {item['end_frame']}; the rest of this chunk is not restored: restore "
                              "this video with --chunk-seconds 0")
            return
        if video:
            state["sampled"].append(int(record.frame_index))
            state["fps"] = state["fps"] or float(record.fps or 0.0)
            if not record.faces:
                continue
        state["count"] += 1
        height, width = record.rgb.shape[:2]
        yield _row(unit, "frame", item,
                   frame_index=-1 if record.frame_index is None else int(record.frame_index),
                   faces_json=json.dumps([dataclasses.asdict(f) for f in record.faces]),
                   crops=np.ascontiguousarray(record.crops).tobytes(),
                   frame=np.ascontiguousarray(record.rgb).tobytes() if keep_frames and not video else b"",
                   height=height, width=width, detected_on=_node_id())


class ArchiveRestorer:
    """Ray Data callable class (one per actor, or per task worker): restore every face crop of a
    batch of frame rows at once.

    Adds ``restored`` (raw uint8 ``[k,S*s,S*s,3]`` bytes per row), ``scale`` and
    ``consistency_json`` (each face's :func:`~fsr_core.metrics.psnr_ssim.lr_consistency`), and the
    forward and consistency CPU seconds to the first row's ``costs_json``; other rows pass through.
    """

    def __init__(self, *, model_ref: Any, loader: Callable, device: str = "cpu", input_size: int,
                 batch_size: int = 64) -> None:
        self.restorer, info = loader(model_ref, device=device)
        self.scale = int(self.restorer.card.scale)
        self.node = _node_id()
        self.size = int(input_size)
        self.batch_size = batch_size

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        s = self.size
        counts, crops = [], []
        for data in batch["crops"]:
            lr = np.frombuffer(data, np.uint8).reshape(-1, s, s, 3) if len(data) else np.zeros((0, s, s, 3), np.uint8)
            counts.append(len(lr))
            crops.append(lr)
        lr = np.concatenate(crops) if crops else np.zeros((0, s, s, 3), np.uint8)
        clock = StepClock()
        with clock("forward"):
            sr = self.restorer.restore(lr, batch_size=self.batch_size) if len(lr) else lr
        with clock("consistency"):
            consistency = lr_consistency(lr, sr) if len(lr) else np.zeros(0)
        out = dict(batch)
        if len(counts):  # the batch's costs ride on its first row
            costs = np.array(batch["costs_json"], dtype=object)
            costs[0] = merge_costs(str(costs[0]), clock.to_json())
            out["costs_json"] = costs
        restored, scores, start = [], [], 0
        for n in counts:
            restored.append(np.ascontiguousarray(sr[start:start + n]).tobytes())
            scores.append(json.dumps([round(float(v), 4) for v in consistency[start:start + n]]))
            start += n
        out["restored"] = np.array(restored, dtype=object)
        out["consistency_json"] = np.array(scores, dtype=object)
        out["scale"] = np.full(len(counts), self.scale, np.int64)
        out["restored_on"] = np.full(len(counts), self.node, dtype=object)
        return out


_TASK_RESTORERS: dict[tuple, ArchiveRestorer] = {}


def restore_unit(row: Mapping[str, Any], *, detect: Mapping[str, Any], restorer: Mapping[str, Any],
                 write: Mapping[str, Any], frames_per_batch: int) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map`` of the fused execution: one task does a whole unit, :func:`detect_unit`,
    then :class:`ArchiveRestorer` on ``frames_per_batch`` rows at a time, then :func:`write_outputs`,
    and yields the rows :func:`write_outputs` returns (what the staged execution's last step gives
    the driver), so crops and frames never leave the process. The restorer is loaded once per
    worker process (kept for the next unit; keyed by the model version and settings).
    ``detect``/``restorer``/``write``: those functions' keyword arguments."""
    key = (getattr(restorer["model_ref"], "uri", repr(restorer["model_ref"])), restorer["device"],
           restorer["input_size"], restorer["batch_size"], restorer["loader"])
    model = _TASK_RESTORERS.get(key)
    clock = StepClock()
    if model is None:
        _TASK_RESTORERS.clear()  # one model per process
        with clock("load"):
            model = _TASK_RESTORERS[key] = ArchiveRestorer(**restorer)
            detect["settings"].face_detector()
    pending: list[dict[str, Any]] = []

    def flush() -> Iterator[dict[str, Any]]:
        batch = {name: np.array([r[name] for r in pending], dtype=object) for name in pending[0]}
        batch["costs_json"][0] = merge_costs(str(batch["costs_json"][0]), clock.take())
        pending.clear()
        out = write_outputs(model(batch), **write)
        for i in range(len(out["unit"])):
            yield {"unit": int(out["unit"][i]), "kind": str(out["kind"][i]), "manifest_json": str(out["manifest_json"][i]),
                   "count": int(out["count"][i]), "fps": float(out["fps"][i]), "sampled_json": str(out["sampled_json"][i]),
                   "item_json": str(out["item_json"][i]), "costs_json": str(out["costs_json"][i])}

    for detected in detect_unit(row, **detect):
        pending.append(detected)
        if len(pending) >= frames_per_batch:
            yield from flush()
    if pending:
        yield from flush()


def _node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def write_outputs(batch: Mapping[str, np.ndarray], *, out: str, model: Mapping[str, Any], input_size: int,
                  paste: bool, feather: float) -> dict[str, Any]:
    """Ray Data batch function: write each frame row's crops (and, for images, the pasted-back frame);
    return manifest rows. Video frames are pasted in the ordered pass
    (:func:`~fsr_core.restore.video_chunks.finish_video_chunk`).

    Returns ``unit``, ``kind``, ``manifest_json`` (JSON list of manifest rows), ``count``, ``fps``,
    ``sampled_json``, ``item_json`` and ``costs_json`` (the row's step CPU seconds so far, paste,
    encode and write added) per input row.
    """
    units, kinds, manifests, counts, costs = [], [], [], [], []
    clock = StepClock()
    base = {"model_name": model["name"], "model_version": model["version"], "model_uri": model["uri"]}
    for i in range(len(batch["unit"])):
        kind = str(batch["kind"][i])
        rows: list[dict[str, Any]] = []
        common = {"unit": int(batch["unit"][i]), "source_uri": str(batch["source_uri"][i]),
                  "relative_path": str(batch["relative"][i]), "media": str(batch["media"][i]),
                  "frame_index": None if int(batch["frame_index"][i]) < 0 else int(batch["frame_index"][i]), **base}
        if kind == "quarantine":
            rows.append({**common, "status": "quarantined", "reason": str(batch["reason"][i]),
                         "detail": str(batch["detail"][i])})
        elif kind == "failed":
            rows.append({"error": str(batch["detail"][i])})
        elif kind == "frame":
            faces = json.loads(str(batch["faces_json"][i]))
            scale = int(batch["scale"][i])
            side = input_size * scale
            data = batch["restored"][i]
            restored = (np.frombuffer(data, np.uint8).reshape(-1, side, side, 3) if len(data)
                        else np.zeros((0, side, side, 3), np.uint8))
            consistency = json.loads(str(batch["consistency_json"][i]))
            frame = None
            if paste and len(batch["frame"][i]):
                frame = np.frombuffer(batch["frame"][i], np.uint8).reshape(int(batch["height"][i]),
                                                                          int(batch["width"][i]), 3)
            frame_uri, uris = write_restored(out, str(batch["safe"][i]), common["frame_index"], restored, faces,
                                             scale=scale, frame=frame, feather=feather, clock=clock)
            for face, uri, fidelity in zip(faces, uris, consistency):
                rows.append({**common, "face_index": face["index"], "track_id": face["track_id"], "box": face["box"],
                             "landmarks": face["landmarks"], "score": face["score"], "region": face["region"],
                             "matrix": face["matrix"], "output_uri": uri, "frame_output_uri": frame_uri,
                             "lr_consistency": fidelity, "status": "restored", "scale": scale,
                             "detected_on": str(batch["detected_on"][i]) or None,
                             "restored_on": (str(batch["restored_on"][i]) or None) if "restored_on" in batch else None})
        costs.append(merge_costs(str(batch["costs_json"][i]), clock.take()))
        units.append(int(batch["unit"][i]))
        kinds.append(kind)
        manifests.append(json.dumps(rows))
        counts.append(int(batch["count"][i]))
    return {"unit": np.array(units, np.int64), "kind": np.array(kinds, dtype=object),
            "manifest_json": np.array(manifests, dtype=object), "count": np.array(counts, np.int64),
            "fps": np.asarray(batch["fps"], np.float64), "sampled_json": np.asarray(batch["sampled_json"], dtype=object),
            "item_json": np.asarray(batch["item_json"], dtype=object), "costs_json": np.array(costs, dtype=object)}


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
    printer: Callable[[str], None] | None = print,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Restore every face of an archive into ``out`` (see the module docstring); resumable.

    ``model``: ``models:/NAME@ALIAS`` (or ``/VERSION``), or ``bicubic``, resolved once to a concrete
    version that every manifest row names; a resumed run keeps the version recorded in
    ``out/_restore.json``. ``settings.input_size`` None: the restorer card's input size.
    ``loader(model_ref, device=) -> (restorer, info)`` defaults to
    :func:`pipelines.model_registry.load_restorer`. ``frames_per_batch``: images / frames (rows) per
    actor call (their faces go through the network together, ``batch_size`` faces per forward); a
    unit's manifest part is written once its last row is through, so smaller values finish units
    sooner and larger ones batch better. Returns a summary dict (also printed).

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
                     "paste_back": paste, "write_video": write_video, "feather": feather}
    plan = _existing_plan(out, settings_plan)
    if plan is not None:
        ref = resolve_model(plan["model_uri"], tracking_uri=tracking_uri)
        if requested.uri != ref.uri:
            say(f"note: {model} now resolves to {requested.uri}; resuming with {ref.uri}, the plan's version")
    else:
        ref = requested
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


def _load_restorer(model_ref: Any, *, device: str = "cpu"):
    from pipelines.model_registry import load_restorer

    return load_restorer(model_ref, device=device)
