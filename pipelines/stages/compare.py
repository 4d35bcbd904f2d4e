"""Stage ``compare_restorers``: ``fsr compare`` as a pipeline stage, so a pipeline ends with its table.

Inputs: ``hr`` (the ground truth), optional ``lr`` (genuine LR paired with ``hr`` by ``meta.hr_id``;
simulated pairs when left out), optional ``face_embedder`` (a ``face_embedder_train`` checkpoint:
adds ``identity_sim_face_embedder``), and any number of restorers as inputs named ``model_<label>``
(``model_pretrained: register_pretrained.model``): the label names the method in the table, the
report and its MLflow run. The bicubic baseline is always the first method.

Every method is scored exactly as :mod:`pipelines.compare` scores it (:func:`compare_models`: the
same pairs, evaluate_sr's conventions). Output ``report``: ``report.html`` (metrics table with the
best of each column in bold, the methods side by side, each method's grid), ``compare.json``,
``side_by_side.png`` (``LR | bicubic | each method | ground truth``). In MLflow the stage's run is
the parent: ``report.html`` and ``compare.json`` as its artifacts, one nested run per method with
the same metric names (``fsr_kind=compare_method``), so the UI's compare view lines them up; the
sha256 of every weight file a metric reads is a tag of each.

The critical-resolution study is on by default here (``critical_sizes``: 8..128 px up to
``hr_size``; ``[]`` turns it off), capped at ``critical_max_images`` ground-truth faces (32: about
12 CPU-seconds per method for bicubic at 9 sizes, ``bench/critical_resolution_cost.py``, plus an
actor pool's start), so that a pipeline's report carries the curve the papers show: per method, the Rank-1 identity match rate of faces restored from each input size among the ground
truth and its knee (:func:`pipelines.compare.critical_resolution`). It adds
``critical_resolution.png`` to the output and to the run (also embedded in ``report.html``), the
curves to ``compare.json`` (``results[i].critical_resolution``) and
``critical_resolution_knee_dlib`` (``_face_embedder`` with an embedder) and
``critical_resolution_match_rate_<network>`` (step = input size) to each method's nested run.
"""

from __future__ import annotations

import json
import os
import tempfile

from pydantic import Field, model_validator

from fsr_core import storage
from pipelines.stage import Stage, StageContext, actor_pool_cpus
from pipelines.stages.evaluate import EvaluateSRParams

__all__ = ["COMPARE_RESTORERS", "CompareRestorersParams", "compare_restorers"]

MODEL_PREFIX = "model_"


class CompareRestorersParams(EvaluateSRParams):
    """evaluate_sr's settings (split, sizes, crop border, actors, ``face_embedder`` unless the input
    gives one), applied to every method alike, and the critical-resolution study's."""

    critical_sizes: list[int] | None = Field(
        None, description="input sizes of the critical-resolution study (default: 8, 12, ..., 96 under hr_size and "
                          "hr_size itself; [] turns the study off)")
    critical_max_images: int = Field(32, ge=2, description="ground-truth faces of the critical-resolution study")

    @model_validator(mode="after")
    def _critical_sizes(self) -> "CompareRestorersParams":
        from pipelines.compare import resolve_critical_sizes

        if self.critical_sizes:
            resolve_critical_sizes(self.critical_sizes, self.hr_size)  # raises on a size outside 1..hr_size
        return self

    @property
    def study_sizes(self) -> list[int]:
        """The critical-resolution study's input sizes (empty: no study)."""
        from pipelines.compare import resolve_critical_sizes

        return [] if self.critical_sizes == [] else resolve_critical_sizes(self.critical_sizes, self.hr_size)


def compare_restorers(ctx: StageContext, hr: str, lr: str | None = None, face_embedder: str | None = None,
                      **models: str) -> dict[str, str]:
    """See the module docstring. ``models``: ``model_<label> -> model URI``."""
    from pipelines.compare import (comparison_json, compare_models, critical_resolution_plot, format_critical,
                                   format_table, log_comparison, render_report, side_by_side_grid)
    from pipelines.stages.evaluate import metric_files

    p: CompareRestorersParams = ctx.params  # type: ignore[assignment]
    bad = [name for name in models if not name.startswith(MODEL_PREFIX) or name == MODEL_PREFIX]
    if bad:
        raise ValueError(f"inputs {bad}: restorers are inputs named {MODEL_PREFIX}<label>")
    if not models:
        raise ValueError(f"no restorer to compare: give inputs named {MODEL_PREFIX}<label>")
    if face_embedder:
        p = p.model_copy(update={"face_embedder": face_embedder})
    labels = {uri: name[len(MODEL_PREFIX):] for name, uri in models.items()}
    tags = metric_files(p, quality=p.quality)
    ctx.set_tags({"fsr_kind": "compare", "fsr_pairs": "genuine" if lr else "simulated", **tags})
    results = compare_models(list(models.values()), hr=hr, lr=lr, params=p, tracking_uri=ctx.tracking_uri,
                             report=ctx.report, critical_sizes=p.study_sizes,
                             critical_max_images=p.critical_max_images)
    for r in results:
        r["label"] = labels.get(r["model"], "bicubic")
    grid = side_by_side_grid(results, hr_size=p.hr_size)
    what = f"genuine LR {lr}" if lr else "bicubic-simulated LR"
    title = f"{ctx.pipeline}/{ctx.stage}: {what} of {hr}, {results[0]['num_images']} {p.split} pairs, x{p.scale}"
    critical_png = critical_resolution_plot(results)
    page = render_report(results, title=title, side_by_side_png=grid, critical_png=critical_png)

    out = ctx.outputs["report"]
    summary = {"title": title, "hr": hr, "lr": lr, "split": p.split, "scale": p.scale, "hr_size": p.hr_size,
               "crop_border": p.border, "metric_files": tags, "results": comparison_json(results),
               "table": format_table(results), "critical_resolution_table": format_critical(results)}
    storage.write_bytes(storage.join(out, "compare.json"), json.dumps(summary, indent=1, sort_keys=True).encode())
    storage.write_bytes(storage.join(out, "report.html"), page.encode("utf-8"))
    if grid:
        storage.write_bytes(storage.join(out, "side_by_side.png"), grid)
    if critical_png:
        storage.write_bytes(storage.join(out, "critical_resolution.png"), critical_png)
    if ctx.run_id and ctx.tracking_uri:
        log_comparison(results, page, tracking_uri=ctx.tracking_uri, experiment_id=ctx.experiment_id,
                       parent_run_id=ctx.run_id, tags=tags, critical_png=critical_png)
        if grid:
            with tempfile.TemporaryDirectory(prefix="fsr-compare-") as scratch:
                path = os.path.join(scratch, "side_by_side.png")
                with open(path, "wb") as fh:
                    fh.write(grid)
                ctx.log_artifact(path)
    return {"report": out}


COMPARE_RESTORERS = Stage(
    name="compare_restorers",
    fn=compare_restorers,
    params=CompareRestorersParams,
    inputs=("hr",),
    optional_inputs=("lr", "face_embedder"),
    input_prefix=MODEL_PREFIX,
    outputs=("report",),
    description="every restorer (inputs model_<label>) and the bicubic baseline on the same pairs: a methods x "
                "metrics table, the critical-resolution curves, an HTML report with the methods side by side, one "
                "MLflow run per method",
    held_cpus=actor_pool_cpus,
)
