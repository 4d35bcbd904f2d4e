"""Ray Datasets over face-crop shards: read Parquet, decode PNG in ``map_batches``.

The datasets built here are what Ray Train workers read
(``ray.train.get_dataset_shard(name).iter_torch_batches``) and what batch
restoration streams through its model actors. Ray is imported inside the
functions, so importing this module stays cheap.
"""

from __future__ import annotations

import numpy as np

from fsr_core import storage
from fsr_core.data.codec import decode_png
from fsr_core.data.schema import FACE_SCHEMA, IMAGE_COLUMN
from fsr_core.data.shards import list_shards

__all__ = ["DecodeFaces", "DecodePairs", "DecodeTrainingRows", "paired_table", "read_face_dataset",
           "read_paired_dataset", "training_dataset"]


class DecodeFaces:
    """Batch function: PNG bytes -> ``image`` uint8 ``[N,S,S,3]`` RGB at a fixed size.

    Crops of other sizes are resized with OpenCV's area filter (antialiased) so
    that every batch stacks into one tensor. ``size=None`` keeps the stored
    size, which must then be the same for all rows of a batch.
    """

    def __init__(self, *, size: int | None, keep_columns: tuple[str, ...] = ("id",)) -> None:
        if size is not None and size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self.keep_columns = keep_columns

    def __call__(self, batch: dict) -> dict:
        import cv2

        images = []
        for data in batch[IMAGE_COLUMN]:
            image = decode_png(bytes(data))
            if self.size is not None and image.shape[:2] != (self.size, self.size):
                shrink = image.shape[0] > self.size
                interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
                image = cv2.resize(image, (self.size, self.size), interpolation=interp)
            images.append(image)
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ValueError(f"crops of different sizes {sorted(shapes)} in one batch: pass size= to resize them")
        out = {name: np.asarray(batch[name]) for name in self.keep_columns}
        out["image"] = np.stack(images) if images else np.zeros((0, self.size or 0, self.size or 0, 3), np.uint8)
        return out


def read_face_dataset(
    uri: str,
    *,
    split: str | None = None,
    size: int | None = None,
    keep_columns: tuple[str, ...] = ("id",),
    batch_size: int = 64,
    num_blocks: int | None = None,
    num_cpus: float = 0.5,
):
    """Build a Ray Dataset of decoded face crops from a shard folder (local or ``s3://``).

    Returns rows with ``image`` (uint8 ``[S,S,3]``) and ``keep_columns``.
    ``num_blocks`` repartitions after the read (Ray may merge small files into
    one block, which would leave only one decode task busy).
    """
    import ray

    shards = list_shards(uri)
    if not shards:
        raise FileNotFoundError(f"no Parquet shards under {uri}")
    unknown = set(keep_columns) - set(FACE_SCHEMA.names)
    if unknown:
        raise ValueError(f"keep_columns names unknown column(s) {sorted(unknown)}")
    fs, _ = storage.pyarrow_filesystem(uri)
    paths = [storage.pyarrow_filesystem(shard)[1] for shard in shards]
    columns = sorted({IMAGE_COLUMN, *keep_columns, *(["split"] if split else [])}, key=FACE_SCHEMA.names.index)
    # fractional read tasks too: a read task asking for a whole CPU never starts on a 2-core machine
    # where a Train worker and an actor pool already hold 1.5 (silent hang)
    ds = ray.data.read_parquet(paths, filesystem=fs, num_cpus=num_cpus).select_columns(columns)
    if split is not None:
        from ray.data.expressions import col

        ds = ds.filter(expr=col("split") == split)
    if num_blocks:
        ds = ds.repartition(num_blocks)
    return ds.map_batches(
        DecodeFaces(size=size, keep_columns=keep_columns),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
    )


