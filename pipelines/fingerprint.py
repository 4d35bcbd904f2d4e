"""Fingerprints: what decides that a stage's earlier result can be reused.

``stage fingerprint = sha256(code version, stage kind, resolved params, input fingerprints)``

- the **code version** hashes the source of the ``fsr_core`` and ``pipelines``
  packages (any code change invalidates every cached stage: conservative and
  simple to reason about);
- an input produced by another stage has ``sha256(producer fingerprint, output name)``;
- a catalog input has ``sha256(uri, listing)`` where the listing holds each file's
  path, size and modification time (local) or ETag (S3); or the configured
  ``sha256`` when the entry pins one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Mapping

from fsr_core import storage

__all__ = ["code_version", "catalog_fingerprint", "output_fingerprint", "stage_fingerprint"]


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 over the Python source of ``fsr_core`` and ``pipelines``."""
    import fsr_core
    import pipelines

    digest = hashlib.sha256()
    for package in (fsr_core, pipelines):
        root = os.path.dirname(package.__file__)
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, os.path.dirname(root)).encode())
                    with open(path, "rb") as fh:
                        digest.update(fh.read())
    return digest.hexdigest()


def catalog_fingerprint(uri: str, *, sha256: str | None = None) -> str:
    if sha256:
        return _sha({"sha256": sha256})
    if uri.startswith("models:/"):
        return _sha({"uri": uri})
    listing = [(info.uri, info.size, info.mtime_ns, info.etag) for info in storage.list_files(uri)]
    if not listing:
        raise FileNotFoundError(f"catalog location {uri} is missing or empty")
    return _sha({"uri": uri, "listing": listing})


def output_fingerprint(stage_fingerprint: str, output: str) -> str:
    return _sha({"stage": stage_fingerprint, "output": output})


def stage_fingerprint(*, uses: str, params: Mapping[str, Any], inputs: Mapping[str, str], code: str | None = None) -> str:
    return _sha({"code": code or code_version(), "uses": uses, "params": dict(params), "inputs": dict(inputs)})
