"""The stage contract.

A stage is a function ``fn(ctx, **inputs) -> outputs``:

- ``ctx`` is a :class:`StageContext`: the stage's validated parameters
  (``ctx.params``, a pydantic model of the stage's own ``Params`` class), the
  URIs where it should write each declared output (``ctx.outputs``), and the
  handle of its MLflow run (``ctx.log_metrics`` ...);
- ``inputs`` are artifact references (URIs: a shard folder, a model URI such as
  ``models:/name/3``) named as the stage declares them;
- it returns ``{output_name: reference}`` for every declared output.

Stages do not know about each other, the DAG, caching or Ray scheduling; the
runner does. A stage that itself starts Ray work (a Ray Data job, a Ray Train
fit) reserves no CPU for its own task (``num_cpus=0``, the default) so that its
inner work can have the cores.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict

__all__ = ["Stage", "StageContext", "StageParams", "actor_pool_cpus"]


class StageParams(BaseModel):
    """Base class of every stage's parameters: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Stage:
    """A stage kind: what a pipeline's ``uses:`` names."""

    name: str
    fn: Callable[..., Mapping[str, str]]
    params: type[StageParams]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    description: str
    optional_inputs: tuple[str, ...] = ()
    """Inputs a pipeline may leave out; the function then gets its default for them."""
    input_prefix: str | None = None
    """Any number of further inputs named ``<input_prefix><label>`` (``model_joint``), passed to the
    function as keyword arguments: a stage that treats several artifacts alike (a comparison)."""
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    code: tuple[str, ...] = ()
    """Modules whose code the stage runs besides its function's module (a generic training stage
    names its method's objective and parameters): part of the stage's code version."""
    held_cpus: Callable[[Any], float] | None = None
    """``held_cpus(params)``: the CPUs the stage's inner Ray work holds for as long as it runs (an
    actor pool, Ray Train workers), besides the one task slot its data tasks need. The runner starts
    a stage only while the running stages' held CPUs and its own fit in the cluster (or when nothing
    runs): actor pools of concurrent stages that together take every CPU would leave none of them a
    slot for their tasks, and all would wait forever. None: plain tasks only, which queue and finish."""


def actor_pool_cpus(params: Any) -> float:
    """:attr:`Stage.held_cpus` of a stage with ``num_actors``, ``cpus_per_actor`` and ``io_cpus``."""
    return params.num_actors * params.cpus_per_actor + params.io_cpus


@dataclass
class StageContext:
    """What a running stage gets besides its inputs (the ``cfg`` of ``(cfg, **inputs)``)."""

    pipeline: str
    stage: str
    params: StageParams
    outputs: dict[str, str]
    work_dir: str
    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    fingerprint: str = ""
    extra_tags: dict[str, str] = field(default_factory=dict)
    progress: Callable[[str, Mapping[str, Any]], None] | None = None
    """Where :meth:`report` sends progress (the runner's progress board); None: nowhere."""
    _last_report: float = field(default=0.0, repr=False)

    def report(self, done: float, total: float | None = None, *, unit: str = "", note: str | None = None,
               every: float = 0.5, **info: Any) -> None:
        """Progress for the console: ``done`` of ``total`` ``unit`` plus named values (faces,
        quarantined, loss ...); ``note`` is a warning shown once. At most one report every ``every``
        seconds reaches the console, except the last (``done == total``) and notes."""
        if self.progress is None:
            return
        now = time.time()
        final = total is not None and done >= total
        if not (final or note) and now - self._last_report < every:
            return
        self._last_report = now
        fields = {"done": done, "total": total, "unit": unit, **info}
        if note:
            fields["note"] = note
        try:
            self.progress(self.stage, fields)
        except Exception:  # noqa: BLE001 - progress is never worth failing a stage
            pass

    # -- MLflow helpers: log into this stage's nested run (no-ops without one) --------------
    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        if self.run_id is None:
            return
        client = self._client()
        for key, value in metrics.items():
            client.log_metric(self.run_id, key, float(value), step=step or 0)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        client = self._client()
        for key, value in params.items():
            client.log_param(self.run_id, key, str(value)[:6000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        client = self._client()
        for key, value in tags.items():
            client.set_tag(self.run_id, key, str(value))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        if self.run_id is None:
            return
        self._client().log_dict(self.run_id, dict(data), artifact_file)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if self.run_id is None:
            return
        self._client().log_artifact(self.run_id, local_path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.run_id is None:
            return
        self._client().log_text(self.run_id, text, artifact_file)

    def scratch_dir(self) -> str:
        """A fresh local temporary folder for this stage's scratch files."""
        return tempfile.mkdtemp(prefix=f"fsr-{self.stage}-")

    def describe(self) -> str:
        return json.dumps({"pipeline": self.pipeline, "stage": self.stage, "outputs": self.outputs}, indent=2)
