"""Stage ``degrade``: HR face shards -> LR face shards through one degradation chain.

The chain (:class:`~fsr_core.degradation.ops.DegradationChain`) is one ordered list of operations
from the ``chain`` parameter: inline (``[{op: gaussian_blur, sigma: [1, 2]}, ...]``) or the name of
a file in ``<conf dir>/degradations/`` (``camera``) or a path to a YAML file; a file's operations are
read when the configuration is loaded, so they are part of the stage's fingerprint like inline
ones. Every range is sampled per crop from ``seed`` and the HR row's id
(:func:`~fsr_core.degradation.ops.degrade_crop`), so a re-run gives the same bytes.

Each LR row keeps what its HR row says (identity, attributes, split, source URI) and adds
``meta.hr_id`` (the HR row's id: paired evaluation on any degradation joins on it),
``meta.degradation`` (the parameters sampled for this crop) and ``meta.chain`` (the chain's
one-line description). Its id is derived from the HR id, the seed and the chain.

One Ray task per HR shard writes the LR shard of the same name; a re-run (after a crash) finds the
shards already written and degrades only the missing ones. An HR row that cannot be decoded goes to
the ``quarantine`` output (``<shard>.parquet``, the ingest stages' quarantine schema) with the
reason; the rest of its shard is written. Rows of ``splits`` only (all rows when null).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from fsr_core import storage
from fsr_core.data.codec import decode_png, encode_png
from fsr_core.data.ingest.base import Quarantined, quarantine_table
from fsr_core.data.ray_datasets import HR_ID_KEY
from fsr_core.data.schema import IMAGE_COLUMN, make_face_id, rows_to_table
from fsr_core.data.shards import list_shards, read_shard, write_parquet, write_table
from fsr_core.degradation.ops import DegradationChain, degrade_crop, load_chain
from pipelines.stage import Stage, StageContext, StageParams

__all__ = ["DEGRADE", "DegradeParams", "degrade", "read_chain"]

def read_chain(value: Any, *, conf_dir: str = "conf") -> Any:
    """A chain parameter as operations: a name in ``<conf_dir>/degradations/`` or a YAML path is
    read, anything else is returned as given (and validated by the caller)."""
    if not isinstance(value, str):
        return value
    import yaml

    folder = os.path.join(conf_dir, "degradations")
    path = value if value.endswith((".yaml", ".yml")) else os.path.join(folder, f"{value}.yaml")
    if not os.path.isfile(path):
        known = sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".yaml")) if os.path.isdir(folder) else []
        raise ValueError(f"degradation chain file {path!r} not found (named chains: {known or 'none'})")
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


class DegradeParams(StageParams):
    chain: DegradationChain = Field(description="the operations, in order: inline, a conf/degradations/ name, or a "
                                                "YAML path")
    seed: int = Field(0, ge=0, description="ranges are sampled per crop from (seed, HR id)")
    splits: list[str] | None = Field(None, description="HR splits to degrade (null: all rows)")
    task_cpus: float = Field(0.5, gt=0, description="CPUs of each shard task")

    @field_validator("chain", mode="before")
    @classmethod
    def _read(cls, value: Any, info: ValidationInfo) -> Any:
        value = read_chain(value, conf_dir=(info.context or {}).get("conf_dir", "conf"))
        return load_chain(value) if not isinstance(value, DegradationChain) else value


def chain_digest(chain: DegradationChain) -> str:
    return hashlib.sha256(json.dumps(chain.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def degrade_rows(table, chain: DegradationChain, *, seed: int, splits: list[str] | None):
    """``(LR rows, quarantine records)`` of the HR rows of one shard table."""
    digest = chain_digest(chain)
    description = chain.describe()
    rows, bad = [], []
    for hr in table.to_pylist():
        if splits is not None and hr["split"] not in splits:
            continue
        try:
            image = decode_png(hr[IMAGE_COLUMN])
        except Exception as exc:  # noqa: BLE001 - one bad row never stops the shard
            bad.append(Quarantined(source_uri=hr["source_uri"], reason="corrupt_image",
                                   detail=f"HR row {hr['id']}: {exc}"))
            continue
        lr, sampled = degrade_crop(image, chain, seed=seed, key=hr["id"])
        meta = json.loads(hr["meta"] or "{}")
        meta.update({HR_ID_KEY: hr["id"], "degradation": sampled, "chain": description, "seed": seed})
        rows.append({
            "id": make_face_id("degraded", hr["id"], extra=f"seed={seed}/chain={digest}"),
            IMAGE_COLUMN: encode_png(lr),
            "height": int(lr.shape[0]),
            "width": int(lr.shape[1]),
            "source": hr["source"],
            "source_uri": hr["source_uri"],
            "frame_index": hr["frame_index"],
            "bbox": None,
            "landmarks": None,
            "identity": hr["identity"],
            "attributes": json.loads(hr["attributes"] or "{}"),
            "quality": {"degradation": description},
            "meta": meta,
            "split": hr["split"],
        })
    return rows, bad


def degrade(ctx: StageContext, hr: str) -> dict[str, str]:
    import ray

    p: DegradeParams = ctx.params  # type: ignore[assignment]
    out, quarantine = ctx.outputs["lr"], ctx.outputs["quarantine"]
    shards = list_shards(hr)
    if not shards:
        raise FileNotFoundError(f"no Parquet shards under {hr}")
    existing = {info.uri.rsplit("/", 1)[-1] for info in storage.list_files(out, suffix=".parquet")}
    todo = [uri for uri in shards if uri.rsplit("/", 1)[-1] not in existing]
    chain = p.chain

    @ray.remote(num_cpus=p.task_cpus)
    def run(uri: str) -> tuple[int, int]:
        name = uri.rsplit("/", 1)[-1]
        rows, bad = degrade_rows(read_shard(uri), chain, seed=p.seed, splits=p.splits)
        if bad:  # before the shard: a shard present means its quarantine is too
            write_parquet(storage.join(quarantine, name), quarantine_table(bad, source="degrade"))
        write_table(rows_to_table(rows), storage.join(out, name))
        return len(rows), len(bad)

    refs = [run.remote(uri) for uri in todo]
    rows = quarantined = done = 0
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        n, bad = ray.get(ready[0])
        rows, quarantined, done = rows + n, quarantined + bad, done + 1
        ctx.report(done, len(todo), unit="shards", faces=rows, quarantined=quarantined)
    ctx.log_metrics({"rows": rows, "quarantined": quarantined, "shards": len(shards),
                     "shards_reused": len(shards) - len(todo)})
    ctx.set_tags({"fsr_degradation": chain.describe()[:5000]})
    return {"lr": out, "quarantine": quarantine}


DEGRADE = Stage(
    name="degrade",
    fn=degrade,
    params=DegradeParams,
    inputs=("hr",),
    outputs=("lr", "quarantine"),
    description="HR face shards -> LR face shards through one degradation chain (blur, resampling, noise, colour, "
                "codecs), sampled per crop from a seed; LR rows keep their HR's id (meta.hr_id)",
)
