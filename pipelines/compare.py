"""``fsr compare``: every restorer on the same evaluation set, the bicubic baseline always included.

    fsr compare MODEL [MODEL ...] --hr URI [--lr URI] [--split test] [--scale 8] [--hr-size 128]
                [--max-images N] [--face-embedder CHECKPOINT] [--tracking-uri URI]
                [--experiment fsr-compare] [--report-dir DIR]

Each model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``bicubic``) is scored on the same
pairs as ``evaluate_sr`` scores them (simulated from ``--hr``, or genuine ``--lr`` with its ground
truth): PSNR-Y, SSIM-Y, ``lr_consistency_psnr_y`` (the LR input against the restored face brought
back to its size with MATLAB bicubic), ``identity_sim_dlib`` (dlib's descriptor),
``identity_sim_face_embedder`` (the project's own embedder, with ``--face-embedder`` naming a
``face_embedder_train`` checkpoint), the pooled ``niqe_skvideo`` and the mean ``brisque``, plus the
ground truth's NIQE and BRISQUE.
Printed as a methods x metrics table (columns no method has are left out); written as
``report.html`` (the table with the best value of each column in bold, and each method's
``LR | bicubic | restored | ground truth`` grid embedded) and ``compare.json``. In MLflow: one
parent run (``fsr_kind=compare``, the report as an artifact) and one nested run per method with the
same metric names, so the UI's compare view lines the methods up; every run carries the sha256 of
each weight file the metrics read (``identity_sim_dlib_weights_sha256``, ...), as evaluate_sr's do.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
import tempfile
from typing import Sequence

__all__ = ["METRICS", "add_compare_command", "cmd_compare", "compare_models", "comparison_json", "format_table",
           "log_comparison", "render_report", "side_by_side_grid"]

#: (metric, column title, True when higher is better)
METRICS = (("psnr_y", "PSNR-Y (dB)", True), ("ssim_y", "SSIM-Y", True),
           ("lr_consistency_psnr_y", "LR consistency (dB)", True),
           ("identity_sim_dlib", "identity (dlib)", True),
           ("identity_sim_face_embedder", "identity (own embedder)", True),
           ("niqe_skvideo", "NIQE (skvideo)", False), ("brisque", "BRISQUE", False))
_FOUR_DIGITS = ("ssim_y", "identity_sim_dlib", "identity_sim_face_embedder")


def _columns(results: list[dict]) -> list[tuple[str, str, bool]]:
    """The metrics of :data:`METRICS` that at least one method has."""
    return [m for m in METRICS if any(m[0] in r["means"] for r in results)]


def add_compare_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="score restorers side by side on one evaluation set (bicubic always included)",
        description="Score every given restorer and the bicubic baseline on the same pairs; print a table, write "
                    "an HTML report and log one MLflow run per method.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="models:/NAME@ALIAS, models:/NAME/VERSION or bicubic")
    p.add_argument("--hr", required=True, help="HR face shards (the ground truth)")
    p.add_argument("--lr", default=None, help="genuine LR shards paired with --hr by meta.hr_id (default: simulated)")
    p.add_argument("--split", default="test")
    p.add_argument("--scale", type=int, default=8)
    p.add_argument("--hr-size", type=int, default=128)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--face-embedder", default=None, metavar="CHECKPOINT",
                   help="a face_embedder_train checkpoint (folder or s3:// prefix): also identity_sim_face_embedder")
    p.add_argument("--tracking-uri", default=None, help="MLflow (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="fsr-compare")
    p.add_argument("--report-dir", default=None, help="where report.html goes (default: a temporary folder)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray")
    return p


def compare_models(models: Sequence[str], *, hr: str, lr: str | None, params, tracking_uri: str | None,
                   report=None) -> list[dict]:
    """One entry per method, bicubic first: ``{"model", "uri", "means", "grid_png"}``."""
    from fsr_core.data.codec import decode_png, encode_png
    from pipelines.model_registry import is_bicubic, resolve_model
    from pipelines.stages.evaluate import evaluation_ids, mean_scores, pooled_niqe, score_model

    import numpy as np

    ids, all_ids, _ = evaluation_ids(hr, params, lr=lr)
    if not ids:
        raise ValueError(f"no evaluation pairs in {lr or hr} with split={params.split!r}")
    ordered = [f"bicubic:x{params.scale}"] + [m for m in models if not is_bicubic(m)]
    grid_ids = ids[: params.grid_images]
    results = []
    for model in ordered:
        ref = resolve_model(model, tracking_uri=tracking_uri)
        scored = score_model(hr, ref, params, ids=ids, all_ids=all_ids, tracking_uri=tracking_uri,
                             grid_ids=grid_ids, report=report, lr=lr, quality=True)
        means = {**mean_scores(scored), **pooled_niqe(scored)}
        strips = {str(i): png for i, png in zip(scored["id"].to_pylist(), scored["grid_png"].to_pylist()) if png}
        grid = encode_png(np.concatenate([decode_png(strips[i]) for i in grid_ids], axis=0)) if grid_ids else b""
        results.append({"model": model, "uri": ref.uri, "means": means, "num_images": scored.num_rows,
                         "grid_png": grid})
    return results


def side_by_side_grid(results: list[dict], *, hr_size: int, gap: int = 2) -> bytes:
    """One PNG with a row per evaluated face: ``LR | bicubic | each method's restoration | ground
    truth`` (columns in the order of ``results``, bicubic's own restoration left out as it is the
    second column), cut from the methods' ``LR | bicubic | restored | ground truth`` grids. Empty
    bytes when no method has a grid."""
    from fsr_core.data.codec import decode_png, encode_png

    import numpy as np

    grids = [decode_png(r["grid_png"]) for r in results if r["grid_png"]]
    if not grids:
        return b""
    step = hr_size + gap

    def column(grid, k):
        return grid[:, k * step: k * step + hr_size]

    white = np.full((grids[0].shape[0], gap, 3), 255, np.uint8)
    panels = [column(grids[0], 0), column(grids[0], 1)]
    panels += [column(g, 2) for r, g in zip([r for r in results if r["grid_png"]], grids)
               if not r["uri"].startswith("bicubic")]
    panels.append(column(grids[0], 3))
    row = []
    for panel in panels:
        row += [panel, white]
    return encode_png(np.concatenate(row[:-1], axis=1))


def _best(results: list[dict]) -> dict[str, int]:
    best = {}
    for metric, _, higher in _columns(results):
        values = [r["means"].get(metric, float("nan")) for r in results]
        finite = [(v, i) for i, v in enumerate(values) if v == v]
        if finite:
            best[metric] = (max if higher else min)(finite)[1]
    return best


def render_report(results: list[dict], *, title: str, side_by_side_png: bytes = b"") -> str:
    """A self-contained HTML page: the metrics table (best in bold), the methods side by side
    (:func:`side_by_side_grid`) and each method's grid."""
    best = _best(results)
    columns = _columns(results)
    head = "".join(f"<th>{html.escape(name)}</th>" for _, name, _ in columns)
    rows = []
    for i, r in enumerate(results):
        cells = []
        for metric, _, _ in columns:
            value = r["means"].get(metric, float("nan"))
            text = f"{value:.4f}" if metric in _FOUR_DIGITS else f"{value:.2f}"
            cells.append(f"<td><b>{text}</b></td>" if best.get(metric) == i else f"<td>{text}</td>")
        rows.append(f"<tr><td>{html.escape(r['uri'])}</td>{''.join(cells)}</tr>")
    hr_niqe = results[0]["means"].get("hr_niqe_skvideo", float("nan")) if results else float("nan")
    hr_brisque = results[0]["means"].get("hr_brisque", float("nan")) if results else float("nan")
    grids = "".join(
        f"<h3>{html.escape(r['uri'])}</h3><p>LR | bicubic | restored | ground truth</p>"
        f"<img alt=\"grid of {html.escape(r['uri'])}\" src=\"data:image/png;base64,"
        f"{base64.b64encode(r['grid_png']).decode()}\">"
        for r in results if r["grid_png"])
    if side_by_side_png:
        names = " | ".join(["LR", "bicubic", *(html.escape(r["uri"]) for r in results
                                              if r["grid_png"] and not r["uri"].startswith("bicubic")), "ground truth"])
        grids = (f"<h2>Side by side</h2><p>{names}</p><img alt=\"the methods side by side\" "
                 f"src=\"data:image/png;base64,{base64.b64encode(side_by_side_png).decode()}\"><h2>Each method</h2>"
                 + grids)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 10px;text-align:right}"
            "td:first-child{text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"
            f"<p>Best of each column in bold (NIQE and BRISQUE: lower is better; ground truth NIQE {hr_niqe:.2f}, "
            f"BRISQUE {hr_brisque:.2f}). "
            "identity (dlib): cosine similarity of dlib face descriptors with the ground truth; identity (own "
            "embedder): the same with the project's face embedder; LR consistency: PSNR-Y of the LR input against "
            "the restored face brought back to its size (MATLAB bicubic).</p>"
            f"{grids}</body></html>")


