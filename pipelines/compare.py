"""``fsr compare``: every restorer on the same evaluation set, the bicubic baseline always included.

    fsr compare MODEL [MODEL ...] --hr URI [--lr URI] [--split test] [--scale 8] [--hr-size 128] [--resize-output]
                [--max-images N] [--face-embedder CHECKPOINT] [--inception-weights FILE]
                [--lpips-backbone FILE] [--tracking-uri URI]
                [--experiment fsr-compare] [--report-dir DIR]
                [--critical-sizes 8,12,16,24,32,48,64,96,128] [--critical-max-images 32]

Each model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``bicubic``) is scored on the same
pairs as ``evaluate_sr`` scores them (simulated from ``--hr``, or genuine ``--lr`` with its ground
truth): PSNR-Y, SSIM-Y, ``lr_consistency_psnr_y`` (the LR input against the restored face brought
back to its size with MATLAB bicubic), ``identity_sim_dlib`` (dlib's descriptor),
``identity_sim_face_embedder`` (the project's own embedder, with ``--face-embedder`` naming a
``face_embedder_train`` checkpoint), the pooled ``niqe_skvideo`` and the mean ``brisque``, plus the
ground truth's NIQE and BRISQUE. With ``--inception-weights`` (pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``) also ``fid_inception`` and ``kid_inception`` (FID and KID
on pytorch-fid's Inception-v3 pool3 features against the ground-truth set), with
``--lpips-backbone`` (AlexNet's ImageNet weights, torchvision's ``alexnet-owt-7be5be79.pth``) the
mean ``lpips_alex`` against the ground truth; neither otherwise.
Printed as a methods x metrics table (columns no method has are left out); written as
``report.html`` (the table with the best value of each column in bold, and each method's
``LR | bicubic | restored | ground truth`` grid embedded) and ``compare.json``. In MLflow: one
parent run (``fsr_kind=compare``, the report as an artifact) and one nested run per method with the
same metric names, so the UI's compare view lines the methods up; every run carries the sha256 of
each weight file the metrics read (``identity_sim_dlib_weights_sha256``, ...), as evaluate_sr's do.

With ``--critical-sizes`` (off by default here, on by default in the ``compare_restorers`` stage),
also the critical-resolution study (:func:`critical_resolution`): on the ground truth of the first
``--critical-max-images`` evaluation pairs (with ``--lr``, the HR crops those LR rows name), for
each input size the ground truth is brought down to that size with MATLAB bicubic and each method
restores it (:func:`fsr_core.restore.batch.restore_from_size`: bicubic upsamples straight to
``--hr-size``; a learned restorer gets the LR resized to its card's input size first, as
``restore_faces`` does); the dlib descriptors (and the project's embedder's, with
``--face-embedder``) of the restored faces are matched among those of all the ground-truth faces
(:func:`fsr_core.metrics.identity.critical_resolution_curve`: Rank-1, each face its own identity,
so chance is 1/N). Per method: ``critical_resolution`` in ``compare.json`` (per network: sizes,
match rates, knee), a line in ``critical_resolution.png`` (embedded in the report, an artifact of
the parent run) and, on its nested run, ``critical_resolution_knee_dlib`` (and
``critical_resolution_knee_face_embedder``) plus ``critical_resolution_match_rate_dlib`` logged
with the input size as its step (the MLflow UI draws the curve). It runs through Ray Data like the
scoring (one actor pool per method, :class:`~fsr_core.restore.batch.CriticalResolutionDescriber`):
the restorers and descriptor networks load where the scoring's do (GPU actors with ``use_gpu``;
latent-search restorers as tasks), and the driver only matches descriptors.
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

__all__ = ["CRITICAL_SIZES", "METRICS", "add_compare_command", "cmd_compare", "compare_models", "comparison_json",
           "critical_resolution", "critical_resolution_plot", "format_critical", "format_table",
           "log_comparison", "render_report", "resolve_critical_sizes", "side_by_side_grid"]

#: (metric, column title, True when higher is better)
METRICS = (("psnr_y", "PSNR-Y (dB)", True), ("ssim_y", "SSIM-Y", True),
           ("lr_consistency_psnr_y", "LR consistency (dB)", True),
           ("identity_sim_dlib", "identity (dlib)", True),
           ("identity_sim_face_embedder", "identity (own embedder)", True),
           ("rank1_dlib", "Rank-1 (dlib)", True), ("fid_dlib128", "FID (dlib128)", False),
           ("lpips_alex", "LPIPS", False), ("fid_inception", "FID", False), ("kid_inception", "KID", False),
           ("niqe_skvideo", "NIQE (skvideo)", False), ("brisque", "BRISQUE", False))
_FOUR_DIGITS = ("ssim_y", "identity_sim_dlib", "identity_sim_face_embedder", "rank1_dlib", "fid_dlib128", "lpips_alex",
                "kid_inception")
#: input sizes of the critical-resolution study (the papers' 8..128 px)
CRITICAL_SIZES = (8, 12, 16, 24, 32, 48, 64, 96, 128)
#: descriptor networks of the study, with their names in the plot
_CRITICAL_NETWORKS = (("dlib", "dlib descriptor"), ("face_embedder", "own face embedder"))


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
    p.add_argument("--resize-output", action="store_true",
                   help="score restorers of another scale at --hr-size: LR to each one's input size, its output to "
                        "--hr-size (MATLAB bicubic), so x4 and x8 methods share one table")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--face-embedder", default=None, metavar="CHECKPOINT",
                   help="a face_embedder_train checkpoint (folder or s3:// prefix): also identity_sim_face_embedder")
    p.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (path or s3://): also FID and KID")
    p.add_argument("--lpips-backbone", default=None, metavar="FILE",
                   help="AlexNet's ImageNet weights, torchvision's alexnet-owt-7be5be79.pth (path or s3://): "
                        "also LPIPS")
    p.add_argument("--tracking-uri", default=None, help="MLflow (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="fsr-compare")
    p.add_argument("--report-dir", default=None, help="where report.html goes (default: a temporary folder)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray")
    p.add_argument("--critical-sizes", type=_size_list, default=None, metavar="8,12,...,128",
                   help="also the critical-resolution study at these input sizes (at most --hr-size; default: off)")
    p.add_argument("--critical-max-images", type=int, default=32, metavar="N",
                   help="ground-truth faces of the critical-resolution study (default: 32)")
    return p


def _size_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 8,16,32, got {text!r}") from None


def resolve_critical_sizes(sizes: Sequence[int] | None, hr_size: int) -> list[int]:
    """The study's input sizes, ascending: ``sizes`` checked (each in ``1..hr_size``, no repeats), or
    by default those of :data:`CRITICAL_SIZES` under ``hr_size`` and ``hr_size`` itself (the ground
    truth at full size, where bicubic matches every face)."""
    if sizes is None:
        return [s for s in CRITICAL_SIZES if s < hr_size] + [hr_size]
    sizes = [int(s) for s in sizes]
    bad = [s for s in sizes if not 1 <= s <= hr_size]
    if bad:
        raise ValueError(f"critical-resolution sizes {bad} are outside 1..{hr_size} (the HR size)")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"critical-resolution sizes repeat: {sizes}")
    return sorted(sizes)


def compare_models(models: Sequence[str], *, hr: str, lr: str | None, params, tracking_uri: str | None,
                   report=None, critical_sizes: Sequence[int] = (), critical_max_images: int = 32) -> list[dict]:
    """One entry per method, bicubic first: ``{"model", "uri", "means", "grid_png"}``, and with
    ``critical_sizes`` ``"critical_resolution"`` (:func:`critical_resolution` on the ground truth
    of the first ``critical_max_images`` evaluation pairs)."""
    from fsr_core.data.codec import decode_png, encode_png
    from pipelines.model_registry import is_bicubic, resolve_model
    from pipelines.stages.evaluate import (evaluation_ids, mean_scores, pooled_identity, pooled_inception, pooled_niqe,
                                           score_model)

    import numpy as np

    ids, all_ids, _ = evaluation_ids(hr, params, lr=lr)
    if not ids:
        raise ValueError(f"no evaluation pairs in {lr or hr} with split={params.split!r}")
    ordered = [f"bicubic:x{params.scale}"] + [m for m in models if not is_bicubic(m)]
    grid_ids = ids[: params.grid_images]
    truth_ids = _ground_truth_ids(ids, lr=lr, split=params.split)[:critical_max_images] if critical_sizes else []
    results = []
    for model in ordered:
        ref = resolve_model(model, tracking_uri=tracking_uri)
        scored = score_model(hr, ref, params, ids=ids, all_ids=all_ids, tracking_uri=tracking_uri,
                             grid_ids=grid_ids, report=report, lr=lr, quality=True)
        means = {**mean_scores(scored), **pooled_niqe(scored), **pooled_identity(scored), **pooled_inception(scored)}
        strips = {str(i): png for i, png in zip(scored["id"].to_pylist(), scored["grid_png"].to_pylist()) if png}
        grid = encode_png(np.concatenate([decode_png(strips[i]) for i in grid_ids], axis=0)) if grid_ids else b""
        results.append({"model": model, "uri": ref.uri, "means": means, "num_images": scored.num_rows,
                         "grid_png": grid})
        if critical_sizes:
            results[-1]["critical_resolution"] = critical_resolution(
                hr, ref, params, ids=truth_ids, sizes=critical_sizes, tracking_uri=tracking_uri, report=report)
    return results


def _ground_truth_ids(ids: list[str], *, lr: str | None, split: str | None) -> list[str]:
    """The HR ids of evaluation ids (LR row ids with ``lr``: the HR crops they name, first mention kept)."""
    if lr is None:
        return list(ids)
    import json

    from fsr_core.data.ray_datasets import HR_ID_KEY
    from fsr_core.data.shards import read_faces

    table = read_faces(lr, columns=["id", "meta"], split=split)
    hr_of = {i: json.loads(m or "{}").get(HR_ID_KEY) for i, m in zip(table["id"].to_pylist(),
                                                                       table["meta"].to_pylist())}
    return list(dict.fromkeys(hr_of[i] for i in ids if hr_of.get(i)))


def critical_resolution(hr: str, model, params, *, ids: Sequence[str], sizes: Sequence[int],
                        tracking_uri: str | None, report=None) -> dict[str, dict]:
    """The critical-resolution curves of one restorer (a resolved ``ModelRef``) on the HR crops
    ``ids`` of ``hr``: ``{network: {"sizes", "match_rate", "knee", "num_faces"}}`` for ``dlib`` (and
    ``face_embedder`` with ``params.face_embedder``), see the module docstring. The descriptors are
    computed by a Ray Data actor pool (``params``' actors, CPUs, GPU and batch size)."""
    from ray.data.expressions import col

    from fsr_core.data.ray_datasets import read_face_dataset
    from fsr_core.metrics.identity import critical_resolution_curve
    from fsr_core.restore.batch import CriticalResolutionDescriber, critical_column, map_restorer
    from pipelines.model_registry import load_restorer

    import numpy as np

    ids = list(dict.fromkeys(ids))
    if len(ids) < 2:
        raise ValueError(f"the critical-resolution study needs at least 2 faces (one always matches itself), "
                         f"got {len(ids)}")
    sizes = resolve_critical_sizes(sizes, params.hr_size)
    ds = read_face_dataset(hr, size=params.hr_size, keep_columns=("id", "identity"), batch_size=params.batch_size,
                           num_cpus=params.io_cpus).filter(expr=col("id").is_in(ids))
    ds = map_restorer(
        ds, CriticalResolutionDescriber,
        fn_kwargs={"model_uri": model, "loader": load_restorer, "tracking_uri": tracking_uri,
                   "device": "cuda" if params.use_gpu else "cpu", "sizes": sizes, "batch_size": params.batch_size,
                   "template": params.template, "face_embedder": params.face_embedder},
        kind=model.kind, num_actors=params.num_actors, num_cpus=params.cpus_per_actor, use_gpu=params.use_gpu,
        batch_size=params.batch_size)
    batches = []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        batches.append(batch)
        if report is not None:
            report(sum(len(b["id"]) for b in batches), len(ids), unit="faces")  # a note would print as a warning
    if sum(len(b["id"]) for b in batches) != len(ids):
        raise RuntimeError(f"described {sum(len(b['id']) for b in batches)} faces, expected {len(ids)}")
    columns = {name: np.concatenate([b[name] for b in batches]) for name in batches[0] if name != "id"}
    curves = {}
    for network, _ in _CRITICAL_NETWORKS:
        if critical_column(network, None) not in columns:
            continue
        curve = critical_resolution_curve(columns[critical_column(network, None)],
                                          {s: columns[critical_column(network, s)] for s in sizes})
        curves[network] = {**curve, "num_faces": len(ids)}
    return curves


def critical_resolution_plot(results: list[dict]) -> bytes:
    """PNG of the critical-resolution curves: a panel per descriptor network, a line per method
    (Rank-1 match rate against input size, log-scaled), its knee marked; chance (1/N) dashed.
    Empty bytes when no method has the study."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    studied = [r for r in results if r.get("critical_resolution")]
    networks = [(n, title) for n, title in _CRITICAL_NETWORKS if any(n in r["critical_resolution"] for r in studied)]
    if not networks:
        return b""
    figure = Figure(figsize=(5.5 * len(networks), 4.2), dpi=100)
    FigureCanvasAgg(figure)
    for index, (network, title) in enumerate(networks):
        axes = figure.add_subplot(1, len(networks), index + 1)
        sizes = []
        for k, r in enumerate(studied):
            curve = r["critical_resolution"].get(network)
            if not curve:
                continue
            sizes = curve["sizes"]
            label = r.get("label") or r["uri"]
            if curve["knee"] is not None:
                label += f" (knee {curve['knee']:g} px)"
            colour = f"C{k}"
            axes.plot(curve["sizes"], curve["match_rate"], "o-", color=colour, label=label, markersize=4)
            if curve["knee"] is not None:
                rate = curve["match_rate"][curve["sizes"].index(curve["knee"])]
                axes.plot([curve["knee"]], [rate], "o", color=colour, markersize=11, fillstyle="none")
        faces = studied[0]["critical_resolution"][network]["num_faces"]
        axes.axhline(1.0 / faces, color="0.6", linestyle="--", linewidth=1, label=f"chance (1/{faces})")
        axes.set_xscale("log", base=2)
        axes.set_xticks(sizes, [str(s) for s in sizes])
        axes.minorticks_off()
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("input size (px)")
        axes.set_ylabel("Rank-1 match rate")
        axes.set_title(f"{title}: {faces} faces")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def format_critical(results: list[dict]) -> list[str]:
    """One printed line per method and network: the knee and the match rate at each size."""
    lines = []
    for r in results:
        for network, curve in (r.get("critical_resolution") or {}).items():
            rates = " ".join(f"{s}:{m:.2f}" for s, m in zip(curve["sizes"], curve["match_rate"]))
            knee = "-" if curve["knee"] is None else f"{curve['knee']:g} px"
            lines.append(f"critical resolution of {r.get('label') or r['uri']} with {network}: knee {knee}; "
                         f"Rank-1 by input size {rates}")
    return lines


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


def render_report(results: list[dict], *, title: str, side_by_side_png: bytes = b"", critical_png: bytes = b"") -> str:
    """A self-contained HTML page: the metrics table (best in bold), the critical-resolution plot
    (:func:`critical_resolution_plot`, when given), the methods side by side
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
    lower = html.escape(", ".join(name for _, name, higher in columns if not higher) or "none")
    shown = {metric for metric, _, _ in columns}
    network_notes = "".join(note for metric, note in (
        ("lpips_alex", " LPIPS: AlexNet v0.1 (the lpips wheel's heads) against the ground truth."),
        ("fid_inception", " FID, KID: pytorch-fid's Inception-v3 pool3 features of the restored set against the "
                          "ground-truth set (fewer than 2049 faces: singular covariances, compare at equal set "
                          "sizes only).")) if metric in shown)
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
    if critical_png:
        faces = next(c["num_faces"] for r in results for c in (r.get("critical_resolution") or {}).values())
        grids = ("<h2>Critical resolution</h2><p>Each of the first " f"{faces} ground-truth faces brought down to "
                 "each input size (MATLAB bicubic) and restored by each method; the Rank-1 match rate of the "
                 "restored faces' identity descriptors among those of all the ground-truth faces (each face its "
                 "own identity); the knee (circled) is where the curve bends most.</p>"
                 "<img alt=\"critical-resolution curves\" src=\"data:image/png;base64,"
                 f"{base64.b64encode(critical_png).decode()}\">" + grids)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 10px;text-align:right}"
            "td:first-child{text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"
            f"<p>Best of each column in bold ({lower}: lower is better; ground truth NIQE {hr_niqe:.2f}, "
            f"BRISQUE {hr_brisque:.2f}). "
            "identity (dlib): cosine similarity of dlib face descriptors with the ground truth; identity (own "
            "embedder): the same with the project's face embedder; LR consistency: PSNR-Y of the LR input against "
            f"the restored face brought back to its size (MATLAB bicubic).{network_notes}</p>"
            f"{grids}</body></html>")


