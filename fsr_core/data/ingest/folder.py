"""Folder-of-images reader: any photos, faces found by a detector, cropped or aligned.

Layout under ``root`` (local folder or ``s3://``): image files anywhere below it, found
recursively, with the extensions ``.jpg .jpeg .png .bmp .webp .tif .tiff`` (any case); hidden
files and other extensions are not listed. Items are sorted by their path relative to ``root``.

Per image, :meth:`FolderReader.process`:

1. reads and decodes it (:func:`~fsr_core.data.ingest.images.decode_image`: grey, RGBA and 16-bit
   become RGB 8-bit, ``meta.decode`` says how). A file that cannot be used is quarantined with the
   decoder's reason (``empty_file``, ``not_an_image``, ``truncated_image``, ``corrupt_image`` ...);
2. detects faces (:class:`~fsr_core.data.detection.FaceDetector`; ``detector``, ``upsample``,
   ``min_face_size``, ``score_threshold``, ``landmark_model``, ``model_paths``). An image with no
   face is quarantined with reason ``no_face`` (one record per image: the quarantine table then
   accounts for every listed file);
3. per face (best score first, at most ``max_faces``): ``crop="align"`` warps it onto the five-point
   ``template`` (FFHQ by default); ``crop="margin"`` takes an axis-aligned square of the box grown by
   ``margin`` on each side. Either way the warp happens at the face's native resolution with border
   reflection, then MATLAB's antialiasing bicubic resizes it to ``size`` x ``size``
   (:func:`~fsr_core.data.detection.align_face`, :func:`~fsr_core.data.detection.crop_face`).

Rows (:data:`~fsr_core.data.schema.FACE_SCHEMA`):

- ``bbox``: the crop's region in the source image (exact square for ``margin``; the axis-aligned
  bounds of the rotated square for ``align``); may reach outside the image (reflected pixels,
  ``quality.clipped``);
- ``landmarks``: the standard five points (left eye, right eye, nose tip, left and right mouth
  corner; image left/right) in crop pixels. With dlib's 5-point model the nose tip and mouth
  corners are estimated, listed in ``meta.landmarks_estimated``;
- ``quality``: ``detector``, ``detector_score`` (not comparable across detectors), ``face_size``
  (the detected box's height in source pixels: the face's native resolution), ``clipped``;
- ``meta``: ``relative_path``, ``image_size`` ``[h, w]``, ``face_box`` (detector box in the source),
  ``face_index``, ``matrix`` (2x3 source -> crop affine; invert it to paste back), ``crop``,
  ``landmark_model``, ``landmarks_estimated``, ``content_sha256``, ``decode``;
- ``split``: :func:`~fsr_core.data.splits.assign_split` of the relative path, salted with the
  source name: the same on every machine and for every copy of the folder;
- ``id``: hash of the source, relative path, (frame,) detector box and face index.

:class:`DetectingReader` holds the detection and cropping settings and the per-image face ->
row step; :class:`FolderReader` and :class:`~fsr_core.data.ingest.video.VideoReader` extend it.
Readers are frozen settings (picklable for Ray); the detector is built once per process and
cached (a missing model file fails when the reader is constructed, before any work).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import encode_png
from fsr_core.data.detection import (
    DETECTOR_NAMES,
    TEMPLATES,
    Detection,
    FaceDetector,
    align_face,
    crop_box,
    crop_face,
    make_detector,
    transform_points,
)
from fsr_core.data.ingest.base import Quarantined, SourceItem, content_sha256, listing_quarantine, read_item
from fsr_core.data.ingest.images import BadImage, decode_image
from fsr_core.data.schema import make_face_id
from fsr_core.data.splits import assign_split, check_fractions

__all__ = ["CROP_MODES", "DEFAULT_FRACTIONS", "IMAGE_EXTENSIONS", "DetectingReader", "FolderReader", "list_relative"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # GIF: its first frame
CROP_MODES = ("align", "margin")
DEFAULT_FRACTIONS = {"train": 0.9, "val": 0.05, "test": 0.05}


def _relative(uri: str, root: str) -> str:
    if storage.is_s3(uri):
        return uri[len(root.rstrip("/")) + 1 :]
    return os.path.relpath(uri, root).replace(os.sep, "/")


#: listing-time quarantine of symbolic links that are never followed (see ``storage.link_escapes``)
LINK_REASONS = {"broken": ("broken_link", "a symbolic link to nothing"),
                "outside": ("link_outside_root", "a symbolic link leading out of the input folder: not followed")}


def list_relative(root: str, extensions: tuple[str, ...]) -> list[tuple[str, str, tuple[str, str] | None]]:
    """``(uri, relative path, quarantine)`` of the non-hidden files under ``root`` with one of
    ``extensions``, sorted by path; ``quarantine`` is ``(reason, detail)`` for a symbolic link that
    leads nowhere or out of ``root`` (never read), else None."""
    found = []
    for info in storage.list_files(root):
        relative = _relative(info.uri, root)
        name = relative.rsplit("/", 1)[-1]
        if name.startswith(".") or not name.lower().endswith(extensions):
            continue
        escape = storage.link_escapes(info, root)
        found.append((info.uri, relative, LINK_REASONS[escape] if escape else None))
    return sorted(found, key=lambda entry: entry[1])


@functools.lru_cache(maxsize=4)
def _cached_detector(kind: str, min_face_size: float, upsample: int, score_threshold: float | None,
                     landmark_model: str | None, model_paths: tuple[tuple[str, str], ...]) -> FaceDetector:
    return make_detector(kind, min_face_size=min_face_size, upsample=upsample, score_threshold=score_threshold,
                         landmark_model=landmark_model, model_paths=dict(model_paths))


@dataclass(frozen=True)
class DetectingReader:
    """Settings and the face -> row step shared by the readers of inputs without boxes.

    Args:
        source: the ``source`` column value.
        size: side of the output crops (px).
        crop: ``"align"`` (similarity warp onto ``template``) or ``"margin"`` (axis-aligned square).
        margin: for ``crop="margin"``: fraction of the box side added on each side.
        template: for ``crop="align"``: a :data:`~fsr_core.data.detection.TEMPLATES` name.
        detector: ``"hog"``, ``"cnn"``, ``"mtcnn"`` or a preset (``"mtcnn-tiny"``, see
            :data:`~fsr_core.data.detection.DETECTOR_PRESETS`).
        upsample: dlib's image doublings before detection (hog, cnn).
        min_face_size: faces whose detected box is shorter (px) are ignored. For an HR training set
            set it to at least ``size`` so that no crop is upsampled.
        score_threshold: minimum detector score (``None``: the detector's default).
        landmark_model: ``"dlib5"``, ``"dlib68"`` or ``"mtcnn"`` (``None``: the detector's default).
        model_paths: model file overrides (see :class:`~fsr_core.data.detection.FaceDetector`).
        max_faces: keep at most this many faces per image / frame, best score first (``None``: all).
        split_fractions: ``{"train": f, "val": f, "test": f}`` for the hash split.
    """

    source: str = "folder"
    size: int = 128
    crop: str = "align"
    margin: float = 0.5
    template: str = "ffhq"
    detector: str = "hog"
    upsample: int = 1
    min_face_size: float = 12
    score_threshold: float | None = None
    landmark_model: str | None = None
    model_paths: Mapping[str, str] | None = None
    max_faces: int | None = None
    split_fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    png_compression: int = field(default=3, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {self.template!r}")
        if self.detector not in DETECTOR_NAMES:
            raise ValueError(f"detector must be one of {DETECTOR_NAMES}, got {self.detector!r}")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {self.max_faces}")
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))
        object.__setattr__(self, "model_paths", dict(self.model_paths or {}))
        self.face_detector()  # a wrong setting or a missing model file fails here, before any work

    def face_detector(self) -> FaceDetector:
        """This process's detector for these settings (built once, then cached)."""
        return _cached_detector(self.detector, float(self.min_face_size), self.upsample, self.score_threshold,
                                self.landmark_model, tuple(sorted(self.model_paths.items())))

    def _items(self, root: str, extensions: tuple[str, ...], what: str) -> list[SourceItem]:
        files = list_relative(root, extensions)
        if not files:
            raise FileNotFoundError(f"no {what} ({', '.join(extensions)}) under {root}")
        return [
            SourceItem(uri, {"relative_path": relative, **({"quarantine": [link]} if link else {})},
                       assign_split(relative, self.split_fractions, salt=self.source))
            for uri, relative, link in files
        ]

    def crop_detection(self, rgb: np.ndarray, detection: Detection) -> tuple[np.ndarray, np.ndarray]:
        """The crop of one detected face and its source -> crop matrix, as configured."""
        if self.crop == "align":
            return align_face(rgb, detection.landmarks, size=self.size, template=self.template)
        return crop_face(rgb, detection.box, size=self.size, margin=self.margin)

    def face_rows(
        self,
        rgb: np.ndarray,
        *,
        source_uri: str,
        relative: str,
        split: str,
        frame_index: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Detect the faces of one image (or frame) and build their rows; ``[]`` when there is none."""
        detections = self.face_detector().detect(rgb)
        if self.max_faces is not None:
            detections = detections[: self.max_faces]
        image_h, image_w = rgb.shape[:2]
        rows = []
        for index, detection in enumerate(detections):
            crop, matrix = self.crop_detection(rgb, detection)
            crop = np.ascontiguousarray(crop)
            region = crop_box(matrix, self.size)
            clipped = region[0] < 0 or region[1] < 0 or region[2] > image_w or region[3] > image_h
            landmarks = transform_points(detection.landmarks, matrix)
            face_box = [round(float(v), 3) for v in detection.box]
            rows.append({
                "id": make_face_id(self.source, relative, frame_index=frame_index, bbox=face_box,
                                   extra=f"face{index}"),
                "image_png": encode_png(crop, compression=self.png_compression),
                "height": int(crop.shape[0]),
                "width": int(crop.shape[1]),
                "source": self.source,
                "source_uri": source_uri,
                "frame_index": frame_index,
                "bbox": [float(v) for v in region],
                "landmarks": [float(v) for v in landmarks.reshape(-1)],
                "quality": {
                    "detector": detection.detector,
                    "detector_score": round(float(detection.score), 6),
                    "face_size": round(detection.height, 3),
                    "clipped": bool(clipped),
                },
                "meta": {
                    "relative_path": relative,
                    "image_size": [int(image_h), int(image_w)],
                    "face_box": face_box,
                    "face_index": index,
                    "matrix": [[round(float(v), 8) for v in row] for row in matrix],
                    "crop": (
                        {"mode": "align", "template": self.template}
                        if self.crop == "align"
                        else {"mode": "margin", "margin": self.margin}
                    ),
                    "landmark_model": detection.landmark_model,
                    "landmarks_estimated": [i for i, m in enumerate(detection.measured) if not m],
                    **dict(meta or {}),
                },
                "split": split,
            })
        return rows


@dataclass(frozen=True)
class FolderReader(DetectingReader):
    """Faces detected in a folder of images (see the module docstring; settings: :class:`DetectingReader`)."""

    def list_items(self, root: str) -> list[SourceItem]:
        """One item per image file under ``root``, sorted by relative path; split by hashing that path."""
        return self._items(root, IMAGE_EXTENSIONS, "image files")

    def process(self, item: SourceItem) -> Iterator[dict[str, Any] | Quarantined]:
        """The crops of one image's faces, or why there are none."""
        if item.annotations.get("quarantine"):
            yield from listing_quarantine(item)
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
        relative = item.annotations["relative_path"]
        rows = self.face_rows(rgb, source_uri=item.uri, relative=relative, split=item.split,
                              meta={"content_sha256": content_sha256(data), "decode": notes})
        if not rows:
            yield Quarantined(
                item.uri, "no_face",
                f"{self.detector} detector found no face of at least {self.min_face_size:g} px in the "
                f"{rgb.shape[1]}x{rgb.shape[0]} image",
            )
            return
        yield from rows
