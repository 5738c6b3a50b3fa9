"""Retention: what a policy (`settings.RetentionSettings`) keeps of each stream's patch features
and thumbnails, and the commit that applies it.

A policy acts per segment (one commit's file of one stream, a few seconds of it), by the age of
its newest frame: for a live source the wall-clock time since that frame was captured, for a file
the media time from it to the stream's newest committed frame. float16 features become int4, int4
features are dropped, thumbnails are dropped (the timeline is rewritten without them); content
tokens, retrieval embeddings and the timeline rows stay. Byte caps per stream then convert or drop
the oldest segments first.

Crash safety comes from the commit order the writer already follows: the new files (int4
features, a timeline without thumbnails) are written under new names, a manifest naming them is
committed, and only then are the files it no longer names deleted. A crash before the commit
leaves new files no manifest names, a crash after it old ones: either way the crash clean-up
(`IndexRoot.remove_uncommitted_index`, run by the next writer or `vidx prune`) deletes them, and
the manifest's files are whole.

    steps = plan_retention(root, manifest, settings)      # what goes (a dry run stops here)
    obsolete = apply_retention(root, manifest, steps)     # new files written, `manifest` edited
    write_manifest(...); delete obsolete                  # the writer's commit, or prune_index
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.settings import RetentionPolicy, RetentionSettings
from indexer.store.features import Int4Features, feature_format, load_arrays, save_arrays, stored_bytes
from indexer.store.integrity import IndexDamaged, checksum_file
from indexer.store.manifest import Layout, Manifest, Segment, StreamEntry, read_manifest, write_manifest
from indexer.store.root import IndexRoot
from indexer.store.timeline import read_timeline, write_timeline

TO_INT4, DROP_FEATURES, DROP_THUMBNAILS = "float16 -> int4", "features dropped", "thumbnails dropped"


@dataclass(frozen=True)
class RetentionStep:
    """One thing a policy does to one segment."""

    stream_id: str
    generation: int          # the segment's (with the stream id: which segment)
    action: str              # TO_INT4 | DROP_FEATURES | DROP_THUMBNAILS
    start_s: float
    end_s: float
    files: int               # files deleted
    frees: int               # bytes: those deleted less those written


@dataclass
class PruneReport:
    """What `vidx prune` did (or, dry, would do)."""

    root: IndexRoot
    steps: list[RetentionStep]
    dry_run: bool
    generation: int          # the commit made (dry: the one planned on)
    removed_leftovers: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        verb = "would free" if self.dry_run else "freed"
        out = [f"removed {self.removed_leftovers} files an interrupted commit left"] if self.removed_leftovers else []
        order = (DROP_FEATURES, TO_INT4, DROP_THUMBNAILS)
        shown = sorted(self.steps, key=lambda s: (s.stream_id, order.index(s.action), s.generation))
        for (sid, action), run in groupby(shown, key=lambda s: (s.stream_id, s.action)):
            run = list(run)
            out.append(f"{sid} {run[0].start_s:.1f}-{run[-1].end_s:.1f} s: {action} ({len(run)} segments, "
                       f"{sum(s.files for s in run)} files), {verb} {human_bytes(sum(s.frees for s in run))}")
        if not self.steps:
            out.append(f"{self.root}: the retention policy keeps everything stored (generation {self.generation})")
        else:
            done = "nothing changed (dry run)" if self.dry_run else f"committed as generation {self.generation}"
            out.append(f"{self.root}: {verb} {human_bytes(sum(s.frees for s in self.steps))} in "
                       f"{sum(s.files for s in self.steps)} files; {done}")
        return out


def plan_retention(root: IndexRoot, manifest: Manifest, settings: RetentionSettings,
                   now: float | None = None) -> list[RetentionStep]:
    """What `settings` converts or drops now, in stream and age order (oldest first). Segment times
    an older manifest lacks are read from their timelines and filled into `manifest`."""
    now = time.time() if now is None else now
    steps = []
    for sid, entry in sorted(manifest.streams.items()):
        policy = settings.for_stream(sid)
        segments = [seg for seg in entry.segments if seg.frames]
        if not segments or not _acts(policy):
            continue
        for seg in segments:
            _fill_times(root, seg)
        steps += _plan_stream(root, manifest.layout, entry, segments, policy, now)
    return steps


def apply_retention(root: IndexRoot, manifest: Manifest, steps: list[RetentionStep]) -> list[str]:
    """Write the files `steps` need and edit `manifest` (not yet committed) to name them; return the
    files it no longer names, to delete once it is committed."""
    by_key = {(sid, seg.generation): seg for sid, entry in manifest.streams.items() for seg in entry.segments}
    layout = manifest.layout
    obsolete = []
    for step in steps:
        seg = by_key[(step.stream_id, step.generation)]
        if step.action == DROP_THUMBNAILS:
            table = read_timeline(root, seg.timeline)
            table = table.set_column(table.schema.get_field_index("thumbnail"), "thumbnail",
                                     pa.nulls(table.num_rows, pa.binary()))
            name = IndexRoot.timeline_file(step.stream_id, seg.generation, thumbnails=False)
            seg.bytes["timeline"] = write_timeline(root / name, table)
            obsolete.append(seg.timeline)
            seg.timeline, seg.thumbnails = name, False
            continue
        obsolete += seg.features
        if step.action == TO_INT4:
            old = feature_format(seg.format_name(layout))
            features = old.decode(load_arrays([root / f for f in seg.features]))  # float16 [n, 1+N, C]
            if not np.isfinite(features).all():  # damage inside the file: kept for `vidx repair` to find
                raise IndexDamaged(root, seg.features[0], "non-finite patch features")
            base = root / IndexRoot.features_dir(step.stream_id) / IndexRoot.features_stem(seg.generation)
            names = save_arrays(base, Int4Features(), features)  # other suffixes: never the old files' names
            seg.features = [f"{IndexRoot.features_dir(step.stream_id)}/{n}" for n in names]
            seg.feature_format = "int4"
            seg.bytes["features"] = sum((root / f).stat().st_size for f in seg.features)
        else:
            seg.features, seg.feature_format = [], "none"
            seg.bytes.pop("features", None)
    return obsolete


def prune_index(root: IndexRoot, settings: RetentionSettings, dry_run: bool = False,
                now: float | None = None) -> PruneReport:
    """`vidx prune`: apply `settings` to the index at `root` in one commit, under the writer lock
    (refused at once while an ingest writes: its own commits apply the policy). First the crash
    clean-up, so a prune killed earlier leaves nothing behind. `dry_run`: plan only, change nothing."""
    started = time.perf_counter()
    if read_manifest(root) is None:
        raise FileNotFoundError(f"{root}: no index here (no {root.manifest.name}); make one with vidx ingest")
    lock = None if dry_run else root.lock_writer()
    try:
        manifest = read_manifest(root)
        removed = [] if dry_run else root.remove_uncommitted_index(manifest.files())
        for damage in manifest.damaged_files(root):  # never convert from a damaged file
            raise damage
        steps = plan_retention(root, manifest, settings, now)
        report = PruneReport(root, steps, dry_run, manifest.generation, len(removed))
        if steps and not dry_run:
            obsolete = apply_retention(root, manifest, steps)
            manifest.generation += 1
            manifest.checksums = {name: manifest.checksums.get(name) or checksum_file(root / name)
                                  for name in sorted(manifest.files())}
            write_manifest(root, manifest)
            for name in obsolete:
                (root / name).unlink(missing_ok=True)
            report.generation = manifest.generation
    finally:
        if lock is not None:
            lock.release()
    report.seconds = time.perf_counter() - started
    return report


def segment_ages(entry: StreamEntry, segments: list[Segment], now: float) -> list[float]:
    """Each segment's age in seconds (see the module docstring)."""
    newest = max(seg.end_s for seg in segments)
    return [now - seg.wall_end if entry.live and seg.wall_end is not None else newest - seg.end_s
            for seg in segments]


