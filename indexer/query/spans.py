"""Spans: retrieved frames that are close in time become one stretch of video, padded on both
sides, so the LLM sees what happened around a hit and not a single frame out of context."""

from __future__ import annotations

from dataclasses import dataclass

from indexer.query.search import Hit


@dataclass(frozen=True)
class Span:
    stream_id: str
    start_s: float            # media time, padded
    end_s: float
    score: float              # its best hit's retrieval score
    hits: tuple[int, ...]     # frame ids of the hits inside it, best first
    rank: int                 # its best hit's place in the ranking the spans came from


def merge_hits(hits: list[Hit], gap_s: float, pad_s: float, max_spans: int) -> list[Span]:
    """Join hits of one stream whose times are at most `gap_s` apart, pad each span by `pad_s`,
    and keep the `max_spans` best. `hits` come best first (search order, or a rerank's); a span
    ranks as its best hit. Best span first."""
    rank = {hit.frame_id: i for i, hit in enumerate(hits)}
    by_stream: dict[str, list[Hit]] = {}
    for hit in hits:
        by_stream.setdefault(hit.stream_id, []).append(hit)
    spans: list[Span] = []
    for stream_id, stream_hits in by_stream.items():
        stream_hits.sort(key=lambda h: h.pts_s)
        group = [stream_hits[0]]
        for hit in stream_hits[1:]:
            if hit.pts_s - group[-1].pts_s <= gap_s:
                group.append(hit)
            else:
                spans.append(_span(stream_id, group, pad_s, rank))
                group = [hit]
        spans.append(_span(stream_id, group, pad_s, rank))
    spans.sort(key=lambda s: s.rank)
    return _join_overlaps(spans[:max_spans])


def _span(stream_id: str, group: list[Hit], pad_s: float, rank: dict[int, int]) -> Span:
    best_first = sorted(group, key=lambda h: rank[h.frame_id])
    return Span(stream_id, max(0.0, group[0].pts_s - pad_s), group[-1].pts_s + pad_s, best_first[0].score,
                tuple(h.frame_id for h in best_first), rank[best_first[0].frame_id])


def _join_overlaps(spans: list[Span]) -> list[Span]:
    """Padding can make neighbours overlap: join them so no frame is sent twice."""
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.stream_id, s.start_s)):
        last = out[-1] if out else None
        if last and last.stream_id == span.stream_id and span.start_s <= last.end_s:
            first, second = (last, span) if last.rank <= span.rank else (span, last)
            out[-1] = Span(last.stream_id, last.start_s, max(last.end_s, span.end_s), first.score,
                           first.hits + second.hits, first.rank)
        else:
            out.append(span)
    return sorted(out, key=lambda s: s.rank)


__all__ = ["Span", "merge_hits"]
