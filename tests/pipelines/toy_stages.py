"""Small real stages for runner tests: they write files and record every execution in a log file."""

from __future__ import annotations

import os
import time

from pydantic import Field

from fsr_core import storage
from pipelines.stage import Stage, StageContext, StageParams


class ToyParams(StageParams):
    value: int = 1
    log_dir: str
    wait_for: str | None = Field(None, description="stage name whose start marker must appear before this one ends")


def _record(ctx: StageContext) -> None:
    with open(os.path.join(ctx.params.log_dir, "executions.log"), "a") as fh:
        fh.write(ctx.stage + "\n")
    if os.path.exists(os.path.join(ctx.params.log_dir, f"fail-{ctx.stage}")):
        raise RuntimeError(f"injected failure in {ctx.stage}")


def _barrier(ctx: StageContext) -> None:
    """Start marker + wait for a peer's: passes only if both stages run at the same time."""
    open(os.path.join(ctx.params.log_dir, f"started-{ctx.stage}"), "w").close()
    if ctx.params.wait_for:
        peer = os.path.join(ctx.params.log_dir, f"started-{ctx.params.wait_for}")
        deadline = time.time() + 60
        while not os.path.exists(peer):
            if time.time() > deadline:
                raise TimeoutError(f"{ctx.stage}: {ctx.params.wait_for} never started concurrently")
            time.sleep(0.05)


def _event(ctx: StageContext, what: str) -> None:
    with open(os.path.join(ctx.params.log_dir, "events.log"), "a") as fh:
        fh.write(f"{what} {ctx.stage}\n")


def produce(ctx: StageContext) -> dict[str, str]:
    _event(ctx, "start")
    _record(ctx)
    _barrier(ctx)
    time.sleep(0.3)  # long enough for a concurrently started peer to log its start
    uri = storage.join(ctx.outputs["data"], "value.txt")
    storage.write_bytes(uri, str(ctx.params.value).encode())
    ctx.log_metrics({"value": ctx.params.value})
    _event(ctx, "end")
    return {"data": ctx.outputs["data"]}


def combine(ctx: StageContext, a: str, b: str) -> dict[str, str]:
    _record(ctx)
    total = sum(int(storage.read_bytes(storage.join(uri, "value.txt"))) for uri in (a, b)) + ctx.params.value
    storage.write_bytes(storage.join(ctx.outputs["data"], "value.txt"), str(total).encode())
    return {"data": ctx.outputs["data"]}


def bad_outputs(ctx: StageContext) -> dict[str, str]:
    return {"wrong": "x"}


TOY_STAGES = {
    "produce": Stage("produce", produce, ToyParams, inputs=(), outputs=("data",), description="write value"),
    "combine": Stage("combine", combine, ToyParams, inputs=("a", "b"), outputs=("data",), description="a + b + value"),
    "bad_outputs": Stage("bad_outputs", bad_outputs, ToyParams, inputs=(), outputs=("data",), description="broken"),
}