class DecodeTrainingRows:
    """Batch function of :func:`training_dataset`: the columns an objective reads, as arrays.

    ``image`` uint8 ``[N,S,S,3]`` (resized like :class:`DecodeFaces`); ``identity`` int64 ``[N]``
    (position in ``identities``, -1 for a row without one or with an unknown one); ``attributes``
    float32 ``[N,K]`` (the named attributes, a missing one is an error naming the row); ``landmarks``
    float32 ``[N,10]`` (the 5 points in pixels of the resized crop; NaN where a row has none).
    """

    def __init__(self, *, size: int | None, columns: tuple[str, ...], identities: tuple[str, ...] = (),
                 attributes: tuple[str, ...] = ()) -> None:
        self.decode = DecodeFaces(size=size, keep_columns=("id", "height", "width"))
        self.columns = tuple(columns)
        self.identities = {name: index for index, name in enumerate(identities)}
        self.attributes = tuple(attributes)

    def __call__(self, batch: dict) -> dict:
        import json

        decoded = self.decode(batch)
        out = {"image": decoded["image"]}
        n = len(out["image"])
        if "identity" in self.columns:
            out["identity"] = np.array([self.identities.get(str(v), -1) if v is not None else -1
                                        for v in batch["identity"]], np.int64)
        if "attributes" in self.columns:
            values = np.zeros((n, len(self.attributes)), np.float32)
            for i, (face_id, text) in enumerate(zip(batch["id"], batch["attributes"])):
                attrs = json.loads(text or "{}")
                missing = [a for a in self.attributes if a not in attrs]
                if missing:
                    raise ValueError(f"row {face_id!r} has no attribute(s) {missing}")
                values[i] = [float(attrs[a]) for a in self.attributes]
            out["attributes"] = values
        if "landmarks" in self.columns:
            points = np.full((n, 10), np.nan, np.float32)
            side = out["image"].shape[1] if n else 0
            for i, (marks, width) in enumerate(zip(batch["landmarks"], batch["width"])):
                if marks is not None and len(marks) == 10:
                    points[i] = np.asarray(marks, np.float32) * (side / float(width))
            out["landmarks"] = points
        return out


def training_dataset(uri: str, *, size: int | None, columns: tuple[str, ...] = ("image",), split: str | None = "train",
                     identities: tuple[str, ...] = (), attributes: tuple[str, ...] = (), batch_size: int = 64,
                     num_cpus: float = 0.5):
    """The Ray Dataset an objective's data set reads: rows of ``split`` (all rows when None) with
    exactly ``columns`` (see :class:`DecodeTrainingRows`)."""
    import ray

    if tuple(columns) == ("image",):  # images only: read nothing else
        return read_face_dataset(uri, split=split, size=size, keep_columns=(), batch_size=batch_size,
                                 num_cpus=num_cpus).select_columns(["image"])
    shards = list_shards(uri)
    if not shards:
        raise FileNotFoundError(f"no Parquet shards under {uri}")
    fs, _ = storage.pyarrow_filesystem(uri)
    paths = [storage.pyarrow_filesystem(shard)[1] for shard in shards]
    wanted = {IMAGE_COLUMN, "id", "height", "width", *(c for c in columns if c != "image"),
              *(["split"] if split else [])}
    ds = ray.data.read_parquet(paths, filesystem=fs, num_cpus=num_cpus).select_columns(
        sorted(wanted, key=FACE_SCHEMA.names.index))
    if split is not None:
        from ray.data.expressions import col

        ds = ds.filter(expr=col("split") == split)
    decode = DecodeTrainingRows(size=size, columns=columns, identities=identities, attributes=attributes)
    return ds.map_batches(decode, batch_size=batch_size, batch_format="numpy", num_cpus=num_cpus)


# ---------------------------------------------------------------------------- LR -> HR pairs
HR_ID_KEY = "hr_id"
"""``meta`` key of an LR row that is the degraded version of the HR row with that id (written by the
``degrade`` stage and by ``ingest_crops`` with a pairing file)."""


