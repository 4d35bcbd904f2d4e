"""``fsr restore``: mass offline restoration of an archive of photos and videos, on Ray Data.

::

    driver   list the archive (folder or s3:// prefix, nested): images + videos, sorted by relative path
             unsafe names -> quarantined (unsafe_path) at listing; units of unit_size images (a video is
             a unit of its own); the plan (units, settings, concrete model version) -> <out>/_restore.json
             skip units whose manifest/part-<k>.parquet exists (resume)
    Ray Data from_items(one row per unit)
             .flat_map(detect_unit)          tasks, detect_cpus: read -> decode (images) or PyAV stream
                                             (videos, frame by frame) -> detect -> track -> align;
                                             one row per image / sampled frame (all its crops), one per
                                             quarantined file, and an "end" row with the unit's count
             .map_batches(ArchiveRestorer)   actor pool (ActorPoolStrategy(size=num_actors), actor_cpus,
                                             1 GPU each with use_gpu): the model, loaded once per actor
                                             from the version resolved once in the driver
             .map_batches(write_outputs)     tasks, write_cpus: crops/<safe>/<tag>_face<k>.png, paste-back
                                             frames/<safe>/<tag>.png (images with faces; for videos every
                                             sampled frame, faceless ones unchanged, as the restored
                                             video needs them); returns the manifest rows
    driver   collects rows per unit; a unit is complete when its end row and all its rows arrived:
             (videos) encode videos/<safe>.mp4 from the unit's frames, then write
             manifest/part-<k>.parquet atomically, last: a part means the unit's outputs are all there.

Exactly once: every output is addressed by (input file, frame index, face index) and written
atomically, so a re-run overwrites, never adds; a unit's manifest part is written after all of its
outputs and a re-run only runs the units without a part. Every listed file appears in exactly one
part (as ``restored`` rows, one per face, or ``quarantined`` rows with the reason).

Memory: files are read one at a time inside a unit and video frames are streamed (decoded, detected
and handed on one at a time; Ray Data's streaming executor bounds what is in flight), so memory
does not grow with the archive's size or a video's length. The driver keeps only the small manifest
rows of unfinished units.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import tempfile
import time
from collections import Counter
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fsr_core import storage
from fsr_core.data.codec import decode_png, encode_png
from fsr_core.data.shards import write_parquet
from fsr_core.restore.archive import (
    ArchiveSettings,
    FrameRecord,
    Quarantine,
    UnsafePath,
    frame_tag,
    iter_file_records,
    join_under,
    media_kind,
    paste_back,
    safe_relative_path,
)
from fsr_core.restore.batch import super_resolve

__all__ = [
    "MANIFEST_SCHEMA",
    "ArchiveRestorer",
    "detect_unit",
    "list_archive",
    "read_manifest",
    "restore_archive",
    "write_outputs",
]

PLAN_FILE = "_restore.json"
MANIFEST_FOLDER = "manifest"
KILL_ENV = "FSR_TEST_KILL_AFTER_UNITS"  # test-only: SIGKILL the driver after this many parts

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
    pa.field("frame_output_uri", pa.string()),  # the pasted-back frame
    pa.field("video_output_uri", pa.string()),  # the restored video
    pa.field("status", pa.string(), nullable=False),  # restored | quarantined
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
])


# ---------------------------------------------------------------------------- listing and plan
def list_archive(root: str) -> list[dict[str, Any]]:
    """Every image and video under ``root`` (sorted by relative path) as ``{uri, relative, media, safe}``,
    or with ``quarantine: [reason, detail]`` (``unsafe_path``) instead of ``safe``."""
    items = []
    for info in storage.list_files(root):
        if storage.is_s3(info.uri):
            relative = info.uri[len(root.rstrip("/")) + 1:]
        else:
            relative = os.path.relpath(info.uri, root).replace(os.sep, "/")
        media = media_kind(relative)
        if media is None:
            continue
        item: dict[str, Any] = {"uri": info.uri, "relative": relative, "media": media}
        try:
            item["safe"] = safe_relative_path(relative)
        except UnsafePath as exc:
            item["quarantine"] = ["unsafe_path", str(exc)]
        items.append(item)
    return sorted(items, key=lambda item: item["relative"])


def _units(items: list[dict[str, Any]], unit_size: int) -> list[list[dict[str, Any]]]:
    units: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    for item in items:
        if item["media"] == "video" and "quarantine" not in item:
            units.append([item])  # a video is a unit of its own
            continue
        batch.append(item)
        if len(batch) == unit_size:
            units.append(batch)
            batch = []
    if batch:
        units.append(batch)
    return units


def part_name(unit: int) -> str:
    return f"part-{unit:05d}.parquet"


# ---------------------------------------------------------------------------- Ray Data functions
def _row(unit: int, kind: str, item: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    row = {"unit": unit, "kind": kind, "source_uri": item.get("uri", ""), "relative": item.get("relative", ""),
           "safe": item.get("safe", ""), "media": item.get("media", ""), "frame_index": -1, "faces_json": "[]",
           "crops": b"", "frame": b"", "height": 0, "width": 0, "reason": "", "detail": "", "count": 0,
           "fps": 0.0}
    row.update(values)
    return row


def detect_unit(row: Mapping[str, Any], *, settings: ArchiveSettings, keep_frames: bool) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map``: the rows of one unit (see the module docstring), streamed."""
    unit = int(row["unit"])
    count = 0
    for item in json.loads(row["items"]):
        if "quarantine" in item:
            count += 1
            yield _row(unit, "quarantine", item, reason=item["quarantine"][0], detail=item["quarantine"][1])
            continue
        for record in iter_file_records(item["uri"], item["media"], settings):
            count += 1
            if isinstance(record, Quarantine):
                yield _row(unit, "quarantine", item, reason=record.reason, detail=record.detail,
                           frame_index=-1 if record.frame_index is None else int(record.frame_index))
                continue
            assert isinstance(record, FrameRecord)
            height, width = record.rgb.shape[:2]
            yield _row(unit, "frame", item,
                       frame_index=-1 if record.frame_index is None else int(record.frame_index),
                       faces_json=json.dumps([dataclasses.asdict(f) for f in record.faces]),
                       crops=np.ascontiguousarray(record.crops).tobytes(),
                       frame=np.ascontiguousarray(record.rgb).tobytes() if keep_frames else b"",
                       height=height, width=width, fps=float(record.fps or 0.0))
    yield _row(unit, "end", {}, count=count)


