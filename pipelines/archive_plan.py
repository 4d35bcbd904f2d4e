"""The plan of an archive restoration, streamed: work units in Parquet, never the whole list in memory.

An archive may hold millions of files. :func:`iter_archive` lists it as a stream (S3 pages or a
sorted directory walk) and :func:`write_plan_units` groups the files into work units as they come
and writes them to ``<out>/_plan/units-NNNNN.parquet`` (``unit``, ``items`` as JSON, ``video``),
:data:`UNITS_PER_FILE` units per file, each file written atomically. Images go into units of
``unit_size`` in listing order; videos are collected (they are far fewer than images), probed for
their chunks in one parallel call and appended, one unit per chunk, after all image units. The
driver then keeps only counts and the set of finished units; the Ray Data job reads the units
back with ``read_parquet`` (:func:`plan_dataset`). ``_restore.json`` (written after the units)
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
           "write_plan_units"]

PLAN_FOLDER = "_plan"
UNITS_PER_FILE = 50_000
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
            pq.write_table(table, path)
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
    """A Ray Dataset of the plan's units not in ``skip``, in ``blocks`` blocks (one unit a block
    when there are no more units than that, so units run side by side)."""
    import ray

    fs, _ = storage.pyarrow_filesystem(out)
    paths = [storage.pyarrow_filesystem(storage.join(out, name))[1] for name in plan["plan_files"]]
    ds = ray.data.read_parquet(paths, filesystem=fs, num_cpus=num_cpus)
    if skip:
        ds = ds.filter(lambda row: int(row["unit"]) not in skip)
    return ds.repartition(max(1, blocks))
