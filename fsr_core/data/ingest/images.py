"""Decoding of untrusted image files into RGB uint8, with a reason when it cannot be done.

What arrives in real archives: 0-byte files, truncated downloads, files that are not images at
all, grey, grey+alpha, RGBA, palette and 16-bit images, decompression bombs (a small file whose
header claims gigapixels), photos whose EXIF says how to turn them. :func:`decode_image` returns
``(rgb uint8 [H,W,3], notes)`` for everything usable, turned as a viewer shows it, and raises
:class:`BadImage` with a machine-readable ``reason`` otherwise, whatever the decoder raised.

The dimensions are read from the header (Pillow, which parses headers without decoding pixels)
and checked against ``max_pixels`` before any pixel is decoded (reason ``too_large``).
"""

from __future__ import annotations

import io

import cv2
import numpy as np

__all__ = ["BadImage", "DEFAULT_MAX_PIXELS", "decode_image", "header_size", "sniff_format"]

#: The default pixel cap: 100 megapixels (an 8-bit RGB decode of 300 MB). A face archive has no
#: use for larger frames; OpenCV's own limit (2**30) would decode 3 GB before refusing.
DEFAULT_MAX_PIXELS = 100_000_000

_SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"RIFF": "webp",  # RIFF....WEBP
}


class BadImage(ValueError):
    """An input that cannot become a face crop; ``reason`` is a short code for the quarantine table."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sniff_format(data: bytes) -> str | None:
    """The image format from the file's first bytes, or None."""
    for magic, name in _SIGNATURES.items():
        if data.startswith(magic):
            if name == "webp" and data[8:12] != b"WEBP":
                return None
            return name
    return None


def _truncated(data: bytes, fmt: str) -> bool:
    if fmt == "jpeg":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "png":
        return b"IEND" not in data[-32:]
    return False


def header_size(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[tuple[int, int], int]:
    """``((width, height), exif_orientation)`` from the image header, no pixel decoded;
    :class:`BadImage` ``corrupt_image`` when the header cannot be parsed, ``too_large`` when it
    claims more pixels than Pillow's own bomb limit (``2 * Image.MAX_IMAGE_PIXELS``)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            size = tuple(int(v) for v in image.size)
            orientation = 1
            try:
                orientation = int(image.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block: the pixels may still be fine
                orientation = 1
    except Image.DecompressionBombError as exc:
        raise BadImage("too_large", f"header: {exc} - over the cap of {max_pixels}") from None
    except Exception as exc:  # Pillow raises many types for hostile headers
        raise BadImage("corrupt_image", f"unreadable header ({type(exc).__name__})") from None
    return size, orientation


# EXIF orientation -> (np.rot90 turns counter-clockwise, then flip left-right)
_ORIENTATIONS = {2: (0, True), 3: (2, False), 4: (2, True), 5: (3, True), 6: (3, False), 7: (1, True), 8: (1, False)}


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Decode image bytes to RGB uint8; ``notes`` says what was converted (``{"mode": "grey"}``,
    ``{"exif_orientation": 6}`` ...). Never raises anything but :class:`BadImage` for bad data."""
    if len(data) == 0:
        raise BadImage("empty_file", "the file has 0 bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadImage("not_an_image", f"unknown file signature {data[:8]!r}")
    if _truncated(data, fmt):
        raise BadImage("truncated_image", f"{fmt} data ends before its end marker ({len(data)} bytes)")
    (width, height), orientation = header_size(data, max_pixels=max_pixels)
    if width <= 0 or height <= 0:
        raise BadImage("corrupt_image", f"{fmt} header gives {width}x{height} pixels")
    if width * height > max_pixels:
        raise BadImage("too_large", f"{fmt} header gives {width}x{height} pixels, over the cap of {max_pixels}")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise BadImage("corrupt_image", f"{fmt} data could not be decoded: {str(exc).strip()[-200:]}") from None
    if image is None or image.size == 0:
        raise BadImage("corrupt_image", f"{fmt} data could not be decoded ({len(data)} bytes)")
    notes: dict = {"format": fmt}
    if orientation in _ORIENTATIONS:
        turns, flip = _ORIENTATIONS[orientation]
        image = np.ascontiguousarray(np.rot90(image, turns) if turns else image)
        if flip:
            image = np.ascontiguousarray(image[:, ::-1])
        notes["exif_orientation"] = orientation
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
        notes["bit_depth"] = 16
    elif image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating):
            image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
        else:
            raise BadImage("unsupported_pixel_type", f"pixel type {image.dtype}")
        notes["bit_depth"] = "float"
    if image.ndim == 2:
        notes["mode"] = "grey"
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), notes
    channels = image.shape[2]
    if channels == 1:
        notes["mode"] = "grey"
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB), notes
    if channels == 2:  # grey + alpha: drop alpha
        notes["mode"] = "grey_alpha"
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB), notes
    if channels == 4:  # BGRA: drop alpha (faces are opaque; alpha is usually a matte of the background)
        notes["mode"] = "rgba"
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), notes
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), notes
    raise BadImage("unsupported_channels", f"{channels} channels")
