"""CelebA-HQ and FFHQ reader: folders of aligned 1024 x 1024 faces, resized to a training size.

Layouts under ``root`` (local folder or ``s3://``); images are found recursively, any folder
structure, ``.png`` / ``.jpg`` / ``.jpeg`` (any case), hidden files skipped::

    CelebA-HQ                                  FFHQ
    0.jpg ... 29999.jpg   (CelebAMask-HQ)       images1024x1024/00000/00000.png ... 69999.png
    or imgHQ00000.png ...                       ffhq-dataset-v2.json   (optional metadata)

FFHQ's ``ffhq-dataset-v2.json`` (when present under ``root``) maps ``"<index>"`` to a record::

    {"category": "training" | "validation",
     "metadata": {"photo_url", "photo_title", "author", "country", "license", "license_url", ...},
     "image": {"file_path": "images1024x1024/00000/00000.png", "file_md5", "pixel_size": [1024, 1024],
               "face_landmarks": [[x, y] x 68]}, "thumbnail": {...}, "in_the_wild": {...}}

Records are matched to files by file name (``00000.png``), so a flattened copy works too. With a
record: the split is its category (``training`` -> train, ``validation`` -> val), the 68 landmarks
are carried into the resized image, the photo's URL, author and licence go to ``meta``, and the
file's MD5 is checked (``checksum_mismatch`` when it differs). Without one (CelebA-HQ, FFHQ without
the JSON, a file the JSON does not list): the split is :func:`~fsr_core.data.splits.assign_split`
of the file name with the configured fractions, salted with the source name: deterministic, the
same on every machine and for every copy of the data.

Each image is resized as a whole to ``size`` x ``size`` with MATLAB's antialiasing bicubic.
Quarantined: ``not_square`` (the face sets are square; anything else is a wrong folder),
``image_too_small`` (smaller than ``size``: an HR set must not hold upsampled images), and the
decoding reasons of :func:`~fsr_core.data.ingest.images.decode_image`. Grey, RGBA and 16-bit files
are converted to RGB 8-bit (``meta.decode`` says how).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.ingest.base import Quarantined, SourceItem, content_sha256, listing_quarantine, read_item
from fsr_core.data.ingest.images import BadImage, decode_image
from fsr_core.data.schema import make_face_id
from fsr_core.data.splits import assign_split, check_fractions
from fsr_core.degradation.resize import imresize

__all__ = ["HQ_SOURCES", "FFHQ_CATEGORIES", "FFHQ_METADATA_FILE", "HQFolderReader"]

HQ_SOURCES = ("celeba_hq", "ffhq")
FFHQ_METADATA_FILE = "ffhq-dataset-v2.json"
FFHQ_CATEGORIES = {"training": "train", "validation": "val"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_FRACTIONS = {"train": 0.9, "val": 0.05, "test": 0.05}


def _relative(uri: str, root: str) -> str:
    if storage.is_s3(uri):
        return uri[len(root.rstrip("/")) + 1:]
    return os.path.relpath(uri, root).replace(os.sep, "/")


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class HQFolderReader:
    """Whole aligned faces of CelebA-HQ or FFHQ, resized (see the module docstring).

    Args:
        source: ``"celeba_hq"`` or ``"ffhq"``: the ``source`` column, and whether FFHQ's metadata
            file is looked for.
        size: output side in pixels; ``None`` keeps the stored size.
        split_fractions: ``{"train": f, "val": f, "test": f}`` for files without an official split.
        metadata_file: FFHQ's JSON, relative to ``root`` (ignored for CelebA-HQ; ``None``: never read).
        verify_md5: compare each FFHQ file with the MD5 its metadata record gives.
    """

    source: str
    size: int | None = 128
    split_fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    metadata_file: str | None = FFHQ_METADATA_FILE
    verify_md5: bool = True
    png_compression: int = field(default=3, repr=False)

    def __post_init__(self) -> None:
        if self.source not in HQ_SOURCES:
            raise ValueError(f"source must be one of {HQ_SOURCES}, got {self.source!r}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1 or None, got {self.size}")
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))

    # -- listing ---------------------------------------------------------------------------
    def _metadata(self, root: str, listed: set[str]) -> dict[str, dict]:
        """FFHQ records by file name, or ``{}`` without the metadata file."""
        if self.source != "ffhq" or not self.metadata_file:
            return {}
        uri = storage.join(root, self.metadata_file)
        if uri not in listed:
            return {}
        try:
            records = json.loads(storage.read_bytes(uri))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{uri}: not valid JSON ({exc}); remove it or fix it") from None
        if not isinstance(records, dict):
            raise ValueError(f"{uri}: expected an object of records keyed by image index")
        by_name: dict[str, dict] = {}
        for key, record in records.items():
            path = ((record or {}).get("image") or {}).get("file_path") if isinstance(record, dict) else None
            name = _basename(path) if path else f"{int(key):05d}.png" if str(key).isdigit() else None
            if name:
                by_name.setdefault(name, record)
        return by_name

    def list_items(self, root: str) -> list[SourceItem]:
        """One item per image file under ``root``, sorted by relative path."""
        files = storage.list_files(root)
        listed = {info.uri for info in files}
        images = [info for info in files
                  if info.uri.lower().endswith(IMAGE_EXTENSIONS) and not _basename(info.uri).startswith(".")]
        if not images:
            raise FileNotFoundError(f"no PNG/JPEG images under {root} (expected a {self.source} image folder)")
        records = self._metadata(root, listed)
        items: list[SourceItem] = []
        for info in images:
            relative = _relative(info.uri, root)
            name = _basename(relative)
            annotations: dict[str, Any] = {"relative_path": relative}
            record = records.get(name)
            split = None
            if record is not None:
                split = FFHQ_CATEGORIES.get(record.get("category"))
                image = record.get("image") or {}
                meta = record.get("metadata") or {}
                annotations["landmarks"] = image.get("face_landmarks")
                annotations["file_md5"] = image.get("file_md5")
                annotations["provenance"] = {key: meta.get(key) for key in
                                             ("photo_url", "photo_title", "author", "country", "license", "license_url")
                                             if meta.get(key) is not None}
            annotations["split_from"] = "official" if split else "hash"
            if split is None:
                split = assign_split(name, self.split_fractions, salt=self.source)
            items.append(SourceItem(info.uri, annotations, split))
        items.sort(key=lambda item: item.annotations["relative_path"])
        return items

    # -- processing ------------------------------------------------------------------------
    def process(self, item: SourceItem) -> Iterator[dict[str, Any] | Quarantined]:
        """The resized image (or why there is none)."""
        preset = listing_quarantine(item)
        if preset:
            yield from preset
            return
        data = read_item(item)
        if isinstance(data, Quarantined):
            yield data
            return
        expected_md5 = item.annotations.get("file_md5")
        if self.verify_md5 and expected_md5:
            actual = hashlib.md5(data).hexdigest()
            if actual != expected_md5:
                yield Quarantined(item.uri, "checksum_mismatch", f"md5 {actual}, metadata says {expected_md5}")
                return
        try:
            rgb, notes = decode_image(data)
        except BadImage as exc:
            yield Quarantined(item.uri, exc.reason, exc.detail)
            return
        height, width = rgb.shape[:2]
        if height != width:
            yield Quarantined(item.uri, "not_square", f"{width}x{height}: {self.source} images are square")
            return
        if self.size is not None and height < self.size:
            yield Quarantined(item.uri, "image_too_small", f"{width}x{height} is smaller than size {self.size}")
            return
        image = rgb
        if self.size is not None and self.size != height:
            image = imresize(rgb, output_size=(self.size, self.size))
        image = np.ascontiguousarray(image)
        scale = image.shape[0] / height
        points = item.annotations.get("landmarks")
        if points:
            xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            points = ((xy + 0.5) * scale - 0.5).reshape(-1).tolist()
        else:
            points = None
        relative = item.annotations["relative_path"]
        yield {
            "id": make_face_id(self.source, relative),
            "image_png": encode_png(image, compression=self.png_compression),
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "source": self.source,
            "source_uri": item.uri,
            "bbox": [0.0, 0.0, float(width), float(height)],
            "landmarks": points,
            "meta": {
                "relative_path": relative,
                "image_size": [height, width],
                "split_from": item.annotations.get("split_from"),
                "content_sha256": content_sha256(data),
                "decode": notes,
                **({"provenance": item.annotations["provenance"]} if item.annotations.get("provenance") else {}),
            },
            "split": item.split,
        }
