"""Decoding of untrusted image files into RGB uint8, with a reason when it cannot be done.

What arrives in real archives: 0-byte files, truncated downloads, files that are not images at
all, grey, grey+alpha, RGBA, palette and 16-bit images. :func:`decode_image` returns
``(rgb uint8 [H,W,3], notes)`` for everything usable and raises :class:`BadImage` with a
machine-readable ``reason`` otherwise.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["BadImage", "decode_image", "sniff_format"]

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


def decode_image(data: bytes) -> tuple[np.ndarray, dict]:
    """Decode image bytes to RGB uint8; ``notes`` says what was converted (``{"mode": "grey"}`` ...)."""
    if len(data) == 0:
        raise BadImage("empty_file", "the file has 0 bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadImage("not_an_image", f"unknown file signature {data[:8]!r}")
    if _truncated(data, fmt):
        raise BadImage("truncated_image", f"{fmt} data ends before its end marker ({len(data)} bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise BadImage("corrupt_image", f"{fmt} data could not be decoded ({len(data)} bytes)")
    notes: dict = {"format": fmt}
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
