"""decode_image on hostile files: bombs refused from the header, any decoder error a BadImage,
EXIF orientation applied as a viewer does (checked against Pillow's own exif_transpose)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from fsr_core.data.ingest.images import DEFAULT_MAX_PIXELS, BadImage, decode_image, header_size


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A 100-byte PNG whose header claims ``width x height`` RGB pixels (one compressed row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * (3 * 16 + 1)))
            + _chunk(b"IEND", b""))


def _small(fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def jpeg_bomb() -> bytes:
    data = bytearray(_small("JPEG"))
    at = data.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[at + 5:at + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def gif_bomb() -> bytes:
    data = bytearray(_small("GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # the logical screen
    return bytes(data)


def webp_bomb() -> bytes:
    data = bytearray(_small("WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F  # lossless: 14-bit width-1 and height-1 after 0x2f
    rest = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
    data[21:25] = ((16382) | (16382 << 14) | rest).to_bytes(4, "little")  # 16383 x 16383
    return bytes(data)


def tiff_bomb() -> bytes:
    data = bytearray(_small("TIFF"))
    offset = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[offset:offset + 2])[0]):
        entry = offset + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            data[entry + 8:entry + 12] = struct.pack("<H", 60000) + b"\0\0" if kind == 3 else struct.pack("<I", 60000)
    return bytes(data)


@pytest.mark.parametrize("make, fmt", [(png_bomb, "png"), (jpeg_bomb, "jpeg"), (gif_bomb, "gif"), (webp_bomb, "webp"),
                                       (tiff_bomb, "tiff")])
def test_decompression_bombs_are_refused_from_the_header(make, fmt: str) -> None:
    data = make()
    assert len(data) < 2000
    with pytest.raises(BadImage) as caught:
        decode_image(data)
    assert caught.value.reason == "too_large" and "over the cap" in caught.value.detail


def test_the_cap_is_configurable_and_counts_pixels() -> None:
    data = _small("PNG")  # 8x8 = 64 pixels
    assert decode_image(data, max_pixels=64)[0].shape == (8, 8, 3)
    with pytest.raises(BadImage, match="too_large: png header gives 8x8 pixels, over the cap of 63"):
        decode_image(data, max_pixels=63)
    assert header_size(png_bomb(12000, 11000))[0] == (12000, 11000) and 12000 * 11000 > DEFAULT_MAX_PIXELS
    with pytest.raises(BadImage, match="too_large: png header gives 12000x11000 pixels, over the cap of 100000000$"):
        decode_image(png_bomb(12000, 11000))


def test_opencv_limit_inside_the_cap_becomes_a_bad_image(monkeypatch) -> None:
    """Whatever OpenCV raises while decoding (here its own pixel limit) is a BadImage, not a crash."""

    def refuse(*_args, **_kwargs):
        raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    with pytest.raises(BadImage) as caught:
        decode_image(_small("PNG"))
    assert caught.value.reason == "corrupt_image" and "CV_IO_MAX_IMAGE_PIXELS" in caught.value.detail


def test_a_broken_header_is_a_bad_image() -> None:
    data = bytearray(png_bomb(16, 16))
    data[16:24] = b"\x00" * 8  # IHDR width/height 0, CRC now wrong
    with pytest.raises(BadImage) as caught:
        decode_image(bytes(data))
    assert caught.value.reason == "corrupt_image"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_a_viewer_shows_it(orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # not square: turns are visible
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    rgb, notes = decode_image(buffer.getvalue())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB"))
    np.testing.assert_array_equal(rgb, expected)
    assert notes.get("exif_orientation") == (orientation if orientation != 1 else None)


def test_cmyk_progressive_and_sixteen_bit_files_decode() -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (200, 40, 40)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, format="JPEG", quality=95)
    out, _ = decode_image(buffer.getvalue())
    assert out.shape == (16, 24, 3) and abs(int(out[8, 4, 0]) - 200) < 30 and out[8, 20].max() < 40
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95, progressive=True)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).astype(int)
    assert np.abs(decode_image(buffer.getvalue())[0].astype(int) - reference).max() <= 3  # another IDCT
    ok, png16 = cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[:, :, ::-1])
    out, notes = decode_image(png16.tobytes())
    assert ok and notes["bit_depth"] == 16 and np.array_equal(out, rgb)


def test_palette_with_transparency_and_animations_decode_to_their_first_picture() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 4, 8))
    buffer = io.BytesIO()
    rgba.convert("P").save(buffer, format="PNG", transparency=0)
    out, _ = decode_image(buffer.getvalue())
    assert out.shape == (8, 8, 3) and tuple(out[0, 0]) == (0, 0, 255)
    frames = [Image.fromarray(np.full((8, 8, 3), value, np.uint8)) for value in (10, 200)]
    for fmt in ("GIF", "WEBP"):
        buffer = io.BytesIO()
        frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        out, _ = decode_image(buffer.getvalue())
        assert out.shape == (8, 8, 3) and abs(int(out[4, 4, 0]) - 10) <= 2, fmt
