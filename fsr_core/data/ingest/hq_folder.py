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
file's MD5 is checked (``checksum_mismatch`` when it differs). Without one (CelebA-HQ without its
image list and CelebA's partition file, below; FFHQ without the JSON; a file the JSON does not
list): the split is :func:`~fsr_core.data.splits.assign_split` of the file name with the configured
fractions, salted with the source name: deterministic, the same on every machine and for every
copy of the data.

CelebA-HQ's official split (optional; configure ``image_list_file``, and ``partition_file`` and/or
``identity_file``, paths relative to ``root``). CelebA-HQ images are CelebA images re-processed;
the release's ``image_list.txt`` says which::

    idx    orig_idx  orig_file   proc_md5  final_md5      header (optional: a mirror may drop it)
    0      3         000004.jpg  <md5>     <md5>          row ``idx`` describes output image ``idx``

and CelebA's ``list_eval_partition.txt`` (``000001.jpg 0``; 0 train, 1 val, 2 test) and
``identity_CelebA.txt`` (``000001.jpg 2880``) annotate the originals. With the image list and the
partition file, each HQ image takes the split of its CelebA original (``split_from: official``):
training on CelebA-HQ then never sees a CelebA val/test image, nor (CelebA's partition being
identity-disjoint) a val/test identity. With the identity file, rows carry the original's identity
as the CelebA reader writes it (the file's label, a string), so the two sources' identities match.
``meta`` records ``orig_file`` and ``celeba_hq_idx``. An HQ file is matched to its row by the stem
of its name (case-insensitive), in the naming variants of the release and its re-distributions::

    imgHQ00000.png   official name (the release's ``.npy`` converted to an image; ``.npy`` is not read)
    0.jpg            CelebAMask-HQ's ``CelebA-HQ-img/``        (plain integer)
    00000.png        zero-padded integer                        (any padding)

Originals are matched to partition/identity lines by stem too (``000004.jpg`` matches a
``000004.png`` line of a PNG re-encode of CelebA). Quarantined at listing: ``not_in_image_list``
(a name of none of the forms above, or an idx the list has no row for) and ``not_in_partition``
(the original is missing from the partition file: it is not hash-split, which could leak a test
identity into train). An original missing from the identity file leaves ``identity`` empty, as in
the CelebA reader. A configured file that is absent raises ``FileNotFoundError`` naming it; a
malformed line in any of them (wrong field count, a non-integer idx, an idx listed twice, a
partition other than 0/1/2) raises ``ValueError`` naming the file and line, before any work: a
broken annotation file is a broken setup, and these files decide what may be trained on.

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
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.ingest.base import Quarantined, SourceItem, content_sha256, listing_quarantine, read_item
from fsr_core.data.ingest.celeba import CELEBA_PARTITIONS
from fsr_core.data.ingest.images import BadImage, decode_image
from fsr_core.data.schema import make_face_id
from fsr_core.data.splits import assign_split, check_fractions
from fsr_core.degradation.resize import imresize

__all__ = [
    "HQ_SOURCES", "FFHQ_CATEGORIES", "FFHQ_METADATA_FILE", "CELEBA_HQ_IMAGE_LIST_COLUMNS", "HQFolderReader",
    "celeba_hq_index", "parse_image_list", "parse_name_table",
]

HQ_SOURCES = ("celeba_hq", "ffhq")
FFHQ_METADATA_FILE = "ffhq-dataset-v2.json"
FFHQ_CATEGORIES = {"training": "train", "validation": "val"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_FRACTIONS = {"train": 0.9, "val": 0.05, "test": 0.05}
#: the columns of CelebA-HQ's ``image_list.txt``, in file order
CELEBA_HQ_IMAGE_LIST_COLUMNS = ("idx", "orig_idx", "orig_file", "proc_md5", "final_md5")
#: the stem of a CelebA-HQ file name: ``imgHQ00000`` (official), ``0`` / ``00000`` (re-distributions)
_HQ_STEM = re.compile(r"(?:imghq)?([0-9]+)", re.IGNORECASE)  # [0-9]: ASCII digits only
#: ``({idx: orig_file}, {stem: split} or None, {stem: identity} or None)``
_CelebATables = tuple[dict[int, str], "dict[str, str] | None", "dict[str, str] | None"]


def _relative(uri: str, root: str) -> str:
    if storage.is_s3(uri):
        return uri[len(root.rstrip("/")) + 1:]
    return os.path.relpath(uri, root).replace(os.sep, "/")


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _stem(name: str) -> str:
    """``name`` without its last extension (``000004.jpg`` -> ``000004``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def _is_count(text: str) -> bool:
    """A non-negative integer in ASCII digits (``str.isdigit`` also takes ``²``)."""
    return text.isascii() and text.isdigit()


def celeba_hq_index(name: str) -> int | None:
    """The CelebA-HQ ``idx`` a file name stands for, or ``None`` for a name of no known form.

    Recognised (case-insensitive, any extension): ``imgHQ00000.png`` (the release's own name),
    ``0.jpg`` (CelebAMask-HQ) and ``00000.png`` (zero-padded, any width).
    """
    match = _HQ_STEM.fullmatch(_stem(_basename(name)))
    return int(match.group(1)) if match else None


def parse_image_list(text: str, uri: str) -> dict[int, str]:
    """``{idx: orig_file}`` from CelebA-HQ's ``image_list.txt`` (see the module docstring), or from
    CelebAMask-HQ's ``CelebA-HQ-to-CelebA-mapping.txt`` (its first three columns only).

    The header line is optional; when present it must name the five columns (``image_list.txt``)
    or the first three (the mapping file), and the rows must then have that many fields. Raises
    ``ValueError`` naming ``uri`` and the line for a wrong header, a row with another number of
    fields, a non-integer ``idx``/``orig_idx``, an ``orig_file`` without an extension, an ``idx``
    listed twice, or a file with no rows: a half-read list would silently change splits.
    """
    rows: dict[int, str] = {}
    first_seen: dict[int, int] = {}
    formats = (list(CELEBA_HQ_IMAGE_LIST_COLUMNS), list(CELEBA_HQ_IMAGE_LIST_COLUMNS[:3]))
    expected = " or ".join(repr(" ".join(columns)) for columns in formats)
    width: int | None = None  # fields per row: from the header, else the first row
    first_line = True
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if first_line:
            first_line = False
            if not _is_count(fields[0]):  # a header, or garbage where the header should be
                if [f.lower() for f in fields] not in formats:
                    raise ValueError(f"{uri}: line {number}: expected the header {expected} or a first row, "
                                     f"got {raw.strip()!r}")
                width = len(fields)
                continue
        where = f"{uri}: line {number}"
        if width is None and len(fields) in (3, 5):
            width = len(fields)
        if len(fields) != width:
            raise ValueError(f"{where}: expected {width or '3 or 5'} fields ({expected}), "
                             f"got {len(fields)}: {raw.strip()!r}")
        idx, orig_idx, orig_file = fields[:3]
        if not (_is_count(idx) and _is_count(orig_idx)):
            raise ValueError(f"{where}: idx and orig_idx must be non-negative integers, got {idx!r}, {orig_idx!r}")
        if "." not in orig_file:
            raise ValueError(f"{where}: orig_file {orig_file!r} is not a CelebA file name (like 000004.jpg)")
        key = int(idx)
        if key in first_seen:
            raise ValueError(f"{where}: idx {key} is already listed on line {first_seen[key]}")
        first_seen[key] = number
        rows[key] = orig_file
    if not rows:
        raise ValueError(f"{uri}: no rows (expected {expected} lines)")
    return rows


def parse_name_table(text: str, uri: str, *, value: str, allowed: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{stem: value}`` from a two-column CelebA list (``000001.jpg 0``, ``000001.jpg 2880``).

    Keys are file stems (``000001``) so that a list naming ``.jpg`` files matches originals named
    ``.png`` and back. ``allowed`` maps accepted values to what is stored (the partition codes);
    ``None`` keeps any value. The first line of a name listed twice wins, as in the CelebA reader.
    Raises ``ValueError`` naming ``uri`` and the line for a line that is not ``<file> <value>`` or
    holds a value outside ``allowed``, and for a file with no lines.
    """
    rows: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        where = f"{uri}: line {number}"
        if len(fields) != 2 or "." not in fields[0]:
            raise ValueError(f"{where}: expected '<file name> <{value}>', got {raw.strip()!r}")
        name, entry = fields
        if allowed is not None:
            if entry not in allowed:
                raise ValueError(f"{where}: {value} {entry!r} is not one of {sorted(allowed)}")
            entry = allowed[entry]
        rows.setdefault(_stem(name), entry)
    if not rows:
        raise ValueError(f"{uri}: no lines (expected '<file name> <{value}>' lines)")
    return rows


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
        image_list_file: CelebA-HQ's ``image_list.txt``, relative to ``root``; ``None`` (default):
            not read, splits are hashed. Needed by the two below (CelebA-HQ only).
        partition_file: CelebA's ``list_eval_partition.txt`` relative to ``root``: each image takes
            its original's official split.
        identity_file: CelebA's ``identity_CelebA.txt`` relative to ``root``: rows carry the
            original's identity.
    """

    source: str
    size: int | None = 128
    split_fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    metadata_file: str | None = FFHQ_METADATA_FILE
    verify_md5: bool = True
    png_compression: int = field(default=3, repr=False)
    image_list_file: str | None = None
    partition_file: str | None = None
    identity_file: str | None = None

    def __post_init__(self) -> None:
        if self.source not in HQ_SOURCES:
            raise ValueError(f"source must be one of {HQ_SOURCES}, got {self.source!r}")
        celeba_files = {"image_list_file": self.image_list_file, "partition_file": self.partition_file,
                        "identity_file": self.identity_file}
        configured = sorted(name for name, value in celeba_files.items() if value)
        if configured and self.source != "celeba_hq":
            raise ValueError(f"{', '.join(configured)}: CelebA-HQ files, not read for source {self.source!r}")
        if configured and not self.image_list_file:
            raise ValueError(f"{', '.join(configured)} need image_list_file (CelebA-HQ's image_list.txt), which "
                             "says which CelebA image each CelebA-HQ image was made from")
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

    def _read_text(self, root: str, name: str, what: str) -> tuple[str, str]:
        """``(uri, text)`` of a configured annotation file; ``FileNotFoundError`` naming it when absent.

        The file must lie below the root (``ValueError`` otherwise): the ingest's cache key lists the
        root, so a file elsewhere could change without the cache noticing (and ``..`` has no meaning
        in an S3 key). Copy or link CelebA's lists into the CelebA-HQ root."""
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or "://" in name or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"CelebA-HQ {what} {name!r} must be a path below the root {root} (no '..', not "
                             "absolute): copy or link it into the root")
        uri = storage.join(root, name)
        try:
            return uri, storage.read_bytes(uri).decode("utf-8-sig", errors="replace")
        except FileNotFoundError:
            raise FileNotFoundError(f"CelebA-HQ {what} missing: {uri} (configured as {name!r}, relative to "
                                    f"the root {root})") from None

    def _celeba_tables(self, root: str) -> _CelebATables:
        """``(image list, partitions, identities)``: ``{idx: orig_file}``, ``{stem: split}`` and
        ``{stem: identity}``; the last two ``None`` when not configured."""
        uri, text = self._read_text(root, self.image_list_file, "image list")
        image_list = parse_image_list(text, uri)
        partitions = identities = None
        if self.partition_file:
            uri, text = self._read_text(root, self.partition_file, "partition file")
            partitions = parse_name_table(text, uri, value="partition", allowed=CELEBA_PARTITIONS)
        if self.identity_file:
            uri, text = self._read_text(root, self.identity_file, "identity file")
            identities = parse_name_table(text, uri, value="identity")
        return image_list, partitions, identities

    def _celeba_annotations(self, name: str, tables: _CelebATables, root: str) -> tuple[dict[str, Any], str | None]:
        """The CelebA-HQ annotations of file ``name`` and its official split (``None``: none, or quarantined)."""
        image_list, partitions, identities = tables
        idx = celeba_hq_index(name)
        if idx is None:
            detail = (f"{name}: not a CelebA-HQ file name (imgHQ<idx>, <idx> or zero-padded <idx>), so no row of "
                      f"{self.image_list_file} describes it")
            return {"quarantine": [("not_in_image_list", detail)]}, None
        orig_file = image_list.get(idx)
        if orig_file is None:
            return {"quarantine": [("not_in_image_list", f"{name}: idx {idx} has no row in "
                                    f"{storage.join(root, self.image_list_file)}")]}, None
        annotations: dict[str, Any] = {"celeba_hq_idx": idx, "orig_file": orig_file}
        if identities is not None:
            annotations["identity"] = identities.get(_stem(orig_file))
        split = None
        if partitions is not None:
            split = partitions.get(_stem(orig_file))
            if split is None:
                annotations["quarantine"] = [("not_in_partition", f"{name}: its CelebA original {orig_file} "
                                              f"(idx {idx}) is not listed in {storage.join(root, self.partition_file)}")]
        return annotations, split

    def list_items(self, root: str) -> list[SourceItem]:
        """One item per image file under ``root``, sorted by relative path."""
        tables = self._celeba_tables(root) if self.image_list_file else None
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
            if tables is not None:
                extra, split = self._celeba_annotations(name, tables, root)
                annotations.update(extra)
                if "quarantine" in extra:
                    items.append(SourceItem(info.uri, annotations, "train"))  # never processed
                    continue
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
            "identity": item.annotations.get("identity"),
            "meta": {
                "relative_path": relative,
                "image_size": [height, width],
                "split_from": item.annotations.get("split_from"),
                "content_sha256": content_sha256(data),
                "decode": notes,
                **({"provenance": item.annotations["provenance"]} if item.annotations.get("provenance") else {}),
                **({key: item.annotations[key] for key in ("orig_file", "celeba_hq_idx")}
                   if "orig_file" in item.annotations else {}),
            },
            "split": item.split,
        }
