"""A hostile archive, locally and on the S3 server: every good file restored, every bad one
quarantined with its reason, the job finishes, a re-run does nothing twice, the inputs are
unchanged and nothing is written outside the output root.

The corpus: decompression bombs in five formats (a small file whose header claims gigapixels),
zero-byte and truncated files, CMYK, progressive and 16-bit JPEG/PNG, a palette image with
transparency, animated GIF and WebP (the first frame is the picture), a photo turned by its EXIF
orientation, a video whose middle is overwritten with garbage, names with control characters and
(locally) with bytes that are not UTF-8, astronaut photos of 160, 128 and 96 px (faces of 28 to 17
px, found by the default detector), and symbolic links: one inside the folder (followed),
one leading out of it and one leading nowhere (neither followed).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from fsr_core import storage
from pipelines.archive_restore import list_archive, manifest_text, read_manifest, restore_archive
from tests.fsr_core.data.ingest.test_images import gif_bomb, jpeg_bomb, png_bomb, tiff_bomb, webp_bomb
from tests.pipelines.test_archive_restore import (
    NAME,
    SETTINGS,
    _astronaut,
    _exif_rotated,
    assert_exactly_once,
    register_tiny,
    write_video,
)

pytestmark = pytest.mark.timeout(400)


def _pil(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def corpus(video_path: str) -> tuple[dict[str, bytes], dict[str, str | None]]:
    """(files by relative path, expected reason by relative path; None: restored)."""
    astro = _astronaut(256)
    image = Image.fromarray(astro)
    frames = [image, Image.fromarray(np.ascontiguousarray(astro[:, ::-1]))]
    write_video(video_path, seconds=4.0)
    video = bytearray(open(video_path, "rb").read())
    middle = len(video) // 2
    video[middle:middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    palette = image.convert("RGBA")
    palette.putpixel((0, 0), (0, 0, 0, 0))
    files = {
        "good/plain.jpg": _pil(image, "JPEG", quality=90),
        "good/cmyk.jpg": _pil(image.convert("CMYK"), "JPEG", quality=90),
        "good/progressive.jpg": _pil(image, "JPEG", quality=90, progressive=True),
        "good/sixteen.png": _pil(Image.fromarray((astro[..., 0].astype(np.uint16) * 257)), "PNG"),
        "good/palette_alpha.png": _pil(palette.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
        "good/animated.gif": _pil(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "good/animated.webp": _pil(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100),
        "good/sideways.jpg": _exif_rotated(astro),
        "good/naïve name.png": _pil(image, "PNG"),
        "small/astro160.jpg": _pil(Image.fromarray(_astronaut(160)), "JPEG", quality=90),  # a 28 px face
        "small/astro128.png": _pil(Image.fromarray(_astronaut(128)), "PNG"),
        "small/astro96.webp": _pil(Image.fromarray(_astronaut(96)), "WEBP", quality=90),  # a 17 px face
        "video/corrupt_middle.mp4": bytes(video),
        "bombs/bomb.png": png_bomb(60000, 60000),
        "bombs/bomb.jpg": jpeg_bomb(),
        "bombs/bomb.webp": webp_bomb(),
        "bombs/bomb.tif": tiff_bomb(),
        "bombs/bomb.gif": gif_bomb(),
        "bad/empty.png": b"",
        "bad/truncated.jpg": _pil(image, "JPEG", quality=90)[:2500],
        "bad/tab\tname.jpg": _pil(image, "JPEG"),
        "bad/esc\x1b[31mred.jpg": _pil(image, "JPEG"),
    }
    expected = {k: None for k in files if k.startswith(("good/", "small/", "video/"))}
    expected.update({k: "too_large" for k in files if k.startswith("bombs/")})
    expected.update({"bad/empty.png": "empty_file", "bad/truncated.jpg": "truncated_image",
                     "bad/tab\tname.jpg": "unsafe_path", "bad/esc\x1b[31mred.jpg": "unsafe_path"})
    return files, expected


def _snapshot(root: str) -> dict[str, str]:
    """Every entry under ``root``: a file's SHA-256, a link's target (links are not followed)."""
    import hashlib

    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                out[path] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as fh:
                    out[path] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _write_local(root: str, files: dict[str, bytes], outside: str) -> dict[str, str | None]:
    """The corpus on disk plus what only a filesystem has: links and a name that is not UTF-8."""
    for relative, data in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    with open(outside, "wb") as fh:
        fh.write(files["good/plain.jpg"])
    os.makedirs(os.path.join(root, "links"))
    os.symlink(os.path.join(root, "good", "plain.jpg"), os.path.join(root, "links", "inside.jpg"))
    os.symlink(outside, os.path.join(root, "links", "outside.jpg"))
    os.symlink(os.path.join(root, "nowhere.jpg"), os.path.join(root, "links", "broken.jpg"))
    latin1 = os.path.join(os.fsencode(root), b"good", b"caf\xe9.jpg")  # ISO-8859-1 bytes: not UTF-8
    with open(latin1, "wb") as fh:
        fh.write(files["good/plain.jpg"])
    return {"links/inside.jpg": None, "links/outside.jpg": "link_outside_root", "links/broken.jpg": "broken_link",
            os.fsdecode(b"good/caf\xe9.jpg"): None}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_hostile_archive(ray_session, tracking_uri, tmp_path, where, request):
    files, expected = corpus(str(tmp_path / "clip.mp4"))
    if where == "local":
        root = str(tmp_path / "archive")
        expected.update(_write_local(root, files, str(tmp_path / "secret.jpg")))
        out = str(tmp_path / "out")
        before = _snapshot(root)
        outside_before = sorted(os.listdir(tmp_path))
    else:
        import boto3

        bucket = request.getfixturevalue("s3_bucket")
        client = boto3.client("s3")
        for key, data in files.items():
            client.put_object(Bucket=bucket[len("s3://"):], Key=f"archive/{key}", Body=data)
        root, out = f"{bucket}/archive", f"{bucket}/out"
        before = {info.uri: storage.read_bytes(info.uri) for info in storage.list_files(root)}
    register_tiny(tracking_uri, tmp_path)

    listed = list_archive(root)
    assert {item["relative"] for item in listed} == set(expected)
    summary = restore_archive(root, out, f"models:/{NAME}@champion", tracking_uri=tracking_uri,
                              settings=SETTINGS, unit_size=4, printer=None)
    assert summary["units_to_retry"] == [] and summary["units_failed"] == []
    manifest = read_manifest(out)
    # a name that is not UTF-8 is in the manifest with its odd bytes as \xNN
    listed = [{**item, "uri": manifest_text(item["uri"])} for item in listed]
    expected = {manifest_text(k): v for k, v in expected.items()}
    assert_exactly_once(manifest, listed)
    rows = manifest.to_pylist()
    outcome = {}
    for row in rows:
        if row["status"] == "restored":
            outcome.setdefault(row["relative_path"], None)
        else:
            outcome[row["relative_path"]] = outcome.get(row["relative_path"]) or row["reason"]
    video = [r for r in rows if r["relative_path"] == "video/corrupt_middle.mp4"]
    restored_frames = [r for r in video if r["status"] == "restored"]
    assert len(restored_frames) >= 4, [(r["frame_index"], r["reason"]) for r in video]  # of 8 sampled
    outcome["video/corrupt_middle.mp4"] = None if restored_frames else outcome["video/corrupt_middle.mp4"]
    assert outcome == expected
    for row in rows:
        if row["output_uri"]:
            assert row["output_uri"].startswith(out.rstrip("/") + "/")
            assert not any(ord(c) < 32 for c in row["output_uri"])

    again = restore_archive(root, out, f"models:/{NAME}@champion", tracking_uri=tracking_uri,
                            settings=SETTINGS, unit_size=4, printer=None)
    assert again["units_run"] == 0 and read_manifest(out).equals(manifest)
    if where == "local":
        assert _snapshot(root) == before
        assert set(os.listdir(tmp_path)) - set(outside_before) <= {"out", "ckpt", "mlflow-artifacts"}
        for folder, _, names in os.walk(out):
            for name in names:
                real = os.path.realpath(os.path.join(folder, name))
                assert real.startswith(os.path.realpath(out) + os.sep)
    else:
        after = {info.uri: storage.read_bytes(info.uri) for info in storage.list_files(root)}
        assert after == before