def log_comparison(results: list[dict], page: str, *, tracking_uri: str, experiment_id: str, parent_run_id: str,
                   tags: dict[str, str], critical_png: bytes = b"") -> None:
    """Under ``parent_run_id``: one nested run per method (same metric names, ``fsr_kind=compare_method``;
    with the critical-resolution study ``critical_resolution_knee_<network>`` and
    ``critical_resolution_match_rate_<network>`` at step = input size), ``compare.json``,
    ``report.html`` (and ``critical_resolution.png``) as artifacts of the parent."""
    from pipelines import tracking

    for r in results:
        child = tracking.create_run(tracking_uri, experiment_id, run_name=r.get("label") or r["uri"],
                                    parent_run_id=parent_run_id,
                                    tags={"fsr_kind": "compare_method", "fsr_model_uri": r["uri"], **tags})
        tracking.log_metrics(tracking_uri, child, {k: v for k, v in r["means"].items() if v == v})
        for network, curve in (r.get("critical_resolution") or {}).items():
            if curve["knee"] is not None:
                tracking.log_metrics(tracking_uri, child, {f"critical_resolution_knee_{network}": curve["knee"]})
            for size, rate in zip(curve["sizes"], curve["match_rate"]):
                tracking.log_metrics(tracking_uri, child, {f"critical_resolution_match_rate_{network}": rate}, step=size)
        tracking.end_run(tracking_uri, child, status="FINISHED")
    tracking.log_dict(tracking_uri, parent_run_id, {"results": comparison_json(results)}, "compare.json")
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="fsr-compare-") as scratch:
        path = os.path.join(scratch, "report.html")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(page)
        MlflowClient(tracking_uri).log_artifact(parent_run_id, path)
        if critical_png:
            path = os.path.join(scratch, "critical_resolution.png")
            with open(path, "wb") as fh:
                fh.write(critical_png)
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


