"""``fsr restore --input URI --output URI --model models:/NAME@ALIAS [options]``: restore an archive.

Lists the archive (folder or ``s3://`` prefix, nested; images and videos), detects, aligns and
restores every face with the registered model (resolved once to a concrete version), pastes the
restored faces back into their frames and encodes restored videos, and writes a Parquet manifest
per work unit (:mod:`pipelines.archive_restore`). Re-running the same command resumes: finished
units (those with a manifest part) are not redone.

Each invocation is tracked as one MLflow run (``fsr_kind=restore``) in ``--experiment`` (default
``fsr-restore``) of the tracking store that also holds the model registry: parameters (the
detection, output and execution settings), tags (``fsr_input``, ``fsr_output``, ``fsr_model_uri``
with the concrete version, ``fsr_status``), progress metrics while it runs (``units_finished``,
``faces``, ``frames``, ``faces_per_second``, ``quarantined``; at most every ``--log-every``
seconds, step = units finished), final metrics (``faces``, ``frames``, ``units``, ``units_run``,
``units_reused``, ``seconds``, ``faces_per_second``, ``quarantined_<reason>``) and the
``restore_summary.json`` artifact. A resumed restore is a new run with the same ``fsr_output`` tag
(compare them in the UI by that tag); a failed one ends ``FAILED`` with ``fsr_error``.

Wiring (in :mod:`pipelines.cli`): ``add_restore_command(sub)`` in ``build_parser`` and
``if args.command == "restore": return cmd_restore(args)`` in ``main``. ``python -m
pipelines.restore_cli ...`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Sequence

__all__ = ["RunLogger", "add_restore_command", "cmd_restore", "main"]


def _at_least(low, kind=int):
    """An argparse type: ``kind(text)`` >= ``low``, else argparse's own error naming the flag (exit 2,
    before Ray or MLflow start)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def add_restore_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``restore`` sub-command to the ``fsr`` parser's sub-parsers."""
    from fsr_core.data.detection import DETECTOR_NAMES
    from fsr_core.data.ingest.images import DEFAULT_MAX_PIXELS

    p = subparsers.add_parser(
        "restore", help="restore every face of an archive of photos and videos with a registered model",
        description="Detect, align and super-resolve every face of an archive (folder or s3:// prefix), paste the "
                    "restored faces back, encode restored videos, and write a Parquet manifest per work unit. "
                    "Re-running resumes.")
    p.add_argument("--input", required=True, help="archive folder or s3:// prefix (searched recursively)")
    p.add_argument("--output", required=True, help="output folder or s3:// prefix")
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>, or bicubic (bicubic:x<scale>; "
                        "the baseline, no registry)")
    p.add_argument("--references", default=None, metavar="URI",
                   help="reference pool for a SAIR restorer (a sair_latent stage's 'pool' output, folder or s3://): "
                        "each face's reference is picked from it instead of the pool the model was built with")
    p.add_argument("--identity", default=None, metavar="NAME",
                   help="the person every face of the archive shows, for a restorer that reads each face's identity "
                        "(SAIR with reference_identity: given takes that person's references from its pool)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="fsr-restore", help="MLflow experiment of the restore run")
    p.add_argument("--log-every", type=float, default=10.0, help="seconds between progress metrics in MLflow")
    p.add_argument("--no-tracking", action="store_true", help="do not log an MLflow run")
    g = p.add_argument_group("faces")
    g.add_argument("--detector", default="mtcnn-tiny", choices=DETECTOR_NAMES,
                   help="face detector or preset (default mtcnn-tiny: finds 16 px faces; see bench/detection_recall.py)")
    g.add_argument("--upsample", type=int, default=1, help="dlib image doublings (hog, cnn)")
    g.add_argument("--min-face-size", type=float, default=12, help="smallest face kept (px)")
    g.add_argument("--score-threshold", type=float, default=None)
    g.add_argument("--max-faces", type=int, default=None, help="per image / frame, best first")
    g.add_argument("--input-size", type=int, default=None,
                   help="aligned crop side given to the restorer (default: its card's input size)")
    g.add_argument("--template", default="ffhq", help="alignment template (ffhq, arcface)")
    g.add_argument("--max-pixels", type=_at_least(1), default=DEFAULT_MAX_PIXELS,
                   help="images whose header claims more pixels are quarantined (too_large) undecoded")
    g.add_argument("--sample-fps", type=float, default=1.0, help="video frames per second (0: every frame)")
    g.add_argument("--max-frames", type=int, default=None, help="sampled frames per video at most (no chunking)")
    v = p.add_argument_group("videos")
    v.add_argument("--chunk-seconds", type=float, default=60.0,
                   help="videos longer than this are split into work units of about this length (0: one unit)")
    v.add_argument("--temporal-smoothing", type=float, default=0.0,
                   help="weight of the past in the motion-compensated EMA of restored crops along a face track "
                        "(0: off; 0.5 halves the flicker of independent restorations)")
    v.add_argument("--smoothing-tolerance", type=float, default=24.0,
                   help="ghosting guard: differences above this (8-bit units) fade the past out; 0: off")
    o = p.add_argument_group("outputs")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the engine's output (Ray, MLflow, PyTorch) live instead of in the run's log file")
    o.add_argument("--no-paste-back", action="store_true", help="write restored crops only")
    o.add_argument("--no-video", action="store_true", help="do not encode restored videos")
    o.add_argument("--feather", type=float, default=0.1, help="paste-back mask ramp, fraction of the crop side")
    r = p.add_argument_group("execution")
    r.add_argument("--unit-size", type=_at_least(1), default=8, help="images per work unit (videos: --chunk-seconds)")
    r.add_argument("--execution", choices=("auto", "fused", "staged"), default="auto",
                   help="fused: one Ray task does whole units (read, detect, restore, write; the CPU default); "
                        "staged: detect tasks -> model actor pool -> write tasks (the GPU and latent-search default)")
    r.add_argument("--batch-size", type=_at_least(1), default=None,
                   help="faces per network forward (default 1 on CPU, measured no slower per face; 64 on GPU)")
    r.add_argument("--frames-per-batch", type=_at_least(1), default=16,
                   help="images / video frames per restorer call (smaller: units finish sooner)")
    r.add_argument("--unit-cpus", type=_at_least(0.0, float), default=1.0, help="CPUs of a fused task")
    r.add_argument("--units-per-task", type=_at_least(1), default=4,
                   help="units a fused task runs one after another (fewer tasks: less of Ray's cost per task)")
    r.add_argument("--num-actors", type=_at_least(1), default=1, help="model actors (staged)")
    r.add_argument("--actor-cpus", type=_at_least(0.0, float), default=0.5, help="CPUs of a model actor (staged)")
    r.add_argument("--detect-cpus", type=_at_least(0.0, float), default=0.5, help="CPUs of a detect task (staged)")
    r.add_argument("--use-gpu", action="store_true", help="one GPU per model actor (or fused task)")
    r.add_argument("--ray-address", default=None, help="Ray cluster address (default: a private local Ray)")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray")
    r.add_argument("--shared-fs", action="append", default=[], metavar="FOLDER",
                   help="a folder mounted at the same path on every node of the --ray-address cluster (repeatable): "
                        "with a cluster, local --input/--output/tracking paths are accepted only under these")
    return p


class RunLogger:
    """The MLflow run of one ``fsr restore``: an ``on_progress`` callback for
    :func:`pipelines.archive_restore.restore_archive` plus :meth:`finish`."""

    def __init__(self, tracking_uri: str, experiment: str, *, args: argparse.Namespace, settings,
                 log_every: float = 10.0) -> None:
        import dataclasses

        from pipelines import tracking

        self.tracking = tracking
        self.tracking_uri = tracking_uri
        self.warn = lambda text: print(text, file=sys.stderr, flush=True)  # the console's, in a CLI run
        self.log_every = log_every
        self._last_log = -float("inf")
        self._failures = 0
        experiment_id = tracking.get_or_create_experiment(
            tracking_uri, experiment, artifact_location=tracking.default_artifact_location(tracking_uri))
        output = os.path.basename(args.output.rstrip("/")) or args.output
        self.run_id = tracking.create_run(
            tracking_uri, experiment_id, run_name=f"restore-{output}",
            tags={"fsr_kind": "restore", "fsr_input": args.input, "fsr_output": args.output,
                  "fsr_model_requested": args.model, "fsr_status": "running", **tracking.process_tags()})
        self.closed_runs, self.live_runs = self._close_abandoned(experiment_id, args.output)
        params = {f"settings.{k}": v for k, v in dataclasses.asdict(settings).items()}
        params.update({k: getattr(args, k) for k in (
            "unit_size", "batch_size", "frames_per_batch", "num_actors", "actor_cpus", "detect_cpus", "use_gpu",
            "execution", "unit_cpus", "units_per_task",
            "feather", "no_paste_back", "no_video", "ray_address")})
        params.update({k: getattr(args, k, None) for k in ("identity", "references")})  # SAIR's restorer inputs
        tracking.log_params(tracking_uri, self.run_id, tracking.flatten_params(params))

    def _close_abandoned(self, experiment_id: str, output: str) -> tuple[list, list]:
        """Runs of earlier restores into the same output left RUNNING by a killed process: ended KILLED,
        linked both ways (``fsr_resumed_by`` on them, ``fsr_resumes`` here)."""
        closed, live = self.tracking.close_abandoned_runs(
            self.tracking_uri, experiment_id, {"fsr_kind": "restore", "fsr_output": output}, successor=self.run_id)
        if closed:
            self.tracking.set_tags(self.tracking_uri, self.run_id, {"fsr_resumes": ",".join(closed)})
        return closed, live

    def __call__(self, event: dict) -> None:
        """Log one progress event; a tracking-server failure is reported on stderr and never stops the
        restore (after three failures in a row the run stops being updated)."""
        if self._failures >= 3:
            return
        try:
            self._log(event)
            self._failures = 0
        except Exception as exc:  # noqa: BLE001 - MLflow is a record of the job, not a part of it
            self._failures += 1
            self.warn(f"fsr restore: warning: MLflow logging failed ({type(exc).__name__}: {exc})"
                      + ("; no more updates to the run" if self._failures >= 3 else ""))

    def _log(self, event: dict) -> None:
        import time

        kind = event["event"]
        if kind == "plan":
            self.tracking.set_tags(self.tracking_uri, self.run_id, {
                "fsr_model_uri": event["model_uri"], "fsr_model_name": event["model_name"],
                "fsr_model_version": event["model_version"]})
            self.tracking.log_metrics(self.tracking_uri, self.run_id, {
                "files": event["files"], "units": event["units"], "units_todo": event["units_todo"],
                "units_reused": event["units_reused"]})
        elif kind == "unit":
            now = time.monotonic()
            last = event["units_finished"] == event["units_todo"]
            if last or now - self._last_log >= self.log_every:
                self._last_log = now
                self.tracking.log_metrics(self.tracking_uri, self.run_id, {
                    k: event[k] for k in ("units_finished", "faces", "frames", "quarantined", "faces_per_second")},
                    step=event["units_finished"])
        elif kind == "done":
            metrics = {k: event[k] for k in ("faces", "frames", "units", "units_run", "units_reused", "seconds",
                                             "faces_per_second")}
            metrics.update({f"quarantined_{reason}": n for reason, n in event["quarantined"].items()})
            metrics["quarantined"] = sum(event["quarantined"].values())
            metrics["units_to_retry"] = len(event["units_to_retry"])
            metrics["units_failed"] = len(event.get("units_failed", []))
            metrics.update({f"lr_consistency_{k}": v for k, v in event.get("lr_consistency", {}).items()})
            metrics.update({f"cpu_seconds_{step}": v for step, v in event.get("step_cpu_seconds", {}).items()})
            if "driver_cpu_seconds" in event:
                metrics["cpu_seconds_driver"] = event["driver_cpu_seconds"]
            self.tracking.log_metrics(self.tracking_uri, self.run_id, metrics, step=event["units_run"])
            self.tracking.log_dict(self.tracking_uri, self.run_id, event, "restore_summary.json")

    def finish(self, error: BaseException | None = None, *, incomplete: bool = False) -> None:
        """End the run: FINISHED (``fsr_status`` ``executed``, or ``incomplete`` when units are left
        to retry), KILLED (interrupt or SIGTERM) or FAILED with the error; a tracking-server failure
        here is a warning, so it never hides the job's own error."""
        try:
            if error is None:
                self.tracking.end_run(self.tracking_uri, self.run_id, status="FINISHED",
                                      tags={"fsr_status": "incomplete" if incomplete else "executed"})
            else:
                status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"
                self.tracking.end_run(self.tracking_uri, self.run_id, status=status,
                                      tags={"fsr_status": "failed", "fsr_error": repr(error)[-4000:]})
        except Exception as exc:  # noqa: BLE001
            self.warn(f"fsr restore: warning: could not end MLflow run {self.run_id}: {exc}")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _Progress:
    """The restore's ``on_progress``: the MLflow run (when there is one) and the console's progress line."""

    def __init__(self, console, logger) -> None:
        self.console, self.logger = console, logger

    def __call__(self, event: dict) -> None:
        if self.logger is not None:
            self.logger(event)
        kind = event.get("event")
        if kind == "plan":
            self.console.start("restore", total=event["units_todo"], unit="units")
        elif kind == "unit":
            self.console.update("restore", {"done": event["units_finished"], "total": event["units_todo"],
                                            "unit": "units", "faces": event["faces"],
                                            "quarantined": event["quarantined"],
                                            "faces/s": round(event["faces_per_second"], 1)})
        elif kind == "done":
            detail = self.console.finish("restore")
            if detail:
                self.console.line(f"  [done]    restore  ({detail})")


def _log_path(output: str) -> str:
    """``<output>/_logs/restore-<time>-<pid>.log`` for a local output, ``./fsr-logs/...`` for s3://."""
    import datetime as dt

    folder = os.path.join(output, "_logs") if "://" not in output else "fsr-logs"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join(folder, f"restore-{stamp}-{os.getpid()}.log"))


