"""Ingest stages of the real data sets: WIDER FACE, CelebA, CelebA-HQ, FFHQ -> face-crop shards, on Ray Data.

Stage kinds (input ``root``: a catalog entry, the data set's folder or ``s3://`` prefix in its
official layout; outputs ``faces``: the shard folder, ``quarantine``: why inputs were skipped)::

    ingest_wider_face   WiderFaceReader   LR crops of the annotated boxes (16 x 16 by default)
    ingest_celeba       CelebAReader      aligned centre crops + landmarks, identity, attributes
    ingest_celeba_hq    HQFolderReader    whole 1024 faces resized; hash split, or CelebA's official
                                          split + identities via image_list.txt when configured
    ingest_ffhq         HQFolderReader    same, with ffhq-dataset-v2.json splits/landmarks when present
    ingest_crops        CropsReader       ready-made crops of any size taken as they are (no detection,
                                          no resize), or face-crop shards re-sharded row by row;
                                          optional LR -> HR pairing (meta.hr_id)

The quarantine table is a separate output, not ``faces/quarantine/``: shard listings are
recursive, so a sub-folder of ``faces`` would be read as face shards.

How :func:`run_ingest` runs one (the stage's own task reserves no CPU; the work is Ray Data's)::

    driver   reader.list_items(root)                        deterministic order
             duplicate check (below)                        duplicates become quarantine items
             units of unit_size items; plan digest          -> faces/_ingest.json (guard)
             skip units whose faces/part-<k>.parquet exists (resume / idempotence)
    Ray Data from_items(one row per unit, one block each)
             .map(process_unit, num_cpus=task_cpus)         read (storage.read_bytes) -> decode ->
                                                            crop -> MATLAB bicubic -> PNG ->
                                                            quarantine/part-<k>.parquet, then
                                                            faces/part-<k>.parquet (atomic writes)
                                                            -> a small summary row
    driver   progress per finished unit; totals (reused units read back from the shards' footers
             and quarantine shards); metrics to the stage's MLflow run; summary printed + returned

The job is a single operator over in-memory input, so Ray Data's per-operator resource
reservation (a share of the CPUs held for other operators) is switched off for it: with it on,
two 1-CPU unit tasks on 2 CPUs ran one at a time.

Unit ``k`` always holds the same items, so its shard has the same name and, being a pure function
of its items, the same bytes: an interrupted ingest re-run redoes only the missing units, and a
finished one re-run writes nothing. The face shard is written after the quarantine shard, so its
existence means the unit is complete. ``faces/_ingest.json`` records a digest of the plan
(reader settings, unit size, every unit's items): re-running into a folder that holds a different
plan raises instead of mixing two ingests.

Duplicates (same bytes under two names): decided before any unit runs, so that the decision is a
pure function of the listing and a re-run (or a resumed run) makes the same one. Only files whose
size (free from the listing) equals another file's size can be duplicates; only those are read and
hashed, by a thread pool in the driver. In each group of equal SHA-256 the first file in listing
order is kept; the others are quarantined with reason ``duplicate`` naming the kept file. Every
crop still records its own file's SHA-256 in ``meta.content_sha256``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from fsr_core import storage
from fsr_core.data.ingest.base import QUARANTINE_SCHEMA, Quarantined, Reader, SourceItem, quarantine_table
from fsr_core.data.ingest.celeba import CelebAReader
from fsr_core.data.ingest.crops import CropsReader
from fsr_core.data.ingest.hq_folder import DEFAULT_FRACTIONS, FFHQ_METADATA_FILE, HQFolderReader
from fsr_core.data.ingest.wider_face import WiderFaceReader
from fsr_core.data.schema import rows_to_table
from fsr_core.data.shards import read_shard, shard_name, write_parquet, write_table
from fsr_core.data.splits import check_fractions
from pipelines.stage import Stage, StageContext, StageParams

__all__ = [
    "INGEST_CELEBA",
    "INGEST_CELEBA_HQ",
    "INGEST_CROPS",
    "INGEST_FFHQ",
    "INGEST_STAGES",
    "INGEST_WIDER_FACE",
    "CelebAParams",
    "CelebAHQParams",
    "CropsParams",
    "FFHQParams",
    "IngestParams",
    "WiderFaceParams",
    "find_duplicates",
    "process_unit",
    "read_quarantine",
    "run_ingest",
]

MANIFEST_FILE = "_ingest.json"


# ---------------------------------------------------------------------------- duplicates
def find_duplicates(
    items: list[SourceItem],
    sizes: Mapping[str, int],
    *,
    threads: int = 8,
    read: Callable[[str], bytes] = storage.read_bytes,
) -> dict[str, tuple[str, str]]:
    """``{duplicate uri: (kept uri, sha256)}`` among ``items`` (listing order decides which is kept).

    Only items with a known size shared by another item are read. Items that already carry a
    quarantine reason, and unreadable files, are left out (their own processing reports them).
    """
    by_size: dict[int, list[str]] = {}
    seen: set[str] = set()
    for item in items:
        if item.annotations.get("quarantine") or item.uri in seen or item.uri not in sizes:
            continue
        seen.add(item.uri)
        by_size.setdefault(int(sizes[item.uri]), []).append(item.uri)
    candidates = [uri for group in by_size.values() if len(group) > 1 for uri in group]
    if not candidates:
        return {}

    def digest(uri: str) -> str | None:
        try:
            return hashlib.sha256(read(uri)).hexdigest()
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        hashes = dict(zip(candidates, pool.map(digest, candidates)))
    order = {uri: index for index, uri in enumerate(_ordered(items))}
    first: dict[str, str] = {}
    duplicates: dict[str, tuple[str, str]] = {}
    for uri in sorted(hashes, key=order.__getitem__):
        sha = hashes[uri]
        if sha is None:
            continue
        if sha in first:
            duplicates[uri] = (first[sha], sha)
        else:
            first[sha] = uri
    return duplicates


def _ordered(items: list[SourceItem]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item.uri not in seen:
            seen.add(item.uri)
            out.append(item.uri)
    return out


# ---------------------------------------------------------------------------- one unit
def _item_to_json(item: SourceItem) -> dict[str, Any]:
    return {"uri": item.uri, "annotations": item.annotations, "split": item.split}


def _item_from_json(data: Mapping[str, Any]) -> SourceItem:
    return SourceItem(data["uri"], data.get("annotations") or {}, data.get("split"))


def _write_quarantine(records: list[Quarantined], uri: str, *, source: str) -> None:
    write_parquet(uri, quarantine_table(records, source=source))


def process_unit(row: dict[str, Any], *, reader: Reader, faces: str, quarantine: str) -> dict[str, Any]:
    """Ray Data ``map`` function: process one work unit and write its two shards.

    ``row`` is ``{"unit": k, "items": JSON list of items}``; returns ``{"unit", "items", "rows",
    "quarantined" (JSON {reason: count}), "seconds", "cpu_seconds"}`` (the task's wall and CPU
    time) and ``error``. Bad data is quarantined by the reader; an unexpected error (storage down, a
    reader bug) is retried once for that item, then fails the unit: nothing of it is written and
    ``error`` names the item's URI (the other units go on; :func:`run_ingest` raises at the end).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    unit = int(row["unit"])
    items = [_item_from_json(data) for data in json.loads(row["items"])]
    rows: list[dict[str, Any]] = []
    records: list[Quarantined] = []
    for item in items:
        preset = item.annotations.get("quarantine")
        if preset:  # decided at listing time (malformed annotation, duplicate ...)
            records.extend(Quarantined(item.uri, reason, detail) for reason, detail in preset)
            continue
        for attempt in (1, 2):  # an unforeseen error: the item once more, then the unit is failed
            got: list = []
            try:
                got = list(reader.process(item))
                break
            except Exception as exc:  # noqa: BLE001 - one unit's error must not stop the others
                if attempt == 2:
                    return {"unit": unit, "items": len(items), "rows": 0, "quarantined": "{}",
                            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
                            "error": f"{reader.source} unit {unit}: {item.uri}: {type(exc).__name__}: {exc}"[:2000]}
        for out in got:
            (records if isinstance(out, Quarantined) else rows).append(out)
    name = shard_name(unit)
    _write_quarantine(records, storage.join(quarantine, name), source=reader.source)
    write_table(rows_to_table(rows), storage.join(faces, name))  # last: its existence marks the unit done
    return {
        "unit": unit,
        "items": len(items),
        "rows": len(rows),
        "quarantined": json.dumps(dict(Counter(r.reason for r in records)), sort_keys=True),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "error": "",
    }


