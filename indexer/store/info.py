"""`vidx info INDEX`: what an index root holds."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

from indexer.redaction import redact_text, redact_uri
from indexer.store.index import IndexReader
from indexer.store.integrity import IndexDamaged
from indexer.store.manifest import StreamEntry
from indexer.store.retention import human_bytes, stream_segment_times, thumbnail_bytes
from indexer.store.root import IndexRoot


def is_index_root(root: IndexRoot) -> bool:
    return root.manifest.is_file()


def describe_index(root: IndexRoot) -> list[str]:
    index = IndexReader(root)
    m, layout = index.manifest, index.layout
    lines = [f"index: {index.root}",
             f"generation {m.generation}, {m.next_frame_id} frames, {len(m.streams)} streams",
             f"model: {layout.model_name} (fingerprint {layout.model_fingerprint})",
             (f"features: {layout.feature_format} {list(layout.feature_shape)} per frame; content tokens "
              f"{list(layout.content_shape)}; embedding {layout.embedding_dim}-d ({layout.embedding_model}, "
              f"fingerprint {layout.embedding_fingerprint or '?'})"),
             "streams:"]
    for sid, s in sorted(m.streams.items()):
        covered = f"{s.watermark_s:.1f} s" if s.watermark_s is not None else "-"
        length = f"of {s.duration_s:.1f} s" if s.duration_s else ("live" if s.live else "")
        state = "complete" if s.complete else ("error: " + redact_text(s.error) if s.error else "resumable")
        lines.append(f"  {sid}: {redact_uri(s.uri)} [{s.protocol}] {s.frames} frames at {s.fps:g} fps, up to {covered} "
                     f"{length}, {s.gaps} gaps; {state}")
        if s.warning:
            lines.append(f"    warning: {s.warning}")
        if s.gaps:
            try:
                gaps = index.timeline(sid, columns=["kind", "pts_s", "end_s", "reason"]).to_pylist()
            except IndexDamaged:  # the caller lists the damaged files
                gaps = []
            for gap in [g for g in gaps if g["kind"] == "gap"][:10]:
                end = f"{gap['end_s']:.1f}" if gap["end_s"] is not None else "end"
                lines.append(f"    gap {gap['pts_s']:.1f}-{end} s: {gap['reason']}")
    sizes = index.sizes()
    total = sum(sizes.values())
    lines.append("sizes: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in sizes.items())
                 + f"; total {human_bytes(total)}")
    hours = sum(s.frames / s.fps for s in m.streams.values()) / 3600
    if hours > 0:
        lines.append("per hour of video: " + ", ".join(f"{k} {human_bytes(v / hours)}" for k, v in sizes.items()))
    try:
        lines += tier_lines(index)
    except (IndexDamaged, OSError):  # the caller lists the damaged files
        pass
    return lines


def tier_lines(index: IndexReader) -> list[str]:
    """Bytes per storage tier, in all and per stream, and which spans of each stream can still give
    context tokens: from stored float16 or int4 features, or (none stored) only by recomputing them
    from the source, which is there or not."""
    m, layout = index.manifest, index.layout
    per_stream, spans = {}, []
    for sid, entry in sorted(m.streams.items()):
        tiers = dict.fromkeys(TIERS, 0)
        segments = stream_segment_times(index.root, entry)
        for seg in (seg for seg in entry.segments if not seg.frames):  # gap-only segments: timeline rows
            tiers["timeline"] += seg.bytes.get("timeline", 0)
        for seg in segments:
            thumbs = thumbnail_bytes(index.root / seg.timeline)
            tiers["thumbnails"] += thumbs
            tiers["timeline"] += seg.bytes.get("timeline", 0) - thumbs
            if seg.features:
                tiers[seg.format_name(layout)] += seg.bytes.get("features", 0)
        per_stream[sid] = tiers
        runs = [(fmt, list(run)) for fmt, run in groupby(segments, key=lambda seg: seg.format_name(layout))]
        if runs:
            spans.append(f"  {sid}: " + "; ".join(f"{run[0].start_s:.1f}-{run[-1].end_s:.1f} s {_source(entry, fmt)}"
                                                  for fmt, run in runs))
    vectors = sum(s.bytes for s in m.vectors) + (m.approximate.total_bytes() if m.approximate else 0)
    total = {tier: sum(t[tier] for t in per_stream.values()) for tier in TIERS}
    lines = ["tiers: " + ", ".join(f"{TIERS[t]} {human_bytes(v)}" for t, v in total.items())
             + f", vectors {human_bytes(vectors)}"]
    lines += [f"  {sid}: " + ", ".join(f"{TIERS[t]} {human_bytes(v)}" for t, v in tiers.items())
              for sid, tiers in per_stream.items()]
    return lines + (["context tokens from:"] + spans if spans else [])


TIERS = {"float16": "float16 features", "int4": "int4 features", "thumbnails": "thumbnails",
         "timeline": "timeline (content tokens, embeddings)"}


def _source(entry: StreamEntry, fmt: str) -> str:
    """Where a span's context tokens can come from."""
    if fmt != "none":
        return f"{fmt} features"
    if entry.protocol != "file":
        return "no features stored, no recording of the live source: content tokens only"
    if Path(entry.uri).is_file():
        return f"no features stored: recomputable from the source {entry.uri}"
    return f"no features stored and the source {entry.uri} is missing: content tokens only"


__all__ = ["describe_index", "is_index_root", "tier_lines"]
