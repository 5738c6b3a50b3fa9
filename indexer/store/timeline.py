"""The Parquet timeline: one row per sampled frame (and one per gap), one file per commit and
stream under `timeline/stream=<id>/`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from indexer.batches import EncodedBatch, Gap
from indexer.store.files import write_atomic
from indexer.store.integrity import IndexDamaged

VERIFIED_PARQUET = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True))


def timeline_schema(content_shape: tuple[int, int], embedding_dim: int) -> pa.Schema:
    p, d = content_shape
    return pa.schema([
        ("frame_id", pa.int64()),              # null on gap rows; = FAISS id and features row
        ("stream_id", pa.string()),
        ("source_uri", pa.string()),
        ("kind", pa.string()),                 # "frame" | "gap"
        ("sample_index", pa.int64()),          # position on the 1/fps grid
        ("pts_s", pa.float64()),               # frame: its media time; gap: last time before it
        ("end_s", pa.float64()),               # gap: first time after it (null: the source ended)
        ("wall_time", pa.timestamp("us", tz="UTC")),
        ("wall_end", pa.timestamp("us", tz="UTC")),
        ("subtitle", pa.string()),
        ("reason", pa.string()),               # why the gap
        ("content_tokens", pa.list_(pa.float16(), p * d)),   # [P, D] flattened
        ("embedding", pa.list_(pa.float32(), embedding_dim)),
        ("thumbnail", pa.binary()),            # JPEG
    ], metadata={b"content_shape": f"{p},{d}".encode()})


def _wall(values) -> pa.Array:
    micros = [None if v is None or np.isnan(v) else int(v * 1e6) for v in values]
    return pa.array(micros, type=pa.timestamp("us", tz="UTC"))


def timeline_table(schema: pa.Schema, source_uri: str, frames: EncodedBatch, frame_ids: np.ndarray,
                   gaps: list[Gap]) -> pa.Table:
    """Rows for one stream's frames (ids already assigned) followed by its gaps."""
    n, g = len(frames), len(gaps)
    p_d = schema.field("content_tokens").type.list_size
    e = schema.field("embedding").type.list_size
    content = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(frames.content, dtype=np.float16).reshape(-1)), p_d)
    embedding = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(frames.embedding, dtype=np.float32).reshape(-1)), e)
    frame_rows = pa.table({
        "frame_id": pa.array(frame_ids, pa.int64()),
        "stream_id": pa.array([frames.stream_id] * n, pa.string()),
        "source_uri": pa.array([source_uri] * n, pa.string()),
        "kind": pa.array(["frame"] * n, pa.string()),
        "sample_index": pa.array(frames.indices, pa.int64()),
        "pts_s": pa.array(frames.pts_s, pa.float64()),
        "end_s": pa.nulls(n, pa.float64()),
        "wall_time": _wall(frames.wall_time),
        "wall_end": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        "subtitle": pa.array(frames.subtitles, pa.string()),
        "reason": pa.nulls(n, pa.string()),
        "content_tokens": content,
        "embedding": embedding,
        "thumbnail": pa.array(frames.thumbnails, pa.binary()),
    }, schema=schema)
    if not g:
        return frame_rows
    gap_rows = pa.table({
        "frame_id": pa.nulls(g, pa.int64()),
        "stream_id": pa.array([frames.stream_id] * g, pa.string()),
        "source_uri": pa.array([source_uri] * g, pa.string()),
        "kind": pa.array(["gap"] * g, pa.string()),
        "sample_index": pa.nulls(g, pa.int64()),
        "pts_s": pa.array([gap.start_s for gap in gaps], pa.float64()),
        "end_s": pa.array([gap.end_s for gap in gaps], pa.float64()),
        "wall_time": _wall([gap.wall_start for gap in gaps]),
        "wall_end": _wall([gap.wall_end for gap in gaps]),
        "subtitle": pa.nulls(g, pa.string()),
        "reason": pa.array([gap.reason for gap in gaps], pa.string()),
        "content_tokens": pa.nulls(g, schema.field("content_tokens").type),
        "embedding": pa.nulls(g, schema.field("embedding").type),
        "thumbnail": pa.nulls(g, pa.binary()),
    }, schema=schema)
    return pa.concat_tables([frame_rows, gap_rows])


def write_timeline(path: Path, table: pa.Table) -> int:
    # page checksums: damage inside a page is an error when it is read, not a broken thumbnail
    return write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd", write_page_checksum=True))


def read_timelines(root: Path, names: list[str], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Committed timeline files read as one table (a parallel scan), page checksums verified; damage
    raises IndexDamaged naming the file."""
    try:
        dataset = ds.dataset([str(root / n) for n in names], schema=schema, format=VERIFIED_PARQUET)
        return dataset.to_table(columns=columns)
    except (OSError, pa.ArrowException):
        for name in names:  # which one: each alone
            read_timeline(root, name, columns, schema=schema)
        raise


def read_timeline(root: Path, name: str, columns: list[str] | None = None, filters=None,
                  schema: pa.Schema | None = None) -> pa.Table:
    """One committed timeline file, its page checksums verified; damage raises IndexDamaged naming it."""
    try:
        return pq.read_table(root / name, columns=columns, filters=filters, schema=schema,
                             page_checksum_verification=True)
    except FileNotFoundError:
        raise IndexDamaged(root, name, "missing") from None
    except (OSError, pa.ArrowException) as exc:
        raise IndexDamaged(root, name, f"unreadable Parquet: {exc}") from None


__all__ = ["read_timeline", "read_timelines", "timeline_schema", "timeline_table", "write_timeline"]
