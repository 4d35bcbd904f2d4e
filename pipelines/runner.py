"""The DAG runner: stages as Ray tasks inside one MLflow parent run, with a fingerprint cache.

For each stage, in dependency order:

1. its fingerprint is computed (:mod:`pipelines.fingerprint`);
2. if a finished, executed MLflow run has the same fingerprint and its outputs are
   complete (every file its output manifest lists is there with its size and checksum:
   :mod:`pipelines.outputs`), the stage is **cached**: a nested run tagged
   ``fsr_status=cached`` records the reuse and the stage's outputs are the earlier ones;
   outputs that are not complete are never reused: the stage runs again, after the files
   whose content changed are removed;
3. otherwise the stage **executes** as a Ray task (``num_cpus`` of its kind, 0 by
   default, so that Ray work it starts itself has the cores), in a nested run
   that holds its params, metrics and output references.

Independent stages run concurrently, as many as ``runtime.max_parallel_stages`` allows and as
long as the CPUs their inner actor pools and Ray Train workers hold (``Stage.held_cpus``) fit in
the cluster together: a stage that does not fit waits for a running one to finish (one stage
always runs). When a stage fails, stages already running
finish, nothing new starts, the parent run is marked FAILED and
:class:`PipelineError` names the stage. Re-running the same command reuses
every finished stage and continues from the failed one.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from fsr_core import storage
from pipelines import fingerprint as fp
from pipelines.console import format_duration
from pipelines.ray_runtime import private_ray_env, start_ray
from pipelines import tracking
from pipelines.cluster import check_cluster_storage, check_experiment_artifacts
from pipelines.config import ResolvedConfig
from pipelines.errors import root_cause
from pipelines.outputs import MANIFEST_FILE, Verification, discard, record_outputs, verify_outputs
from pipelines.dag import dependencies, parse_reference
from pipelines.stage import Stage, StageContext

MANIFEST_TAG = "fsr_manifest"  # the run's output manifest (pipelines.outputs)
ERROR_ARTIFACT = "stage_error.txt"  # a failed stage's whole error, on its MLflow run

__all__ = ["PipelineError", "StagePlan", "PipelineResult", "ensure_ray", "plan_pipeline", "result_json", "run_pipeline"]


class PipelineError(RuntimeError):
    """A stage failed (or the plan cannot be made); the message names it and carries its error.
    ``result`` is the run's :class:`PipelineResult` when stages had started."""

    def __init__(self, message: str, *, result: "PipelineResult | None" = None, summary: str | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.summary = summary or message


@dataclass
class StagePlan:
    name: str
    uses: str
    fingerprint: str
    inputs: dict[str, str]  # input name -> URI (None until the producer ran, for outputs of executed stages)
    output_uris: dict[str, str]  # where an execution writes each output
    cached_run_id: str | None = None
    manifest_uri: str = ""  # where an execution writes its output manifest
    not_reused: Verification | None = None  # why the finished run with this fingerprint is not reused
    outputs: dict[str, str] = field(default_factory=dict)  # actual references after running or reuse
    status: str = "pending"  # pending | cached | executed | failed | skipped
    run_id: str | None = None
    seconds: float = 0.0
    error: str | None = None  # the stage's error with its remote traceback (the end of it)
    cause: str | None = None  # its root cause: type and message of the first failure (pipelines.errors)


@dataclass
class PipelineResult:
    pipeline: str
    parent_run_id: str | None
    experiment_id: str
    tracking_uri: str
    stages: dict[str, StagePlan]

    @property
    def executed(self) -> list[str]:
        return [name for name, plan in self.stages.items() if plan.status == "executed"]

    @property
    def cached(self) -> list[str]:
        return [name for name, plan in self.stages.items() if plan.status == "cached"]


def result_json(result: PipelineResult) -> dict:
    """What ``fsr run --json`` prints: the pipeline's MLflow run and, per stage in run order, its
    kind, fingerprint, status (``cached`` / ``to_run`` in a dry run; ``cached``, ``executed``,
    ``failed``, ``skipped`` after a run), outputs, MLflow run id (and the run it reuses), seconds
    and error."""
    stages = []
    for name, plan in result.stages.items():
        status = plan.status
        if status == "pending":
            status = "cached" if plan.cached_run_id else "to_run"
        stages.append({
            "name": name,
            "uses": plan.uses,
            "fingerprint": plan.fingerprint,
            "status": status,
            "inputs": dict(plan.inputs),
            "outputs": dict(plan.outputs) if plan.outputs else dict(plan.output_uris),
            "run_id": plan.run_id,
            "cached_from": plan.cached_run_id,
            "seconds": round(plan.seconds, 3),
            "error": plan.error,
            "cause": plan.cause,
        })
    return {"pipeline": result.pipeline, "parent_run_id": result.parent_run_id,
            "experiment_id": result.experiment_id, "tracking_uri": result.tracking_uri,
            "dry_run": result.parent_run_id is None, "stages": stages}


def _say(printer: Callable[[str], None] | None, text: str) -> None:
    if printer is not None:
        printer(text)


def ensure_ray(config: ResolvedConfig) -> None:
    """Start (or connect to) Ray once per process (:func:`pipelines.ray_runtime.start_ray`)."""
    start_ray(config.runtime.ray_address, config.runtime.num_cpus, config.runtime.carry_env)


def plan_pipeline(config: ResolvedConfig, *, registry: Mapping[str, Stage], force: set[str] | None = None) -> dict[str, StagePlan]:
    """Fingerprint every stage and look up the cache; touches no data beyond listing catalog inputs.
    On a cluster, node-local storage is refused first (:mod:`pipelines.cluster`)."""
    tracking_uri = config.tracking_uri()
    check_cluster_storage(config)
    check_experiment_artifacts(config, tracking_uri)
    experiment_id = tracking.get_or_create_experiment(
        tracking_uri, config.tracking.experiment, artifact_location=_artifact_location(config)
    )
    force = set(force or ())
    unknown = force - set(config.order)
    if unknown:
        raise PipelineError(f"--force names unknown stage(s) {sorted(unknown)}; stages: {config.order}")
    catalog_fps: dict[str, str] = {}
    output_fps: dict[tuple[str, str], str] = {}
    plans: dict[str, StagePlan] = {}
    for name in config.order:
        spec = config.stage(name)
        kind = registry[spec.uses]
        input_fps: dict[str, str] = {}
        input_uris: dict[str, str] = {}
        for input_name, ref in spec.inputs.items():
            producer, output = parse_reference(ref)
            if producer is None:
                entry = config.catalog[output]
                if output not in catalog_fps:
                    try:
                        catalog_fps[output] = _catalog_fingerprint(output, entry, tracking_uri, config)
                    except (FileNotFoundError, LookupError, fp.DigestMismatch) as exc:
                        raise PipelineError(f"stage {name!r} input {input_name!r}: catalog entry {output!r}: {exc}") from None
                input_fps[input_name] = catalog_fps[output]
                input_uris[input_name] = entry.uri
            else:
                input_fps[input_name] = output_fps[(producer, output)]
                input_uris[input_name] = ""  # known after the producer ran or was reused
        params = config.stage_params[name].model_dump(mode="json")
        stage_fp = fp.stage_fingerprint(uses=spec.uses, params=params, inputs=input_fps,
                                        code=fp.stage_code_version(kind.fn, kind.code))
        for output in kind.outputs:
            output_fps[(name, output)] = fp.output_fingerprint(stage_fp, output)
        base = storage.join(_abs_root(config.runtime.work_root), config.pipeline.name, name, stage_fp[:16])
        plan = StagePlan(
            name=name,
            uses=spec.uses,
            fingerprint=stage_fp,
            inputs=input_uris,
            output_uris={output: storage.join(base, output) for output in kind.outputs},
            manifest_uri=storage.join(base, MANIFEST_FILE),
        )
        if name not in force:
            run = tracking.find_cached_run(tracking_uri, experiment_id, stage_fp)
            if run is not None:
                outputs = tracking.run_outputs(run)
                if set(outputs) != set(kind.outputs):
                    plan.not_reused = Verification([f"run {run.info.run_id} recorded outputs {sorted(outputs)}"])
                else:
                    check = verify_outputs(run.data.tags.get(MANIFEST_TAG), outputs, fingerprint=stage_fp)
                    if check.ok:
                        plan.cached_run_id = run.info.run_id
                        plan.outputs = outputs
                    else:
                        plan.not_reused = check
        plans[name] = plan
    return plans


def _catalog_fingerprint(name: str, entry, tracking_uri: str, config: ResolvedConfig) -> str:
    """A registry alias (``models:/NAME@champion``) is resolved, so a moved alias invalidates the
    cache; data locations are fingerprinted by content (local file hashes cached under the work
    root's ``.fsr/``), a pinned sha256 verified."""
    if entry.uri.startswith("models:/") and not entry.sha256:
        from pipelines.model_registry import resolve_model

        ref = resolve_model(entry.uri, tracking_uri=tracking_uri)
        return fp.catalog_fingerprint(f"{ref.uri}#{ref.model_id}", name=name)
    root = _abs_root(config.runtime.work_root)
    cache_dir = None if "://" in root else os.path.join(root, ".fsr")
    return fp.catalog_fingerprint(entry.uri, sha256=entry.sha256, cache_dir=cache_dir, name=name)


def _close_killed_runs(tracking_uri: str, experiment_id: str, config: ResolvedConfig, parent_id: str,
                       printer) -> None:
    """Runs of an earlier run of this pipeline into the same work root that a killed process left
    RUNNING (SIGKILL, out of memory): the parent and its stages, ended KILLED and linked to this run."""
    closed, _ = tracking.close_abandoned_runs(
        tracking_uri, experiment_id, {"fsr_kind": "pipeline", "fsr_pipeline": config.pipeline.name,
                                      "fsr_work_root": _abs_root(config.runtime.work_root)}, successor=parent_id)
    for run_id in closed:
        stages, _ = tracking.close_abandoned_runs(
            tracking_uri, experiment_id, {"fsr_kind": "stage", "mlflow.parentRunId": run_id}, successor=parent_id)
        _say(printer, f"MLflow run {run_id} of a killed run of this pipeline (and {len(stages)} stage run(s)): "
                      "marked KILLED")
    if closed:
        tracking.set_tags(tracking_uri, parent_id, {"fsr_resumes": ",".join(closed)})


def _abs_root(root: str) -> str:
    return root if "://" in root else os.path.abspath(root)


def _artifact_location(config: ResolvedConfig) -> str | None:
    if config.tracking.artifact_location:
        return config.tracking.artifact_location
    if config.tracking.uri is None:  # local default: artifacts beside the database
        return storage.join(_abs_root(config.runtime.work_root), "mlflow-artifacts")
    return None


def format_brief_plan(config: ResolvedConfig, plans: Mapping[str, StagePlan]) -> str:
    """The plan in a line per stage: name, kind, cached or to run."""
    width = max(len(name) for name in config.order)
    lines = [f"pipeline {config.pipeline.name}: {len(plans)} stage(s), "
             f"{sum(1 for p in plans.values() if p.cached_run_id)} cached"]
    for name in config.order:
        plan = plans[name]
        lines.append(f"  {name:<{width}}  {plan.uses:<24} {'cached' if plan.cached_run_id else 'to run'}")
    return "\n".join(lines)


def format_plan(config: ResolvedConfig, plans: Mapping[str, StagePlan]) -> str:
    lines = [f"pipeline {config.pipeline.name}: {len(plans)} stage(s)"]
    for name in config.order:
        plan = plans[name]
        state = f"cached (run {plan.cached_run_id})" if plan.cached_run_id else "will run"
        if plan.not_reused is not None:
            state += f" (outputs of its last run incomplete: {_first_problem(plan.not_reused)})"
        spec = config.stage(name)
        ins = ", ".join(f"{k}<-{v}" for k, v in spec.inputs.items()) or "-"
        lines.append(f"  {name:<24} [{plan.uses}] {plan.fingerprint[:12]}  {state}")
        lines.append(f"      inputs: {ins}")
        lines.append(f"      outputs: {', '.join(plan.outputs.get(o, u) for o, u in plan.output_uris.items())}")
    return "\n".join(lines)


def _first_problem(check: Verification) -> str:
    more = len(check.problems) - 1
    return check.problems[0] + (f" (and {more} more)" if more > 0 else "")


def _execute_stage(kind: Stage, ctx: StageContext, inputs: dict[str, str], manifest_uri: str) -> dict[str, str]:
    """Body of the Ray task of one stage: the stage, then its output manifest."""
    outputs = kind.fn(ctx, **inputs)
    if not isinstance(outputs, Mapping):
        raise TypeError(f"stage {ctx.stage!r} returned {type(outputs).__name__}, expected a dict of outputs")
    missing = set(kind.outputs) - set(outputs)
    extra = set(outputs) - set(kind.outputs)
    if missing or extra:
        raise ValueError(f"stage {ctx.stage!r} returned outputs {sorted(outputs)}, declared {list(kind.outputs)}")
    outputs = {k: str(v) for k, v in outputs.items()}
    record_outputs(manifest_uri, outputs, stage=ctx.stage, fingerprint=ctx.fingerprint)
    return outputs


def run_pipeline(
    config: ResolvedConfig,
    *,
    registry: Mapping[str, Stage],
    dry_run: bool = False,
    force: set[str] | None = None,
    printer: Callable[[str], None] | None = print,
    console=None,
) -> PipelineResult:
    """Run a validated pipeline. See the module docstring for the semantics.

    ``console`` (a :class:`pipelines.console.Console`): where the plan, stage lines and each running
    stage's progress go (stages report through a :class:`~pipelines.console.ProgressBoard` actor);
    without one, lines go to ``printer`` and progress nowhere."""
    import ray

    tracking_uri = config.tracking_uri()
    plans = plan_pipeline(config, registry=registry, force=force)
    experiment_id = tracking.get_or_create_experiment(
        tracking_uri, config.tracking.experiment, artifact_location=_artifact_location(config)
    )
    if dry_run:
        _say(printer, format_plan(config, plans))
        return PipelineResult(config.pipeline.name, None, experiment_id, tracking_uri, plans)

    if console is not None:
        printer = console.line
    ensure_ray(config)
    reporter = None
    if console is not None:
        from pipelines.console import BoardReporter, ProgressBoard

        board = ray.remote(ProgressBoard).options(num_cpus=0, name=None).remote()
        reporter = BoardReporter(board)
        _say(printer, format_brief_plan(config, plans))
    stage_env = private_ray_env()
    code = fp.code_version()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    parent_id = tracking.create_run(
        tracking_uri,
        experiment_id,
        run_name=f"{config.pipeline.name}-{stamp}",
        tags={"fsr_kind": "pipeline", "fsr_pipeline": config.pipeline.name, "fsr_code_version": code,
              "fsr_work_root": _abs_root(config.runtime.work_root), **tracking.process_tags()},
    )
    _close_killed_runs(tracking_uri, experiment_id, config, parent_id, printer)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    resolved = config.to_dict()
    client.log_dict(parent_id, resolved, "resolved_config.yaml")
    tracking.log_params(tracking_uri, parent_id, {"pipeline": config.pipeline.name, "overrides": " ".join(config.overrides) or "-"})
    _say(printer, f"pipeline {config.pipeline.name}: MLflow run {parent_id} in experiment {config.tracking.experiment!r} ({tracking_uri})")

    deps = dependencies(config.pipeline)
    remote = ray.remote(_execute_stage)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))
    held: dict[str, float] = {}  # running stage -> CPUs its inner actors / workers hold (Stage.held_cpus)
    running: dict = {}  # ObjectRef -> stage name
    started: dict[str, float] = {}
    failed: list[str] = []
    finished: set[str] = set()

    def outputs_of(name: str) -> None:
        spec = config.stage(name)
        for input_name, ref in spec.inputs.items():
            producer, output = parse_reference(ref)
            if producer is not None:
                plans[name].inputs[input_name] = plans[producer].outputs[output]

    try:
        while len(finished) + len(failed) < len(plans):
            ready = [
                n for n in config.order
                if plans[n].status == "pending" and n not in started and deps[n] <= finished and not failed
            ]
            for name in ready:
                plan = plans[name]
                limit = config.runtime.max_parallel_stages
                if not plan.cached_run_id and limit is not None and len(running) >= limit:
                    continue  # started on a later pass, when a running stage has finished
                spec = config.stage(name)
                kind = registry[spec.uses]
                needs = float(kind.held_cpus(config.stage_params[name])) if kind.held_cpus else 0.0
                if not plan.cached_run_id and running and sum(held.values()) + needs > cluster_cpus:
                    continue  # its actors would take the CPUs the running stages' tasks need: later

                outputs_of(name)
                base_tags = {
                    **tracking.process_tags(),
                    "fsr_kind": "stage",
                    "fsr_pipeline": config.pipeline.name,
                    "fsr_stage": name,
                    "fsr_uses": spec.uses,
                    "fsr_fingerprint": plan.fingerprint,
                    "fsr_code_version": fp.stage_code_version(kind.fn, kind.code),
                }
                if plan.cached_run_id:
                    plan.run_id = tracking.create_run(
                        tracking_uri, experiment_id, run_name=name,
                        tags={**base_tags, "fsr_status": "cached", "fsr_cached_from": plan.cached_run_id},
                        parent_run_id=parent_id,
                    )
                    tracking.end_run(tracking_uri, plan.run_id, status="FINISHED",
                                     tags={tracking.OUTPUT_TAG_PREFIX + k: v for k, v in plan.outputs.items()})
                    plan.status = "cached"
                    finished.add(name)
                    _say(printer, f"  [cached]  {name} (reusing run {plan.cached_run_id})")
                    continue
                if plan.not_reused is not None:
                    removed = discard(plan.not_reused)
                    _say(printer, f"  warning: {name}: the outputs of its last run are incomplete "
                                  f"({_first_problem(plan.not_reused)}): running it again"
                                  + (f", {removed} changed file(s) removed first" if removed else ""))
                plan.run_id = tracking.create_run(
                    tracking_uri, experiment_id, run_name=name,
                    tags={**base_tags, "fsr_status": "running"}, parent_run_id=parent_id,
                )
                params = config.stage_params[name]
                tracking.log_params(tracking_uri, plan.run_id, tracking.flatten_params(params.model_dump(mode="json")))
                stage_index = [s.name for s in config.pipeline.stages].index(name)
                client.log_dict(plan.run_id, resolved["pipeline"]["stages"][stage_index], "stage_config.yaml")
                ctx = StageContext(
                    pipeline=config.pipeline.name,
                    stage=name,
                    params=params,
                    outputs=dict(plan.output_uris),
                    work_dir=_abs_root(config.runtime.work_root),
                    run_id=plan.run_id,
                    tracking_uri=tracking_uri,
                    experiment_id=experiment_id,
                    fingerprint=plan.fingerprint,
                    progress=reporter,
                )
                ref = remote.options(
                    num_cpus=kind.num_cpus, num_gpus=kind.num_gpus,
                    max_retries=config.runtime.stage_max_retries, retry_exceptions=False,
                    name=f"stage:{name}", runtime_env=stage_env or None,
                ).remote(kind, ctx, dict(plan.inputs), plan.manifest_uri)
                running[ref] = name
                held[name] = needs
                started[name] = time.time()
                _say(printer, f"  [start]   {name} ({spec.uses})")
                if console is not None:
                    console.start(name)
            if not running:
                if failed or len(finished) == len(plans):
                    break
                if ready:  # only cached stages were ready: look again for what they unblocked
                    continue
                raise PipelineError(f"no stage can start: {sorted(set(plans) - finished)} wait on unfinished inputs")
            done, _ = ray.wait(list(running), num_returns=1, timeout=None if console is None else 0.5)
            if console is not None:
                for key, fields in ray.get(board.drain.remote()):
                    console.update(key, fields)
            for ref in done:
                name = running.pop(ref)
                held.pop(name, None)
                plan = plans[name]
                plan.seconds = time.time() - started[name]
                try:
                    plan.outputs = ray.get(ref)
                except Exception as exc:  # the stage raised, or its worker died
                    plan.status = "failed"
                    full = str(exc) or repr(exc)
                    plan.error, plan.cause = full[-8000:], root_cause(exc)
                    failed.append(name)
                    try:
                        client.log_text(plan.run_id, full, ERROR_ARTIFACT)
                    except Exception:  # noqa: BLE001 - the tag below still holds its end
                        pass
                    tracking.end_run(tracking_uri, plan.run_id, status="FAILED",
                                     tags={"fsr_status": "failed", "fsr_error": plan.error[-4000:],
                                           "fsr_root_cause": plan.cause})
                    if console is not None:
                        console.finish(name)
                    _say(printer, f"  [FAILED]  {name} after {format_duration(plan.seconds)}: {plan.cause}")
                    continue
                plan.status = "executed"
                finished.add(name)
                tracking.end_run(tracking_uri, plan.run_id, status="FINISHED",
                                 tags={"fsr_status": "executed", MANIFEST_TAG: plan.manifest_uri,
                                       **{tracking.OUTPUT_TAG_PREFIX + k: v for k, v in plan.outputs.items()}})
                client.log_metric(plan.run_id, "stage_seconds", plan.seconds)
                detail = console.finish(name) if console is not None else ""
                _say(printer, f"  [done]    {name} in {format_duration(plan.seconds)}" + (f"  ({detail})" if detail else ""))
    except BaseException:
        for ref, name in running.items():
            ray.cancel(ref, force=True)
            tracking.end_run(tracking_uri, plans[name].run_id, status="KILLED", tags={"fsr_status": "failed"})
        tracking.end_run(tracking_uri, parent_id, status="KILLED")
        raise

    for name in config.order:
        if plans[name].status == "pending":
            plans[name].status = "skipped"
    result = PipelineResult(config.pipeline.name, parent_id, experiment_id, tracking_uri, plans)
    if failed:
        tracking.end_run(tracking_uri, parent_id, status="FAILED", tags={"fsr_failed_stages": ",".join(failed)})
        details = "\n".join(f"--- stage {name!r} ---\n{plans[name].error}" for name in failed)
        raise PipelineError(
            f"pipeline {config.pipeline.name}: stage(s) {failed} failed; finished stages are kept and a re-run "
            f"continues from the failed stage.\n{details}",
            result=result,
            summary=f"pipeline {config.pipeline.name}: "
                    + "; ".join(f"stage {name!r} failed: {plans[name].cause} (whole traceback: artifact "
                                f"{ERROR_ARTIFACT} of MLflow run {plans[name].run_id})" for name in failed)
                    + ". Finished stages are kept; the same command again continues from the failed stage.",
        )
    tracking.end_run(tracking_uri, parent_id, status="FINISHED")
    _say(printer, f"pipeline {config.pipeline.name}: {len(result.executed)} executed, {len(result.cached)} cached")
    return result
