"""WIDER FACE reader: genuine low-resolution face crops from the annotated boxes.

Layout under ``root``, as distributed by the WIDER FACE site (local folder or ``s3://``)::

    WIDER_train/images/<event>/<file>.jpg     e.g. 0--Parade/0_Parade_marchingband_1_849.jpg
    WIDER_val/images/<event>/<file>.jpg
    wider_face_split/wider_face_train_bbx_gt.txt
    wider_face_split/wider_face_val_bbx_gt.txt

``WIDER_test`` has file names only (``wider_face_test_filelist.txt``), no boxes: it cannot be read
here; ingest it with the face-detection ingest (a folder of images plus a detector).

Annotation syntax (``wider_face_<split>_bbx_gt.txt``), one block per image::

    0--Parade/0_Parade_marchingband_1_849.jpg      file name, relative to WIDER_<split>/images
    2                                              number of faces
    449 330 122 149 0 0 0 0 0 0                    x1 y1 w h blur expression illumination invalid occlusion pose
    361 98 263 339 0 0 0 0 1 0
    0--Parade/0_Parade_Parade_0_452.jpg
    0                                              an image without faces ...
    0 0 0 0 0 0 0 0 0 0                            ... is followed by one line of ten zeros

Flag values (WIDER FACE readme): blur 0 clear / 1 normal / 2 heavy; expression 0 typical /
1 exaggerated; illumination 0 normal / 1 extreme; invalid 0 valid / 1 invalid; occlusion 0 none /
1 partial / 2 heavy; pose 0 typical / 1 atypical. They are kept in the ``quality`` column under
those names (plus ``clipped``: the crop region was cut at the image border).

:func:`parse_bbx_gt` splits the file into blocks at file-name lines, so one malformed block
(wrong field count, a non-integer, a face count that does not match its box lines) costs only its
own image, which is quarantined with reason ``malformed_annotation``; a file name listed twice
keeps its first block (``duplicate_annotation`` for the others).

Per face, in this order (the first that applies is the face's quarantine reason; each skipped
face is one row of the quarantine table, with its annotated box, so every one of WIDER FACE's
~390k boxes is accounted for either as a crop or as a reason):

1. ``empty_box``: ``w <= 0`` or ``h <= 0``;
2. ``face_too_small``: ``min(w, h) < min_size``. The default, 16, equals the LR size, so that no
   genuine LR crop is ever upsampled (which would smooth away the degradation it is kept for);
3. flag filters: ``flag_invalid`` (``drop_invalid``), ``flag_blur`` (``blur > max_blur``),
   ``flag_occlusion`` (``occlusion > max_occlusion``), ``flag_atypical_pose``,
   ``flag_exaggerated_expression``, ``flag_extreme_illumination`` (the ``allow_*`` switches);
4. ``box_outside_image``: no part of the box lies inside the image.

Rules 1-3 need no pixels: an image none of whose faces pass them is not even read (most WIDER FACE
images hold only tiny faces). An image that is read but cannot be decoded is one quarantine record
with the decoder's reason (``truncated_image``, ``empty_file``, ``not_an_image`` ...), or
``missing_file``.

A kept face becomes the crop region :func:`crop_region` (box grown by ``margin`` on each side,
made square around its centre if ``square``, rounded to whole pixels, clipped to the image),
resized to ``lr_size`` x ``lr_size`` with MATLAB's antialiasing bicubic
(:func:`fsr_core.degradation.resize.imresize`); ``meta.crop_size`` records the region's size
before the resize. A region clipped at the border is resized as it is (its aspect ratio changes)
and flagged ``quality.clipped`` so that training can leave such crops out.

Row ids hash the path relative to ``root``, the annotated box and the face's index in its block:
the same face has the same id whether the data set is read from a laptop folder or a bucket.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.ingest.base import Quarantined, SourceItem, content_sha256, listing_quarantine
from fsr_core.data.ingest.images import BadImage, decode_image
from fsr_core.data.schema import make_face_id
from fsr_core.degradation.resize import imresize

__all__ = [
    "FLAG_NAMES",
    "WIDER_SPLITS",
    "WiderBlock",
    "WiderFaceReader",
    "crop_region",
    "parse_bbx_gt",
]

#: the six flags of a box line, in file order after ``x1 y1 w h``
FLAG_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
#: the splits that have box annotations
WIDER_SPLITS = ("train", "val")
_FIELDS = 4 + len(FLAG_NAMES)
_FILE_LINE = re.compile(r"^\S.*\.(jpe?g|png|bmp|gif|tiff?|webp)$", re.IGNORECASE)
_TEST_SPLIT_MESSAGE = (
    "WIDER FACE test has no annotations (wider_face_test_filelist.txt lists file names only, no boxes): "
    "ingest WIDER_test/images with the face-detection ingest instead"
)


# ---------------------------------------------------------------------------- annotation file
@dataclass(frozen=True)
class WiderBlock:
    """One image's block of a ``*_bbx_gt.txt`` file.

    ``faces`` holds the ten integers of each box line; ``error`` is ``(reason, detail)`` when the
    block is malformed (then ``faces`` is empty); ``line`` is the 1-based line of the file name.
    """

    name: str
    line: int
    faces: tuple[tuple[int, ...], ...] = ()
    error: tuple[str, str] | None = None


def _parse_block(name: str, line: int, body: list[tuple[int, str]]) -> WiderBlock:
    def bad(detail: str) -> WiderBlock:
        return WiderBlock(name, line, (), ("malformed_annotation", detail))

    if not body:
        return bad(f"line {line}: file name without a face-count line")
    count_line, count_text = body[0]
    try:
        count = int(count_text)
    except ValueError:
        return bad(f"line {count_line}: face count {count_text!r} is not an integer")
    if count < 0:
        return bad(f"line {count_line}: negative face count {count}")
    boxes: list[tuple[int, ...]] = []
    for number, text in body[1:]:
        fields = text.split()
        if len(fields) != _FIELDS:
            return bad(f"line {number}: expected {_FIELDS} integers (x1 y1 w h {' '.join(FLAG_NAMES)}), "
                       f"got {len(fields)} field(s): {text!r}")
        try:
            boxes.append(tuple(int(value) for value in fields))
        except ValueError:
            return bad(f"line {number}: non-integer value in {text!r}")
    if count == 0:
        # The official files follow a 0 count with one line of ten zeros; accept it, or nothing.
        if not boxes or (len(boxes) == 1 and not any(boxes[0])):
            return WiderBlock(name, line)
        return bad(f"line {count_line}: face count 0, but {len(boxes)} box line(s) follow that are not the "
                   "all-zero placeholder")
    if len(boxes) != count:
        return bad(f"line {count_line}: face count {count}, but {len(boxes)} box line(s) follow")
    return WiderBlock(name, line, tuple(boxes))


def parse_bbx_gt(text: str) -> tuple[list[WiderBlock], list[tuple[int, str]]]:
    """Parse a ``wider_face_<split>_bbx_gt.txt`` file.

    Returns ``(blocks, stray)``: the image blocks in file order (malformed ones carry ``error``)
    and the ``(line, text)`` of non-empty lines before the first file name, which belong to no
    image. Never raises for a malformed line.
    """
    blocks: list[WiderBlock] = []
    stray: list[tuple[int, str]] = []
    name: str | None = None
    start = 0
    body: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if _FILE_LINE.match(line):
            if name is not None:
                blocks.append(_parse_block(name, start, body))
            name, start, body = line, number, []
        elif name is None:
            stray.append((number, line))
        else:
            body.append((number, line))
    if name is not None:
        blocks.append(_parse_block(name, start, body))
    return blocks, stray


# ---------------------------------------------------------------------------- geometry
def _round(value: float) -> int:
    return int(math.floor(value + 0.5))


def crop_region(
    box: tuple[float, float, float, float],
    *,
    margin: float,
    square: bool,
    image_size: tuple[int, int],
) -> tuple[tuple[int, int, int, int], bool]:
    """The whole-pixel crop region of a face box.

    Args:
        box: ``(x0, y0, x1, y1)`` in pixel-edge coordinates (WIDER's ``x1 y1 w h`` is
            ``(x1, y1, x1 + w, y1 + h)``); must have positive width and height.
        margin: grow each side by this fraction of the box's width (left/right) or height
            (top/bottom): ``margin=0.25`` makes the region 1.5 times the box.
        square: then grow the shorter side to the longer one, around the box centre.
        image_size: ``(height, width)`` of the image.

    Returns:
        ``((left, top, right, bottom), clipped)``: integer edges (``image[top:bottom, left:right]``),
        clipped to the image, and whether clipping changed them. Edges are rounded half up, the
        size first, so an integer box with ``margin=0, square=False`` is returned unchanged.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = x1 - x0, y1 - y0
    if width <= 0 or height <= 0:
        raise ValueError(f"box {box} has no area")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    width, height = width * (1 + 2 * margin), height * (1 + 2 * margin)
    if square:
        width = height = max(width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w_px, h_px = max(1, _round(width)), max(1, _round(height))
    left, top = _round(cx - w_px / 2), _round(cy - h_px / 2)
    region = (left, top, left + w_px, top + h_px)
    image_h, image_w = image_size
    clipped = (max(0, region[0]), max(0, region[1]), min(image_w, region[2]), min(image_h, region[3]))
    return clipped, clipped != region


# ---------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class WiderFaceReader:
    """Face crops of WIDER FACE's annotated boxes (see the module docstring for the layout and rules).

    Args:
        splits: official splits to read, of ``("train", "val")``; ``"test"`` raises ``ValueError``.
        lr_size: side of the output crops (MATLAB bicubic with antialiasing); ``None`` keeps the
            region's own size.
        margin: fraction of the box size added on each side (see :func:`crop_region`).
        square: make the region square around the box centre.
        min_size: faces whose annotated ``min(w, h)`` is below this are skipped (``face_too_small``).
        drop_invalid: skip boxes flagged invalid.
        max_blur: keep faces with ``blur <= max_blur`` (2 keeps all).
        max_occlusion: keep faces with ``occlusion <= max_occlusion`` (2 keeps all).
        allow_atypical_pose, allow_exaggerated_expression, allow_extreme_illumination: keep faces
            with that flag set.
    """

    source: ClassVar[str] = "wider_face"

    splits: tuple[str, ...] = WIDER_SPLITS
    lr_size: int | None = 16
    margin: float = 0.0
    square: bool = True
    min_size: int = 16
    drop_invalid: bool = True
    max_blur: int = 2
    max_occlusion: int = 2
    allow_atypical_pose: bool = True
    allow_exaggerated_expression: bool = True
    allow_extreme_illumination: bool = True
    png_compression: int = field(default=3, repr=False)

    def __post_init__(self) -> None:
        splits = tuple(self.splits)
        object.__setattr__(self, "splits", splits)
        if "test" in splits:
            raise ValueError(_TEST_SPLIT_MESSAGE)
        unknown = [s for s in splits if s not in WIDER_SPLITS]
        if unknown or not splits:
            raise ValueError(f"WIDER FACE splits must be a non-empty subset of {WIDER_SPLITS}, got {list(splits)}")
        if self.lr_size is not None and self.lr_size < 1:
            raise ValueError(f"lr_size must be >= 1 or None, got {self.lr_size}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size}")

    # -- listing ---------------------------------------------------------------------------
    def list_items(self, root: str) -> list[SourceItem]:
        """One item per image block of each split's annotation file, in file order, split by split."""
        items: list[SourceItem] = []
        for split in self.splits:
            annotation = storage.join(root, "wider_face_split", f"wider_face_{split}_bbx_gt.txt")
            images = storage.join(root, f"WIDER_{split}", "images")
            try:
                text = storage.read_bytes(annotation).decode("utf-8", errors="replace")
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"WIDER FACE annotation file missing: {annotation} (expected layout: "
                    f"<root>/wider_face_split/wider_face_{split}_bbx_gt.txt and <root>/WIDER_{split}/images/)"
                ) from None
            if not storage.exists(images):
                raise FileNotFoundError(f"WIDER FACE image folder missing or empty: {images}")
            blocks, stray = parse_bbx_gt(text)
            if stray:
                detail = "; ".join(f"line {n}: {t!r}" for n, t in stray[:5])
                items.append(SourceItem(annotation, {"quarantine": [(
                    "malformed_annotation", f"{len(stray)} line(s) before the first file name: {detail}")]}, split))
            seen: dict[str, int] = {}
            for block in blocks:
                relative = f"WIDER_{split}/images/{block.name}"
                uri = storage.join(images, *block.name.split("/"))
                annotations: dict[str, Any] = {
                    "relative_path": relative,
                    "annotation": f"wider_face_split/wider_face_{split}_bbx_gt.txt:{block.line}",
                    "faces": [list(face) for face in block.faces],
                }
                if block.name in seen:
                    annotations["quarantine"] = [("duplicate_annotation",
                                                  f"{block.name} is annotated again at line {block.line}; "
                                                  f"the block at line {seen[block.name]} is used")]
                    annotations["faces"] = []
                    uri = f"{annotation}#L{block.line}"  # not the image: its first block owns that
                elif block.error is not None:
                    annotations["quarantine"] = [block.error]
                seen.setdefault(block.name, block.line)
                items.append(SourceItem(uri, annotations, split))
        return items

    # -- processing ------------------------------------------------------------------------
    def _flag_reason(self, flags: dict[str, int]) -> tuple[str, str] | None:
        if self.drop_invalid and flags["invalid"]:
            return "flag_invalid", "the box is flagged invalid"
        if flags["blur"] > self.max_blur:
            return "flag_blur", f"blur {flags['blur']} > max_blur {self.max_blur}"
        if flags["occlusion"] > self.max_occlusion:
            return "flag_occlusion", f"occlusion {flags['occlusion']} > max_occlusion {self.max_occlusion}"
        if not self.allow_atypical_pose and flags["pose"]:
            return "flag_atypical_pose", "atypical pose"
        if not self.allow_exaggerated_expression and flags["expression"]:
            return "flag_exaggerated_expression", "exaggerated expression"
        if not self.allow_extreme_illumination and flags["illumination"]:
            return "flag_extreme_illumination", "extreme illumination"
        return None

    def process(self, item: SourceItem) -> Iterator[dict[str, Any] | Quarantined]:
        """Crops of one image's kept faces, and a quarantine record for each skipped face."""
        preset = listing_quarantine(item)
        if preset:
            yield from preset
            return
        faces = item.annotations.get("faces", [])
        # Rules that need no pixels first: an image whose faces all fail them is never read.
        kept: list[tuple[int, list[int], dict[str, int], list[float]]] = []
        for index, face in enumerate(faces):
            x, y, w, h = face[:4]
            flags = dict(zip(FLAG_NAMES, face[4:]))
            box = [float(x), float(y), float(x + w), float(y + h)]
            if w <= 0 or h <= 0:
                yield Quarantined(item.uri, "empty_box", f"face {index}: box {w}x{h} has no area", bbox=box)
            elif min(w, h) < self.min_size:
                yield Quarantined(item.uri, "face_too_small", f"face {index}: {w}x{h} px, min_size {self.min_size}",
                                  bbox=box)
            elif (flag := self._flag_reason(flags)) is not None:
                yield Quarantined(item.uri, flag[0], f"face {index}: {flag[1]}", bbox=box)
            else:
                kept.append((index, [x, y, w, h], flags, box))
        if not kept:
            return  # no faces, or none worth reading the image for
        try:
            data = storage.read_bytes(item.uri)
        except FileNotFoundError:
            yield Quarantined(item.uri, "missing_file", f"annotated in {item.annotations.get('annotation')} but absent")
            return
        try:
            rgb, notes = decode_image(data)
        except BadImage as exc:
            yield Quarantined(item.uri, exc.reason, exc.detail)
            return
        sha256 = content_sha256(data)
        image_h, image_w = rgb.shape[:2]
        relative = item.annotations["relative_path"]
        for index, (x, y, w, h), flags, box in kept:
            if x >= image_w or y >= image_h or x + w <= 0 or y + h <= 0:
                yield Quarantined(item.uri, "box_outside_image",
                                  f"face {index}: box {box} lies outside the {image_w}x{image_h} image", bbox=box)
                continue
            (left, top, right, bottom), clipped = crop_region(
                (x, y, x + w, y + h), margin=self.margin, square=self.square, image_size=(image_h, image_w))
            crop = rgb[top:bottom, left:right]
            if self.lr_size is not None:
                crop = imresize(crop, output_size=(self.lr_size, self.lr_size))
            crop = np.ascontiguousarray(crop)
            yield {
                "id": make_face_id(self.source, relative, bbox=box, extra=f"face{index}"),
                "image_png": encode_png(crop, compression=self.png_compression),
                "height": int(crop.shape[0]),
                "width": int(crop.shape[1]),
                "source": self.source,
                "source_uri": item.uri,
                "bbox": [float(left), float(top), float(right), float(bottom)],
                "quality": {**flags, "clipped": bool(clipped)},
                "meta": {
                    "relative_path": relative,
                    "annotation": item.annotations.get("annotation"),
                    "face_index": index,
                    "face_box_xywh": [x, y, w, h],
                    "image_size": [image_h, image_w],
                    "crop_size": [bottom - top, right - left],
                    "content_sha256": sha256,
                    "decode": notes,
                },
                "split": item.split,
            }
