"""CelebA reader: aligned celebrity faces with landmarks, identities, attributes and official splits.

Layout under ``root`` (the "Align&Cropped Images" release; local folder or ``s3://``)::

    img_align_celeba/000001.jpg ... 202599.jpg     178 x 218 (W x H) JPEGs, eyes aligned
    list_eval_partition.txt        000001.jpg 0       0 train, 1 val, 2 test          (required)
    list_landmarks_align_celeba.txt                                                   (optional)
        202599                                         line 1: number of images
        lefteye_x lefteye_y righteye_x ... rightmouth_y   line 2: the 10 column names
        000001.jpg 69  109  106  113   77  142   73  152  108  154
    identity_CelebA.txt            000001.jpg 2880                                    (optional)
    list_attr_celeba.txt                                                              (optional)
        202599                                         line 1: number of images
        5_o_Clock_Shadow Arched_Eyebrows ... Young     line 2: the 40 attribute names
        000001.jpg -1  1  1 -1 ...                     values -1 / 1, padded with extra spaces

Fields are whitespace-separated (any number of spaces). The partition file and the image folder
are required; a missing landmark, identity or attribute file leaves that column empty (the
listing logs a warning naming it). A malformed line (wrong number
of fields, a non-integer, an attribute value other than -1/1, a partition other than 0/1/2)
quarantines its image with ``malformed_annotation``. Images on disk that the partition file does
not list are quarantined with ``not_in_partition``; files it lists that are absent with
``missing_file``.

Crops: a ``crop_size`` square cut out of the aligned image (centred unless ``crop_top`` /
``crop_left`` are given; the default 178 at the centre of 178 x 218 is the common
``(0, 20, 178, 198)`` crop), resized to ``size`` with MATLAB's antialiasing bicubic. Landmarks are
carried into the crop's pixel coordinates with the pixel-centre convention of the resize
(``x' = (x - left + 0.5) * size / crop_size - 0.5``); CelebA's coordinates are taken as 0-based
pixel positions. Attributes become ``{name.lower(): 0 or 1}`` (``"smiling": 1``), identities
strings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.ingest.base import Quarantined, SourceItem, content_sha256, listing_quarantine, read_item
from fsr_core.data.ingest.images import BadImage, decode_image
from fsr_core.data.schema import SPLITS, make_face_id
from fsr_core.degradation.resize import imresize

__all__ = ["ATTRIBUTE_NAMES", "CELEBA_PARTITIONS", "LANDMARK_NAMES", "CelebAReader", "parse_table"]

logger = logging.getLogger(__name__)

IMAGE_FOLDER = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
LANDMARK_FILE = "list_landmarks_align_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
ATTRIBUTE_FILE = "list_attr_celeba.txt"

CELEBA_PARTITIONS = {"0": "train", "1": "val", "2": "test"}
#: the 40 attributes in file order (used when a mirror's attribute file has no header lines)
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
LANDMARK_NAMES = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                  "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")


def _has_header(text: str) -> bool:
    for line in text.splitlines():
        if line.strip():
            return line.strip().isdigit()
    return False


def _parse(root: str, name: str, text: str, **kwargs):
    try:
        return parse_table(text, **kwargs)
    except ValueError as exc:
        raise ValueError(f"{storage.join(root, name)}: {exc}") from None


def parse_table(
    text: str, *, columns: int | None, header: bool
) -> tuple[list[str] | None, dict[str, list[str]], dict[str, str]]:
    """Parse a whitespace-separated CelebA list file.

    Args:
        text: the file's content.
        columns: number of values after the file name on each row; with ``header`` and ``None``
            it is the number of names on the header's second line.
        header: the file starts with a count line and a line of column names. A file whose first
            line already is a row (some mirrors drop the header) is read without one.

    Returns:
        ``(names, rows, errors)``: the column names (None without a header), ``{file: values}``
        for good rows (the first row of a file listed twice wins), ``{file: detail}`` for
        malformed rows. Lines that do not start with a file name are reported under the key
        ``"#L<line>"``. A header that fits no row at all raises ``ValueError`` (a broken file,
        not broken rows).
    """
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    names: list[str] | None = None
    if header and lines and len(lines[0][1]) == 1 and lines[0][1][0].isdigit():
        if len(lines) < 2:
            raise ValueError("the count line is not followed by a line of column names")
        names = lines[1][1]
        lines = lines[2:]
        if columns is None:
            columns = len(names)
        elif len(names) != columns:
            raise ValueError(f"the header names {len(names)} columns, expected {columns}: {names}")
    if columns is None:
        raise ValueError("no header line with column names, and no column count given")
    rows: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for number, fields in lines:
        name = fields[0]
        if "." not in name:
            errors[f"#L{number}"] = f"line {number}: does not start with a file name: {' '.join(fields)!r}"
            continue
        if len(fields) != columns + 1:
            errors.setdefault(name, f"line {number}: expected a file name and {columns} values, got {len(fields) - 1}")
            continue
        rows.setdefault(name, fields[1:])
    if names is not None and errors and not rows:
        raise ValueError(f"the header names {columns} columns but no row has {columns} values: wrong header or file")
    return names, rows, errors


@dataclass(frozen=True)
class CelebAReader:
    """Centre crops of aligned CelebA (see the module docstring for the layout and rules).

    Args:
        size: side of the output crops; ``None`` keeps ``crop_size``.
        crop_size: side of the square cut out of the aligned image.
        crop_top, crop_left: its top-left corner; ``None`` centres it.
        splits: official splits to keep; items of the others are not listed.
    """

    source: ClassVar[str] = "celeba"

    size: int | None = 128
    crop_size: int = 178
    crop_top: int | None = None
    crop_left: int | None = None
    splits: tuple[str, ...] = SPLITS
    png_compression: int = field(default=3, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        if not self.splits or set(self.splits) - set(SPLITS):
            raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {list(self.splits)}")
        if self.crop_size < 1 or (self.size is not None and self.size < 1):
            raise ValueError(f"crop_size and size must be >= 1, got {self.crop_size}, {self.size}")
        if (self.crop_top is not None and self.crop_top < 0) or (self.crop_left is not None and self.crop_left < 0):
            raise ValueError("crop_top and crop_left must be >= 0")

    # -- listing ---------------------------------------------------------------------------
    @staticmethod
    def _read_optional(root: str, name: str) -> str | None:
        try:
            return storage.read_bytes(storage.join(root, name)).decode("utf-8", errors="replace")
        except FileNotFoundError:
            logger.warning("CelebA: %s not found under %s; its column stays empty", name, root)
            return None

    def list_items(self, root: str) -> list[SourceItem]:
        """One item per image of the kept splits, sorted by file name."""
        partition_uri = storage.join(root, PARTITION_FILE)
        try:
            partition_text = storage.read_bytes(partition_uri).decode("utf-8", errors="replace")
        except FileNotFoundError:
            raise FileNotFoundError(f"CelebA partition file missing: {partition_uri} "
                                    f"(expected <root>/{PARTITION_FILE} and <root>/{IMAGE_FOLDER}/)") from None
        image_folder = storage.join(root, IMAGE_FOLDER)
        on_disk = {info.uri.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]: info.uri
                   for info in storage.list_files(image_folder)}
        if not on_disk:
            raise FileNotFoundError(f"CelebA image folder missing or empty: {image_folder}")

        _, partitions, errors = _parse(root, PARTITION_FILE, partition_text, columns=1, header=False)
        problems: dict[str, list[tuple[str, str]]] = {}

        def report(list_file: str, errors: dict[str, str]) -> None:
            for name, detail in errors.items():
                key = f"{list_file}{name}" if name.startswith("#") else name  # a line naming no image
                problems.setdefault(key, []).append(("malformed_annotation", f"{list_file} {detail}"))

        report(PARTITION_FILE, errors)
        splits: dict[str, str] = {}
        for name, (value,) in partitions.items():
            if value in CELEBA_PARTITIONS:
                splits[name] = CELEBA_PARTITIONS[value]
            else:
                problems.setdefault(name, []).append(
                    ("malformed_annotation", f"{PARTITION_FILE}: partition {value!r} is not 0, 1 or 2"))

        landmarks: dict[str, list[float]] = {}
        text = self._read_optional(root, LANDMARK_FILE)
        if text is not None:
            _, rows, errors = _parse(root, LANDMARK_FILE, text, columns=len(LANDMARK_NAMES), header=True)
            report(LANDMARK_FILE, errors)
            for name, values in rows.items():
                try:
                    landmarks[name] = [float(int(v)) for v in values]
                except ValueError:
                    problems.setdefault(name, []).append(
                        ("malformed_annotation", f"{LANDMARK_FILE}: non-integer landmark in {values}"))

        identities: dict[str, str] = {}
        text = self._read_optional(root, IDENTITY_FILE)
        if text is not None:
            _, rows, errors = _parse(root, IDENTITY_FILE, text, columns=1, header=False)
            report(IDENTITY_FILE, errors)
            identities = {name: values[0] for name, values in rows.items()}

        attributes: dict[str, dict[str, int]] = {}
        text = self._read_optional(root, ATTRIBUTE_FILE)
        if text is not None:
            columns = None if _has_header(text) else len(ATTRIBUTE_NAMES)
            names, rows, errors = _parse(root, ATTRIBUTE_FILE, text, columns=columns, header=True)
            keys = [n.lower() for n in names or ATTRIBUTE_NAMES]
            report(ATTRIBUTE_FILE, errors)
            for name, values in rows.items():
                if any(v not in ("-1", "1") for v in values):
                    problems.setdefault(name, []).append(
                        ("malformed_annotation", f"{ATTRIBUTE_FILE}: values must be -1 or 1, got {values}"))
                    continue
                attributes[name] = {key: int(v == "1") for key, v in zip(keys, values)}

        items: list[SourceItem] = []
        for name in sorted(set(splits) | set(on_disk) | {n for n in problems if "#" not in n}):
            split = splits.get(name)
            if split is not None and split not in self.splits:
                continue
            uri = on_disk.get(name) or storage.join(image_folder, name)
            annotations: dict[str, Any] = {
                "relative_path": f"{IMAGE_FOLDER}/{name}",
                "landmarks": landmarks.get(name),
                "identity": identities.get(name),
                "attributes": attributes.get(name),
            }
            issues = list(problems.get(name, []))
            if split is None and not issues:
                issues.append(("not_in_partition", f"{name} is not listed in {PARTITION_FILE}"))
            elif name not in on_disk and not issues:
                issues.append(("missing_file", f"{name} is listed in {PARTITION_FILE} but not in {IMAGE_FOLDER}/"))
            if issues:
                annotations["quarantine"] = issues
            items.append(SourceItem(uri, annotations, split or "train"))
        for key in sorted(n for n in problems if "#" in n):  # lines naming no image
            items.append(SourceItem(storage.join(root, key), {"quarantine": problems[key]}, "train"))
        return items

    # -- processing ------------------------------------------------------------------------
    def crop_box(self, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of the crop in an image of ``(height, width)``."""
        height, width = image_size
        side = self.crop_size
        top = (height - side) // 2 if self.crop_top is None else self.crop_top
        left = (width - side) // 2 if self.crop_left is None else self.crop_left
        return left, top, left + side, top + side

    def process(self, item: SourceItem) -> Iterator[dict[str, Any] | Quarantined]:
        """The crop of one aligned image (or why there is none)."""
        preset = listing_quarantine(item)
        if preset:
            yield from preset
            return
        data = read_item(item)
        if isinstance(data, Quarantined):
            yield data
            return
        try:
            rgb, notes = decode_image(data)
        except BadImage as exc:
            yield Quarantined(item.uri, exc.reason, exc.detail)
            return
        height, width = rgb.shape[:2]
        left, top, right, bottom = self.crop_box((height, width))
        if left < 0 or top < 0 or right > width or bottom > height:
            yield Quarantined(item.uri, "image_too_small",
                              f"{width}x{height} image cannot hold the crop {[left, top, right, bottom]}",
                              bbox=[float(left), float(top), float(right), float(bottom)])
            return
        crop = rgb[top:bottom, left:right]
        scale = 1.0
        if self.size is not None and self.size != self.crop_size:
            crop = imresize(crop, output_size=(self.size, self.size))
            scale = self.size / self.crop_size
        crop = np.ascontiguousarray(crop)
        points = item.annotations.get("landmarks")
        if points is not None:
            xy = np.asarray(points, dtype=np.float64).reshape(-1, 2) - (left, top)
            points = ((xy + 0.5) * scale - 0.5).reshape(-1).tolist()
        relative = item.annotations["relative_path"]
        yield {
            "id": make_face_id(self.source, relative),
            "image_png": encode_png(crop, compression=self.png_compression),
            "height": int(crop.shape[0]),
            "width": int(crop.shape[1]),
            "source": self.source,
            "source_uri": item.uri,
            "bbox": [float(left), float(top), float(right), float(bottom)],
            "landmarks": points,
            "identity": item.annotations.get("identity"),
            "attributes": item.annotations.get("attributes") or {},
            "meta": {
                "relative_path": relative,
                "image_size": [height, width],
                "crop_size": [bottom - top, right - left],
                "landmarks_source": item.annotations.get("landmarks"),
                "content_sha256": content_sha256(data),
                "decode": notes,
            },
            "split": item.split,
        }