class ArchiveRestorer:
    """Ray Data callable class (one per actor): restore every face crop of a batch of frame rows at once.

    Adds ``restored`` (raw uint8 ``[k,S*s,S*s,3]`` bytes per row) and ``scale``; other rows pass through.
    """

    def __init__(self, *, model_ref: Any, loader: Callable, device: str = "cpu", input_size: int,
                 batch_size: int = 64) -> None:
        self.network, info = loader(model_ref, device=device)
        self.network.eval()
        self.scale = int(info.get("scale") or getattr(self.network, "scale", 1))
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
        sr = super_resolve(self.network, lr, batch_size=self.batch_size) if len(lr) else lr
        out = dict(batch)
        restored, start = [], 0
        for n in counts:
            restored.append(np.ascontiguousarray(sr[start:start + n]).tobytes())
            start += n
        out["restored"] = np.array(restored, dtype=object)
        out["scale"] = np.full(len(counts), self.scale, np.int64)
        return out


def write_outputs(batch: Mapping[str, np.ndarray], *, out: str, model: Mapping[str, Any], input_size: int,
                  paste: bool, feather: float) -> dict[str, Any]:
    """Ray Data batch function: write each frame row's crops (and pasted-back frame); return manifest rows.

    Returns ``unit``, ``kind``, ``manifest_json`` (JSON list of manifest rows), ``count``,
    ``frame_uri`` and ``fps`` (for the video encoder) per input row.
    """
    units, kinds, manifests, counts, frame_uris, fps = [], [], [], [], [], []
    base = {"model_name": model["name"], "model_version": model["version"], "model_uri": model["uri"]}
    for i in range(len(batch["unit"])):
        kind = str(batch["kind"][i])
        rows: list[dict[str, Any]] = []
        frame_uri = ""
        common = {"unit": int(batch["unit"][i]), "source_uri": str(batch["source_uri"][i]),
                  "relative_path": str(batch["relative"][i]), "media": str(batch["media"][i]),
                  "frame_index": None if int(batch["frame_index"][i]) < 0 else int(batch["frame_index"][i]), **base}
        if kind == "quarantine":
            rows.append({**common, "status": "quarantined", "reason": str(batch["reason"][i]),
                         "detail": str(batch["detail"][i])})
        elif kind == "frame":
            faces = json.loads(str(batch["faces_json"][i]))
            scale = int(batch["scale"][i])
            side = input_size * scale
            data = batch["restored"][i]
            restored = (np.frombuffer(data, np.uint8).reshape(-1, side, side, 3) if len(data)
                        else np.zeros((0, side, side, 3), np.uint8))
            safe = str(batch["safe"][i])
            tag = frame_tag(common["frame_index"])
            if paste and len(batch["frame"][i]):
                frame = np.frombuffer(batch["frame"][i], np.uint8).reshape(int(batch["height"][i]),
                                                                          int(batch["width"][i]), 3)
                pasted, _ = paste_back(frame, restored, [f["matrix"] for f in faces], scale=scale, feather=feather)
                frame_uri = join_under(out, f"frames/{safe}/{tag}.png")
                storage.write_bytes(frame_uri, encode_png(pasted, compression=1))
            for face, crop in zip(faces, restored):
                uri = join_under(out, f"crops/{safe}/{tag}_face{face['index']:02d}.png")
                storage.write_bytes(uri, encode_png(crop))
                rows.append({**common, "face_index": face["index"], "track_id": face["track_id"], "box": face["box"],
                             "landmarks": face["landmarks"], "score": face["score"], "region": face["region"],
                             "matrix": face["matrix"], "output_uri": uri, "frame_output_uri": frame_uri or None,
                             "status": "restored"})
        units.append(int(batch["unit"][i]))
        kinds.append(kind)
        manifests.append(json.dumps(rows))
        counts.append(int(batch["count"][i]))
        frame_uris.append(frame_uri)
        fps.append(float(batch["fps"][i]))
    return {"unit": np.array(units, np.int64), "kind": np.array(kinds, dtype=object),
            "manifest_json": np.array(manifests, dtype=object), "count": np.array(counts, np.int64),
            "frame_uri": np.array(frame_uris, dtype=object), "fps": np.array(fps, np.float64),
            "frame_index": np.asarray(batch["frame_index"], np.int64),
            "safe": np.asarray(batch["safe"], dtype=object)}