def _reference_loader(args: argparse.Namespace) -> dict:
    """``{"loader": ..., "restorer_inputs": ...}`` putting ``--references`` in place of a SAIR restorer's pool
    and giving every face ``--identity`` (both recorded in the plan); ``{}`` without either."""
    references, identity = getattr(args, "references", None), getattr(args, "identity", None)
    if not references and not identity:
        return {}
    import functools

    from pipelines.references import load_restorer_for_archive

    inputs = {name: value for name, value in (("references", references), ("identity", identity)) if value}
    return {"loader": functools.partial(load_restorer_for_archive, references=references, identity=identity),
            "restorer_inputs": inputs}


def cmd_restore(args: argparse.Namespace) -> int:
    """Run ``fsr restore``; returns the exit code (0 done, 1 failed, 2 bad arguments)."""
    from fsr_core.restore.archive import ArchiveSettings
    from pipelines.archive_restore import restore_archive
    from pipelines.console import Console
    from pipelines.model_registry import ModelNotFoundError
    from pipelines.ray_runtime import start_ray

    console = Console(verbose=getattr(args, "verbose", False))
    try:
        settings = ArchiveSettings(
            input_size=args.input_size, template=args.template, detector=args.detector, upsample=args.upsample,
            min_face_size=args.min_face_size, score_threshold=args.score_threshold, max_faces=args.max_faces,
            sample_fps=args.sample_fps or None, max_frames=args.max_frames, chunk_seconds=args.chunk_seconds or None,
            temporal_smoothing=args.temporal_smoothing, smoothing_tolerance=args.smoothing_tolerance or None,
            max_pixels=args.max_pixels)
    except ValueError as exc:
        console.error(f"fsr restore: {exc}")
        return 2
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    from pipelines.cluster import command_refusal

    refusal = command_refusal(getattr(args, "ray_address", None),
                              {"--input": args.input, "--output": args.output, "--tracking-uri": tracking_uri},
                              getattr(args, "shared_fs", []), shared_setting="--shared-fs")
    if refusal:
        console.error(f"fsr restore: {refusal}")
        return 2
    logger = None
    if not args.no_tracking:
        if not tracking_uri:
            console.error("fsr restore: give --tracking-uri or set MLFLOW_TRACKING_URI (the registry of --model, "
                          "where the run is logged), or --no-tracking with a tracking URI from MLflow's defaults")
            return 2
        try:
            logger = RunLogger(tracking_uri, args.experiment, args=args, settings=settings, log_every=args.log_every)
        except Exception as exc:  # noqa: BLE001 - before any work: say so and stop
            console.error(f"fsr restore: cannot start an MLflow run at {tracking_uri}: {exc} (--no-tracking restores "
                          "without one)")
            return 1

    def terminated(signum, frame):  # SIGTERM (a scheduler stopping the job): end the run KILLED, exit 143
        raise SystemExit(128 + signum)

    previous_handler = signal.signal(signal.SIGTERM, terminated) if _main_thread() else None
    log_path = _log_path(args.output if "://" in args.output else os.path.abspath(args.output))
    with console.capture(log_path):
        if console.log_path:
            console.line(f"engine log (Ray, MLflow, PyTorch): {console.log_path}  (-v shows it live)")
        if logger is not None:
            logger.warn = console.error
            for run_id in logger.closed_runs:
                console.line(f"MLflow run {run_id} of a killed restore into this output: marked KILLED")
            for run_id in logger.live_runs:
                console.error(f"fsr restore: warning: MLflow run {run_id} of another restore into this output is "
                              "still RUNNING (a live process, or another host's)")
        try:
            start_ray(args.ray_address, args.num_cpus)
            summary = restore_archive(
                args.input, args.output, args.model, tracking_uri=tracking_uri, settings=settings,
                unit_size=args.unit_size, paste=not args.no_paste_back,
                write_video=not (args.no_video or args.no_paste_back), feather=args.feather,
                batch_size=args.batch_size, frames_per_batch=args.frames_per_batch, num_actors=args.num_actors,
                actor_cpus=args.actor_cpus, detect_cpus=args.detect_cpus, use_gpu=args.use_gpu,
                execution=args.execution, unit_cpus=args.unit_cpus, units_per_task=args.units_per_task,
                printer=console.line, on_progress=_Progress(console, logger), **_reference_loader(args))
        except (FileNotFoundError, ValueError, ModelNotFoundError) as exc:
            if logger is not None:
                logger.finish(exc)
            console.error(f"fsr restore: {exc}")
            return 1
        except BaseException as exc:
            if logger is not None:
                logger.finish(exc)
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        if logger is not None:
            logger.finish(incomplete=bool(summary["units_to_retry"] or summary["units_failed"]))
            console.line(f"MLflow run {logger.run_id} ({tracking_uri}); {summary['faces']} face(s)")
        if summary["units_to_retry"]:
            console.error(f"fsr restore: {len(summary['units_to_retry'])} unit(s) had read errors and are not done; "
                          "run the same command again to retry them")
        if summary["units_failed"]:
            console.error(f"fsr restore: {len(summary['units_failed'])} unit(s) failed (see restore_summary.json in "
                          "the MLflow run, or the lines above); every other unit is done; run the same command again "
                          "to retry only those")
            for failure in summary["units_failed"][:10]:
                console.error(f"  unit {failure['unit']}: {failure['error']}")
        if summary["units_to_retry"] or summary["units_failed"]:
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fsr")
    add_restore_command(parser.add_subparsers(dest="command", required=True))
    return cmd_restore(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
