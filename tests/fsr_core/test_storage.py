"""Storage round trips on a local folder and on the moto S3 server (real S3 protocol over loopback)."""

from __future__ import annotations

import os

import pytest

from fsr_core import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_write_read_list_delete_round_trip(root):
    a, b = storage.join(root, "a.bin"), storage.join(root, "sub", "b.bin")
    storage.write_bytes(a, b"alpha")
    storage.write_bytes(b, bytes(range(256)))
    assert storage.read_bytes(a) == b"alpha"
    assert storage.read_bytes(b) == bytes(range(256))
    listing = storage.list_files(root)
    assert [info.uri for info in listing] == sorted([a, b])
    assert [info.size for info in listing] == [5, 256]
    assert storage.exists(a) and storage.exists(root) and not storage.exists(storage.join(root, "nope"))
    assert storage.list_files(root, suffix=".bin") == listing
    assert storage.delete(a) == 1
    assert not storage.exists(a)
    assert storage.delete(root, recursive=True) == 1
    assert storage.list_files(root) == []


def test_names_with_tabs_newlines_and_odd_characters_round_trip(root):
    """URL parsers drop tabs and newlines; an object key or file name may hold them."""
    names = ["tab\tname.jpg", "esc\x1b[31m.jpg", "naïve ü.png", "a%2f..%2fb.jpg"]
    if not storage.is_s3(root):  # the moto server answers 404 to a key with a newline (AWS takes it)
        names.append("new\nline.png")
    for i, name in enumerate(names):
        storage.write_bytes(storage.join(root, "odd", name), bytes([i]) * 3)
    listing = storage.list_files(storage.join(root, "odd"))
    assert sorted(info.uri.rsplit("/", 1)[-1] for info in listing) == sorted(names)
    for info in listing:
        assert storage.read_bytes(info.uri) == bytes([names.index(info.uri.rsplit("/", 1)[-1])]) * 3


def test_missing_file_error_names_the_uri(root):
    uri = storage.join(root, "missing.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(uri)


def test_overwrite_replaces_content(root):
    uri = storage.join(root, "x")
    storage.write_bytes(uri, b"first version, longer")
    storage.write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"


def test_local_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    """A write that fails midway leaves the old file intact and no temporary file behind."""
    target = tmp_path / "f.bin"
    storage.write_bytes(str(target), b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(str(target), b"new content")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_upload_download(root, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    uri = storage.join(root, "up.bin")
    storage.upload_file(str(src), uri)
    dst = tmp_path / "dst.bin"
    storage.download_file(uri, str(dst))
    assert dst.read_bytes() == b"x" * 1000


def test_pyarrow_filesystem_reads_what_storage_wrote(root):
    uri = storage.join(root, "p.txt")
    storage.write_bytes(uri, b"hello arrow")
    fs, path = storage.pyarrow_filesystem(uri)
    with fs.open_input_file(path) as fh:
        assert fh.read() == b"hello arrow"


def test_unsupported_scheme():
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.read_bytes("gs://bucket/x")


def test_ranged_file_refuses_an_object_that_shrank_after_opening(tmp_path):
    """The size is read at open; a later block that comes back short (the object was replaced by a
    shorter one) is an OSError after the retries, never a silent early end of file."""
    path = tmp_path / "video.bin"
    path.write_bytes(bytes(range(256)) * 8)  # 2048 bytes
    with storage.open_ranged(str(path), block_size=512) as ranged:
        assert ranged.read(16) == bytes(range(16))
        path.write_bytes(bytes(600))  # truncated and rewritten in place while open
        ranged.seek(1500)
        with pytest.raises(OSError, match="the object changed"):
            ranged.read(16)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_local_files_honour_the_umask(tmp_path, umask):
    import stat

    previous = os.umask(umask)
    try:
        storage.write_bytes(str(tmp_path / "a" / "x.bin"), b"x")
        source = tmp_path / "src.bin"
        source.write_bytes(b"y")
        storage.upload_file(str(source), str(tmp_path / "b.bin"))
        expected = 0o666 & ~umask
        for path in (tmp_path / "a" / "x.bin", tmp_path / "b.bin"):
            assert stat.S_IMODE(path.stat().st_mode) == expected, oct(path.stat().st_mode)
        assert stat.S_IMODE(source.stat().st_mode) == expected  # what open() gives, for comparison
    finally:
        os.umask(previous)
