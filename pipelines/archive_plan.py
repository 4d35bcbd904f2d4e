"""The plan of an archive restoration, streamed: work units in Parquet, never the whole list in memory.

An archive may hold millions of files. :func:`iter_archive` lists it as a stream (S3 pages or a
sorted directory walk) and :func:`write_plan_units` groups the files into work units as they come
and writes them to ``<out>/_plan/units-NNNNN.parquet`` (``unit``, ``items`` as JSON, ``video``),
:data:`UNITS_PER_FILE` units per file, each file written atomically. Images go into units of
``unit_size`` in listing order; videos are collected (they are far fewer than images), probed for
their chunks in one parallel call and appended, one unit per chunk, after all image units. The
driver then keeps only counts and the set of finished units; the Ray Data job reads the units
back in its tasks, each the row groups of its own units (:func:`plan_dataset`). ``_restore.json`` (written after the units)
records ``units``, ``files`` and ``plan_files``.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from fsr_core import storage
from fsr_core.restore.archive import UnsafePath, media_kind, safe_relative_path

__all__ = ["PLAN_FOLDER", "UNITS_PER_FILE", "iter_archive", "list_archive", "plan_dataset", "read_plan_units",
           "read_units", "write_plan_units"]

PLAN_FOLDER = "_plan"
UNITS_PER_FILE = 50_000
PLAN_ROW_GROUP = 256  # units per Parquet row group of a plan file
UNITS_SCHEMA = pa.schema([pa.field("unit", pa.int64(), nullable=False), pa.field("items", pa.string(), nullable=False),
                          pa.field("video", pa.bool_(), nullable=False)])
ONE_CHUNK = {"chunk": 0, "chunks": 1, "start_s": 0.0, "end_s": None, "first_frame": None, "end_frame": None,
             "fps": None}


def iter_archive(root: str) -> Iterator[dict[str, Any]]:
    """Every image and video under ``root``, in listing order, as ``{uri, relative, media, safe}``,
    or with ``quarantine: [reason, detail]`` (``unsafe_path``; ``broken_link`` or ``link_outside_root``
    for a symbolic link that leads nowhere or out of ``root``, never followed) instead of ``safe``."""
    for info in storage.iter_files(root):
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
        escape = storage.link_escapes(info, root)
        if escape == "broken":
            item["quarantine"] = ["broken_link", f"{relative!r} is a symbolic link to nothing"]
        elif escape == "outside":
            item["quarantine"] = ["link_outside_root", f"{relative!r} is a symbolic link leading out of the input "
                                                       "folder: not followed"]
        yield item


def list_archive(root: str) -> list[dict[str, Any]]:
    """:func:`iter_archive` as a list sorted by relative path (small archives, tests, benches)."""
    return sorted(iter_archive(root), key=lambda item: item["relative"])


class _UnitWriter:
    """Appends units to ``_plan/units-NNNNN.parquet`` files, :data:`UNITS_PER_FILE` a file."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.count = 0
        self.files: list[str] = []
        self._rows: list[dict[str, Any]] = []

    def add(self, items: list[dict[str, Any]]) -> None:
        video = len(items) == 1 and items[0]["media"] == "video" and "quarantine" not in items[0]
        self._rows.append({"unit": self.count, "items": json.dumps(items), "video": video})
        self.count += 1
        if len(self._rows) == UNITS_PER_FILE:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        name = f"{PLAN_FOLDER}/units-{len(self.files):05d}.parquet"
        table = pa.Table.from_pylist(self._rows, schema=UNITS_SCHEMA)
        with tempfile.TemporaryDirectory(prefix="fsr-plan-") as tmp:
            path = os.path.join(tmp, "units.parquet")
            pq.write_table(table, path, row_group_size=PLAN_ROW_GROUP)  # a task reads only its units' groups
            storage.upload_file(path, storage.join(self.out, name))
        self.files.append(name)
        self._rows = []


