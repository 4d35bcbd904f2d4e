"""Write and read face-crop shards: Parquet files following :data:`~fsr_core.data.schema.FACE_SCHEMA`.

A shard folder holds ``part-00000.parquet``, ``part-00001.parquet``, ... Each
shard is written in memory and stored with one atomic write, so a crash leaves
complete shards only; its row groups are bounded (``row_group_size``) so
readers stream with bounded memory.
"""

from __future__ import annotations

import io
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from fsr_core import storage
from fsr_core.data.schema import FACE_SCHEMA, SchemaError, rows_to_table

__all__ = [
    "ShardWriter", "shard_name", "list_shards", "read_shard", "read_faces", "iter_batches", "write_table", "write_parquet",
]

SHARD_SUFFIX = ".parquet"


def shard_name(index: int, *, prefix: str = "part") -> str:
    return f"{prefix}-{index:05d}{SHARD_SUFFIX}"


def write_parquet(uri: str, table: pa.Table, *, compression: str = "zstd") -> None:
    """Write any table (manifests, reports, quarantine tables) as one Parquet file, atomically."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=compression)
    storage.write_bytes(uri, buffer.getvalue())


def write_table(table: pa.Table, uri: str, *, row_group_size: int = 256) -> None:
    """Write one table as one Parquet file, atomically. The table must have :data:`FACE_SCHEMA`."""
    if not table.schema.equals(FACE_SCHEMA, check_metadata=False):
        raise SchemaError(f"table schema differs from FACE_SCHEMA:\n{table.schema}")
    buffer = io.BytesIO()
    # PNG bytes are already compressed: compress only the small columns' pages.
    pq.write_table(
        table,
        buffer,
        row_group_size=row_group_size,
        compression={name: ("NONE" if name == "image_png" else "ZSTD") for name in table.schema.names},
    )
    storage.write_bytes(uri, buffer.getvalue())


class ShardWriter:
    """Collect rows and write them as numbered shards of at most ``max_rows_per_shard`` rows.

    Use as a context manager; :attr:`written` lists the shard URIs.
    """

    def __init__(
        self,
        folder_uri: str,
        *,
        max_rows_per_shard: int = 2048,
        row_group_size: int = 256,
        prefix: str = "part",
        start_index: int = 0,
    ) -> None:
        if max_rows_per_shard < 1 or row_group_size < 1:
            raise ValueError("max_rows_per_shard and row_group_size must be >= 1")
        self.folder_uri = folder_uri
        self.max_rows_per_shard = max_rows_per_shard
        self.row_group_size = row_group_size
        self.prefix = prefix
        self.next_index = start_index
        self.written: list[str] = []
        self.rows_written = 0
        self._pending: list[Mapping[str, Any]] = []

    def write(self, row: Mapping[str, Any]) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.max_rows_per_shard:
            self.flush()

    def write_rows(self, rows) -> None:
        for row in rows:
            self.write(row)

    def flush(self) -> str | None:
        """Write the pending rows as one shard; returns its URI (None if nothing was pending)."""
        if not self._pending:
            return None
        table = rows_to_table(self._pending)
        uri = storage.join(self.folder_uri, shard_name(self.next_index, prefix=self.prefix))
        write_table(table, uri, row_group_size=self.row_group_size)
        self.written.append(uri)
        self.rows_written += table.num_rows
        self.next_index += 1
        self._pending = []
        return uri

    def close(self) -> list[str]:
        self.flush()
        return self.written

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()  # on error, pending rows are dropped: no partial shard appears


def list_shards(folder_uri: str) -> list[str]:
    """URIs of the Parquet shards in a folder, sorted."""
    return [info.uri for info in storage.list_files(folder_uri, suffix=SHARD_SUFFIX)]


def read_shard(uri: str, *, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.pyarrow_filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def read_faces(folder_uri: str, *, columns: list[str] | None = None, split: str | None = None) -> pa.Table:
    """All rows of a shard folder as one table (small data, tests, reports)."""
    shards = list_shards(folder_uri)
    if not shards:
        raise FileNotFoundError(f"no Parquet shards under {folder_uri}")
    wanted = None if columns is None else sorted(set(columns) | ({"split"} if split else set()), key=FACE_SCHEMA.names.index)
    table = pa.concat_tables(read_shard(uri, columns=wanted) for uri in shards)
    if split is not None:
        table = table.filter(pa.compute.equal(table["split"], split))
    if columns is not None:
        table = table.select(columns)
    return table


def iter_batches(folder_uri: str, *, batch_size: int = 256, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream record batches over all shards with bounded memory."""
    for uri in list_shards(folder_uri):
        fs, path = storage.pyarrow_filesystem(uri)
        with fs.open_input_file(path) as fh:
            yield from pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=columns)
