"""``fsr restore --input URI --output URI --model models:/NAME@ALIAS [options]``: restore an archive.

Lists the archive (folder or ``s3://`` prefix, nested; images and videos), detects, aligns and
restores every face with the registered model (resolved once to a concrete version), pastes the
restored faces back into their frames and encodes restored videos, and writes a Parquet manifest
per work unit (:mod:`pipelines.archive_restore`). Re-running the same command resumes: finished
units (those with a manifest part) are not redone.

Wiring (in :mod:`pipelines.cli`): ``add_restore_command(sub)`` in ``build_parser`` and
``if args.command == "restore": return cmd_restore(args)`` in ``main``. ``python -m
pipelines.restore_cli ...`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

__all__ = ["add_restore_command", "cmd_restore", "main"]

_ENV_FOR_WORKERS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                    "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "PYTHONPATH")


def add_restore_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``restore`` sub-command to the ``fsr`` parser's sub-parsers."""
    p = subparsers.add_parser(
        "restore", help="restore every face of an archive of photos and videos with a registered model",
        description="Detect, align and super-resolve every face of an archive (folder or s3:// prefix), paste the "
                    "restored faces back, encode restored videos, and write a Parquet manifest per work unit. "
                    "Re-running resumes.")
    p.add_argument("--input", required=True, help="archive folder or s3:// prefix (searched recursively)")
    p.add_argument("--output", required=True, help="output folder or s3:// prefix")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-<id>")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI)")
    g = p.add_argument_group("faces")
    g.add_argument("--detector", default="hog", choices=("hog", "cnn", "mtcnn"))
    g.add_argument("--upsample", type=int, default=1, help="dlib image doublings (hog, cnn)")
    g.add_argument("--min-face-size", type=float, default=12, help="smallest face kept (px)")
    g.add_argument("--score-threshold", type=float, default=None)
    g.add_argument("--max-faces", type=int, default=None, help="per image / frame, best first")
    g.add_argument("--input-size", type=int, default=16, help="the network's input size (aligned crop side)")
    g.add_argument("--template", default="ffhq", help="alignment template (ffhq, arcface)")
    g.add_argument("--sample-fps", type=float, default=1.0, help="video frames per second (0: every frame)")
    g.add_argument("--max-frames", type=int, default=None, help="sampled frames per video at most")
    o = p.add_argument_group("outputs")
    o.add_argument("--no-paste-back", action="store_true", help="write restored crops only")
    o.add_argument("--no-video", action="store_true", help="do not encode restored videos")
    o.add_argument("--feather", type=float, default=0.1, help="paste-back mask ramp, fraction of the crop side")
    r = p.add_argument_group("execution")
    r.add_argument("--unit-size", type=int, default=8, help="images per work unit (a video is one unit)")
    r.add_argument("--batch-size", type=int, default=64, help="faces per network forward")
    r.add_argument("--frames-per-batch", type=int, default=16,
                   help="images / video frames per model-actor call (smaller: units finish sooner)")
    r.add_argument("--num-actors", type=int, default=1, help="model actors")
    r.add_argument("--actor-cpus", type=float, default=0.5)
    r.add_argument("--detect-cpus", type=float, default=0.5)
    r.add_argument("--use-gpu", action="store_true", help="one GPU per model actor")
    r.add_argument("--ray-address", default=None, help="Ray cluster address (default: a private local Ray)")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray")
    return p


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict = {"address": address or "local", "include_dashboard": False, "ignore_reinit_error": True}
    if not address:
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        env = {k: os.environ[k] for k in _ENV_FOR_WORKERS if k in os.environ}
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
    ray.init(**kwargs)


def cmd_restore(args: argparse.Namespace) -> int:
    """Run ``fsr restore``; returns the exit code (0 done, 1 failed, 2 bad arguments)."""
    from fsr_core.restore.archive import ArchiveSettings
    from pipelines.archive_restore import restore_archive
    from pipelines.model_registry import ModelNotFoundError

    try:
        settings = ArchiveSettings(
            input_size=args.input_size, template=args.template, detector=args.detector, upsample=args.upsample,
            min_face_size=args.min_face_size, score_threshold=args.score_threshold, max_faces=args.max_faces,
            sample_fps=args.sample_fps or None, max_frames=args.max_frames)
    except ValueError as exc:
        print(f"fsr restore: {exc}", file=sys.stderr)
        return 2
    try:
        _start_ray(args.ray_address, args.num_cpus)
        restore_archive(args.input, args.output, args.model, tracking_uri=args.tracking_uri, settings=settings,
                        unit_size=args.unit_size, paste=not args.no_paste_back,
                        write_video=not (args.no_video or args.no_paste_back), feather=args.feather,
                        batch_size=args.batch_size, frames_per_batch=args.frames_per_batch,
                        num_actors=args.num_actors, actor_cpus=args.actor_cpus,
                        detect_cpus=args.detect_cpus, use_gpu=args.use_gpu)
    except (FileNotFoundError, ValueError, ModelNotFoundError) as exc:
        print(f"fsr restore: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fsr")
    add_restore_command(parser.add_subparsers(dest="command", required=True))
    return cmd_restore(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