def write_plan_units(out: str, items: Iterable[dict[str, Any]], *, unit_size: int,
                     probe: Callable[[list[str]], Mapping[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Write the units of ``items`` (see the module docstring); ``probe(video uris)`` gives each
    video's chunks (:func:`pipelines.archive_restore.plan_video_chunks`). Returns ``{"units",
    "files", "plan_files"}`` (counts and the written files, relative to ``out``)."""
    writer = _UnitWriter(out)
    batch: list[dict[str, Any]] = []
    videos: list[dict[str, Any]] = []
    files = 0
    for item in items:
        files += 1
        if item["media"] == "video" and "quarantine" not in item:
            videos.append(item)
            continue
        batch.append(item)
        if len(batch) == unit_size:
            writer.add(batch)
            batch = []
    if batch:
        writer.add(batch)
    chunks = probe([item["uri"] for item in videos]) if videos else {}
    for item in videos:
        for chunk in chunks.get(item["uri"]) or [ONE_CHUNK]:
            writer.add([{**item, **chunk}])
    writer.flush()
    return {"units": writer.count, "files": files, "plan_files": writer.files}


def read_plan_units(out: str, plan: Mapping[str, Any]) -> pa.Table:
    """All units of a plan (``unit``, ``items``, ``video``), for inspection and tests."""
    tables = [pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(out, name)))) for name in plan["plan_files"]]
    return pa.concat_tables(tables).sort_by("unit") if tables else UNITS_SCHEMA.empty_table()


def plan_dataset(out: str, plan: Mapping[str, Any], *, skip: frozenset[int], num_cpus: float, blocks: int):
    """A Ray Dataset of the plan's units not in ``skip`` (rows ``unit``, ``items``, ``video``) in
    ``blocks`` blocks of consecutive units (one unit a block when there are no more units than that,
    so units run side by side).

    The driver makes only the blocks' unit numbers (``ray.data.from_items``); the units' rows are
    read in the tasks, from just the row groups that hold them (:func:`read_units`), by a map with
    ``num_cpus`` that Ray Data fuses with the next map of the same resources. No ``read_parquet``:
    its file-listing step asks for a whole CPU whatever the job's fractional settings (a cluster of
    1-CPU nodes whose CPUs the job's actors hold waited forever) and its repartition was a barrier
    before the first unit could start."""
    import ray

    todo = [k for k in range(int(plan["units"])) if k not in skip]
    blocks = max(1, min(blocks, len(todo)))
    groups = [todo[len(todo) * b // blocks:len(todo) * (b + 1) // blocks] for b in range(blocks)]
    ds = ray.data.from_items([{"units": group} for group in groups], override_num_blocks=blocks)
    return ds.flat_map(read_units, fn_kwargs={"out": out, "plan_files": list(plan["plan_files"])}, num_cpus=num_cpus)


def read_units(row: Mapping[str, Any], *, out: str, plan_files: list[str]) -> Iterator[dict[str, Any]]:
    """Ray Data ``flat_map``: the plan rows of the units ``row["units"]``, in that order. Unit ``k``
    is row ``k % UNITS_PER_FILE`` of plan file ``k // UNITS_PER_FILE`` (:class:`_UnitWriter`); only
    the row groups holding the wanted rows are read."""
    wanted: dict[int, list[int]] = {}
    for unit in row["units"]:
        wanted.setdefault(int(unit) // UNITS_PER_FILE, []).append(int(unit))
    for index, units in sorted(wanted.items()):
        fs, path = storage.pyarrow_filesystem(storage.join(out, plan_files[index]))
        with fs.open_input_file(path) as fh:
            parquet = pq.ParquetFile(fh)
            starts = [0]
            for g in range(parquet.num_row_groups):
                starts.append(starts[-1] + parquet.metadata.row_group(g).num_rows)
            rows: dict[int, dict[str, Any]] = {}
            needed = sorted({next(g for g in range(parquet.num_row_groups) if starts[g] <= u % UNITS_PER_FILE
                                  < starts[g + 1]) for u in units})
            for g in needed:
                for r in parquet.read_row_group(g, columns=["unit", "items", "video"]).to_pylist():
                    rows[int(r["unit"])] = r
        for unit in units:
            yield rows[unit]