def _log(results: list[dict], page: str, *, args, tracking_uri: str, tags: dict[str, str],
         critical_png: bytes = b"") -> str:
    from pipelines import tracking

    experiment = tracking.get_or_create_experiment(
        tracking_uri, args.experiment, artifact_location=tracking.default_artifact_location(tracking_uri))
    parent = tracking.create_run(tracking_uri, experiment, run_name="compare",
                                 tags={"fsr_kind": "compare", "fsr_hr": args.hr, "fsr_lr": args.lr or "-", **tags})
    log_comparison(results, page, tracking_uri=tracking_uri, experiment_id=experiment, parent_run_id=parent,
                   tags=tags, critical_png=critical_png)
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
                                  resize_output=args.resize_output,
                                  max_images=args.max_images, grid_images=4, face_embedder=args.face_embedder,
                                  inception_weights=args.inception_weights, lpips_backbone=args.lpips_backbone)
        sizes = resolve_critical_sizes(args.critical_sizes, args.hr_size) if args.critical_sizes is not None else []
        if sizes and args.critical_max_images < 2:
            raise ValueError(f"--critical-max-images must be at least 2, got {args.critical_max_images}")
        tags = metric_files(params, quality=True)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fsr compare: {exc}", file=sys.stderr)
        return 2
    start_ray(None, args.num_cpus)
    results = compare_models(args.models, hr=args.hr, lr=args.lr, params=params, tracking_uri=tracking_uri,
                             critical_sizes=sizes, critical_max_images=args.critical_max_images)
    title = f"fsr compare: {'genuine LR ' + args.lr if args.lr else 'bicubic-simulated LR'} of {args.hr}"
    print(f"{title}: {results[0]['num_images']} {args.split} pairs, x{args.scale}")
    for line in format_table(results) + format_critical(results):
        print(line)
    grid = side_by_side_grid(results, hr_size=args.hr_size)
    critical_png = critical_resolution_plot(results)
    page = render_report(results, title=title, side_by_side_png=grid, critical_png=critical_png)
    folder = args.report_dir or tempfile.mkdtemp(prefix="fsr-compare-")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "report.html"), "w", encoding="utf-8") as fh:
        fh.write(page)
    with open(os.path.join(folder, "compare.json"), "w", encoding="utf-8") as fh:
        json.dump(comparison_json(results), fh, indent=1)
    for name, png in (("side_by_side.png", grid), ("critical_resolution.png", critical_png)):
        if png:
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(png)
    run_id = _log(results, page, args=args, tracking_uri=tracking_uri, tags=tags, critical_png=critical_png)
    print(f"report: {os.path.join(folder, 'report.html')}; MLflow run {run_id} (experiment {args.experiment!r})")
    return 0
