"""Per-stage code versions: what a stage's module imports (transitively) decides its cache, nothing
else; lists (registries) are no stage's code; catalog inputs are fingerprinted by content."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from pipelines.fingerprint import (
    DigestMismatch,
    catalog_fingerprint,
    closure_version,
    content_digest,
    module_closure,
    stage_code_version,
)
from tests.conftest import ROOT

FILES = {
    "pkg/__init__.py": "from pkg import registry  # a registry of everything, run on the way to any submodule\n",
    "pkg/registry.py": "import pkg.unrelated\n",
    "pkg/unrelated.py": "X = 1\n",
    "pkg/stage.py": """
        import os

        def run():
            from pkg.sub import helper  # function-level imports count
            return helper.go()
        """,
    "pkg/sub/__init__.py": "",
    "pkg/sub/helper.py": """
        from . import deep  # relative
        from .. import unrelated as _u  # noqa: followed too: it is imported here
        def go():
            return deep.VALUE
        """,
    "pkg/sub/deep.py": "VALUE = 1\n",
    "pkg/other.py": "import numpy\n",
}


def _tree(tmp_path, files=FILES):
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return {"pkg": str(tmp_path / "pkg")}


def test_closure_follows_imports_and_only_includes_parent_packages(tmp_path):
    roots = _tree(tmp_path)
    closure = module_closure("pkg.stage", roots=roots)
    assert sorted(closure) == ["pkg", "pkg.stage", "pkg.sub", "pkg.sub.deep", "pkg.sub.helper", "pkg.unrelated"]
    assert "pkg.registry" not in closure  # the parent's __init__ is hashed, what it imports is not followed
    assert "pkg.other" not in closure
    assert module_closure("pkg.other", roots=roots).keys() == {"pkg", "pkg.other"}  # numpy is outside the roots


def test_a_change_outside_the_closure_keeps_the_version(tmp_path):
    roots = _tree(tmp_path)
    before = closure_version("pkg.stage", roots=roots)
    (tmp_path / "pkg" / "other.py").write_text("import numpy  # edited\n")
    (tmp_path / "pkg" / "registry.py").write_text("import pkg.unrelated  # edited\n")
    assert closure_version("pkg.stage", roots=roots) == before
    (tmp_path / "pkg" / "sub" / "deep.py").write_text("VALUE = 2\n")
    changed = closure_version("pkg.stage", roots=roots)
    assert changed != before
    (tmp_path / "pkg" / "__init__.py").write_text("# edited\n")
    assert closure_version("pkg.stage", roots=roots) != changed


def test_a_registry_is_neither_hashed_nor_followed(tmp_path):
    roots = _tree(tmp_path, {**FILES, "pkg/__init__.py": "__fsr_registry__ = True\nfrom pkg import registry\n",
                             "pkg/other.py": "from pkg import listing\n",
                             "pkg/listing.py": "__fsr_registry__ = True\nimport pkg.unrelated\n"})
    assert "pkg" not in module_closure("pkg.stage", roots=roots)
    assert module_closure("pkg.other", roots=roots).keys() == {"pkg.other"}
    before = closure_version("pkg.other", roots=roots)
    (tmp_path / "pkg" / "listing.py").write_text("__fsr_registry__ = True\nimport pkg.unrelated\nY = 2\n")
    (tmp_path / "pkg" / "__init__.py").write_text("__fsr_registry__ = True\n# a new method\n")
    assert closure_version("pkg.other", roots=roots) == before


def test_real_stages_do_not_depend_on_restoration_code_or_the_lists():
    from pipelines.stages import STAGES

    pretrain = STAGES["two_step_pretrain"]
    train = module_closure(pretrain.fn.func.__module__)
    for module in pretrain.code:
        train.update(module_closure(module))
    assert {"fsr_core.training.loop", "fsr_core.networks.two_step", "fsr_core.degradation.resize",
            "fsr_core.training.two_step_objective", "pipelines.stages.two_step"} <= train.keys()
    assert not {"pipelines.archive_restore", "fsr_core.restore.archive", "pipelines.restore_cli",
                "pipelines.stages.ingest", "pipelines.stages", "fsr_core.networks"} & train.keys()
    generic = module_closure(pretrain.fn.func.__module__)  # the generic stage imports no method
    assert not {"fsr_core.training.two_step_objective", "fsr_core.networks.two_step"} & generic.keys()
    ingest = module_closure(STAGES["ingest_wider_face"].fn.__module__)
    assert "fsr_core.data.ingest.wider_face" in ingest and "fsr_core.training.loop" not in ingest
    assert not {"fsr_core.networks", "pipelines.stages", "fsr_core.networks.two_step"} & ingest.keys()
    assert stage_code_version(pretrain.fn, pretrain.code) != stage_code_version(STAGES["ingest_wider_face"].fn)


# ---------------------------------------------------------------------------- the demo's plan, edited
def _dry_run_fingerprints(tree: str, work: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": tree}
    env.pop("FSR_PLUGINS", None)  # the copy has no tests package
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "demo", "--dry-run", "--json",
                          f"runtime.work_root={work}"], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads(out.stdout)
    assert plan["dry_run"] and all(stage["status"] == "to_run" for stage in plan["stages"])
    return {stage["name"]: stage["fingerprint"] for stage in plan["stages"]}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_appending_to_a_method_or_a_list_leaves_other_stages_cached(tmp_path):
    """``fsr run demo --dry-run --json`` on copies of the source: a line appended to the two-step
    networks or objective changes the two-step training stages' fingerprints and no ingest stage's;
    a line appended to the lists of stage kinds or networks changes nothing."""
    tree = str(tmp_path / "tree")
    for folder in ("fsr_core", "pipelines", "conf"):
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(tree, folder),
                        ignore=shutil.ignore_patterns("__pycache__"))
    base = _dry_run_fingerprints(tree, str(tmp_path / "work"))
    ingest, training = ("synthetic_faces", "lfw_faces"), ("pretrain", "joint")
    for relative, changes_training in (("fsr_core/networks/two_step.py", True),
                                       ("fsr_core/training/two_step_objective.py", True),
                                       ("pipelines/stages/__init__.py", False),
                                       ("fsr_core/networks/__init__.py", False)):
        path = os.path.join(tree, relative)
        original = open(path).read()
        with open(path, "a") as fh:
            fh.write("\n# appended by a test\n")
        try:
            after = _dry_run_fingerprints(tree, str(tmp_path / "work"))
        finally:
            with open(path, "w") as fh:
                fh.write(original)
        assert all(after[name] == base[name] for name in ingest), relative
        assert all((after[name] != base[name]) == changes_training for name in training), relative


# ---------------------------------------------------------------------------- catalog content
def _files(root, files: dict[str, bytes]) -> str:
    for relative, data in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    return str(root)


def test_catalog_fingerprints_follow_content_not_times(tmp_path):
    data = {"a/part-0.parquet": b"one", "b.txt": b"two"}
    folder = _files(tmp_path / "data", data)
    cache = str(tmp_path / "cache")
    first = catalog_fingerprint(folder, cache_dir=cache)
    shutil.rmtree(folder)
    _files(tmp_path / "data", data)  # regenerated: new modification times, same bytes
    os.utime(os.path.join(folder, "b.txt"), ns=(1, 1))
    assert catalog_fingerprint(folder, cache_dir=cache) == first
    assert catalog_fingerprint(folder) == first  # no cache: hashed afresh, same value
    _files(tmp_path / "data", {"b.txt": b"TWO"})
    assert catalog_fingerprint(folder, cache_dir=cache) != first
    with pytest.raises(FileNotFoundError, match="catalog entry 'x'"):
        catalog_fingerprint(str(tmp_path / "absent"), name="x")


def test_pinned_sha256_is_verified(tmp_path):
    folder = _files(tmp_path / "data", {"a.txt": b"alpha", "sub/b.txt": b"beta"})
    file_sha = hashlib.sha256(b"alpha").hexdigest()
    assert content_digest(os.path.join(folder, "a.txt")) == file_sha  # a file: what sha256sum prints
    listing = f"a.txt  {file_sha}\nsub/b.txt  {hashlib.sha256(b'beta').hexdigest()}\n"
    digest = content_digest(folder)
    assert digest == hashlib.sha256(listing.encode()).hexdigest()
    assert catalog_fingerprint(folder, sha256=digest, name="faces")
    with pytest.raises(DigestMismatch, match="catalog entry 'faces'.*pins " + "0" * 64):
        catalog_fingerprint(folder, sha256="0" * 64, name="faces")


def test_catalog_content_on_s3_uses_etags(s3_bucket):
    from fsr_core import storage

    storage.write_bytes(f"{s3_bucket}/d/x.bin", b"payload")
    first = catalog_fingerprint(f"{s3_bucket}/d")
    storage.write_bytes(f"{s3_bucket}/d/x.bin", b"payload")  # rewritten, same bytes
    assert catalog_fingerprint(f"{s3_bucket}/d") == first
    storage.write_bytes(f"{s3_bucket}/d/x.bin", b"changed")
    assert catalog_fingerprint(f"{s3_bucket}/d") != first
    assert content_digest(f"{s3_bucket}/d") == hashlib.sha256(
        f"x.bin  {hashlib.sha256(b'changed').hexdigest()}\n".encode()).hexdigest()