def paired_table(lr_uri: str, hr_uri: str, *, split: str | None):
    """The LR rows of ``split`` that name their HR (``meta.hr_id``) joined with those HR rows.

    Returns ``(table, unpaired)``: a pyarrow table ``id`` (the LR row's), ``hr_id``, ``identity`` (the
    HR row's, else the LR row's), ``lr_png``, ``hr_png``, in LR storage order, and how many LR rows of
    the split had no HR (no ``hr_id``, or an id missing from ``hr_uri``). The join runs on the driver:
    meant for evaluation sets (thousands to tens of thousands of crops), not for training sets.
    """
    import json

    import pyarrow as pa

    from fsr_core.data.shards import read_faces

    lr = read_faces(lr_uri, columns=["id", IMAGE_COLUMN, "meta", "identity"], split=split)
    hr_ids = [json.loads(text or "{}").get(HR_ID_KEY) for text in lr["meta"].to_pylist()]
    wanted = {i for i in hr_ids if i}
    hr = read_faces(hr_uri, columns=["id", IMAGE_COLUMN, "identity"])
    hr_png, hr_identity = {}, {}
    for face_id, png, identity in zip(hr["id"].to_pylist(), hr[IMAGE_COLUMN].to_pylist(),
                                      hr["identity"].to_pylist()):
        if face_id in wanted:
            hr_png[face_id], hr_identity[face_id] = png, identity
    keep = [i for i, hr_id in enumerate(hr_ids) if hr_id in hr_png]
    table = pa.table({
        "id": pa.array([lr["id"][i].as_py() for i in keep], pa.string()),
        "hr_id": pa.array([hr_ids[i] for i in keep], pa.string()),
        "identity": pa.array([hr_identity[hr_ids[i]] or lr["identity"][i].as_py() for i in keep], pa.string()),
        "lr_png": pa.array([lr[IMAGE_COLUMN][i].as_py() for i in keep], pa.binary()),
        "hr_png": pa.array([hr_png[hr_ids[i]] for i in keep], pa.binary()),
    })
    return table, lr.num_rows - len(keep)


class DecodePairs:
    """Batch function: ``lr_png``/``hr_png`` -> ``lr`` (stored size: a uint8 stack, or an object
    array when sizes differ) and ``image`` (the HR at ``hr_size``, resized like :class:`DecodeFaces`)."""

    def __init__(self, *, hr_size: int | None) -> None:
        self.hr = DecodeFaces(size=hr_size, keep_columns=("id", "hr_id", "identity"))

    def __call__(self, batch: dict) -> dict:
        out = self.hr({**batch, IMAGE_COLUMN: batch["hr_png"]})
        lr = [decode_png(bytes(data)) for data in batch["lr_png"]]
        if len({image.shape for image in lr}) <= 1 and lr:
            out["lr"] = np.stack(lr)
        else:
            out["lr"] = np.empty(len(lr), dtype=object)
            out["lr"][:] = lr
        return out


def read_paired_dataset(lr_uri: str, hr_uri: str, *, split: str | None, hr_size: int | None, ids=None,
                        batch_size: int = 64, num_cpus: float = 0.5):
    """Ray Dataset of decoded pairs (:func:`paired_table`, then :class:`DecodePairs`): rows ``id``,
    ``hr_id``, ``identity``, ``lr``, ``image`` (HR); only the LR ids in ``ids`` when given. Returns
    ``(dataset, number of pairs, unpaired LR rows)``."""
    import ray

    table, unpaired = paired_table(lr_uri, hr_uri, split=split)
    if ids is not None:
        wanted = set(ids)
        table = table.filter(np.array([i in wanted for i in table["id"].to_pylist()], dtype=bool))
    ds = ray.data.from_arrow(table)
    return ds.map_batches(DecodePairs(hr_size=hr_size), batch_size=batch_size, batch_format="numpy",
                          num_cpus=num_cpus), table.num_rows, unpaired
