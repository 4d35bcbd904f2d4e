"""Ingest stages of the embedded demo world: synthetic HR faces and LFW's genuine LR faces.

Rendering runs as Ray tasks, one per shard (``identities_per_shard`` identities
each). Shard names are fixed by their index, so a re-run after a crash finds
the shards already written and renders only the missing ones.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from fsr_core import storage
from fsr_core.data.demo_world import LFW_NUM_FACES, lfw_face_rows, synthetic_face_rows
from fsr_core.data.shards import ShardWriter, shard_name
from fsr_core.data.splits import check_fractions
from pipelines.stage import Stage, StageContext, StageParams

DEFAULT_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}


class SyntheticFacesParams(StageParams):
    num_identities: int = Field(200, ge=1)
    first_identity: int = Field(0, ge=0, description="identities first_identity, first_identity + 1, ...: another "
                                "range gives faces no other set shows (the demo's camera set)")
    renders_per_identity: int = Field(4, ge=1)
    size: int = Field(128, ge=16, le=1024, description="HR crop size in pixels")
    seed: int = 0
    split: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SPLIT), description="fractions of identities")
    identities_per_shard: int = Field(50, ge=1)
    task_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each rendering task")

    @field_validator("split")
    @classmethod
    def _split(cls, value: dict[str, float]) -> dict[str, float]:
        return check_fractions(value)


def _write_shard(folder: str, index: int, rows) -> int:
    writer = ShardWriter(folder, max_rows_per_shard=10**9, start_index=index)
    writer.write_rows(rows)
    writer.close()
    return writer.rows_written


def ingest_synthetic_faces(ctx: StageContext) -> dict[str, str]:
    import ray

    p: SyntheticFacesParams = ctx.params  # type: ignore[assignment]
    out = ctx.outputs["faces"]
    last = p.first_identity + p.num_identities
    chunks = [list(range(start, min(start + p.identities_per_shard, last)))
              for start in range(p.first_identity, last, p.identities_per_shard)]
    existing = {info.uri.rsplit("/", 1)[-1] for info in storage.list_files(out, suffix=".parquet")}

    @ray.remote(num_cpus=p.task_cpus)
    def render(index: int, ids: list[int]) -> int:
        rows = synthetic_face_rows(ids, renders_per_identity=p.renders_per_identity, size=p.size, seed=p.seed,
                                   split_fractions=p.split)
        return _write_shard(out, index, rows)

    todo = {index: ids for index, ids in enumerate(chunks) if shard_name(index) not in existing}
    refs = [render.remote(index, ids) for index, ids in todo.items()]
    done = 0
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        ray.get(ready)
        done += 1
        ctx.report(done, len(todo), unit="shards", faces=done * p.identities_per_shard * p.renders_per_identity)
    ctx.log_metrics({
        "identities": p.num_identities,
        "rows": p.num_identities * p.renders_per_identity,
        "shards": len(chunks),
        "shards_reused": len(chunks) - len(todo),
    })
    return {"faces": out}


class LfwFacesParams(StageParams):
    count: int = Field(LFW_NUM_FACES, ge=1, le=LFW_NUM_FACES)
    seed: int = 0
    split: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SPLIT))

    @field_validator("split")
    @classmethod
    def _split(cls, value: dict[str, float]) -> dict[str, float]:
        return check_fractions(value)


def ingest_lfw_faces(ctx: StageContext) -> dict[str, str]:
    p: LfwFacesParams = ctx.params  # type: ignore[assignment]
    out = ctx.outputs["faces"]
    rows = list(lfw_face_rows(count=p.count, split_fractions=p.split, seed=p.seed))
    _write_shard(out, 0, rows)
    counts = {split: sum(row["split"] == split for row in rows) for split in p.split}
    ctx.log_metrics({"rows": len(rows), **{f"rows_{k}": v for k, v in counts.items()}})
    return {"faces": out}


SYNTHETIC_FACES = Stage(
    name="ingest_synthetic_faces",
    fn=ingest_synthetic_faces,
    params=SyntheticFacesParams,
    inputs=(),
    outputs=("faces",),
    description="Render the parametric synthetic faces (identities, attributes, skin tones) as HR shards",
)

LFW_FACES = Stage(
    name="ingest_lfw_faces",
    fn=ingest_lfw_faces,
    params=LfwFacesParams,
    inputs=(),
    outputs=("faces",),
    description="Write scikit-image's 100 LFW faces (25x25 grey) as genuine-LR shards",
)
