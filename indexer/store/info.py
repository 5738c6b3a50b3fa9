"""`vidx info INDEX`: what an index root holds."""

from __future__ import annotations

from indexer.redaction import redact_text, redact_uri
from indexer.store.index import IndexReader
from indexer.store.integrity import IndexDamaged
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
    lines.append("sizes: " + ", ".join(f"{k} {_human(v)}" for k, v in sizes.items()) + f"; total {_human(total)}")
    hours = sum(s.frames / s.fps for s in m.streams.values()) / 3600
    if hours > 0:
        lines.append("per hour of video: " + ", ".join(f"{k} {_human(v / hours)}" for k, v in sizes.items()))
    return lines


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


__all__ = ["describe_index", "is_index_root"]
