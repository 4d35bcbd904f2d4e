"""Stage ``restore_faces``: batch super-resolution of a face-crop shard folder with a restorer.

Ray Data streams the crops through the restorer (a registered model or ``bicubic``)::

    read_face_dataset (decode PNG, stored size)        tasks, io_cpus each
      -> SuperResolver (MATLAB bicubic to input_size,  feed-forward: actor pool of num_actors,
         restorer, uint8 out)                           cpus_per_actor (+1 GPU each with use_gpu);
                                                        latent search: batched tasks
      -> write_crops (<restored>/crops/<id>.png)        tasks, io_cpus each
      -> driver: manifest.parquet

The model URI is resolved once, before the job (an alias becomes a concrete version), and the
actors load that version, so every output row names the version that produced it even if the
alias moves while the job runs. Outputs are addressed by input id: a re-run overwrites the same
files, and crops in ``crops/`` that no input maps to are removed, so the folder always holds
exactly one PNG per input row and the manifest one row per input.
"""

from __future__ import annotations


import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from fsr_core import storage
from fsr_core.data.ray_datasets import read_face_dataset
from fsr_core.data.shards import read_faces, write_parquet
from fsr_core.restore.batch import SuperResolver, crop_filename, map_restorer, write_crops
from pipelines.model_registry import load_restorer, resolve_model
from pipelines.stage import Stage, StageContext, StageParams, actor_pool_cpus

__all__ = ["MANIFEST_SCHEMA", "RESTORE_FACES", "RestoreFacesParams", "restore_faces"]

MANIFEST_FILE = "manifest.parquet"
CROPS_FOLDER = "crops"
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("input_id", pa.string(), nullable=False),
        pa.field("output_uri", pa.string(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=True),  # null for a models:/m-<id> URI
        pa.field("model_uri", pa.string(), nullable=False),  # concrete: models:/NAME/VERSION
    ]
)


class RestoreFacesParams(StageParams):
    split: str | None = Field(None, description="restore only rows of this split (all rows when unset)")
    input_size: int | None = Field(
        None, ge=1, description="crops are resized to this (MATLAB bicubic); null: the restorer card's input size")
    batch_size: int = Field(64, ge=1)
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    use_gpu: bool = False
    io_cpus: float = Field(0.25, gt=0, description="CPUs of each decode and PNG-writing task")


def _count_sizes(faces: str, split: str | None) -> tuple[int, int]:
    """``(rows, distinct stored sizes)`` of the crops to restore (reads two int columns only)."""
    table = read_faces(faces, columns=["height", "width"], split=split)
    sizes = pa.Table.from_arrays([table["height"], table["width"]], names=["h", "w"]).group_by(["h", "w"]).aggregate([])
    return table.num_rows, sizes.num_rows


def restore_faces(ctx: StageContext, faces: str, model: str) -> dict[str, str]:
    """``model``: models:/NAME/VERSION (a training stage's output), models:/NAME@ALIAS, models:/m-<id>
    or bicubic."""

    p: RestoreFacesParams = ctx.params  # type: ignore[assignment]
    out = ctx.outputs["restored"]
    crops = storage.join(out, CROPS_FOLDER)
    rows, sizes = _count_sizes(faces, p.split)
    if rows == 0:
        raise ValueError(f"no face crops with split={p.split!r} in {faces}")
    model = resolve_model(model, tracking_uri=ctx.tracking_uri)
    ctx.set_tags({"fsr_model_uri": model.uri, "fsr_model_name": model.name, "fsr_model_version": model.version})

    # Crops of one stored size decode in batches; mixed sizes decode one per batch (Ray Data then
    # carries them as variable-shape tensors) and the actors resize each to input_size.
    decode_batch = p.batch_size if sizes == 1 else 1
    ds = read_face_dataset(faces, split=p.split, size=None, keep_columns=("id", "identity"),
                           batch_size=decode_batch, num_cpus=p.io_cpus)
    ds = map_restorer(
        ds,
        SuperResolver,
        fn_kwargs={
            "model_uri": model,  # resolved: actors read the files, never the tracking store
            "loader": load_restorer,
            "tracking_uri": ctx.tracking_uri,
            "device": "cuda" if p.use_gpu else "cpu",
            "input_size": p.input_size,
            "batch_size": p.batch_size,
        },
        kind=model.kind,
        num_actors=p.num_actors,
        num_cpus=p.cpus_per_actor,
        use_gpu=p.use_gpu,
        batch_size=p.batch_size,
    )
    ds = ds.map_batches(write_crops, fn_kwargs={"folder": crops}, batch_size=p.batch_size, batch_format="numpy",
                        num_cpus=p.io_cpus)

    batches = []
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        batches.append(batch)
        ctx.report(sum(b.num_rows for b in batches), rows, unit="faces")
    written = pa.concat_tables(batches)
    written = written.cast(pa.schema([("input_id", pa.string()), ("output_uri", pa.string())]))
    if written.num_rows != rows:
        raise RuntimeError(f"restored {written.num_rows} crops, expected {rows}")
    written = written.sort_by("input_id")
    ids = written["input_id"].to_pylist()
    duplicates = len(ids) - len(pc.unique(written["input_id"]))
    if duplicates:  # the same face twice in the input: one file, one manifest row
        keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
        written = written.take(keep)
    n = written.num_rows
    manifest = pa.table(
        {
            "input_id": written["input_id"],
            "output_uri": written["output_uri"],
            "model_name": pa.array([model.name] * n, pa.string()),
            "model_version": pa.array([model.version] * n, pa.int64()),
            "model_uri": pa.array([model.uri] * n, pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )
    expected = {crop_filename(face_id) for face_id in manifest["input_id"].to_pylist()}
    stale = [info.uri for info in storage.list_files(crops) if info.uri.rsplit("/", 1)[-1] not in expected]
    for uri in stale:
        storage.delete(uri)
    write_parquet(storage.join(out, MANIFEST_FILE), manifest)  # last: a manifest means a finished run
    ctx.log_metrics({"restored": n, "duplicate_ids": duplicates, "stale_removed": len(stale)})
    return {"restored": out}


RESTORE_FACES = Stage(
    name="restore_faces",
    fn=restore_faces,
    params=RestoreFacesParams,
    inputs=("faces", "model"),
    outputs=("restored",),
    description="Super-resolve every face crop of a shard folder with a restorer (Ray Data actor pool or tasks)",
    held_cpus=actor_pool_cpus,
)