def _acts(policy: RetentionPolicy) -> bool:
    return any(v is not None for v in (policy.float16_s, policy.float16_max_bytes, policy.int4_max_bytes,
                                       policy.thumbnails_s))


def _plan_stream(root: IndexRoot, layout: Layout, entry: StreamEntry, segments: list[Segment], policy: RetentionPolicy,
                 now: float) -> list[RetentionStep]:
    ages = segment_ages(entry, segments, now)
    drop_after = policy.float16_s + policy.int4_s if None not in (policy.float16_s, policy.int4_s) else math.inf
    int4_after = policy.float16_s if policy.float16_s is not None else math.inf
    target = {}   # segment index -> the format it ends with
    for i, (seg, age) in enumerate(zip(segments, ages)):
        current = seg.format_name(layout)
        wanted = "none" if age > drop_after else "int4" if age > int4_after else "float16"
        if current == "float16" and wanted != "float16" or current == "int4" and wanted == "none":
            target[i] = wanted
    _apply_caps(layout, segments, policy, target)
    steps = []
    for i, seg in enumerate(segments):
        current = seg.format_name(layout)
        if i in target and target[i] != current:
            new_bytes = stored_bytes(Int4Features(), seg.frames, layout.feature_shape) if target[i] == "int4" else 0
            steps.append(RetentionStep(entry.stream_id, seg.generation, TO_INT4 if target[i] == "int4"
                                       else DROP_FEATURES, seg.start_s, seg.end_s, len(seg.features),
                                       seg.bytes.get("features", 0) - new_bytes))
        if seg.thumbnails and policy.thumbnails_s is not None and ages[i] > policy.thumbnails_s:
            steps.append(RetentionStep(entry.stream_id, seg.generation, DROP_THUMBNAILS, seg.start_s, seg.end_s, 1,
                                       thumbnail_bytes(root / seg.timeline)))
    return steps