def log_comparison(results: list[dict], page: str, *, tracking_uri: str, experiment_id: str, parent_run_id: str,
                   tags: dict[str, str]) -> None:
    """Under ``parent_run_id``: one nested run per method (same metric names, ``fsr_kind=compare_method``),
    ``compare.json`` and ``report.html`` as artifacts of the parent."""
    from pipelines import tracking

    for r in results:
        child = tracking.create_run(tracking_uri, experiment_id, run_name=r.get("label") or r["uri"],
                                    parent_run_id=parent_run_id,
                                    tags={"fsr_kind": "compare_method", "fsr_model_uri": r["uri"], **tags})
        tracking.log_metrics(tracking_uri, child, {k: v for k, v in r["means"].items() if v == v})
        tracking.end_run(tracking_uri, child, status="FINISHED")
    tracking.log_dict(tracking_uri, parent_run_id, {"results": comparison_json(results)}, "compare.json")
    with tempfile.TemporaryDirectory(prefix="fsr-compare-") as scratch:
        path = os.path.join(scratch, "report.html")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(page)
        from mlflow import MlflowClient

        MlflowClient(tracking_uri).log_artifact(parent_run_id, path)


def comparison_json(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "grid_png"} for r in results]


def format_table(results: list[dict]) -> list[str]:
    """The methods x metrics table as printed lines (a column per metric some method has)."""
    width = max(len(r.get("label") or r["uri"]) for r in results)
    columns = _columns(results)
    lines = [f"  {'method':<{width}}  " + "  ".join(f"{name:>{max(len(name), 8)}}" for _, name, _ in columns)]
    for r in results:
        cells = []
        for metric, name, _ in columns:
            value = r["means"].get(metric, float("nan"))
            cells.append(f"{value:>{max(len(name), 8)}.{4 if metric in _FOUR_DIGITS else 2}f}")
        lines.append(f"  {r.get('label') or r['uri']:<{width}}  " + "  ".join(cells))
    return lines


