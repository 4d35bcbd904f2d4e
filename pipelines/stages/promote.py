"""Stage ``promote_model``: the champion/challenger gate of scheduled retraining.

A retraining run registers its network as a new version with the alias ``challenger`` and
evaluates it (``evaluate_sr``); restoration jobs read ``models:/NAME@champion``. This stage
decides whether the new version becomes the champion:

1. it reads the challenger's evaluation ``report`` (``summary.json``: the concrete version, the
   means, the evaluation settings and pairs, simulated or genuine LR; ``per_image.parquet``: the
   crop ids scored). The gate's evaluation set is that report's: the demo gates on genuine LR with
   ground truth;
2. a challenger that does not beat the bicubic baseline on ``metric`` over those crops is never
   promoted, not even as the first champion;
3. it resolves the current ``models:/NAME@<alias>`` (``alias``, default ``champion``) of the same
   registered model. None yet: the challenger is promoted when ``promote_first`` (the first
   model of a schedule). The same version: nothing to do;
4. otherwise it scores the champion **now, on the same crops, with the same code and settings**
   as the challenger's report (a champion evaluated last month on another split or by other code
   is not comparable), and promotes when ``challenger - champion > min_gain`` for ``metric``
   (``psnr_y`` or ``ssim_y``, means over the same crops with PSNR capped at 100 dB so one exactly
   restored crop cannot decide; a tie or a non-finite gain keeps the incumbent);
5. promoting moves ``<alias>`` to the challenger and ``previous_<alias>`` to the version it
   replaces, so a rollback is one alias move (``MlflowClient.set_registered_model_alias``); if the
   alias moved while the champion was scored (a hand rollback), the gate stops instead.

Only a missing alias counts as "no champion": a champion that cannot be resolved or loaded stops
the gate with its error (restoration jobs reading it are broken too). The runner caches the stage
like any other: re-running unchanged inputs reuses the decision (``--force promote`` re-decides).
The gate trusts that ``hr`` still holds the crops the report scored (same ids are checked).

Output ``decision``: ``decision.json`` (promoted or not, why, both versions and values) and, when
the champion was scored, its ``champion_per_image.parquet``. The stage's MLflow run gets the
metrics ``challenger_<metric>``, ``champion_<metric>``, ``gain``, ``promoted`` (0/1) and the tags
``fsr_decision``, ``fsr_champion_before``, ``fsr_champion_after``.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Literal

import numpy as np
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from fsr_core import storage
from fsr_core.data.shards import write_parquet
from pipelines.model_registry import AliasNotFoundError, resolve_model
from pipelines.stage import Stage, StageContext, StageParams, actor_pool_cpus
from pipelines.stages.evaluate import EvaluateSRParams, evaluation_ids, score_model

__all__ = ["PROMOTE_MODEL", "PromoteModelParams", "promote_model"]


class PromoteModelParams(StageParams):
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$",
                       description="the alias restoration reads (not MLflow's reserved latest / v<N>)")
    metric: Literal["psnr_y", "ssim_y"] = Field("psnr_y", description="compared on the challenger's crops")
    min_gain: float = Field(0.0, description="promote when challenger - champion > min_gain (metric units)")
    promote_first: bool = Field(True, description="promote when the registered model has no champion yet")
    batch_size: int = Field(32, ge=1)
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    use_gpu: bool = False
    io_cpus: float = Field(0.25, gt=0)

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, alias: str) -> str:
        if alias == "latest" or re.fullmatch(r"v\d+", alias):
            raise ValueError(f"alias {alias!r} is reserved by MLflow (latest, v<N>)")
        return alias


def _read_report(report: str):
    """``(summary, per-image scores)`` of an ``evaluate_sr`` report."""
    try:
        summary = json.loads(storage.read_bytes(storage.join(report, "summary.json")))
        per_image = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(report, "per_image.parquet"))))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{report} is not an evaluate_sr report: {exc}") from None
    return summary, per_image


#: PSNR of an exactly restored crop is infinite; capped so that one such crop cannot decide the mean
PSNR_CAP_DB = 100.0


def capped_mean(scores, metric: str) -> float:
    """Mean of ``metric`` over a per-image score table, PSNR capped at :data:`PSNR_CAP_DB`."""
    values = np.asarray(scores[metric].to_numpy(), np.float64)
    if metric.startswith("psnr"):
        values = np.minimum(values, PSNR_CAP_DB)
    return float(values.mean()) if len(values) else math.nan


def _check_alias_unchanged(client, name: str, alias: str, champion) -> None:
    """Raise when the alias moved while the champion was scored (a hand rollback, another run):
    MLflow has no compare-and-set for aliases, so this narrows the window, it cannot close it."""
    from mlflow.exceptions import MlflowException

    try:
        now = int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        now = None
    before = champion.version if champion is not None else None
    if now != before:
        raise RuntimeError(f"models:/{name}@{alias} moved from version {before} to {now} while the gate ran; "
                           "run the gate again")


def promote_model(ctx: StageContext, report: str, hr: str) -> dict[str, str]:
    """See the module docstring. ``report``: the challenger's ``evaluate_sr`` report; ``hr``: the
    HR crops it was computed on (checked against the report)."""
    from mlflow import MlflowClient

    p: PromoteModelParams = ctx.params  # type: ignore[assignment]
    out = ctx.outputs["decision"]
    summary, challenger_scores = _read_report(report)
    ids = [str(i) for i in challenger_scores["id"].to_pylist()]
    if summary.get("hr") != hr:
        raise ValueError(f"the report {report} scored {summary.get('hr')!r}, not the given hr {hr!r}: the champion "
                         "must be scored on the challenger's crops")
    challenger = resolve_model(summary["model_uri"], tracking_uri=ctx.tracking_uri)
    if challenger.version is None:
        raise ValueError(f"the report's model {summary['model_uri']!r} is not a registered model version: "
                         "only versions of a registered model can hold an alias")
    challenger_value = capped_mean(challenger_scores, p.metric)
    try:  # only a missing alias means "no champion yet": any other failure stops the gate
        champion = resolve_model(f"models:/{challenger.name}@{p.alias}", tracking_uri=ctx.tracking_uri)
    except AliasNotFoundError:
        champion = None

    decision: dict = {"registered_model": challenger.name, "alias": p.alias, "metric": p.metric,
                      "min_gain": p.min_gain, "challenger": challenger.uri, "challenger_value": challenger_value,
                      "champion_before": champion.uri if champion else None, "num_images": len(ids)}
    bicubic_value = capped_mean(challenger_scores, f"bicubic_{p.metric}")
    decision.update(bicubic_value=bicubic_value, pairs=summary.get("pairs", "simulated"))
    if not (math.isfinite(challenger_value - bicubic_value) and challenger_value > bicubic_value):
        promote = False  # never a champion that loses to the baseline, first champion included
        decision["reason"] = (f"{p.metric} {challenger_value:.4f} does not beat the bicubic baseline "
                              f"{bicubic_value:.4f} on the same {decision['pairs']} pairs")
    elif champion is None:
        promote = p.promote_first
        decision["reason"] = "no champion yet" + ("" if promote else " (promote_first is off)")
    elif champion.version == challenger.version:
        promote = False
        decision["reason"] = "the challenger already is the champion"
    else:
        settings = EvaluateSRParams(split=summary["split"], hr_size=summary["hr_size"], scale=summary["scale"],
                                    crop_border=summary["crop_border"], batch_size=p.batch_size,
                                    num_actors=p.num_actors, cpus_per_actor=p.cpus_per_actor, use_gpu=p.use_gpu,
                                    io_cpus=p.io_cpus, grid_images=0)
        lr = summary.get("lr")
        _, in_split, _ = evaluation_ids(hr, settings, lr=lr)
        scored = score_model(hr, champion, settings, ids=ids, all_ids=in_split, tracking_uri=ctx.tracking_uri,
                             report=ctx.report, lr=lr)
        champion_scores = scored.drop_columns(["grid_png"]) if "grid_png" in scored.column_names else scored
        write_parquet(storage.join(out, "champion_per_image.parquet"), champion_scores)
        champion_value = capped_mean(champion_scores, p.metric)
        gain = challenger_value - champion_value
        promote = math.isfinite(gain) and gain > p.min_gain
        decision.update(champion_value=champion_value, gain=gain,
                        reason=f"{p.metric} {challenger_value:.4f} vs champion {champion_value:.4f}: gain {gain:+.4f} "
                               f"{'>' if promote else '<='} min_gain {p.min_gain:g}"
                               + ("" if math.isfinite(gain) else " (not a finite gain: the champion stays)"))
        ctx.log_metrics({f"champion_{p.metric}": champion_value, "gain": gain})

    if promote:
        client = MlflowClient(tracking_uri=ctx.tracking_uri, registry_uri=ctx.tracking_uri)
        _check_alias_unchanged(client, challenger.name, p.alias, champion)
        if champion is not None:
            client.set_registered_model_alias(challenger.name, f"previous_{p.alias}", champion.version)
        client.set_registered_model_alias(challenger.name, p.alias, challenger.version)
    after = challenger if promote else champion
    decision.update(promoted=promote, champion_after=after.uri if after else None)
    storage.write_bytes(storage.join(out, "decision.json"), json.dumps(decision, indent=2, sort_keys=True).encode())
    ctx.log_metrics({f"challenger_{p.metric}": challenger_value, "promoted": float(promote)})
    ctx.set_tags({"fsr_decision": "promoted" if promote else "kept",
                  "fsr_champion_before": decision["champion_before"] or "",
                  "fsr_champion_after": decision["champion_after"] or ""})
    ctx.log_dict(decision, "promotion/decision.json")
    return {"decision": out}


PROMOTE_MODEL = Stage(
    name="promote_model",
    fn=promote_model,
    params=PromoteModelParams,
    inputs=("report", "hr"),
    outputs=("decision",),
    description="Champion/challenger gate: score the champion on the challenger's evaluation crops and move the "
                "alias when the challenger is better",
    held_cpus=actor_pool_cpus,
)
