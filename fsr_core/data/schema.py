"""The face-crop shard schema: one Parquet row per face crop.

Every reader and writer of face crops uses :data:`FACE_SCHEMA`; nothing else
defines columns. Columns:

============  ====================  =========================================================
column        type                  meaning
============  ====================  =========================================================
id            string                stable id (see :func:`make_face_id`)
image_png     binary                the crop, lossless PNG (RGB, 8 bit)
height        int32                 crop height in pixels
width         int32                 crop width in pixels
source        string                data set name (``synthetic``, ``lfw``, ``wider_face`` ...)
source_uri    string                the file the crop came from (or a generator reference)
frame_index   int64, nullable       frame number for crops taken from video
bbox          list<float32>, null   ``[x0, y0, x1, y1]`` of the crop in the source image
landmarks     list<float32>, null   flattened ``[x1, y1, x2, y2, ...]`` in crop pixels
identity      string, nullable      identity label (CelebA identity, synthetic identity)
attributes    string (JSON object)  named attributes, e.g. ``{"smiling": 1, "eyeglasses": 0}``
quality       string (JSON object)  data set quality flags, e.g. WIDER FACE blur/occlusion
meta          string (JSON object)  anything else (original size, render conditions ...)
split         string                ``train`` / ``val`` / ``test``
============  ====================  =========================================================

JSON-object columns keep the schema fixed across data sets whose attribute sets
differ; :func:`decode_json_column` turns them back into dicts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import pyarrow as pa

__all__ = [
    "FACE_SCHEMA",
    "SPLITS",
    "IMAGE_COLUMN",
    "SchemaError",
    "make_face_id",
    "validate_row",
    "rows_to_table",
    "decode_json_column",
]

SPLITS = ("train", "val", "test")
IMAGE_COLUMN = "image_png"

FACE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field(IMAGE_COLUMN, pa.binary(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=True),
        pa.field("bbox", pa.list_(pa.float32()), nullable=True),
        pa.field("landmarks", pa.list_(pa.float32()), nullable=True),
        pa.field("identity", pa.string(), nullable=True),
        pa.field("attributes", pa.string(), nullable=False),
        pa.field("quality", pa.string(), nullable=False),
        pa.field("meta", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ],
    metadata={b"fsr.schema": b"face-crops/1"},
)

_JSON_COLUMNS = ("attributes", "quality", "meta")
_REQUIRED = ("id", IMAGE_COLUMN, "height", "width", "source", "source_uri", "split")


class SchemaError(ValueError):
    """A row or table does not follow :data:`FACE_SCHEMA`."""


def make_face_id(source: str, source_uri: str, *, frame_index: int | None = None, bbox=None, extra: str = "") -> str:
    """A stable id from where a crop came from: same source, file, frame and box -> same id."""
    parts = [source, source_uri, "" if frame_index is None else str(int(frame_index))]
    if bbox is not None:
        parts.append(",".join(f"{float(v):.2f}" for v in bbox))
    parts.append(extra)
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:24]
    return f"{source}-{digest}"


def validate_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Check one row dict and fill optional columns; JSON columns may be given as dicts.

    Raises :class:`SchemaError` naming the column on a missing or wrong value.
    """
    unknown = set(row) - set(FACE_SCHEMA.names)
    if unknown:
        raise SchemaError(f"unknown column(s) {sorted(unknown)}; the schema has {FACE_SCHEMA.names}")
    for name in _REQUIRED:
        if row.get(name) is None:
            raise SchemaError(f"column {name!r} is required")
    out = dict(row)
    if not isinstance(out[IMAGE_COLUMN], (bytes, bytearray)) or not bytes(out[IMAGE_COLUMN][:8]) == b"\x89PNG\r\n\x1a\n":
        raise SchemaError(f"column {IMAGE_COLUMN!r} must hold PNG bytes (row id {out['id']!r})")
    if out["split"] not in SPLITS:
        raise SchemaError(f"column 'split' must be one of {SPLITS}, got {out['split']!r} (row id {out['id']!r})")
    for name in ("height", "width"):
        if int(out[name]) <= 0:
            raise SchemaError(f"column {name!r} must be positive (row id {out['id']!r})")
    bbox = out.get("bbox")
    if bbox is not None and len(bbox) != 4:
        raise SchemaError(f"column 'bbox' must have 4 values [x0, y0, x1, y1], got {len(bbox)} (row id {out['id']!r})")
    landmarks = out.get("landmarks")
    if landmarks is not None and len(landmarks) % 2:
        raise SchemaError(f"column 'landmarks' must hold x, y pairs (row id {out['id']!r})")
    for name in _JSON_COLUMNS:
        value = out.get(name)
        if value is None:
            value = {}
        if isinstance(value, Mapping):
            value = json.dumps(dict(value), sort_keys=True)
        elif isinstance(value, str):
            if not isinstance(json.loads(value), dict):
                raise SchemaError(f"column {name!r} must be a JSON object (row id {out['id']!r})")
        else:
            raise SchemaError(f"column {name!r} must be a dict or JSON object string (row id {out['id']!r})")
        out[name] = value
    for name in ("frame_index", "bbox", "landmarks", "identity"):
        out.setdefault(name, None)
    return out


def rows_to_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Validate rows and build a table with exactly :data:`FACE_SCHEMA`."""
    checked = [validate_row(row) for row in rows]
    columns = {name: [row[name] for row in checked] for name in FACE_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=FACE_SCHEMA)


def decode_json_column(values) -> list[dict]:
    """Turn a JSON-object column (list, numpy array or Arrow array) back into dicts."""
    if hasattr(values, "to_pylist"):
        values = values.to_pylist()
    return [json.loads(v) if v else {} for v in values]
