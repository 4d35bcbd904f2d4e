"""What a person sees: the job, not the engine.

:class:`Console` prints the job's own lines (the plan, stage start and finish with durations,
warnings that matter, the summary) and one progress line or bar per running task, in that task's
units (training: step / max_steps, loss, steps/s, ETA; ingest and restore: files or units, faces,
quarantined, faces/s, ETA; evaluation: images). On a terminal the progress is drawn with ``tqdm``
bars; otherwise (CI, a log file) as plain lines, at most one per task every ``interval`` seconds
and at the end.

:meth:`Console.capture` sends the engine's output to a log file: the process's file descriptors 1
and 2 are pointed at the file (so Ray's forwarded worker output, its C++ logs, Python warnings and
what child processes print all land there), and the console keeps writing to the terminal through
copies of the original descriptors. ``verbose=True`` leaves the engine's output on the terminal as
it comes and writes no log file.

:class:`ProgressBoard` is the Ray actor through which stages running as Ray tasks (and Ray Train's
rank 0 inside them) report progress to the driver; :class:`BoardReporter` is the picklable callable
a stage gets (``StageContext.progress``).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BoardReporter", "Console", "ProgressBoard", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``1h02m``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class _Task:
    key: str
    started: float
    done: float = 0
    total: float | None = None
    unit: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    first: tuple[float, float] | None = None  # (time, done) of the first report: rates exclude start-up
    last_line: float = 0.0
    bar: Any = None


class Console:
    """The job's console (see the module docstring).

    Args:
        stream: where the console writes (default: standard output as it is now).
        verbose: leave the engine's output live on the terminal (no log file).
        interval: seconds between plain progress lines of one task.
        bars: draw ``tqdm`` bars (default: when ``stream`` is a terminal).
    """

    def __init__(self, stream=None, *, verbose: bool = False, interval: float = 15.0, bars: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.error_stream = sys.stderr
        self.out_stream = sys.stdout  # the terminal's standard output (machine-readable results go here)
        self.verbose = verbose
        self.interval = float(interval)
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.bars = bool(isatty()) if bars is None else bars
        self.tasks: dict[str, _Task] = {}
        self.log_path: str | None = None
        self._notes: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ engine output
    @contextlib.contextmanager
    def capture(self, log_path: str | None) -> Iterator["Console"]:
        """Send everything written to file descriptors 1 and 2 to ``log_path`` while inside (a no-op
        when ``verbose`` or without a path); the console keeps the terminal."""
        if self.verbose or not log_path:
            yield self
            return
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        for stream in (sys.stdout, sys.stderr, self.stream):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        console_out = io.TextIOWrapper(os.fdopen(os.dup(saved[1]), "wb", buffering=0), write_through=True,
                                       line_buffering=True, encoding="utf-8", errors="replace")
        console_err = io.TextIOWrapper(os.fdopen(os.dup(saved[2]), "wb", buffering=0), write_through=True,
                                       line_buffering=True, encoding="utf-8", errors="replace")
        previous = (self.stream, self.error_stream, self.out_stream)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            # the process's own streams now lead to the log: write through copies of the old descriptors
            # (a stream that is not the process's, e.g. a test's capture, is kept as it is)
            replace = {id(sys.__stdout__): console_out, id(sys.__stderr__): console_err}
            self.stream = replace.get(id(self.stream), self.stream)
            self.error_stream = replace.get(id(self.error_stream), self.error_stream)
            self.out_stream = replace.get(id(self.out_stream), self.out_stream)
            self.log_path = log_path
            yield self
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            os.close(log_fd)
            self.close_bars()
            self.stream, self.error_stream, self.out_stream = previous
            console_out.close()
            console_err.close()

    # ------------------------------------------------------------------ lines
    def line(self, text: str = "") -> None:
        """One line of the job's own output."""
        if self.bars and any(task.bar is not None for task in self.tasks.values()):
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    __call__ = line

    def warn(self, text: str) -> None:
        """A warning that matters to the user (a quarantined file, a retried unit, a resumed stage)."""
        self.line(f"  warning: {text}")

    def error(self, text: str) -> None:
        print(text, file=self.error_stream, flush=True)

    # ------------------------------------------------------------------ progress
    def start(self, key: str, *, total: float | None = None, unit: str = "") -> None:
        self.tasks[key] = _Task(key=key, started=time.time(), total=total, unit=unit)

    def update(self, key: str, fields: Mapping[str, Any]) -> None:
        """Progress of task ``key``: ``done``, ``total``, ``unit``, an optional ``note`` (printed once
        as a warning) and any other fields (shown as they are: loss, faces, quarantined ...)."""
        now = time.time()
        task = self.tasks.get(key) or _Task(key=key, started=now)
        self.tasks[key] = task
        info = dict(fields)
        note = info.pop("note", None)
        if note and (key, str(note)) not in self._notes:
            self._notes.add((key, str(note)))
            self.warn(f"{key}: {note}")
        task.done = float(info.pop("done", task.done) or 0)
        task.total = info.pop("total", task.total)
        task.unit = str(info.pop("unit", task.unit) or "")
        task.info.update(info)
        if task.first is None:
            task.first = (now, task.done)
        if self.bars:
            self._draw(task)
        elif now - task.last_line >= self.interval or (task.total and task.done >= task.total):
            task.last_line = now
            self.line(f"  [{key}] {self.describe(key)}")

    def rate(self, key: str) -> float | None:
        """Units per second since the task's first report (start-up excluded)."""
        task = self.tasks[key]
        if task.first is None:
            return None
        seconds = time.time() - task.first[0]
        units = task.done - task.first[1]
        return units / seconds if seconds > 0.5 and units > 0 else None

    def describe(self, key: str) -> str:
        """``120/300 steps (40%), loss 0.0123, 2.1 steps/s, ETA 1m26s``."""
        task = self.tasks[key]
        unit = task.unit or "units"
        parts = []
        if task.total:
            parts.append(f"{task.done:.0f}/{task.total:.0f} {unit} ({100 * task.done / task.total:.0f}%)")
        else:
            parts.append(f"{task.done:.0f} {unit}")
        parts += [f"{name} {_format_value(value)}" for name, value in task.info.items()]
        rate = self.rate(key)
        if rate:
            parts.append(f"{rate:.3g} {unit}/s")
            if task.total and task.total > task.done:
                parts.append(f"ETA {format_duration((task.total - task.done) / rate)}")
        return ", ".join(parts)

    def finish(self, key: str) -> str:
        """Forget task ``key`` (closing its bar); returns its last description ('' if it reported nothing)."""
        task = self.tasks.pop(key, None)
        if task is None:
            return ""
        if task.bar is not None:
            task.bar.close()
        if task.first is None:
            return ""
        self.tasks[key] = task  # describe() reads it
        try:
            return self.describe(key)
        finally:
            del self.tasks[key]

    def close_bars(self) -> None:
        for task in self.tasks.values():
            if task.bar is not None:
                task.bar.close()
                task.bar = None

    def _draw(self, task: _Task) -> None:
        from tqdm import tqdm

        if task.bar is None:
            position = sum(1 for other in self.tasks.values() if other.bar is not None)
            task.bar = tqdm(total=task.total, desc=f"  {task.key}", unit=task.unit or "it", file=self.stream,
                            position=position, leave=False, dynamic_ncols=True)
        bar = task.bar
        if task.total and bar.total != task.total:
            bar.total = task.total
        bar.n = task.done
        bar.set_postfix({name: _format_value(value) for name, value in task.info.items()}, refresh=False)
        bar.refresh()


class ProgressBoard:
    """A Ray actor (no CPU) holding the latest progress of every running stage of one pipeline run.

    Stages report with :class:`BoardReporter`; the driver :meth:`drain` s the updates since its last
    look and hands them to its :class:`Console`."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.notes: list[tuple[str, str]] = []

    def update(self, key: str, fields: dict[str, Any]) -> None:
        fields = dict(fields)
        note = fields.pop("note", None)
        if note:
            self.notes.append((key, str(note)))
        self.latest.setdefault(key, {}).update(fields)
        self.latest[key]["_fresh"] = True

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        out = [(key, {"note": note}) for key, note in self.notes]
        self.notes = []
        for key, fields in self.latest.items():
            if fields.pop("_fresh", False):
                out.append((key, dict(fields)))
        return out


class BoardReporter:
    """``reporter(key, fields)``: send progress to a :class:`ProgressBoard` actor (fire and forget)."""

    def __init__(self, board: Any) -> None:
        self.board = board

    def __call__(self, key: str, fields: Mapping[str, Any]) -> None:
        self.board.update.remote(key, dict(fields))
