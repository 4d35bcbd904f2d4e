"""Fingerprints: what decides that a stage's earlier result can be reused.

``stage fingerprint = sha256(code version, stage kind, resolved params, input fingerprints)``

- the **code version** of a stage hashes the source of its function's module and of every
  ``fsr_core`` / ``pipelines`` module that module imports, directly or through others
  (:func:`stage_code_version`: every ``import`` statement counts, function-level ones included,
  plus the ``__init__`` of each package on the way). A change to restoration code does not
  invalidate a cached training stage; a change to anything a stage can reach does. Imports by
  string (``importlib``) would escape it: the packages use none. :func:`code_version` (all of
  both packages) is kept as the pipeline run's tag;
- an input produced by another stage has ``sha256(producer fingerprint, output name)``;
- a catalog input has ``sha256(uri, listing)`` where the listing holds each file's
  path, size and modification time (local) or ETag (S3); or the configured
  ``sha256`` when the entry pins one.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sys
from typing import Any, Callable, Mapping

from fsr_core import storage

__all__ = ["catalog_fingerprint", "closure_version", "code_version", "module_closure", "output_fingerprint", "stage_code_version",
           "stage_fingerprint"]


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


def _package_roots() -> dict[str, str]:
    import fsr_core
    import pipelines

    return {package.__name__: os.path.dirname(package.__file__) for package in (fsr_core, pipelines)}


def _module_file(name: str, roots: Mapping[str, str]) -> str | None:
    """The source file of module ``name`` when it belongs to one of ``roots`` (package -> folder)."""
    top, _, rest = name.partition(".")
    if top not in roots:
        return None
    base = os.path.join(roots[top], *rest.split(".")) if rest else roots[top]
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _imports(path: str, module: str, roots: Mapping[str, str]) -> set[str]:
    """The modules of ``roots`` whose code an import statement of ``path`` (module ``module``, at
    any depth) uses: ``import a.b`` uses ``a.b``; ``from a import n`` uses ``a.n`` when that is a
    module, else ``a`` (``n`` is defined in ``a/__init__``)."""
    with open(path, "rb") as fh:
        tree = ast.parse(fh.read(), filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            used.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                used.add(submodule if _module_file(submodule, roots) else base)
    return {name for name in used if _module_file(name, roots)}


def module_closure(module: str, *, roots: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{module name: source file}`` of ``module`` and every module of ``roots`` it uses, transitively.

    A module whose code an import statement uses (:func:`_imports`) is followed (its own imports
    count); the parent packages of each module are included as source but not followed: Python
    runs their ``__init__`` on the way, but what a package's ``__init__`` imports for others (a
    registry of every stage) is not what this module uses. A registry the module does use is
    imported from the package by name, and so followed."""
    roots = dict(roots or _package_roots())
    start = _module_file(module, roots) or getattr(sys.modules.get(module), "__file__", None)
    if start is None:
        raise LookupError(f"no source file for module {module!r}")
    found: dict[str, str] = {}
    followed: set[str] = set()
    todo = [(module, start, True)]
    while todo:
        name, path, follow = todo.pop()
        if name in followed or (name in found and not follow):
            continue
        found[name] = path
        if not follow:
            continue
        followed.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            parent_file = _module_file(parent, roots)
            if parent_file is not None and parent not in found:
                todo.append((parent, parent_file, False))
        for used in _imports(path, name, roots):
            if used not in followed:
                todo.append((used, _module_file(used, roots), True))
    return found


def closure_version(module: str, *, roots: Mapping[str, str] | None = None) -> str:
    """sha256 over the names and sources of :func:`module_closure`."""
    digest = hashlib.sha256()
    for name, path in sorted(module_closure(module, roots=roots).items()):
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _stage_module_version(module: str) -> str:
    return closure_version(module)


def stage_code_version(fn: Callable) -> str:
    """sha256 over the sources a stage function can reach (see the module docstring); once per process."""
    return _stage_module_version(fn.__module__)


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
