"""The reader contract of dataset ingestion, and the records it produces.

An ingest is ``list -> read -> decode -> crop -> encode -> write shards``:

1. a :class:`Reader` lists its **source items** under a root (``list_items``): one item per
   image or video file, with the annotations that belong to it (WIDER FACE boxes and flags,
   CelebA landmarks/identity/attributes, ...), in a deterministic order;
2. items are grouped into fixed **work units** (``unit_size`` consecutive items); unit ``k``
   writes shard ``part-<k>.parquet`` and quarantine shard ``quarantine/part-<k>.parquet``. A unit
   whose shard exists is done: a re-run redoes nothing finished (resume) and writes nothing twice
   (idempotence);
3. ``Reader.process(item)`` reads, decodes, crops and encodes one item and yields
   :class:`FaceCrop` rows (shard rows, see :mod:`fsr_core.data.schema`) and
   :class:`Quarantined` records (a reason why an input, or part of it, was skipped). A reader
   never raises for bad *data*: it quarantines it and goes on. It raises only for a broken
   *setup* (root missing, annotation file missing), before any work.

Readers are plain Python (no Ray): the pipelines layer runs them in Ray Data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import pyarrow as pa

__all__ = [
    "SourceItem", "Quarantined", "Reader", "QUARANTINE_SCHEMA", "content_sha256", "quarantine_table",
    "listing_quarantine", "read_item",
]


@dataclass(frozen=True)
class SourceItem:
    """One input file and its annotations (JSON-able), as listed by a reader."""

    uri: str
    annotations: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # official split where the data set defines one

    def key(self) -> str:
        return self.uri


@dataclass(frozen=True)
class Quarantined:
    """Why an input (or one face of it) was not turned into a row."""

    source_uri: str
    reason: str  # short machine-readable code: corrupt_image, empty_file, not_an_image, box_outside_image ...
    detail: str = ""  # human-readable explanation
    frame_index: int | None = None
    bbox: list[float] | None = None

    def to_row(self, *, source: str) -> dict[str, Any]:
        return {
            "source": source,
            "source_uri": self.source_uri,
            "reason": self.reason,
            "detail": self.detail,
            "frame_index": self.frame_index,
            "bbox": self.bbox,
        }


QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=True),
        pa.field("bbox", pa.list_(pa.float32()), nullable=True),
    ],
    metadata={b"fsr.schema": b"quarantine/1"},
)


def quarantine_table(records: list[Quarantined], *, source: str) -> pa.Table:
    rows = [record.to_row(source=source) for record in records]
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


class Reader(Protocol):
    """What every data set reader provides."""

    #: the ``source`` column value of its rows (``wider_face``, ``celeba``, ``ffhq`` ...)
    source: str

    def list_items(self, root: str) -> list[SourceItem]:
        """All source items under ``root`` (local path or ``s3://``), sorted deterministically.

        Raises ``FileNotFoundError``/``ValueError`` naming the file when the layout is wrong.
        Malformed annotation lines are not errors: they become items carrying
        ``annotations["quarantine"] = [(reason, detail), ...]`` so that ``process`` records them.
        """
        ...

    def process(self, item: SourceItem) -> Iterator[dict[str, Any] | Quarantined]:
        """Rows (dicts following :data:`~fsr_core.data.schema.FACE_SCHEMA`) and quarantine records."""
        ...


def listing_quarantine(item: SourceItem) -> list[Quarantined]:
    """The records that listing already attached to an item (malformed annotation lines ...)."""
    return [Quarantined(item.uri, reason, detail) for reason, detail in item.annotations.get("quarantine") or []]


def read_item(item: SourceItem) -> bytes | Quarantined:
    """The item's bytes, or a ``missing_file`` record when it vanished between listing and reading."""
    from fsr_core import storage

    try:
        return storage.read_bytes(item.uri)
    except FileNotFoundError:
        return Quarantined(item.uri, "missing_file", "listed but absent when read")


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
