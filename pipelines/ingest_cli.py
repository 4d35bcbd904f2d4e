"""``fsr ingest DATASET --root URI --out URI [param=value ...]``: one ingest, outside a pipeline.

Writes ``<out>/faces`` (shards) and ``<out>/quarantine``, on Ray (a private local instance unless
``base.yaml`` names a cluster), tracked as one MLflow run (``fsr_kind=ingest``) in the configured
tracking store. The output location is the one given, not a fingerprint folder, so there is no
stage cache here; instead the ingest resumes at shard level: running the same command again
redoes only missing units, and a finished ingest is not redone. Running it with other settings
into the same ``--out`` is refused (the plan recorded in ``faces/_ingest.json`` differs).

Parameters are the stage kind's (``fsr stages`` lists them), as ``key=value`` with YAML values:
``fsr ingest wider_face --root s3://data/wider --out s3://work/wider margin=0.1 splits=[val]``.

Wiring (in :mod:`pipelines.cli`): ``add_ingest_command(sub)`` in ``build_parser`` and
``if args.command == "ingest": return cmd_ingest(args)`` in ``main``.
"""

from __future__ import annotations

import argparse
import os
import time
import sys
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = ["DATASETS", "add_ingest_command", "cmd_ingest"]

#: dataset name on the command line -> stage kind name
DATASETS = {
    "wider_face": "ingest_wider_face",
    "celeba": "ingest_celeba",
    "celeba_hq": "ingest_celeba_hq",
    "ffhq": "ingest_ffhq",
    "folder": "ingest_folder",
    "video": "ingest_video",
    "crops": "ingest_crops",
}