# ---------------------------------------------------------------------------- driver-side steps
def encode_video(frame_uris: list[str], uri: str, *, fps: float) -> None:
    """Encode PNG frames (read one at a time) into an H.264 (or MPEG-4) video at ``uri``, atomically."""
    import av
    from fractions import Fraction

    with tempfile.TemporaryDirectory(prefix="fsr-encode-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        container = av.open(path, mode="w")
        try:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = None
            for frame_uri in frame_uris:
                rgb = decode_png(storage.read_bytes(frame_uri))
                h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2  # yuv420p needs even sides
                rgb = np.ascontiguousarray(rgb[:h, :w])
                if stream is None:
                    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    container.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)
        finally:
            container.close()
        storage.upload_file(path, uri)


def _write_part(uri: str, rows: list[dict[str, Any]]) -> None:
    columns = {field.name: [row.get(field.name) for row in rows] for field in MANIFEST_SCHEMA}
    write_parquet(uri, pa.table(columns, schema=MANIFEST_SCHEMA))


def read_manifest(out: str) -> pa.Table:
    """The union of all manifest parts of a restore output."""
    parts = [info.uri for info in storage.list_files(storage.join(out, MANIFEST_FOLDER), suffix=".parquet")]
    if not parts:
        return MANIFEST_SCHEMA.empty_table()
    tables = []
    for uri in parts:
        tables.append(pq.read_table(io.BytesIO(storage.read_bytes(uri))).cast(MANIFEST_SCHEMA))
    return pa.concat_tables(tables)


