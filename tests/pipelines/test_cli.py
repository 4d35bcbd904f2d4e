"""The `fsr` command: help, stage listing, dry runs, and exit codes on bad configs."""

from __future__ import annotations

import subprocess
import sys


from pipelines.cli import main
from tests.conftest import ROOT


def test_help_on_every_command():
    for argv in ([], ["run"], ["demo"], ["stages"]):
        out = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0 and "usage: fsr" in out.stdout


def test_stages_lists_every_kind(capsys):
    from pipelines.stages import STAGES

    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    for name in STAGES:
        assert f"{name}:" in out


def test_invalid_override_exits_2_and_names_it(capsys):
    code = main(["run", "demo", "--conf-dir", f"{ROOT}/conf", "synthetic_faces.num_identities=many", "--dry-run"])
    assert code == 2
    err = capsys.readouterr().err
    assert "override 'synthetic_faces.num_identities=many'" in err and "num_identities" in err


def test_dry_run_prints_plan(tmp_path, capsys):
    code = main(["run", "demo", "--conf-dir", f"{ROOT}/conf", "--dry-run",
                 f"runtime.work_root={tmp_path}/work"])
    assert code == 0
    out = capsys.readouterr().out
    assert "pipeline demo" in out and "will run" in out and "synthetic_faces" in out


def test_dry_run_json_is_machine_readable(tmp_path, capsys):
    import json

    code = main(["run", "demo", "--conf-dir", f"{ROOT}/conf", "--dry-run", "--json",
                 f"runtime.work_root={tmp_path}/work"])
    assert code == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)  # stdout holds the JSON alone
    assert plan["pipeline"] == "demo" and plan["dry_run"] and plan["parent_run_id"] is None
    stages = {stage["name"]: stage for stage in plan["stages"]}
    assert set(list(stages)[:3]) == {"synthetic_faces", "camera_faces", "lfw_faces"}  # sources first
    assert all(stage["status"] == "to_run" and len(stage["fingerprint"]) == 64 for stage in stages.values())
    assert stages["pretrain"]["uses"] == "two_step_pretrain"
    assert stages["pretrain"]["outputs"]["checkpoint"].startswith(f"{tmp_path}/work/demo/pretrain/")
