"""Read, write, list and delete files by URI: local paths and ``s3://bucket/key``.

Every other module goes through this one, so a location in the catalog can move
between a laptop folder and an object store without code changes.

S3 settings come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_DEFAULT_REGION`` / ``AWS_REGION``) and the endpoint from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO, Ceph, a test server).
Nothing is read from a committed file.

Atomicity: a write either produces the complete file or nothing. Locally the
bytes go to a hidden temporary file in the same folder which is then renamed
over the target (``os.replace``); on S3 a single ``PutObject`` (or a multipart
upload, which only becomes visible when completed) is atomic by construction.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlparse

__all__ = [
    "READ_BLOCK_BYTES",
    "link_escapes",
    "package_file",
    "FileInfo",
    "RangedFile",
    "open_ranged",
    "local_path",
    "StorageError",
    "delete",
    "exists",
    "is_s3",
    "iter_files",
    "join",
    "list_files",
    "pyarrow_filesystem",
    "read_bytes",
    "write_bytes",
    "upload_file",
    "download_file",
]


class StorageError(OSError):
    """A storage operation failed; the message names the URI."""


@dataclass(frozen=True)
class FileInfo:
    """One file found by :func:`list_files`."""

    uri: str
    size: int
    mtime_ns: int | None  # local modification time; None on S3
    etag: str | None  # S3 entity tag; None locally
    link_target: str | None = None  # local symbolic links: the resolved target ("" when it is broken)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
    # not urlparse: it drops tabs and newlines (WHATWG URL rules), which an S3 key may hold
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI with a bucket: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"not an s3:// URI with a bucket: {uri!r}")
    return bucket, key.lstrip("/")


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (a path or ``file://...``); ``ValueError`` for other schemes."""
    if uri.startswith("file://"):
        return urlparse(uri).path
    if "://" in uri:
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/key")
    return uri


_local_path = local_path