def read_quarantine(folder: str) -> pa.Table:
    """All quarantine records of an ingest (its ``quarantine`` output), unit by unit."""
    shards = [info.uri for info in storage.list_files(folder, suffix=".parquet")]
    if not shards:
        return QUARANTINE_SCHEMA.empty_table()
    return pa.concat_tables(read_shard(uri) for uri in shards)


# ---------------------------------------------------------------------------- the runner
def _normalize_root(root: str) -> str:
    if storage.is_s3(root):
        return root.rstrip("/") or root
    return os.path.abspath(root)


def _reader_settings(reader: Reader) -> dict[str, Any]:
    if dataclasses.is_dataclass(reader):
        return json.loads(json.dumps(dataclasses.asdict(reader), default=str, sort_keys=True))
    return {"repr": repr(reader)}


def _check_manifest(faces: str, manifest: dict[str, Any]) -> None:
    uri = storage.join(faces, MANIFEST_FILE)
    try:
        existing = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        storage.write_bytes(uri, json.dumps(manifest, indent=2, sort_keys=True).encode())
        return
    if existing.get("plan_sha256") != manifest["plan_sha256"]:
        raise ValueError(
            f"{faces} holds an ingest of a different plan (source {existing.get('source')!r}, root "
            f"{existing.get('root')!r}, {existing.get('items')} items, settings {existing.get('reader')}); this run "
            f"would mix two ingests. Write to a new folder, or delete {faces} to start over."
        )


