"""Ready-made face crops reader: image files of any size, or face-crop shards, taken as they are.

No detection, no resize. Under ``root`` (local folder or ``s3://``), found recursively, hidden
files skipped, sorted by path relative to ``root``:

- **image files** (``.png .jpg .jpeg .bmp .webp .tif .tiff``, any case): one item and one row
  each, the decoded pixels re-encoded as PNG (lossless: a PNG crop keeps its exact pixels). Grey,
  RGBA and 16-bit files become RGB 8-bit (:func:`~fsr_core.data.ingest.images.decode_image`;
  ``meta.decode`` says how, and grey files carry ``meta.grey = true``). Quarantined: the decoder's
  reasons (``empty_file``, ``not_an_image``, ``truncated_image``, ``corrupt_image`` ...),
  ``file_too_large`` (more than ``max_bytes``, decided from the listing, so the file is not read)
  and ``image_too_large`` (a side above ``max_side``);
- **face-crop shards** (``.parquet``, e.g. crops made with another tool): one item each (so one
  input shard is one item of ``unit_size``). The rows are kept as they are (id, source, split,
  meta ...), each checked with :func:`~fsr_core.data.schema.validate_row` and by decoding its PNG
  against its ``height``/``width``. Quarantined: ``invalid_shard`` (unreadable, or columns other
  than the schema's; one record for the file) and ``invalid_row`` (one record per bad row, the
  detail names its index and id). Ids are not checked for uniqueness across shards.

Image rows: ``id`` = :func:`~fsr_core.data.schema.make_face_id` of (``source``, relative path);
``bbox`` the whole image; ``meta``: ``relative_path``, ``image_size``, ``content_sha256``,
``decode``, ``split_from``, and ``hr_id`` when paired.

Pairing (optional, ``pairing``: a CSV file below ``root``, so that the catalog's content hash of
``root`` covers it)::

    lr,hr_id[,split]                      header; columns in any order, no others
    faces/0001.png,ffhq-3f2a...           lr: an image's path relative to root; hr_id: the HR row's id

A paired image's row gets ``meta.hr_id`` (the project's key for "this LR crop is the degraded
version of HR row <id>"). Splits: the line's ``split`` when given (``split_from: pairing``, e.g.
exported from the HR shards' ``id``/``split`` columns, which is exact for any HR set); else
``assign_split(hr_id, fractions)`` (no salt; ``split_from: hr_id``): every LR crop of one HR row
lands in one split, the HR row's own when the HR set was split by the same call on its ids. An
unpaired image: ``assign_split(relative path, fractions, salt=source)`` (``split_from: hash``),
as :class:`~fsr_core.data.ingest.folder.FolderReader` does. An image missing from the pairing
file is ingested without ``hr_id``. A pairing line naming no listed image becomes a quarantine
record ``pairing_missing_file`` (counted in the stage's metrics; not fatal). A pairing file that
is absent, lacks the ``lr``/``hr_id`` columns, has an empty field, an unknown split or one
``lr`` paired with two HR ids raises before any work, naming the file (and line). Shard rows
are not paired: they keep their own ``meta`` (``hr_id`` included) and ``split``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.ingest.base import Quarantined, SourceItem, content_sha256, listing_quarantine, read_item
from fsr_core.data.ingest.images import BadImage, decode_image
from fsr_core.data.schema import FACE_SCHEMA, IMAGE_COLUMN, SPLITS, make_face_id, validate_row
from fsr_core.data.splits import assign_split, check_fractions

__all__ = ["IMAGE_EXTENSIONS", "PAIRING_COLUMNS", "SHARD_EXTENSION", "CropsReader", "Pairing", "parse_pairing"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SHARD_EXTENSION = ".parquet"
#: required columns of the pairing CSV; ``split`` may be added
PAIRING_COLUMNS = ("lr", "hr_id")
DEFAULT_FRACTIONS = {"train": 0.9, "val": 0.05, "test": 0.05}
_REQUIRED_COLUMNS = ("id", IMAGE_COLUMN, "height", "width", "source", "source_uri", "split")

#: ``{lr relative path: (hr_id, split or None, line number)}``
Pairing = dict[str, tuple[str, str | None, int]]


def _relative(uri: str, root: str) -> str:
    if storage.is_s3(uri):
        return uri[len(root.rstrip("/")) + 1:]
    return os.path.relpath(uri, root).replace(os.sep, "/")


def _clean_path(text: str) -> str:
    path = text.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def parse_pairing(text: str, uri: str) -> Pairing:
    """The lines of a pairing CSV (see the module docstring); ``ValueError`` naming ``uri`` when malformed."""
    reader = csv.DictReader(io.StringIO(text))
    columns = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in PAIRING_COLUMNS if name not in columns]
    unknown = [name for name in columns if name not in (*PAIRING_COLUMNS, "split")]
    if missing or unknown:
        raise ValueError(f"{uri}: a pairing file needs the header 'lr,hr_id' (optional column: split); got "
                         f"{columns or 'no header'}" + (f", missing {missing}" if missing else "")
                         + (f", unknown {unknown}" if unknown else ""))
    reader.fieldnames = columns
    pairing: Pairing = {}
    for row in reader:
        number = reader.line_num
        if None in row or any(row[name] is None for name in columns):
            raise ValueError(f"{uri}: line {number}: expected {len(columns)} fields ({','.join(columns)})")
        lr, hr_id = _clean_path(row["lr"]), row["hr_id"].strip()
        split = (row.get("split") or "").strip() or None
        if not lr or not hr_id:
            raise ValueError(f"{uri}: line {number}: lr and hr_id must not be empty")
        if lr.startswith("/") or "://" in lr or ".." in lr.split("/"):
            raise ValueError(f"{uri}: line {number}: lr {lr!r} must be a path relative to the root")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{uri}: line {number}: split {split!r} is not one of {SPLITS}")
        earlier = pairing.get(lr)
        if earlier is not None and earlier[:2] != (hr_id, split):
            raise ValueError(f"{uri}: line {number}: {lr} is already paired with {earlier[0]!r} on line {earlier[2]}")
        pairing.setdefault(lr, (hr_id, split, number))
    return pairing


@dataclass(frozen=True)
class CropsReader:
    """Face crops taken as they are (see the module docstring).

    Args:
        source: the ``source`` column of image rows (shard rows keep theirs).
        pairing: pairing CSV relative to ``root`` (``None``: no pairing).
        split_fractions: ``{"train": f, "val": f, "test": f}`` for the hash splits.
        max_side: images with a side above this are quarantined (``image_too_large``).
        max_bytes: image files above this many bytes are quarantined unread (``file_too_large``).
    """

    source: str = "crops"
    pairing: str | None = None
    split_fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    max_side: int = 4096
    max_bytes: int = 64 * 2**20
    png_compression: int = field(default=3, repr=False)

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source must not be empty")
        if self.max_side < 1 or self.max_bytes < 1:
            raise ValueError(f"max_side and max_bytes must be >= 1, got {self.max_side}, {self.max_bytes}")
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))

    # -- listing ---------------------------------------------------------------------------
    def read_pairing(self, root: str) -> Pairing:
        """The parsed pairing file (``{}`` without one); raises naming the file when absent or malformed."""
        if not self.pairing:
            return {}
        name = _clean_path(self.pairing)
        if self.pairing.startswith("/") or "://" in self.pairing or ".." in name.split("/"):
            raise ValueError(f"pairing {self.pairing!r} must be a path below the root {root} (so that the root's "
                             "content hash covers it): copy it into the root")
        uri = storage.join(root, name)
        try:
            text = storage.read_bytes(uri).decode("utf-8-sig", errors="replace")
        except FileNotFoundError:
            raise FileNotFoundError(f"pairing file missing: {uri} (configured as {self.pairing!r}, relative to "
                                    f"the root {root})") from None
        return parse_pairing(text, uri)

    def list_items(self, root: str) -> list[SourceItem]:
        """One item per image file and per shard under ``root``, sorted by relative path; then one
        quarantine item per pairing line that names no listed image."""
        pairing = self.read_pairing(root)
        items: list[SourceItem] = []
        for info in storage.list_files(root):
            relative = _relative(info.uri, root)
            name = relative.rsplit("/", 1)[-1]
            if name.startswith("."):
                continue
            lowered = name.lower()
            if lowered.endswith(SHARD_EXTENSION):
                items.append(SourceItem(info.uri, {"relative_path": relative, "kind": "shard"}, None))
            elif lowered.endswith(IMAGE_EXTENSIONS):
                items.append(self._image_item(info.uri, relative, info.size, pairing.get(relative)))
        if not items:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) or {SHARD_EXTENSION} shards "
                                    f"under {root}")
        items.sort(key=lambda item: item.annotations["relative_path"])
        images = {item.annotations["relative_path"] for item in items if item.annotations["kind"] == "image"}
        unmatched = sorted(lr for lr in pairing if lr not in images)
        if unmatched:
            logger.warning("%s: %d pairing line(s) of %s name no image under %s (first: %s); quarantined as "
                           "pairing_missing_file", self.source, len(unmatched), self.pairing, root,
                           ", ".join(unmatched[:5]))
        for lr in unmatched:
            hr_id, _, line = pairing[lr]
            detail = f"{self.pairing} line {line} pairs {lr} with HR {hr_id}, but no image file {lr} is under the root"
            items.append(SourceItem(storage.join(root, lr), {"relative_path": lr, "kind": "pairing",
                                                             "quarantine": [("pairing_missing_file", detail)]}, None))
        return items

    def _image_item(self, uri: str, relative: str, size: int, paired: tuple[str, str | None, int] | None) -> SourceItem:
        annotations: dict[str, Any] = {"relative_path": relative, "kind": "image"}
        if size > self.max_bytes:
            annotations["quarantine"] = [("file_too_large", f"{size} bytes, more than max_bytes {self.max_bytes}")]
        if paired is None:
            annotations["split_from"] = "hash"
            return SourceItem(uri, annotations, assign_split(relative, self.split_fractions, salt=self.source))
        hr_id, split, _ = paired
        annotations["hr_id"] = hr_id
        annotations["split_from"] = "pairing" if split else "hr_id"
        return SourceItem(uri, annotations, split or assign_split(hr_id, self.split_fractions))

    # -- processing ------------------------------------------------------------------------
    def process(self, item: SourceItem) -> Iterator[dict[str, Any] | Quarantined]:
        """The image's row, or the shard's valid rows, and quarantine records for the rest."""
        preset = listing_quarantine(item)
        if preset:
            yield from preset
            return
        data = read_item(item)
        if isinstance(data, Quarantined):
            yield data
            return
        if item.annotations["kind"] == "shard":
            yield from self._shard_rows(item, data)
        else:
            yield self._image_row(item, data)

    def _image_row(self, item: SourceItem, data: bytes) -> dict[str, Any] | Quarantined:
        if len(data) > self.max_bytes:  # grew since the listing
            return Quarantined(item.uri, "file_too_large", f"{len(data)} bytes, more than max_bytes {self.max_bytes}")
        try:
            rgb, notes = decode_image(data)
        except BadImage as exc:
            return Quarantined(item.uri, exc.reason, exc.detail)
        height, width = rgb.shape[:2]
        if max(height, width) > self.max_side:
            return Quarantined(item.uri, "image_too_large", f"{width}x{height}: a side above max_side {self.max_side}")
        relative = item.annotations["relative_path"]
        meta: dict[str, Any] = {
            "relative_path": relative,
            "image_size": [int(height), int(width)],
            "content_sha256": content_sha256(data),
            "decode": notes,
            "split_from": item.annotations["split_from"],
        }
        if notes.get("mode") in ("grey", "grey_alpha"):
            meta["grey"] = True
        if "hr_id" in item.annotations:
            meta["hr_id"] = item.annotations["hr_id"]
        return {
            "id": make_face_id(self.source, relative),
            "image_png": encode_png(np.ascontiguousarray(rgb), compression=self.png_compression),
            "height": int(height),
            "width": int(width),
            "source": self.source,
            "source_uri": item.uri,
            "bbox": [0.0, 0.0, float(width), float(height)],
            "meta": meta,
            "split": item.split,
        }

    def _shard_rows(self, item: SourceItem, data: bytes) -> Iterator[dict[str, Any] | Quarantined]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError, ValueError) as exc:
            yield Quarantined(item.uri, "invalid_shard", f"not a readable Parquet file: {type(exc).__name__}: {exc}")
            return
        missing = [name for name in _REQUIRED_COLUMNS if name not in table.column_names]
        unknown = [name for name in table.column_names if name not in FACE_SCHEMA.names]
        if missing or unknown:
            yield Quarantined(item.uri, "invalid_shard", f"not a face-crop shard: missing columns {missing}, "
                                                         f"unknown columns {unknown}")
            return
        for index, row in enumerate(table.to_pylist()):
            try:
                checked = validate_row(row)
                rgb, _ = decode_image(bytes(checked[IMAGE_COLUMN]))
            except (ValueError, TypeError) as exc:  # SchemaError, BadImage, bad JSON
                yield Quarantined(item.uri, "invalid_row", f"row {index} (id {row.get('id')!r}): {exc}")
                continue
            shape = (int(checked["height"]), int(checked["width"]))
            if rgb.shape[:2] != shape:
                yield Quarantined(item.uri, "invalid_row", f"row {index} (id {checked['id']!r}): the PNG is "
                                  f"{rgb.shape[1]}x{rgb.shape[0]}, the row says {shape[1]}x{shape[0]}")
            elif max(shape) > self.max_side:
                yield Quarantined(item.uri, "invalid_row", f"row {index} (id {checked['id']!r}): "
                                  f"{shape[1]}x{shape[0]} has a side above max_side {self.max_side}")
            else:
                yield checked