def _plan(out: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Record the plan, or load the recorded one (resume); a different plan is an error."""
    uri = storage.join(out, PLAN_FILE)
    try:
        existing = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        storage.write_bytes(uri, json.dumps(plan, indent=1, sort_keys=True).encode())
        return plan
    for key in ("input", "settings", "unit_size", "paste_back", "write_video", "feather"):
        if existing.get(key) != plan.get(key):
            raise ValueError(f"{out} holds a restore with another {key} ({existing.get(key)!r}, now {plan.get(key)!r});"
                             " write to a new output, or delete it to start over")
    return existing


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
    batch_size: int = 64,
    frames_per_batch: int = 16,
    num_actors: int = 1,
    actor_cpus: float = 0.5,
    detect_cpus: float = 0.5,
    write_cpus: float = 0.25,
    use_gpu: bool = False,
    loader: Callable | None = None,
    printer: Callable[[str], None] | None = print,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Restore every face of an archive into ``out`` (see the module docstring); resumable.

    ``model``: ``models:/NAME@ALIAS`` (or ``/VERSION``), resolved once to a concrete version that every
    manifest row names; a resumed run keeps the version recorded in ``out/_restore.json``.
    ``loader(model_ref, device=) -> (network, info)`` defaults to
    :func:`pipelines.model_registry.load_network`. ``frames_per_batch``: images / frames (rows) per
    actor call (their faces go through the network together, ``batch_size`` faces per forward); a
    unit's manifest part is written once its last row is through, so smaller values finish units
    sooner and larger ones batch better. Returns a summary dict (also printed).

    ``on_progress(event)`` (e.g. MLflow logging in :mod:`pipelines.restore_cli`) is called once with
    ``{"event": "plan", ...}`` (the resolved model, unit counts) before any work, after each finished
    unit with ``{"event": "unit", ...}`` (running totals) and at the end with ``{"event": "done",
    **summary}``.
    """
    import ray

    from pipelines.model_registry import resolve_model

    if unit_size < 1 or frames_per_batch < 1 or batch_size < 1:
        raise ValueError(f"unit_size, frames_per_batch and batch_size must be >= 1, got {unit_size}, "
                         f"{frames_per_batch}, {batch_size}")
    if write_video and not paste:
        raise ValueError("write_video needs paste=True (the restored video is made of pasted-back frames)")
    say = printer or (lambda text: None)
    started = time.perf_counter()
    input_uri = input_uri.rstrip("/") if storage.is_s3(input_uri) else os.path.abspath(input_uri)
    out = out.rstrip("/") if storage.is_s3(out) else os.path.abspath(out)
    if (out + "/").startswith(input_uri.rstrip("/") + "/") or (input_uri + "/").startswith(out.rstrip("/") + "/"):
        raise ValueError(f"the output {out} and the archive {input_uri} overlap: a re-run would list the outputs "
                         "as inputs (and inputs are never to be written); choose an output outside the archive")

    existing_plan = None
    try:
        existing_plan = json.loads(storage.read_bytes(storage.join(out, PLAN_FILE)))
    except FileNotFoundError:
        pass
    if existing_plan is not None:
        ref = resolve_model(existing_plan["model_uri"], tracking_uri=tracking_uri)
        requested = resolve_model(model, tracking_uri=tracking_uri)
        if requested.uri != ref.uri:
            say(f"note: {model} now resolves to {requested.uri}; resuming with {ref.uri}, the plan's version")
        units = existing_plan["units"]
    else:
        ref = resolve_model(model, tracking_uri=tracking_uri)
        items = list_archive(input_uri)
        if not items:
            raise FileNotFoundError(f"no images or videos under {input_uri}")
        units = _units(items, unit_size)
    video_settings = dataclasses.replace(settings, keep_faceless_frames=True) if write_video else settings
    plan = _plan(out, {
        "input": input_uri, "settings": dataclasses.asdict(settings), "unit_size": unit_size, "paste_back": paste,
        "write_video": write_video, "feather": feather, "model_uri": ref.uri, "model_requested": model,
        "units": units,
    })
    units = plan["units"]
    model_info = {"name": ref.name, "version": ref.version, "uri": ref.uri}

    done = {info.uri.rsplit("/", 1)[-1] for info in storage.list_files(storage.join(out, MANIFEST_FOLDER),
                                                                       suffix=".parquet")}
    todo = [k for k in range(len(units)) if part_name(k) not in done]
    say(f"restore: {sum(len(u) for u in units)} file(s) in {len(units)} unit(s) from {input_uri} with {ref.uri}; "
        f"{len(units) - len(todo)} already done, {len(todo)} to run")
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    progress = on_progress or (lambda event: None)
    progress({"event": "plan", "model_uri": ref.uri, "model_name": ref.name, "model_version": ref.version,
              "files": sum(len(u) for u in units), "units": len(units), "units_todo": len(todo),
              "units_reused": len(units) - len(todo)})

    faces = frames = 0
    reasons: Counter = Counter()
    ray_started = time.perf_counter()
    if todo:
        ds = ray.data.from_items([{"unit": k, "items": json.dumps(units[k]), "video": units[k][0]["media"] == "video"}
                                  for k in todo], override_num_blocks=len(todo))
        # Videos keep faceless frames (the restored video needs every sampled frame); images never do.
        ds = ds.flat_map(_detect_dispatch, fn_kwargs={"settings": settings, "video_settings": video_settings,
                                                      "keep_frames": paste}, num_cpus=detect_cpus)
        ds = ds.map_batches(
            ArchiveRestorer,
            fn_constructor_kwargs={"model_ref": ref, "loader": loader or _load_network,
                                   "device": "cuda" if use_gpu else "cpu", "input_size": settings.input_size,
                                   "batch_size": batch_size},
            compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=actor_cpus,
            num_gpus=1 if use_gpu else 0, batch_size=frames_per_batch, batch_format="numpy",
        )
        ds = ds.map_batches(write_outputs, fn_kwargs={"out": out, "model": model_info,
                                                      "input_size": settings.input_size, "paste": paste,
                                                      "feather": feather},
                            num_cpus=write_cpus, batch_size=None, batch_format="numpy")  # the actors' blocks
        pending: dict[int, dict[str, Any]] = {}
        finished = 0
        for row in ds.iter_rows():
            unit = int(row["unit"])
            state = pending.setdefault(unit, {"rows": [], "seen": 0, "expected": None, "video_frames": []})
            if row["kind"] == "end":
                state["expected"] = int(row["count"])
            else:
                state["seen"] += 1
                state["rows"].extend(json.loads(row["manifest_json"]))
                if row["frame_uri"] and int(row["frame_index"]) >= 0:
                    state["video_frames"].append((int(row["frame_index"]), row["frame_uri"], float(row["fps"]),
                                                  row["safe"]))
            if state["expected"] is None or state["seen"] < state["expected"]:
                continue
            rows = _finish_unit(out, unit, pending.pop(unit), settings=settings, write_video=write_video)
            finished += 1
            restored = sum(r["status"] == "restored" for r in rows)
            faces += restored
            frames += len({(r["source_uri"], r["frame_index"]) for r in rows if r["status"] == "restored"})
            reasons.update(r["reason"] for r in rows if r["status"] == "quarantined")
            elapsed = time.perf_counter() - ray_started
            say(f"  unit {unit}: {restored} face(s); {finished}/{len(todo)} unit(s), {faces} face(s), "
                f"{faces / max(elapsed, 1e-9):.1f} faces/s")
            progress({"event": "unit", "unit": unit, "units_finished": finished, "units_todo": len(todo),
                      "faces": faces, "frames": frames, "quarantined": sum(reasons.values()),
                      "seconds": elapsed, "faces_per_second": faces / max(elapsed, 1e-9)})
            if kill_after and finished >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # test-only crash hook (KILL_ENV)
    ray_seconds = time.perf_counter() - ray_started
    summary = {"input": input_uri, "output": out, "model_uri": ref.uri, "model_name": ref.name,
               "model_version": ref.version, "units": len(units),
               "units_run": len(todo), "units_reused": len(units) - len(todo), "faces": faces, "frames": frames,
               "quarantined": dict(sorted(reasons.items())), "seconds": time.perf_counter() - started,
               "faces_per_second": faces / ray_seconds if todo and ray_seconds > 0 else 0.0}
    say(f"restore: {faces} face(s) restored in {len(todo)} unit(s) ({summary['faces_per_second']:.1f} faces/s), "
        f"quarantined {summary['quarantined']}; manifest: {storage.join(out, MANIFEST_FOLDER)}")
    progress({"event": "done", **summary})
    return summary


def _detect_dispatch(row: Mapping[str, Any], *, settings: ArchiveSettings, video_settings: ArchiveSettings,
                     keep_frames: bool) -> Iterator[dict[str, Any]]:
    chosen = video_settings if bool(row["video"]) else settings
    yield from detect_unit(row, settings=chosen, keep_frames=keep_frames)


def _load_network(model_ref: Any, *, device: str = "cpu"):
    from pipelines.model_registry import load_network

    return load_network(model_ref, device=device)


def _finish_unit(out: str, unit: int, state: dict[str, Any], *, settings: ArchiveSettings,
                 write_video: bool) -> list[dict[str, Any]]:
    rows = state["rows"]
    if write_video and state["video_frames"]:
        frames = sorted(state["video_frames"])
        safe = frames[0][3]
        fps = settings.sample_fps or frames[0][2] or 25.0
        if settings.sample_fps and frames[0][2]:
            fps = min(settings.sample_fps, frames[0][2])
        video_uri = join_under(out, f"videos/{safe}.mp4")
        encode_video([uri for _, uri, _, _ in frames], video_uri, fps=fps)
        for row in rows:
            if row["media"] == "video":
                row["video_output_uri"] = video_uri
    rows.sort(key=lambda r: (r["relative_path"], -1 if r["frame_index"] is None else r["frame_index"],
                             -1 if r.get("face_index") is None else r["face_index"], r["status"]))
    _write_part(join_under(out, f"{MANIFEST_FOLDER}/{part_name(unit)}"), rows)  # last: marks the unit done
    return rows
