"""Lossless PNG encoding of RGB crops (the only image format inside shards)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["encode_png", "decode_png"]


def encode_png(image: np.ndarray, *, compression: int = 3) -> bytes:
    """Encode ``[H,W,3]`` RGB (or ``[H,W]`` grey) uint8 as PNG bytes."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy array, got {type(image).__name__} {getattr(image, 'dtype', '')}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim != 2:
        raise ValueError(f"expected [H,W,3] RGB or [H,W] grey, got shape {image.shape}")
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """Decode image bytes to ``[H,W,3]`` RGB uint8 (grey is expanded to three channels)."""
    array = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_COLOR)  # BGR, 8-bit, 3 channels
    if image is None:
        raise ValueError(f"cannot decode image bytes ({len(data)} bytes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