def join(base: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/`` (S3) or the OS separator (local)."""
    if is_s3(base):
        out = base.rstrip("/")
        for part in parts:
            out = out + "/" + part.strip("/")
        return out
    return os.path.join(base, *parts)


# ---------------------------------------------------------------------------- S3 clients
_lock = threading.Lock()
_clients: dict[tuple, object] = {}


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def _env_key() -> tuple:
    return (_endpoint(), _region(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), os.getpid())


def _boto3_client():
    key = ("boto3",) + _env_key()
    with _lock:
        client = _clients.get(key)
        if client is None:
            import boto3

            client = boto3.session.Session().client("s3", endpoint_url=_endpoint(), region_name=_region())
            _clients[key] = client
        return client


def pyarrow_filesystem(uri: str):
    """Return ``(pyarrow.fs.FileSystem, path)`` for a URI, for Parquet and Ray Data readers."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(_local_path(uri))
    bucket, key = _split_s3(uri)
    cache_key = ("pyarrow",) + _env_key()
    with _lock:
        fs = _clients.get(cache_key)
        if fs is None:
            kwargs: dict = {}
            endpoint = _endpoint()
            if endpoint:
                parsed = urlparse(endpoint)
                kwargs["endpoint_override"] = parsed.netloc or parsed.path
                kwargs["scheme"] = parsed.scheme or "https"
            region = _region()
            if region:
                kwargs["region"] = region
            fs = pafs.S3FileSystem(**kwargs)
            _clients[cache_key] = fs
    return fs, f"{bucket}/{key}".rstrip("/")


# ---------------------------------------------------------------------------- operations
def read_bytes(uri: str) -> bytes:
    """Read a whole file. Raises :class:`FileNotFoundError` naming the URI if it is missing."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        client = _boto3_client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"no such object: {uri}") from exc
        except Exception as exc:  # botocore ClientError: bucket missing, access denied
            if _is_not_found(exc):
                raise FileNotFoundError(f"no such object: {uri}") from exc
            raise StorageError(f"cannot read {uri}: {exc}") from exc
    path = _local_path(uri)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no such file: {uri}") from exc


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically, creating parent folders as needed."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            _boto3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:
            raise StorageError(f"cannot write {uri}: {exc}") from exc
        return
    with _atomic_local(uri) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def _umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``, Linux >= 4.7); elsewhere
    set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_local(uri: str) -> Iterator[str]:
    """A temporary path beside the local file ``uri`` (parents created): renamed onto it when the
    block ends normally, deleted when it raises, so readers see the old file or the whole new one."""
    path = _local_path(uri)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets what open() would give
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def upload_file(local_path: str, uri: str) -> None:
    """Copy a local file to ``uri`` atomically (multipart on S3 for large files)."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            _boto3_client().upload_file(local_path, bucket, key)
        except Exception as exc:
            raise StorageError(f"cannot upload {local_path} to {uri}: {exc}") from exc
        return
    with _atomic_local(uri) as tmp:
        shutil.copyfile(local_path, tmp)  # streamed: never the whole file in memory


def download_file(uri: str, local_path: str) -> None:
    """Copy ``uri`` to a local file."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
        try:
            _boto3_client().download_file(bucket, key, local_path)
        except Exception as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"no such object: {uri}") from exc
            raise StorageError(f"cannot download {uri}: {exc}") from exc
        return
    write_bytes(local_path, read_bytes(uri))


def exists(uri: str) -> bool:
    """True if ``uri`` is a file, or a folder/prefix with at least one file below it."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        client = _boto3_client()
        if key:
            try:
                client.head_object(Bucket=bucket, Key=key)
                return True
            except Exception as exc:
                if not _is_not_found(exc):
                    raise StorageError(f"cannot stat {uri}: {exc}") from exc
        prefix = key.rstrip("/") + "/" if key else ""
        try:
            resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except Exception as exc:
            if _is_not_found(exc):
                return False
            raise StorageError(f"cannot list {uri}: {exc}") from exc
        return resp.get("KeyCount", 0) > 0
    return os.path.exists(_local_path(uri))


def list_files(uri: str, *, suffix: str | None = None) -> list[FileInfo]:
    """All files below a folder/prefix (recursive), sorted by URI.

    Hidden temporary files of in-flight local writes (``.tmp-*``) are never listed.
    A missing folder lists as empty. Local symbolic links to files are listed with their resolved
    target in ``link_target`` (``""`` when broken); links to folders are not descended into.
    """
    return sorted(iter_files(uri, suffix=suffix), key=lambda info: info.uri)


def iter_files(uri: str, *, suffix: str | None = None) -> Iterator[FileInfo]:
    """The files of :func:`list_files` as a stream, in listing order (S3: by key; local: a
    depth-first walk with sorted names), for listings too large to hold at once."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        paginator = _boto3_client().get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"]
                    if suffix and not name.endswith(suffix):
                        continue
                    yield FileInfo(f"s3://{bucket}/{name}", int(obj["Size"]), None, obj.get("ETag", "").strip('"'))
        except Exception as exc:
            if _is_not_found(exc):
                return
            raise StorageError(f"cannot list {uri}: {exc}") from exc
        return
    root = _local_path(uri)
    if os.path.isfile(root):
        st = os.stat(root)
        yield FileInfo(uri, st.st_size, st.st_mtime_ns, None)
        return
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(".tmp-") or (suffix and not name.endswith(suffix)):
                continue
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if not os.path.islink(path):
                yield FileInfo(path, st.st_size, st.st_mtime_ns, None)
                continue
            try:  # a link is listed with where it leads; the caller decides whether to follow it
                target = os.stat(path)
            except OSError:  # broken, or a loop
                yield FileInfo(path, 0, st.st_mtime_ns, None, link_target="")
                continue
            yield FileInfo(path, target.st_size, target.st_mtime_ns, None, link_target=os.path.realpath(path))


def sha256(uri: str) -> str:
    """Hex sha256 of a file's bytes, local or s3:// (weight files recorded on the runs that use them)."""
    import hashlib

    return hashlib.sha256(read_bytes(uri)).hexdigest()


def package_file(package: str, *parts: str) -> str | None:
    """The path of a data file inside an installed package, found without importing the package
    (the weight-only wheels fsr reads from do not import beside its pins), or None when the package
    is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return os.path.join(locations[0], *parts) if locations else None


def link_escapes(info: FileInfo, root: str) -> str | None:
    """Why a listed local symbolic link must not be followed from ``root``, or None: ``"broken"``
    (no target, or a loop) or ``"outside"`` (it leads out of ``root``'s real path)."""
    if info.link_target is None:
        return None
    if not info.link_target:
        return "broken"
    real_root = os.path.realpath(_local_path(root))
    if os.path.commonpath([real_root, info.link_target]) != real_root:
        return "outside"
    return None


def delete(uri: str, *, recursive: bool = False) -> int:
    """Delete a file, or with ``recursive=True`` everything below a folder/prefix.

    Returns the number of files deleted; deleting something missing is not an error.
    """
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        client = _boto3_client()
        keys = [key] if key and not recursive else []
        if recursive:
            keys = [_split_s3(info.uri)[1] for info in list_files(uri)]
            if key and exists(uri) and key not in keys:
                try:
                    client.head_object(Bucket=bucket, Key=key)
                    keys.append(key)
                except Exception:
                    pass
        count = 0
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            count += len(chunk)
        return count
    path = _local_path(uri)
    if os.path.isfile(path):
        os.unlink(path)
        return 1
    if not os.path.exists(path):
        return 0
    if not recursive:
        raise IsADirectoryError(f"{uri} is a folder: pass recursive=True to delete it")
    import shutil

    count = sum(len(files) for _, _, files in os.walk(path))
    shutil.rmtree(path)
    return count


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


# ---------------------------------------------------------------------------- ranged reads
READ_ATTEMPTS = 3
READ_BLOCK_BYTES = 1 << 20  # 1 MiB per ranged GET: few requests, little read past what a reader needs


class RangedFile(io.RawIOBase):
    """A pyarrow random-access file (e.g. an S3 object) as a seekable binary stream, read in blocks.

    Made for FFmpeg, which reads 32 KiB at a time and jumps around at open (the header at the
    start, an MP4's index at the end, then back to the first frames) before reading a video's frames
    in order. So reads go through a small cache of ``cache_blocks`` aligned blocks of ``block_size`` bytes: each
    miss is one ranged request, the start and the index are fetched once per open, and a chunk costs
    its own bytes rounded up to blocks. Counts what it fetched (``bytes_read``, ``reads``), for logs
    and to check that a chunk reads only its part of a video.
    """

    def __init__(self, handle: Any, uri: str, *, block_size: int = READ_BLOCK_BYTES, cache_blocks: int = 4) -> None:
        super().__init__()
        if block_size < 1 or cache_blocks < 1:
            raise ValueError(f"{uri}: block_size and cache_blocks must be >= 1, got {block_size}, {cache_blocks}")
        self._handle = handle
        self._size = int(handle.size())
        self._position = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self.uri = uri
        self.block_size = block_size
        self.cache_blocks = cache_blocks
        self.bytes_read = 0
        self.reads = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._size:
            return 0
        number, offset = divmod(self._position, self.block_size)
        block = self._block(number)
        count = min(len(buffer), len(block) - offset)
        memoryview(buffer).cast("B")[:count] = block[offset:offset + count]
        self._position += count
        return count

    def _block(self, number: int) -> bytes:
        """Block ``number`` from the cache, else fetched with one ranged read (evicting the least recent)."""
        block = self._blocks.get(number)
        if block is not None:
            self._blocks.move_to_end(number)
            return block
        size, start = min(self.block_size, self._size - number * self.block_size), number * self.block_size
        for attempt in range(READ_ATTEMPTS):  # on top of the S3 client's own retries: a flaky network
            try:
                block = self._handle.read_at(size, start)
                if len(block) != size:  # the object changed (shorter) since it was opened
                    raise OSError(f"{self.uri}: read {len(block)} of {size} bytes at {start}: the object changed")
                break
            except OSError:
                if attempt == READ_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        self.bytes_read += len(block)
        self.reads += 1
        self._blocks[number] = block
        if len(self._blocks) > self.cache_blocks:
            self._blocks.popitem(last=False)
        return block

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"{self.uri}: unsupported whence {whence}")
        if base + offset < 0:
            raise ValueError(f"{self.uri}: cannot seek to {base + offset}, before the start")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            self._blocks.clear()
            self._handle.close()
        super().close()


@contextlib.contextmanager
def open_ranged(uri: str, *, block_size: int = READ_BLOCK_BYTES) -> Iterator["RangedFile"]:
    """A seekable binary file over ``uri`` (local or S3) that fetches only the byte ranges read
    (:class:`RangedFile`); closed on exit. Raises :class:`FileNotFoundError` naming ``uri``."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 byte, got {block_size}")
    filesystem, path = pyarrow_filesystem(uri)
    try:
        handle = filesystem.open_input_file(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no such file or object: {uri}") from exc
    reader = RangedFile(handle, uri, block_size=block_size)
    try:
        yield reader
    finally:
        reader.close()
