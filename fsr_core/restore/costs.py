"""Where restoration spends its CPU: seconds per step, summed wherever the step runs.

A :class:`StepClock` adds the process CPU time (``time.process_time``: every thread of the process,
so a multi-threaded forward is counted whole) spent inside ``with clock("detect"):`` blocks to a
per-step total. The archive job (:mod:`pipelines.archive_restore`) clocks every step in its Ray
tasks and actors, carries the totals along with its rows and sums them in the driver
(``summary["step_cpu_seconds"]``); the plain loop (:func:`fsr_core.restore.loop.restore_loop`)
clocks the same steps around the same functions, so ``bench/restore_throughput.py`` can print the
two side by side, the pipeline's overhead (CPU spent outside every step: scheduling,
serialisation, the object store, Ray's own processes) and the bound (faces/s the cores would give
if the steps ran back to back with no overhead).

The steps (:data:`STEPS`): ``load`` (a worker process loading the model and the detector, once),
``read`` (bytes from storage), ``decode`` (image or video frame to RGB),
``detect`` (the face detector), ``align`` (the similarity warp to the input crop), ``forward`` (the
restorer), ``consistency`` (the LR-consistency score of each restored crop), ``paste`` (paste-back
into the frame), ``encode`` (PNG), ``write`` (bytes to storage), ``manifest`` (the unit's Parquet
part). A video's decoding is clocked as ``decode`` with its reads (PyAV reads as it decodes).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Iterator, Mapping

__all__ = ["NULL_CLOCK", "STEPS", "StepClock", "merge_costs"]

STEPS = ("load", "read", "decode", "detect", "align", "forward", "consistency", "paste", "encode", "write", "manifest")


class StepClock:
    """Sums process CPU seconds per named step; ``clock.seconds`` maps step -> seconds."""

    enabled = True

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.process_time() - start

    def add(self, costs: Mapping[str, float]) -> "StepClock":
        """Add another clock's totals (a dict or its :meth:`to_json`)."""
        if isinstance(costs, str):
            costs = json.loads(costs) if costs else {}
        for step, seconds in costs.items():
            self.seconds[step] = self.seconds.get(step, 0.0) + float(seconds)
        return self

    def total(self) -> float:
        return sum(self.seconds.values())

    def to_json(self) -> str:
        return json.dumps({k: round(v, 6) for k, v in sorted(self.seconds.items())})

    def take(self) -> str:
        """:meth:`to_json`, then start from zero (a clock that reports in pieces)."""
        text, self.seconds = self.to_json(), {}
        return text


class _NullClock(StepClock):
    """A clock that measures nothing (the default of every clocked function)."""

    enabled = False

    def __call__(self, step: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return contextlib.nullcontext()

    def add(self, costs: Mapping[str, float]) -> "StepClock":
        return self  # the shared no-op clock keeps no totals


NULL_CLOCK = _NullClock()


def merge_costs(*texts: str) -> str:
    """The sum of several :meth:`StepClock.to_json` texts, as one."""
    clock = StepClock()
    for text in texts:
        clock.add(text)
    return clock.to_json()
