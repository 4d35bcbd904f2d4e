"""The console: the job's lines and progress, the engine's output in a log file, and two fsr jobs
side by side on one machine."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest

from pipelines.console import Console, ProgressBoard, format_duration
from tests.conftest import ROOT


def test_plain_progress_lines_at_a_rate_with_units_rate_and_eta(monkeypatch):
    out = io.StringIO()
    console = Console(out, interval=10.0)
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    console.start("pretrain")
    console.update("pretrain", {"done": 10, "total": 110, "unit": "steps", "loss": 0.123456})
    clock[0] += 5
    console.update("pretrain", {"done": 20, "total": 110, "unit": "steps", "loss": 0.1})  # within the interval
    clock[0] += 6
    console.update("pretrain", {"done": 32, "total": 110, "unit": "steps", "loss": 0.09})
    lines = out.getvalue().splitlines()
    assert lines[0] == "  [pretrain] 10/110 steps (9%), loss 0.1235"
    # 22 steps in 11 s after the first report: 2 steps/s, 78 left: 39 s
    assert lines[1] == "  [pretrain] 32/110 steps (29%), loss 0.09, 2 steps/s, ETA 39s"
    assert len(lines) == 2
    console.update("pretrain", {"done": 110, "total": 110, "unit": "steps", "note": "resumed from step 100"})
    assert out.getvalue().splitlines()[2] == "  warning: pretrain: resumed from step 100"
    assert out.getvalue().splitlines()[3].startswith("  [pretrain] 110/110 steps (100%)")  # the last one always
    console.update("pretrain", {"note": "resumed from step 100"})
    assert out.getvalue().count("resumed") == 1  # a note is said once
    assert console.finish("pretrain").startswith("110/110 steps") and "pretrain" not in console.tasks
    assert [format_duration(s) for s in (4.24, 42, 187, 3720)] == ["4.2s", "42s", "3m07s", "1h02m"]


def test_the_board_hands_over_fresh_updates_and_notes_once():
    board = ProgressBoard()
    board.update("a", {"done": 1, "total": 4})
    board.update("a", {"done": 2, "note": "careful"})
    board.update("b", {"done": 7})
    assert board.drain() == [("a", {"note": "careful"}), ("a", {"done": 2, "total": 4}), ("b", {"done": 7})]
    assert board.drain() == []


def test_capture_sends_the_engine_output_to_the_log_and_keeps_the_console(tmp_path):
    out = io.StringIO()
    console = Console(out)
    log = tmp_path / "logs" / "run.log"
    with console.capture(str(log)):
        os.write(1, b"engine on stdout\n")
        os.write(2, b"engine on stderr\n")
        subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
        console.line("the job")
    os.write(1, b"")  # the descriptors are back
    assert out.getvalue() == "the job\n"
    assert log.read_text().splitlines() == ["engine on stdout", "engine on stderr", "a child process"]
    verbose = Console(io.StringIO(), verbose=True)
    with verbose.capture(str(tmp_path / "none.log")):
        pass
    assert not (tmp_path / "none.log").exists() and verbose.log_path is None


# ---------------------------------------------------------------------------- two real jobs at once
RAY_INTERNALS = re.compile(r"\(pid=|pid=\d+\)|SplitCoordinator|TrainController|PlacementGroup|Execution plan|"
                           r"Dataset dataset_|core_worker|raylet|Traceback|DeprecationWarning")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_smoke_runs_at_once_each_with_a_readable_console_and_its_log(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    for key in ("FSR_PLUGINS", "RAY_ADDRESS"):
        env.pop(key, None)
    jobs = []
    for name in ("a", "b"):
        work = tmp_path / name
        cmd = [sys.executable, "-m", "pipelines.cli", "run", "demo", "-e", "smoke", "--conf-dir", f"{ROOT}/conf",
               f"runtime.work_root={work}", "runtime.num_cpus=2"]
        jobs.append((work, subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)))
    for work, job in jobs:
        stdout, stderr = job.communicate(timeout=840)
        assert job.returncode == 0, (stdout + stderr)[-4000:]
        console = stdout + stderr  # not a terminal: plain lines
        assert "pipeline demo: 19 stage(s), 0 cached" in console  # the plan
        assert re.search(r"^  pretrain +two_step_pretrain +to run$", console, re.M)
        assert re.search(r"^  \[pretrain\] \d+/4 steps \(\d+%\), l2h_total ", console, re.M)  # progress
        assert re.search(r"^  \[done\]    pretrain in [\d.]+m?\d*s  \(4/4 steps", console, re.M)
        assert re.search(r"^  \[restore\] (\d+)/\1 faces", console, re.M)
        assert "pipeline demo: 19 executed, 0 cached" in console and "outputs:" in console
        assert "MLflow: parent run" in console and "mlflow ui --backend-store-uri" in console
        leaked = [line for line in console.splitlines() if RAY_INTERNALS.search(line)]
        assert not leaked, leaked[:5]
        (log_name,) = os.listdir(work / "logs")
        assert f"engine log (Ray, MLflow, PyTorch): {work / 'logs' / log_name}" in console
        log = (work / "logs" / log_name).read_text()
        assert "TrainController" in log and "Dataset" in log  # the engine's output is kept
        assert "multiple active Ray instances" not in log
        # no traceback, except the ones Ray logs itself with a warning that says they are harmless (its
        # Train controller's 5 s resource request can time out when two jobs share two cores)
        lines = log.splitlines()
        for i, line in enumerate(lines):
            if "Traceback" in line:
                assert any("safe to ignore" in before for before in lines[max(0, i - 2):i]), lines[max(0, i - 2):i + 30]