def _apply_caps(layout: Layout, segments: list[Segment], policy: RetentionPolicy, target: dict[int, str]) -> None:
    """Byte caps on top of the ages: the oldest float16 segments become int4 while the stream's
    float16 bytes exceed their cap, then the oldest int4 ones are dropped while int4 bytes do."""
    def final(i: int) -> str:
        return target.get(i, segments[i].format_name(layout))

    def size(i: int) -> int:
        if final(i) == segments[i].format_name(layout):
            return segments[i].bytes.get("features", 0)
        return stored_bytes(feature_format(final(i)), segments[i].frames, layout.feature_shape)

    for tier, cap, lower in (("float16", policy.float16_max_bytes, "int4"), ("int4", policy.int4_max_bytes, "none")):
        if cap is None:
            continue
        held = [i for i in range(len(segments)) if final(i) == tier]  # oldest first
        total = sum(size(i) for i in held)
        for i in held:
            if total <= cap:
                break
            total -= size(i)
            target[i] = lower


def _fill_times(root: IndexRoot, seg: Segment) -> None:
    """A segment from before these fields: its media times and last capture time, from its timeline."""
    if seg.end_s is not None:
        return
    table = read_timeline(root, seg.timeline, ["kind", "pts_s", "wall_time"])
    frames = table.filter(pc.equal(table.column("kind"), "frame"))
    pts = frames.column("pts_s").to_numpy()
    walls = [w.timestamp() for w in frames.column("wall_time").to_pylist() if w is not None]
    seg.start_s, seg.end_s = float(pts.min()), float(pts.max())
    seg.wall_end = max(walls) if walls else None


def thumbnail_bytes(path: Path) -> int:
    """The thumbnails' share of a timeline file: their column chunks' compressed bytes (its footer)."""
    meta = pq.ParquetFile(path).metadata
    column = meta.schema.to_arrow_schema().get_field_index("thumbnail")
    return sum(meta.row_group(r).column(column).total_compressed_size for r in range(meta.num_row_groups))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def stream_segment_times(root: IndexRoot, entry: StreamEntry) -> list[Segment]:
    """The stream's segments with frames, their times filled in (for `vidx info`; not committed)."""
    segments = [seg.model_copy() for seg in entry.segments if seg.frames]
    for seg in segments:
        _fill_times(root, seg)
    return segments


__all__ = ["DROP_FEATURES", "DROP_THUMBNAILS", "TO_INT4", "PruneReport", "RetentionStep", "apply_retention",
           "human_bytes", "plan_retention", "prune_index", "segment_ages", "stream_segment_times",
           "thumbnail_bytes"]
