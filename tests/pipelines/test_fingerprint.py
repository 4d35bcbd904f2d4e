"""Per-stage code versions: what a stage's module imports (transitively) decides its cache, nothing else."""

from __future__ import annotations

import textwrap

from pipelines.fingerprint import closure_version, module_closure, stage_code_version

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


def test_real_stages_do_not_depend_on_restoration_code():
    from pipelines.stages import STAGES

    train = module_closure(STAGES["two_step_pretrain"].fn.__module__)
    assert {"fsr_core.training.loop", "fsr_core.networks.two_step", "fsr_core.degradation.resize"} <= train.keys()
    assert not {"pipelines.archive_restore", "fsr_core.restore.archive", "pipelines.restore_cli",
                "pipelines.stages.ingest"} & train.keys()
    ingest = module_closure(STAGES["ingest_wider_face"].fn.__module__)
    assert "fsr_core.data.ingest.wider_face" in ingest and "fsr_core.training.loop" not in ingest
    assert stage_code_version(STAGES["two_step_pretrain"].fn) != stage_code_version(STAGES["ingest_wider_face"].fn)
