"""Fingerprints: what decides that a stage's earlier result can be reused.

``stage fingerprint = sha256(code version, stage kind, resolved params, input fingerprints)``

- the **code version** of a stage hashes the source of its function's module, of the modules its
  kind names in ``Stage.code`` (a generic training stage names its method's objective and
  parameters), and of every ``fsr_core`` / ``pipelines`` module those import, directly or through
  others (:func:`stage_code_version`: every ``import`` statement counts, function-level ones
  included, plus the ``__init__`` of each package on the way). A change to restoration code does
  not invalidate a cached training stage; a change to anything a stage can reach does. Imports by
  string (``importlib``) would escape it: only the registries use them. :func:`code_version` (all
  of both packages) is kept as the pipeline run's tag;
- **lists are not code**: a module that sets ``__fsr_registry__ = True`` (the lists of stage kinds,
  networks, searches) is neither hashed nor followed, so adding a method or a stage kind leaves
  every other stage cached. A stage reaches its own method's code through ``Stage.code`` instead;
- an input produced by another stage has ``sha256(producer fingerprint, output name)``;
- a catalog input has ``sha256(uri, content)``: the listing of relative paths with each file's
  sha256 (local files, hashed once and remembered by path, size and modification time in a small
  cache) or ETag (S3, a content hash); or the configured ``sha256`` when the entry pins one, which
  is then verified (:func:`content_digest`, a mismatch is :class:`DigestMismatch`). A regenerated
  data set with identical content keeps its fingerprint.
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

__all__ = ["DigestMismatch", "catalog_fingerprint", "closure_version", "code_version", "content_digest",
           "is_registry", "module_closure", "output_fingerprint", "stage_code_version", "stage_fingerprint"]

REGISTRY_MARKER = "__fsr_registry__"


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


@functools.lru_cache(maxsize=1024)
def is_registry(path: str) -> bool:
    """Whether the module at ``path`` is a list (sets ``__fsr_registry__ = True`` at its top level)."""
    with open(path, "rb") as fh:
        tree = ast.parse(fh.read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value is True:
            if any(isinstance(t, ast.Name) and t.id == REGISTRY_MARKER for t in node.targets):
                return True
    return False


def module_closure(module: str, *, roots: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{module name: source file}`` of ``module`` and every module of ``roots`` it uses, transitively.

    A module whose code an import statement uses (:func:`_imports`) is followed (its own imports
    count); the parent packages of each module are included as source but not followed: Python
    runs their ``__init__`` on the way, but what a package's ``__init__`` imports for others is not
    what this module uses. A registry (:func:`is_registry`) is left out entirely, as a parent or
    as an import."""
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
        if name != module and is_registry(path):
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


def closure_version(module: str | tuple[str, ...], *, roots: Mapping[str, str] | None = None) -> str:
    """sha256 over the names and sources of the :func:`module_closure` of one module or several."""
    files: dict[str, str] = {}
    for name in (module,) if isinstance(module, str) else module:
        files.update(module_closure(name, roots=roots))
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _stage_module_version(modules: tuple[str, ...]) -> str:
    return closure_version(modules)


def stage_code_version(fn: Callable, code: tuple[str, ...] = ()) -> str:
    """sha256 over the sources a stage can reach from its function's module and the modules of
    ``code`` (see the module docstring); once per process."""
    module = getattr(fn, "func", fn).__module__  # functools.partial: its function's module
    return _stage_module_version(tuple(sorted({module, *code})))


class DigestMismatch(ValueError):
    """A location's content does not match the sha256 pinned for it."""


_HASH_CACHE_FILE = "content-hashes.json"


class _HashCache:
    """sha256 of local files, remembered by (absolute path, size, mtime_ns) in a JSON file."""

    def __init__(self, folder: str | None) -> None:
        self.path = os.path.join(folder, _HASH_CACHE_FILE) if folder else None
        self.entries: dict[str, list] = {}
        self.dirty = False
        if self.path and os.path.isfile(self.path):
            try:
                with open(self.path) as fh:
                    self.entries = json.load(fh)
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, path: str, size: int, mtime_ns: int) -> str:
        key = os.path.abspath(path)
        hit = self.entries.get(key)
        if hit and hit[0] == size and hit[1] == mtime_ns:
            return hit[2]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        self.entries[key] = [size, mtime_ns, value]
        self.dirty = True
        return value

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        storage.write_bytes(self.path, json.dumps(self.entries).encode())


