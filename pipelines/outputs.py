"""Output manifests: a stage's outputs are reused only when they are complete.

When a stage's function returns, the stage task lists every file of every output it returned and
writes one manifest, ``<stage folder>/_fsr_outputs.json`` (atomic, after the outputs), holding for
each file its path relative to the output, its size and a checksum: sha256 (with the modification
time, so that an unchanged local file is not read again) for local files, the ETag (S3's own
content hash) for objects. The runner records the manifest's URI on the stage's MLflow run
(``fsr_manifest``); a later run reuses the stage only if :func:`verify_outputs` finds every listed
file with its size and checksum. A shard deleted or truncated, a checkpoint file missing: the
stage runs again, and the files that changed are removed first (:func:`discard`), so a stage that
resumes from what it finds (shards kept by name) redoes them instead of keeping them. A run
without a manifest (killed before it, or made before manifests existed) is never reused.

Registry references (``models:/``, ``runs:/``) have no files: whoever loads them checks them.
Files found beside the listed ones are ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

from fsr_core import storage

__all__ = ["MANIFEST_FILE", "Verification", "discard", "record_outputs", "verify_outputs"]

MANIFEST_FILE = "_fsr_outputs.json"
_UNCHECKED = ("models:/", "runs:/")


def _relative(uri: str, root: str) -> str:
    return uri[len(root):].lstrip("/\\").replace(os.sep, "/") or os.path.basename(uri)


def _local_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry(info: storage.FileInfo, root: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": _relative(info.uri, root), "size": info.size}
    if storage.is_s3(info.uri):
        entry["etag"] = info.etag
    else:
        entry["sha256"] = _local_sha256(info.uri)
        entry["mtime_ns"] = info.mtime_ns
    return entry


def _root(ref: str) -> str:
    return ref.rstrip("/") if storage.is_s3(ref) else os.path.abspath(storage.local_path(ref))


def record_outputs(manifest_uri: str, outputs: Mapping[str, str], *, stage: str, fingerprint: str) -> dict[str, Any]:
    """List, checksum and write the manifest of a finished stage's ``outputs`` to ``manifest_uri``."""
    listed: dict[str, Any] = {}
    for name, ref in outputs.items():
        if ref.startswith(_UNCHECKED):
            listed[name] = {"uri": ref, "files": None}
            continue
        root = _root(ref)
        listed[name] = {"uri": ref, "files": [_entry(info, root) for info in storage.list_files(ref)]}
    manifest = {"stage": stage, "fingerprint": fingerprint, "outputs": listed}
    storage.write_bytes(manifest_uri, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


@dataclasses.dataclass
class Verification:
    """What :func:`verify_outputs` found: ``problems`` (empty when the outputs are complete) and the
    URIs of files present with other content than recorded (``changed``: to remove before a re-run)."""

    problems: list[str] = dataclasses.field(default_factory=list)
    changed: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_outputs(manifest_uri: str | None, outputs: Mapping[str, str], *, fingerprint: str) -> Verification:
    """Check ``outputs`` (a finished run's references) against the manifest at ``manifest_uri``."""
    result = Verification()
    if not manifest_uri:
        result.problems.append("the run recorded no output manifest")
        return result
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
    except FileNotFoundError:
        result.problems.append(f"its output manifest {manifest_uri} is missing")
        return result
    except ValueError:
        result.problems.append(f"its output manifest {manifest_uri} is not valid JSON")
        return result
    if manifest.get("fingerprint") != fingerprint:
        result.problems.append(f"{manifest_uri} belongs to another stage fingerprint")
        return result
    listed = manifest.get("outputs", {})
    if set(listed) != set(outputs):
        result.problems.append(f"{manifest_uri} lists outputs {sorted(listed)}, the run {sorted(outputs)}")
        return result
    for name, ref in outputs.items():
        record = listed[name]
        if record.get("uri") != ref:
            result.problems.append(f"output {name!r}: the manifest names {record.get('uri')}, the run {ref}")
            continue
        if record.get("files") is None:
            continue
        root = _root(ref)
        present = {_relative(info.uri, root): info for info in storage.list_files(ref)}
        for entry in record["files"]:
            info = present.get(entry["path"])
            where = f"output {name!r}: {storage.join(ref, entry['path'])}"
            if info is None:
                result.problems.append(f"{where} is missing")
            elif info.size != entry["size"]:
                result.problems.append(f"{where} has {info.size} bytes, {entry['size']} were written")
                result.changed.append(info.uri)
            elif not _same_content(info, entry):
                result.problems.append(f"{where} has other content than was written (checksum differs)")
                result.changed.append(info.uri)
    return result


def _same_content(info: storage.FileInfo, entry: Mapping[str, Any]) -> bool:
    if "etag" in entry:
        return info.etag == entry["etag"]
    if info.mtime_ns == entry.get("mtime_ns"):
        return True  # untouched since it was hashed
    return _local_sha256(info.uri) == entry["sha256"]


def discard(verification: Verification) -> int:
    """Remove the files whose content changed (a resuming stage would keep them); returns how many."""
    for uri in verification.changed:
        storage.delete(uri)
    return len(verification.changed)
