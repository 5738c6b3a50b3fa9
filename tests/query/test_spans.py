from indexer.query.search import Hit
from indexer.query.spans import merge_hits


def hit(frame_id, stream, pts, score):
    return Hit(frame_id, stream, pts, score)


def test_close_hits_join_and_far_ones_split():
    hits = [hit(10, "a", 10.0, 0.9), hit(3, "b", 11.0, 0.8), hit(40, "a", 40.0, 0.7), hit(12, "a", 12.0, 0.5)]
    spans = merge_hits(hits, gap_s=4.0, pad_s=1.0, max_spans=10)
    assert [(s.stream_id, s.start_s, s.end_s) for s in spans] == [("a", 9.0, 13.0), ("b", 10.0, 12.0),
                                                                  ("a", 39.0, 41.0)]
    assert spans[0].hits == (10, 12)  # best first
    assert spans[0].score == 0.9


def test_cap_keeps_the_best_spans_and_padding_stops_at_zero():
    hits = [hit(i, "a", 10.0 * i, 0.1 * i) for i in reversed(range(6))]  # best first
    spans = merge_hits(hits, gap_s=1.0, pad_s=2.0, max_spans=2)
    assert [s.hits for s in spans] == [(5,), (4,)]
    assert merge_hits([hit(0, "a", 0.5, 1.0)], 1.0, 2.0, 5)[0].start_s == 0.0


def test_padded_neighbours_overlapping_become_one_span():
    hits = [hit(1, "a", 16.0, 0.9), hit(0, "a", 10.0, 0.5)]
    spans = merge_hits(hits, gap_s=4.0, pad_s=4.0, max_spans=5)  # 6 s apart: two spans, padding overlaps
    assert len(spans) == 1
    assert (spans[0].start_s, spans[0].end_s, spans[0].hits, spans[0].score) == (6.0, 20.0, (1, 0), 0.9)


def test_the_ranking_given_decides_not_the_retrieval_score():
    # a rerank put the frame at 40 s first although its retrieval score is the lower
    hits = [hit(40, "a", 40.0, 0.2), hit(10, "a", 10.0, 0.9)]
    spans = merge_hits(hits, gap_s=4.0, pad_s=1.0, max_spans=1)
    assert [(s.hits, s.score, s.rank) for s in spans] == [((40,), 0.2, 0)]


def test_no_hits_no_spans():
    assert merge_hits([], 4.0, 2.0, 8) == []