def _reused_counts(faces: str, quarantine: str, unit: int) -> tuple[int, Counter]:
    name = shard_name(unit)
    fs, path = storage.pyarrow_filesystem(storage.join(faces, name))
    rows = pq.read_metadata(path, filesystem=fs).num_rows
    reasons: Counter = Counter()
    try:
        reasons.update(read_shard(storage.join(quarantine, name), columns=["reason"])["reason"].to_pylist())
    except (FileNotFoundError, OSError):
        pass  # a face shard without its quarantine shard: written by hand; nothing to count
    return rows, reasons


def run_ingest(
    ctx: StageContext,
    reader: Reader,
    root: str,
    *,
    unit_size: int,
    task_cpus: float = 0.5,
    max_tasks: int | None = None,
    dedup: bool = True,
    hash_threads: int = 8,
    printer: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run one ingest into ``ctx.outputs["faces"]`` and ``ctx.outputs["quarantine"]`` (see the module docstring).

    Args:
        ctx: the stage context (outputs, MLflow run; a context without a run logs nothing).
        reader: a :class:`~fsr_core.data.ingest.base.Reader`.
        root: the data set's root (local folder or ``s3://``).
        unit_size: source items per work unit, i.e. per shard.
        task_cpus: CPUs reserved by each unit task (fractional: see NOTES on 2-core machines).
        max_tasks: at most this many unit tasks at once (``None``: as many as the CPUs allow).
        dedup: quarantine files whose bytes repeat an earlier file's.
        hash_threads: threads hashing the duplicate candidates.
        printer: where progress goes (``None``: silent).

    Returns:
        The summary (also logged): ``items``, ``units``, ``rows`` (all shards), ``rows_written``
        (this run), ``shards_written``, ``shards_reused``, ``quarantined`` ({reason: count}, all
        units), ``duplicates``, ``seconds``, ``ray_seconds``, ``task_seconds`` and
        ``task_cpu_seconds`` (summed over this run's unit tasks: ``task_seconds / ray_seconds`` is the
        parallelism achieved, ``task_cpu_seconds / task_seconds`` how much of it had a core),
        ``crops_per_second`` (this run's rows / Ray Data time).
    """
    import ray

    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    say = printer or (lambda text: None)
    faces, quarantine = ctx.outputs["faces"], ctx.outputs["quarantine"]
    root = _normalize_root(root)
    source = reader.source
    started = time.perf_counter()

    items = reader.list_items(root)
    if not items:
        raise ValueError(f"{source}: nothing to ingest under {root}")
    duplicates: dict[str, tuple[str, str]] = {}
    if dedup:
        sizes = {info.uri: info.size for info in storage.list_files(root)}
        duplicates = find_duplicates(items, sizes, threads=hash_threads)
        first_seen: set[str] = set()
        marked = []
        for item in items:
            if item.uri in duplicates and item.uri not in first_seen:
                kept, sha = duplicates[item.uri]
                item = SourceItem(item.uri, {**item.annotations, "quarantine": [
                    ("duplicate", f"same bytes (sha256 {sha[:16]}...) as {kept}, which is kept")]}, item.split)
            first_seen.add(item.uri)
            marked.append(item)
        items = marked
    listed_seconds = time.perf_counter() - started

    units = [items[start:start + unit_size] for start in range(0, len(items), unit_size)]
    payloads = [json.dumps([_item_to_json(item) for item in unit], sort_keys=True, separators=(",", ":"))
                for unit in units]
    settings = _reader_settings(reader)
    plan = hashlib.sha256(json.dumps({"source": source, "reader": settings, "unit_size": unit_size},
                                     sort_keys=True).encode())
    for payload in payloads:
        plan.update(hashlib.sha256(payload.encode()).digest())
    _check_manifest(faces, {"source": source, "root": root, "reader": settings, "unit_size": unit_size,
                            "items": len(items), "units": len(units), "plan_sha256": plan.hexdigest()})

    existing = {info.uri.replace("\\", "/").rsplit("/", 1)[-1] for info in storage.list_files(faces, suffix=".parquet")}
    todo = [k for k in range(len(units)) if shard_name(k) not in existing]
    reused = [k for k in range(len(units)) if shard_name(k) in existing]
    say(f"{source}: {len(items)} items from {root} in {len(units)} unit(s) of {unit_size} "
        f"(listed in {listed_seconds:.1f}s, {len(duplicates)} duplicate file(s)); "
        f"{len(reused)} unit(s) already written, {len(todo)} to run")

    summaries: list[dict[str, Any]] = []
    failed: list[str] = []
    ray_started = time.perf_counter()
    if todo:
        # One operator after an in-memory input: Ray Data's per-operator resource reservation (a
        # share of the CPUs kept for *other* operators) only holds our unit tasks back. Measured on
        # 2 CPUs: two 1-CPU tasks ran one at a time with it, side by side without it.
        data_context = ray.data.DataContext.get_current()
        reservation = data_context.op_resource_reservation_enabled
        data_context.op_resource_reservation_enabled = False
        try:
            ds = ray.data.from_items([{"unit": k, "items": payloads[k]} for k in todo], override_num_blocks=len(todo))
            ds = ds.map(
                process_unit,
                fn_kwargs={"reader": reader, "faces": faces, "quarantine": quarantine},
                num_cpus=task_cpus,
                compute=ray.data.TaskPoolStrategy(size=max_tasks) if max_tasks else None,
            )
            every = max(1, len(todo) // 20)
            rows_so_far = quarantined_so_far = 0
            for summary in ds.iter_rows():
                if summary["error"]:
                    failed.append(str(summary["error"]))
                    say(f"  {source}: failed: {summary['error']}")
                    continue
                summaries.append(dict(summary))
                rows_so_far += int(summary["rows"])
                done = len(summaries)
                if done % every == 0 or done == len(todo):
                    elapsed = time.perf_counter() - ray_started
                    say(f"  {source}: {done}/{len(todo)} unit(s), {rows_so_far} crops, "
                        f"{rows_so_far / max(elapsed, 1e-9):.1f} crops/s")
                quarantined_so_far += sum(json.loads(summary["quarantined"]).values())
                ctx.report(done, len(todo), unit="units", crops=rows_so_far, quarantined=quarantined_so_far)
        finally:
            data_context.op_resource_reservation_enabled = reservation
    ray_seconds = time.perf_counter() - ray_started

    reasons: Counter = Counter()
    rows_written = 0
    for summary in summaries:
        rows_written += int(summary["rows"])
        reasons.update(json.loads(summary["quarantined"]))
    rows_reused = 0
    for unit in reused:
        rows, unit_reasons = _reused_counts(faces, quarantine, unit)
        rows_reused += rows
        reasons.update(unit_reasons)
    result = {
        "source": source,
        "root": root,
        "faces": faces,
        "quarantine": quarantine,
        "items": len(items),
        "units": len(units),
        "rows": rows_written + rows_reused,
        "rows_written": rows_written,
        "shards_written": len(summaries),
        "shards_reused": len(reused),
        "quarantined": dict(sorted(reasons.items())),
        "duplicates": len(duplicates),
        "seconds": time.perf_counter() - started,
        "ray_seconds": ray_seconds,
        "task_seconds": sum(float(summary["seconds"]) for summary in summaries),
        "task_cpu_seconds": sum(float(summary["cpu_seconds"]) for summary in summaries),
        "crops_per_second": rows_written / ray_seconds if summaries and ray_seconds > 0 else 0.0,
    }
    ctx.log_metrics({
        "items": result["items"],
        "units": result["units"],
        "rows": result["rows"],
        "rows_written": rows_written,
        "shards_written": result["shards_written"],
        "shards_reused": result["shards_reused"],
        "duplicates": result["duplicates"],
        "quarantined": sum(reasons.values()),
        **{f"quarantined_{reason}": count for reason, count in reasons.items()},
        "crops_per_second": result["crops_per_second"],
        "ingest_seconds": result["seconds"],
        "units_failed": len(failed),
    })
    result["units_failed"] = failed
    ctx.log_dict(result, "ingest_summary.json")
    skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    say(f"{source}: {result['rows']} crops ({rows_written} written now, {rows_reused} in reused shards) from "
        f"{len(items)} items; skipped {sum(reasons.values())}{': ' + skipped if skipped else ''}; "
        f"{result['crops_per_second']:.1f} crops/s; {result['seconds']:.1f}s")
    if failed:  # every other unit is written; the same command again runs only these
        raise RuntimeError(f"{source}: {len(failed)} unit(s) failed (an error that is not bad data, twice); every "
                           f"other unit is written; run again to retry only these: " + "; ".join(failed[:5])
                           + (" ..." if len(failed) > 5 else ""))
    return result


# ---------------------------------------------------------------------------- stage kinds
class IngestParams(StageParams):
    """What every ingest stage shares: how the work is cut and scheduled."""

    unit_size: int = Field(256, ge=1, description="source items per work unit (one shard per unit)")
    task_cpus: float = Field(0.5, gt=0, description="CPUs reserved by each unit's Ray Data task")
    max_tasks: int | None = Field(None, ge=1, description="unit tasks at once (None: as many as the CPUs allow)")
    dedup: bool = Field(True, description="quarantine files whose bytes repeat an earlier file's (reason duplicate)")


class WiderFaceParams(IngestParams):
    splits: list[Literal["train", "val", "test"]] = Field(
        default_factory=lambda: ["train", "val"], description="official splits to read (test has no boxes)")
    lr_size: int | None = Field(16, ge=1, description="side of the LR crops (None: the region's own size)")
    margin: float = Field(0.0, ge=0, description="fraction of the box added on each side")
    square: bool = Field(True, description="square crop region around the box centre")
    min_size: int = Field(16, ge=1, description="skip faces with min(w, h) below this (face_too_small)")
    drop_invalid: bool = True
    max_blur: int = Field(2, ge=0, le=2, description="0 clear, 1 normal, 2 heavy")
    max_occlusion: int = Field(2, ge=0, le=2, description="0 none, 1 partial, 2 heavy")
    allow_atypical_pose: bool = True
    allow_exaggerated_expression: bool = True
    allow_extreme_illumination: bool = True

    @field_validator("splits")
    @classmethod
    def _no_test(cls, value: list[str]) -> list[str]:
        if "test" in value:
            raise ValueError("WIDER FACE test has no annotations (no boxes): use the face-detection ingest for it")
        if not value:
            raise ValueError("at least one split is needed")
        return value


class CelebAParams(IngestParams):
    size: int | None = Field(128, ge=1, description="output side (None: crop_size)")
    crop_size: int = Field(178, ge=1, description="side of the square cut out of the 178x218 aligned image")
    crop_top: int | None = Field(None, ge=0, description="top of the crop (None: centred, 20 for 178)")
    crop_left: int | None = Field(None, ge=0, description="left of the crop (None: centred)")
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["train", "val", "test"])


class _HQParams(IngestParams):
    size: int | None = Field(128, ge=1, description="output side (None: keep 1024)")
    split: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_FRACTIONS),
                                    description="fractions for files without an official split (hash of the file name)")

    @field_validator("split")
    @classmethod
    def _split(cls, value: dict[str, float]) -> dict[str, float]:
        return check_fractions(value)


class CelebAHQParams(_HQParams):
    image_list_file: str | None = Field(
        None, description="CelebA-HQ's image_list.txt under root (None: not read; splits hashed)")
    partition_file: str | None = Field(
        None, description="CelebA's list_eval_partition.txt under root: each image takes its CelebA original's "
                          "split (needs image_list_file)")
    identity_file: str | None = Field(
        None, description="CelebA's identity_CelebA.txt under root: rows carry the original's identity "
                          "(needs image_list_file)")

    @model_validator(mode="after")
    def _needs_image_list(self) -> "CelebAHQParams":
        if (self.partition_file or self.identity_file) and not self.image_list_file:
            raise ValueError("partition_file and identity_file need image_list_file (CelebA-HQ's image_list.txt), "
                             "which says which CelebA image each CelebA-HQ image was made from")
        return self


class FFHQParams(_HQParams):
    metadata_file: str | None = Field(FFHQ_METADATA_FILE, description="metadata JSON under root, used when present")
    verify_md5: bool = Field(True, description="check each file against the metadata's MD5")


class _DetectingParams(IngestParams):
    """Inputs without boxes: faces are detected (fsr_core.data.detection) and cropped or aligned."""

    size: int = Field(128, ge=1, description="side of the output crops")
    crop: Literal["align", "margin"] = Field("align", description="5-point similarity warp, or a square box crop")
    margin: float = Field(0.5, ge=0, description="crop=margin: fraction of the box added on each side")
    template: str = Field("ffhq", description="crop=align: the landmark template")
    detector: Literal["hog", "cnn", "mtcnn", "mtcnn-tiny"] = "hog"
    upsample: int = Field(1, ge=0, description="dlib image doublings before detection (small faces)")
    min_face_size: float = Field(12, gt=0, description="ignore detected faces shorter than this (px)")
    score_threshold: float | None = Field(None, description="minimum detector score (None: detector default)")
    max_faces: int | None = Field(None, ge=1, description="keep at most this many faces per image/frame")
    split: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_FRACTIONS),
                                    description="hash split of the relative path")

    @field_validator("split")
    @classmethod
    def _split(cls, value: dict[str, float]) -> dict[str, float]:
        return check_fractions(value)

    def reader_kwargs(self) -> dict[str, Any]:
        return {
            "size": self.size, "crop": self.crop, "margin": self.margin, "template": self.template,
            "detector": self.detector, "upsample": self.upsample, "min_face_size": self.min_face_size,
            "score_threshold": self.score_threshold, "max_faces": self.max_faces, "split_fractions": self.split,
        }


class FolderParams(_DetectingParams):
    unit_size: int = Field(64, ge=1, description="images per work unit (detection is slow: smaller units)")


class VideoParams(_DetectingParams):
    unit_size: int = Field(1, ge=1, description="videos per work unit")
    sample_fps: float | None = Field(1.0, gt=0, description="frames sampled per second of video (None: all)")
    max_sampled_frames: int | None = Field(None, ge=1, description="cap per video")


class CropsParams(IngestParams):
    """``ingest_crops``: see :mod:`fsr_core.data.ingest.crops`. A Parquet shard under ``root`` is one
    item: for a folder of shards, ``unit_size: 1`` writes one output shard per input shard."""

    source: str = Field("crops", pattern=r"^[a-z][a-z0-9_]*$", description="the source column of image rows")
    pairing: str | None = Field(
        None, description="CSV below root with header lr,hr_id[,split]: paired rows get meta.hr_id and the HR's split")
    split: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_FRACTIONS),
                                    description="fractions of the hash splits (of hr_id when paired, else of the path)")
    max_side: int = Field(4096, ge=1, description="quarantine images with a larger side (image_too_large)")
    max_bytes: int = Field(64 * 2**20, ge=1, description="quarantine larger files unread (file_too_large)")

    @field_validator("split")
    @classmethod
    def _split(cls, value: dict[str, float]) -> dict[str, float]:
        return check_fractions(value)


def _stage_outputs(ctx: StageContext) -> dict[str, str]:
    return {"faces": ctx.outputs["faces"], "quarantine": ctx.outputs["quarantine"]}


def _run(ctx: StageContext, reader: Reader, root: str) -> dict[str, str]:
    p: IngestParams = ctx.params  # type: ignore[assignment]
    run_ingest(ctx, reader, root, unit_size=p.unit_size, task_cpus=p.task_cpus, max_tasks=p.max_tasks, dedup=p.dedup)
    return _stage_outputs(ctx)


def ingest_wider_face(ctx: StageContext, root: str) -> dict[str, str]:
    p: WiderFaceParams = ctx.params  # type: ignore[assignment]
    reader = WiderFaceReader(
        splits=tuple(p.splits), lr_size=p.lr_size, margin=p.margin, square=p.square, min_size=p.min_size,
        drop_invalid=p.drop_invalid, max_blur=p.max_blur, max_occlusion=p.max_occlusion,
        allow_atypical_pose=p.allow_atypical_pose, allow_exaggerated_expression=p.allow_exaggerated_expression,
        allow_extreme_illumination=p.allow_extreme_illumination,
    )
    return _run(ctx, reader, root)


def ingest_celeba(ctx: StageContext, root: str) -> dict[str, str]:
    p: CelebAParams = ctx.params  # type: ignore[assignment]
    reader = CelebAReader(size=p.size, crop_size=p.crop_size, crop_top=p.crop_top, crop_left=p.crop_left,
                          splits=tuple(p.splits))
    return _run(ctx, reader, root)


def ingest_celeba_hq(ctx: StageContext, root: str) -> dict[str, str]:
    p: CelebAHQParams = ctx.params  # type: ignore[assignment]
    reader = HQFolderReader("celeba_hq", size=p.size, split_fractions=p.split, image_list_file=p.image_list_file,
                            partition_file=p.partition_file, identity_file=p.identity_file)
    return _run(ctx, reader, root)


def ingest_ffhq(ctx: StageContext, root: str) -> dict[str, str]:
    p: FFHQParams = ctx.params  # type: ignore[assignment]
    reader = HQFolderReader("ffhq", size=p.size, split_fractions=p.split, metadata_file=p.metadata_file,
                            verify_md5=p.verify_md5)
    return _run(ctx, reader, root)


def ingest_folder(ctx: StageContext, root: str) -> dict[str, str]:
    from fsr_core.data.ingest.folder import FolderReader

    p: FolderParams = ctx.params  # type: ignore[assignment]
    return _run(ctx, FolderReader(**p.reader_kwargs()), root)


def ingest_video(ctx: StageContext, root: str) -> dict[str, str]:
    from fsr_core.data.ingest.video import VideoReader

    p: VideoParams = ctx.params  # type: ignore[assignment]
    reader = VideoReader(**p.reader_kwargs(), sample_fps=p.sample_fps, max_sampled_frames=p.max_sampled_frames)
    return _run(ctx, reader, root)


def ingest_crops(ctx: StageContext, root: str) -> dict[str, str]:
    p: CropsParams = ctx.params  # type: ignore[assignment]
    reader = CropsReader(source=p.source, pairing=p.pairing, split_fractions=p.split, max_side=p.max_side,
                         max_bytes=p.max_bytes)
    return _run(ctx, reader, root)


_OUTPUTS = ("faces", "quarantine")

INGEST_WIDER_FACE = Stage(
    name="ingest_wider_face",
    fn=ingest_wider_face,
    params=WiderFaceParams,
    inputs=("root",),
    outputs=_OUTPUTS,
    description="WIDER FACE train/val annotated boxes -> genuine LR face crops (MATLAB bicubic), on Ray Data",
)
INGEST_CELEBA = Stage(
    name="ingest_celeba",
    fn=ingest_celeba,
    params=CelebAParams,
    inputs=("root",),
    outputs=_OUTPUTS,
    description="CelebA aligned images -> centre crops with landmarks, identities, attributes, official splits",
)
INGEST_CELEBA_HQ = Stage(
    name="ingest_celeba_hq",
    fn=ingest_celeba_hq,
    params=CelebAHQParams,
    inputs=("root",),
    outputs=_OUTPUTS,
    description="CelebA-HQ 1024 faces -> resized HR faces; hash split, or CelebA's official split and identities "
                "via image_list.txt when configured",
)
INGEST_FFHQ = Stage(
    name="ingest_ffhq",
    fn=ingest_ffhq,
    params=FFHQParams,
    inputs=("root",),
    outputs=_OUTPUTS,
    description="FFHQ 1024 faces -> resized HR faces; splits, landmarks, provenance from ffhq-dataset-v2.json when present",
)

INGEST_FOLDER = Stage(
    name="ingest_folder",
    fn=ingest_folder,
    params=FolderParams,
    inputs=("root",),
    outputs=_OUTPUTS,
    description="A folder of images without boxes -> detected, aligned face crops (dlib HOG/CNN or MTCNN)",
)
INGEST_VIDEO = Stage(
    name="ingest_video",
    fn=ingest_video,
    params=VideoParams,
    inputs=("root",),
    outputs=_OUTPUTS,
    description="Video files, streamed with PyAV, frames sampled at sample_fps -> detected, aligned face crops",
)

INGEST_CROPS = Stage(
    name="ingest_crops",
    fn=ingest_crops,
    params=CropsParams,
    inputs=("root",),
    outputs=_OUTPUTS,
    description="Ready-made face crops of any size (images as they are, or face-crop shards validated row by row), "
                "no detection; optional LR -> HR pairing file (meta.hr_id)",
)

#: the ingest kinds by name (all are in pipelines.stages.STAGES)
INGEST_STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (INGEST_WIDER_FACE, INGEST_CELEBA, INGEST_CELEBA_HQ, INGEST_FFHQ, INGEST_FOLDER, INGEST_VIDEO,
                  INGEST_CROPS)
}
