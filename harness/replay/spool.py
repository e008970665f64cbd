"""A worker's legs, kept on its own disk while it replays and sent to the master after its last leg.

Sending every leg to the master while the replay runs cost the workers their send schedule: with
`--processes 2` at 4,000 pairs/s the send lag p99 was 3.8-5.0 ms, and 1.2-3.1 ms with only the lags sent
(docs/benchmarks.md). So a worker appends its legs to an Arrow IPC stream file as it goes, sends the
master only what it watches live (counts, send lags, pair errors), and ships the file once its shard is
done, in chunks the master acknowledges, so that neither side holds more than a few chunks in memory.
The file is also what a master on the same machine reads back when a worker dies mid-run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from .leg import LEG_SCHEMA

__all__ = ["LegSpool", "read_spool", "to_ipc", "from_ipc", "CHUNK_ROWS"]

CHUNK_ROWS = 16_384  # legs per shipped chunk: a few MB


class LegSpool:
    """Appends leg tables to `path`; each write is whole record batches, so a file cut short by a killed
    process still reads up to its last complete batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._file, LEG_SCHEMA)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._file.close()


def read_spool(path: Path, skip: int = 0, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """The legs in `path` from row `skip` on, as tables of about `chunk_rows` legs, read into memory (not
    mapped: the tables outlive the file). A truncated last batch ends the stream."""
    with pa.OSFile(str(path), "rb") as src:
        try:
            reader = pa.ipc.open_stream(src)
        except (pa.ArrowInvalid, OSError):  # nothing complete was written
            return
        pending: list[pa.RecordBatch] = []
        rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except (StopIteration, pa.ArrowInvalid, OSError):  # the end, or a batch cut short
                break
            if skip:
                if batch.num_rows <= skip:
                    skip -= batch.num_rows
                    continue
                batch, skip = batch.slice(skip), 0
            pending.append(batch)
            rows += batch.num_rows
            if rows >= chunk_rows:
                yield pa.Table.from_batches(pending, schema=LEG_SCHEMA)
                pending, rows = [], 0
        if pending:
            yield pa.Table.from_batches(pending, schema=LEG_SCHEMA)


def to_ipc(table: pa.Table | pa.RecordBatch) -> bytes:
    """Arrow's own wire format: no Python object per value on either side."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()