def _file_sha256(uri: str) -> str:
    digest = hashlib.sha256()
    if storage.is_s3(uri):
        digest.update(storage.read_bytes(uri))
    else:
        with open(uri, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _relative(uri: str, root: str) -> str:
    rel = uri[len(root):].lstrip("/\\") if uri.startswith(root) else uri
    return rel.replace(os.sep, "/")


def content_digest(uri: str, *, cache_dir: str | None = None) -> str:
    """The sha256 a catalog entry pins: of the file itself for a single file (what ``sha256sum``
    prints), else of the lines ``<relative path>  <file sha256>`` of every file under the folder,
    sorted by path (``sha256sum`` of a ``find . -type f | sort`` listing, paths without ``./``).
    Local file hashes are cached (``cache_dir``); S3 objects are read in full."""
    cache = _HashCache(cache_dir)
    local = not storage.is_s3(uri)
    uri = os.path.abspath(storage.local_path(uri)) if local else uri
    if local and os.path.isfile(uri):
        stat = os.stat(uri)
        value = cache.sha256(uri, stat.st_size, stat.st_mtime_ns)
        cache.save()
        return value
    files = storage.list_files(uri)
    if not files:
        raise FileNotFoundError(f"{uri} is missing or empty")
    root = uri.rstrip("/") if not local else uri
    lines = []
    for info in files:
        value = cache.sha256(info.uri, info.size, info.mtime_ns) if local else _file_sha256(info.uri)
        lines.append(f"{_relative(info.uri, root)}  {value}\n")
    cache.save()
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def catalog_fingerprint(uri: str, *, sha256: str | None = None, cache_dir: str | None = None,
                        name: str | None = None) -> str:
    """The fingerprint of a catalog location: of its content (see the module docstring).

    A pinned ``sha256`` is verified first (:func:`content_digest`); a mismatch raises
    :class:`DigestMismatch` naming the entry ``name``. ``cache_dir`` keeps local file hashes."""
    label = f"catalog entry {name!r} ({uri})" if name else uri
    if not uri.startswith("models:/") and not storage.is_s3(uri):
        uri = os.path.abspath(storage.local_path(uri))
    if uri.startswith("models:/"):
        return _sha({"uri": uri, **({"sha256": sha256} if sha256 else {})})
    if sha256:
        actual = content_digest(uri, cache_dir=cache_dir)
        if actual != sha256:
            raise DigestMismatch(f"{label}: content sha256 is {actual}, the catalog pins {sha256}")
        return _sha({"sha256": sha256})
    if not storage.is_s3(uri) and os.path.isfile(uri):
        return _sha({"sha256": content_digest(uri, cache_dir=cache_dir)})
    files = storage.list_files(uri)
    if not files:
        raise FileNotFoundError(f"{label} is missing or empty")
    if storage.is_s3(uri):  # an ETag is a content hash (MD5, or MD5 of parts): no download
        root = uri.rstrip("/")
        listing = sorted((_relative(info.uri, root), info.size, info.etag) for info in files)
    else:
        cache = _HashCache(cache_dir)
        root = uri
        listing = sorted((_relative(info.uri, root), info.size, cache.sha256(info.uri, info.size, info.mtime_ns))
                         for info in files)
        cache.save()
    return _sha({"content": listing})


def output_fingerprint(stage_fingerprint: str, output: str) -> str:
    return _sha({"stage": stage_fingerprint, "output": output})


def stage_fingerprint(*, uses: str, params: Mapping[str, Any], inputs: Mapping[str, str], code: str | None = None) -> str:
    return _sha({"code": code or code_version(), "uses": uses, "params": dict(params), "inputs": dict(inputs)})