def _log(results: list[dict], page: str, *, args, tracking_uri: str, tags: dict[str, str]) -> str:
    from pipelines import tracking

    experiment = tracking.get_or_create_experiment(
        tracking_uri, args.experiment, artifact_location=tracking.default_artifact_location(tracking_uri))
    parent = tracking.create_run(tracking_uri, experiment, run_name="compare",
                                 tags={"fsr_kind": "compare", "fsr_hr": args.hr, "fsr_lr": args.lr or "-", **tags})
    log_comparison(results, page, tracking_uri=tracking_uri, experiment_id=experiment, parent_run_id=parent,
                   tags=tags)
    tracking.end_run(tracking_uri, parent, status="FINISHED")
    return parent


def cmd_compare(args: argparse.Namespace) -> int:
    from pipelines.ray_runtime import start_ray
    from pipelines.stages.evaluate import EvaluateSRParams, metric_files

    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        print("fsr compare: give --tracking-uri or set MLFLOW_TRACKING_URI", file=sys.stderr)
        return 2
    try:
        params = EvaluateSRParams(split=args.split, hr_size=args.hr_size, scale=args.scale,
                                  max_images=args.max_images, grid_images=4, face_embedder=args.face_embedder)
        tags = metric_files(params, quality=True)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fsr compare: {exc}", file=sys.stderr)
        return 2
    start_ray(None, args.num_cpus)
    results = compare_models(args.models, hr=args.hr, lr=args.lr, params=params, tracking_uri=tracking_uri)
    title = f"fsr compare: {'genuine LR ' + args.lr if args.lr else 'bicubic-simulated LR'} of {args.hr}"
    print(f"{title}: {results[0]['num_images']} {args.split} pairs, x{args.scale}")
    for line in format_table(results):
        print(line)
    grid = side_by_side_grid(results, hr_size=args.hr_size)
    page = render_report(results, title=title, side_by_side_png=grid)
    folder = args.report_dir or tempfile.mkdtemp(prefix="fsr-compare-")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "report.html"), "w", encoding="utf-8") as fh:
        fh.write(page)
    with open(os.path.join(folder, "compare.json"), "w", encoding="utf-8") as fh:
        json.dump(comparison_json(results), fh, indent=1)
    if grid:
        with open(os.path.join(folder, "side_by_side.png"), "wb") as fh:
            fh.write(grid)
    run_id = _log(results, page, args=args, tracking_uri=tracking_uri, tags=tags)
    print(f"report: {os.path.join(folder, 'report.html')}; MLflow run {run_id} (experiment {args.experiment!r})")
    return 0
