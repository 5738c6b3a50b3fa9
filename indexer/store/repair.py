"""`vidx repair INDEX`: roll a damaged index root back to its last intact state.

A damaged manifest is replaced by the previous commit's (`manifest.prev.json`). A stream with a
damaged timeline or features file loses that segment and every later one: its watermark moves
back to the last intact frame, so the next ingest of the same source reads those frames again
(each frame ends up in the index exactly once; a live source cannot give its past again, so
its dropped frames stay missing). If frames were dropped or a vector file is
damaged, the exact vector shards are rebuilt from the intact timelines' float32 embeddings and
the approximate index is dropped; the next ingest's writer builds it again when needed.
Frame ids of dropped frames are not reused.
"""

from __future__ import annotations

import numpy as np

from indexer.store import vectors as vec
from indexer.store.integrity import IndexDamaged, checksum_file
from indexer.store.manifest import (
    Manifest,
    StreamEntry,
    VectorShard,
    read_manifest,
    write_manifest,
)
from indexer.store.root import IndexRoot
from indexer.store.timeline import read_timeline


def check_index(root: IndexRoot, full: bool = False) -> list[IndexDamaged]:
    """The damaged files of an index root (the manifest's damage is raised): by the cheap check, or
    (`full`) by every byte. An empty list for a root with no index yet."""
    manifest = read_manifest(root)
    return manifest.damaged_files(root, full) if manifest is not None else []


def repair_index(root: IndexRoot) -> list[str]:
    """Make `root` intact again (see the module docstring); return what was done, one line each."""
    with root.lock_writer():  # no writer may commit meanwhile
        return _repair(root)


def _repair(root: IndexRoot) -> list[str]:
    done = []
    try:
        manifest = read_manifest(root)
    except IndexDamaged as damage:
        manifest = _previous_manifest(root, damage)
        done.append(f"{root.manifest.name}: damaged; restored the previous commit's (generation {manifest.generation})")
    if manifest is None:
        raise FileNotFoundError(f"{root}: no index here (no {root.manifest.name})")
    listed = manifest.files()
    damaged = {d.file: d.reason for d in manifest.damaged_files(root, full=True)}
    dropped_frames = 0
    for entry in manifest.streams.values():
        dropped = _roll_back(root, entry, damaged)
        if dropped is not None:
            dropped_frames += dropped
            done.append(f"stream {entry.stream_id}: dropped {dropped} frames from the damaged or later segments; "
                        f"the next ingest reads it again from sample {entry.next_index}")
    vector_files = {s.file for s in manifest.vectors}
    if manifest.approximate is not None:
        vector_files |= manifest.approximate.files()
    if dropped_frames or vector_files & damaged.keys():
        shard = _rebuild_vectors(root, manifest, manifest.generation + 1)
        done.append(f"vectors: rebuilt from the timeline ({shard.vectors} frames)")
    for name, reason in sorted(damaged.items()):
        done.insert(0, f"{name}: {reason}")
    if not done:
        return [f"{root}: every file intact (generation {manifest.generation}); nothing to repair"]
    manifest.generation += 1
    manifest.checksums = {name: manifest.checksums.get(name) or checksum_file(root / name)
                          for name in sorted(manifest.files())}
    write_manifest(root, manifest)
    for name in listed - manifest.files():  # no longer listed (the next writer would remove them too)
        (root / name).unlink(missing_ok=True)
    done.append(f"{root}: repaired as generation {manifest.generation}; ingest the sources again to fill it in")
    return done


def _previous_manifest(root: IndexRoot, damage: IndexDamaged) -> Manifest:
    try:
        previous = read_manifest(root, previous=True)
    except IndexDamaged:
        previous = None
    if previous is None:
        raise IndexDamaged(root.path, root.manifest.name,
                           f"{damage.reason}, and no intact {root.previous_manifest.name} to roll back to; "
                           "ingest the sources into a new --index") from None
    return previous


def _roll_back(root: IndexRoot, entry: StreamEntry, damaged: dict[str, str]) -> int | None:
    """Drop the stream's first damaged segment and every later one; None when none is damaged."""
    first = next((i for i, seg in enumerate(entry.segments)
                  if seg.timeline in damaged or damaged.keys() & set(seg.features)), None)
    if first is None:
        return None
    kept = entry.segments[:first]
    while kept and not kept[-1].frames:  # gap-only segments after the last intact frame are read again too
        kept.pop()
    dropped = sum(seg.frames for seg in entry.segments[len(kept):])
    entry.segments = kept
    entry.frames = sum(seg.frames for seg in kept)
    entry.gaps = sum(seg.gaps for seg in kept)
    entry.complete = False
    entry.last_gap = None
    entry.next_index, entry.watermark_s = 0, None
    if kept:
        rows = read_timeline(root, kept[-1].timeline, ["kind", "sample_index", "pts_s"]).to_pylist()
        frames = [row for row in rows if row["kind"] == "frame"]
        entry.next_index = max(row["sample_index"] for row in frames) + 1
        entry.watermark_s = max(row["pts_s"] for row in frames)
    return dropped


def _rebuild_vectors(root: IndexRoot, manifest: Manifest, generation: int) -> VectorShard:
    """One exact shard over every intact frame's embedding, from the timeline (float32 originals)."""
    ids, embeddings = [], []
    for entry in manifest.streams.values():
        for segment in entry.segments:
            if segment.frames:
                table = read_timeline(root, segment.timeline, ["frame_id", "embedding"])
                frames = table.filter(table.column("frame_id").is_valid())
                ids.append(frames.column("frame_id").to_numpy())
                flat = frames.column("embedding").combine_chunks().flatten()
                embeddings.append(np.asarray(flat, dtype=np.float32).reshape(len(frames), -1))  # [n, E]
    dim = manifest.layout.embedding_dim
    index = vec.build_shard(np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32),
                            np.concatenate(ids) if ids else np.zeros(0, np.int64))
    path = IndexRoot.vector_shard_file(generation, "repaired")
    size = vec.write_shard(root / path, index)
    shard = VectorShard(generation=generation, file=path, vectors=index.ntotal, bytes=size)
    manifest.vectors, manifest.approximate = [shard], None
    return shard


__all__ = ["check_index", "repair_index"]