def add_ingest_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``ingest`` sub-command to the ``fsr`` parser's sub-parsers."""
    parser = subparsers.add_parser(
        "ingest",
        help="ingest one data set (WIDER FACE, CelebA, CelebA-HQ, FFHQ) into face-crop shards",
        description="Read a data set in its official layout (local folder or s3://) and write face-crop shards to "
                    "<out>/faces and skipped inputs with their reasons to <out>/quarantine, on Ray Data, tracked in "
                    "MLflow. Re-running resumes: finished shards are kept.",
    )
    parser.add_argument("dataset", choices=sorted(DATASETS), help="which reader")
    parser.add_argument("--root", required=True, help="the data set's root folder or s3:// prefix")
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix (faces/ and quarantine/ go below)")
    parser.add_argument("overrides", nargs="*", metavar="param=value",
                        help="stage parameters (see `fsr stages`), values read as YAML")
    parser.add_argument("--conf-dir", default=None,
                        help="configuration folder for base.yaml (default: $FSR_CONF_DIR or ./conf)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: base.yaml's, else a SQLite file in the work root)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: base.yaml's)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the engine's output (Ray, MLflow) live instead of in the run's log file")
    return parser


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for text in pairs:
        if "=" not in text:
            raise ValueError(f"parameter {text!r}: expected key=value")
        key, raw = text.split("=", 1)
        try:
            params[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ValueError(f"parameter {text!r}: value is not valid YAML: {exc}") from None
    return params


def _base_config(conf_dir: str):
    from pipelines.config import RuntimeConfig, TrackingConfig

    path = os.path.join(conf_dir, "base.yaml")
    data: dict = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    return RuntimeConfig.model_validate(data.get("runtime") or {}), TrackingConfig.model_validate(data.get("tracking") or {})


def cmd_ingest(args: argparse.Namespace) -> int:
    """Run ``fsr ingest``; returns the exit code (0 done, 1 failed, 2 bad arguments)."""
    from fsr_core import storage
    from pipelines import tracking
    from pipelines.stage import StageContext
    from pipelines.console import Console
    from pipelines.ray_runtime import start_ray
    from pipelines.stages.ingest import INGEST_STAGES

    stage = INGEST_STAGES[DATASETS[args.dataset]]
    conf_dir = args.conf_dir or os.environ.get("FSR_CONF_DIR") or "conf"
    try:
        params = stage.params.model_validate(_parse_params(list(args.overrides)))
        runtime, tracking_config = _base_config(conf_dir)
    except (ValueError, ValidationError) as exc:
        print(f"fsr ingest {args.dataset}: invalid parameters:\n{exc}", file=sys.stderr)
        return 2

    work_root = runtime.work_root if "://" in runtime.work_root else os.path.abspath(runtime.work_root)
    tracking_uri = args.tracking_uri or tracking_config.uri
    artifact_location = tracking_config.artifact_location
    if tracking_uri is None:
        if "://" in work_root:
            print("fsr ingest: give --tracking-uri (runtime.work_root is not a local folder)", file=sys.stderr)
            return 2
        tracking_uri = "sqlite:///" + os.path.join(work_root, "mlflow.db")
    artifact_location = tracking.default_artifact_location(tracking_uri, artifact_location)
    out = args.out if "://" in args.out else os.path.abspath(args.out)
    from pipelines.cluster import command_refusal

    refusal = command_refusal(runtime.ray_address, {"--root": args.root, "--out": args.out, "tracking.uri": tracking_uri},
                              runtime.shared_filesystems, shared_setting="runtime.shared_filesystems (base.yaml)")
    if refusal:
        print(f"fsr ingest: {refusal}", file=sys.stderr)
        return 2
    outputs = {"faces": storage.join(out, "faces"), "quarantine": storage.join(out, "quarantine")}

    experiment_id = tracking.get_or_create_experiment(
        tracking_uri, args.experiment or tracking_config.experiment, artifact_location=artifact_location)
    run_id = tracking.create_run(
        tracking_uri, experiment_id, run_name=f"ingest-{args.dataset}",
        tags={"fsr_kind": "ingest", "fsr_uses": stage.name, "fsr_root": args.root, "fsr_status": "running"})
    tracking.log_params(tracking_uri, run_id, tracking.flatten_params(params.model_dump(mode="json")))
    console = Console(verbose=args.verbose)
    ctx = StageContext(pipeline="ingest", stage=args.dataset, params=params, outputs=outputs, work_dir=work_root,
                       run_id=run_id, tracking_uri=tracking_uri, experiment_id=experiment_id, progress=console.update)
    folder = os.path.join(out, "_logs") if "://" not in out else "fsr-logs"
    log_path = os.path.abspath(os.path.join(folder, f"ingest-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"))
    with console.capture(log_path):
        if console.log_path:
            console.line(f"engine log (Ray, MLflow): {console.log_path}  (-v shows it live)")
        try:
            start_ray(runtime.ray_address, runtime.num_cpus)
            console.start(args.dataset)
            result = stage.fn(ctx, root=args.root)
            detail = console.finish(args.dataset)
        except (FileNotFoundError, ValueError) as exc:
            tracking.end_run(tracking_uri, run_id, status="FAILED",
                             tags={"fsr_status": "failed", "fsr_error": str(exc)[-4000:]})
            console.error(f"fsr ingest {args.dataset}: {exc}")
            return 1
        except BaseException as exc:
            tracking.end_run(tracking_uri, run_id, status="FAILED",
                             tags={"fsr_status": "failed", "fsr_error": repr(exc)[-4000:]})
            raise
        tracking.end_run(tracking_uri, run_id, status="FINISHED", tags={
            "fsr_status": "executed", **{tracking.OUTPUT_TAG_PREFIX + k: v for k, v in result.items()}})
        if detail:
            console.line(f"  [done]    {args.dataset}  ({detail})")
        console.line("\noutputs:")
        for name, ref in result.items():
            console.line(f"  {name}: {ref}")
        console.line(f"MLflow run {run_id} ({tracking_uri})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m pipelines.ingest_cli ...``) until ``fsr`` carries the command."""
    parser = argparse.ArgumentParser(prog="fsr")
    sub = parser.add_subparsers(dest="command", required=True)
    add_ingest_command(sub)
    args, rest = parser.parse_known_args(argv)
    stray = [item for item in rest if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = list(args.overrides) + rest
    return cmd_ingest(args)


if __name__ == "__main__":
    sys.exit(main())
