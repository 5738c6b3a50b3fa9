import numpy as np
import pytest

from indexer.query.search import FrameSearch, Hit, SearchFilter
from indexer.settings import SearchSettings
from indexer.store import IndexReader
from indexer.store.root import IndexRoot
from tests.store.embedded import EmbeddingWriter, clustered, unit

DIM = 64
SMALL = SearchSettings(exact_max_vectors=2000)   # the approximate path at test sizes


def exact_top(embeddings: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Brute-force top-k frame ids among `ids` (rows of `embeddings` [n, E] by frame id)."""
    scores = embeddings[ids] @ unit(query)
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def write(root, streams: dict[str, np.ndarray], commits: int, search: SearchSettings | None = None) -> np.ndarray:
    """Write each stream's embeddings in `commits` rounds, all streams in each; return embeddings by frame id."""
    w = EmbeddingWriter(root, DIM, search)
    by_id = []
    for part in range(commits):
        for sid, emb in streams.items():
            chunk = np.array_split(emb, commits)[part]
            w.add(sid, chunk)
            by_id.append(chunk)
        w.commit()
    w.close()
    return np.concatenate(by_id)


@pytest.fixture(scope="module")
def exact_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    streams = {s: clustered(150, DIM, seed) for seed, s in enumerate(["a", "b", "c"])}
    return root, write(root, streams, commits=3)


@pytest.fixture(scope="module")
def approximate_index(tmp_path_factory):
    """6,000 frames over 3 streams, approximate beyond 2,000, then a 500-frame tail after the build."""
    root = tmp_path_factory.mktemp("approximate")
    streams = {s: clustered(2000, DIM, seed) for seed, s in enumerate(["a", "b", "c"])}
    embeddings = write(root, streams, commits=2, search=SMALL)
    w = EmbeddingWriter(root, DIM, SMALL)
    tail = clustered(500, DIM, seed=9)
    w.add("a", tail)
    w.close()
    return root, np.concatenate([embeddings, tail])


@pytest.fixture(params=["exact", "approximate"])
def any_index(request):
    return request.getfixturevalue(f"{request.param}_index")


def test_the_planted_vector_is_the_top_hit(any_index):
    root, embeddings = any_index
    search = FrameSearch(IndexReader(IndexRoot.at(root)), SMALL)
    for frame_id in (7, len(embeddings) // 2, len(embeddings) - 1):
        query = embeddings[frame_id] + np.float32(0.01) * np.random.default_rng(frame_id).normal(size=DIM)
        hits = search.search(query.astype(np.float32), 5)
        assert hits[0].frame_id == frame_id and hits[0].score > 0.99
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    table = IndexReader(IndexRoot.at(root)).timeline().to_pylist()
    row = next(r for r in table if r["frame_id"] == hits[0].frame_id)
    assert (hits[0].stream_id, hits[0].pts_s) == (row["stream_id"], row["pts_s"])


def test_an_exact_index_says_so_and_a_query_may_be_one_row(exact_index):
    root, embeddings = exact_index
    search = FrameSearch(IndexReader(IndexRoot.at(root)))
    assert search.kind == "exact"
    one_row = search.search(embeddings[3][None], 3)
    assert one_row == search.search(embeddings[3], 3) and isinstance(one_row[0], Hit)
    assert search.search(embeddings[3], 3)[0] == search.search(2 * embeddings[3].astype(np.float64), 3)[0]


@pytest.mark.parametrize("where", [SearchFilter(streams=("b",)), SearchFilter(start_s=10.0, end_s=20.0),
                                   SearchFilter(streams=("c", "a"), start_s=30.0, end_s=40.0),
                                   SearchFilter(end_s=3.0), SearchFilter(streams=("a",), end_s=2.0)])
def test_filters_return_k_matching_frames_ranked_as_exact_search_ranks_them(any_index, where):
    root, embeddings = any_index
    index = IndexReader(IndexRoot.at(root))
    search = FrameSearch(index, SMALL)
    frames = [r for r in index.timeline().to_pylist() if r["kind"] == "frame"]
    passing = np.array([r["frame_id"] for r in frames
                        if (where.streams is None or r["stream_id"] in where.streams)
                        and (where.start_s is None or r["pts_s"] >= where.start_s)
                        and (where.end_s is None or r["pts_s"] <= where.end_s)])
    rng = np.random.default_rng(1)
    for _ in range(5):
        outside = rng.integers(0, len(embeddings))   # aimed anywhere, mostly at frames the filter drops
        hits = search.search(embeddings[outside], 10, where)
        assert len(hits) == min(10, len(passing))
        assert {h.frame_id for h in hits} <= set(passing.tolist())
        assert all((where.streams is None or h.stream_id in where.streams)
                   and (where.start_s is None or h.pts_s >= where.start_s)
                   and (where.end_s is None or h.pts_s <= where.end_s) for h in hits)
        best = exact_top(embeddings, passing, embeddings[outside], 10)
        assert len({h.frame_id for h in hits} & set(best)) >= len(best) - 1  # approximate: at most one swapped


def test_a_filter_matching_nothing_and_an_empty_index_give_no_hits(exact_index, tmp_path):
    root, embeddings = exact_index
    search = FrameSearch(IndexReader(IndexRoot.at(root)))
    assert search.search(embeddings[0], 5, SearchFilter(start_s=1e6)) == []
    assert search.search(embeddings[0], 5, SearchFilter(streams=())) == []
    EmbeddingWriter(tmp_path, DIM).close()
    assert FrameSearch(IndexReader(IndexRoot.at(tmp_path))).search(embeddings[0], 5) == []


@pytest.mark.parametrize("query, k, where, error, message", [
    (None, 5, SearchFilter(streams=("a", "nope")), KeyError, r"unknown stream 'nope'; streams: \['a', 'b', 'c'\]"),
    (None, 5, SearchFilter(streams="a"), ValueError, "tuple of stream ids"),
    (None, 5, SearchFilter(start_s=5.0, end_s=1.0), ValueError, "start_s 5.0 is after end_s 1.0"),
    (None, 5, SearchFilter(start_s=float("nan")), ValueError, "start_s is NaN"),
    (None, 0, None, ValueError, "k must be a positive integer"),
    (None, 2.5, None, ValueError, "k must be a positive integer"),
    (np.zeros(DIM + 1, np.float32), 5, None, ValueError, r"query must be float32 \[64\] or \[1, 64\].*\[65\]"),
    (np.zeros((2, DIM), np.float32), 5, None, ValueError, r"got shape \[2, 64\]"),
    (np.full(DIM, np.nan, np.float32), 5, None, ValueError, "NaN or infinite"),
    (np.zeros(DIM, np.float32), 5, None, ValueError, "all zeros"),
])
def test_bad_requests_name_the_problem(exact_index, query, k, where, error, message):
    root, embeddings = exact_index
    search = FrameSearch(IndexReader(IndexRoot.at(root)))
    with pytest.raises(error, match=message):
        search.search(embeddings[0] if query is None else query, k, where)


def test_approximate_recall_at_10_against_exact(approximate_index):
    root, embeddings = approximate_index
    index = IndexReader(IndexRoot.at(root))
    search = FrameSearch(index, SMALL)
    assert search.kind.startswith(index.manifest.approximate.factory) and "exact tail of 500" in search.kind
    rng = np.random.default_rng(77)  # queries near the data, not on it
    queries = unit(embeddings[rng.integers(0, len(embeddings), 100)] + rng.normal(size=(100, DIM)) / np.sqrt(DIM))
    ids = np.arange(len(embeddings))
    found = [len({h.frame_id for h in search.search(q, 10)} & set(exact_top(embeddings, ids, q, 10)))
             for q in queries]
    assert np.mean(found) / 10 >= 0.95


def test_the_tail_after_the_build_is_searched_and_merged(approximate_index):
    root, embeddings = approximate_index
    index = IndexReader(IndexRoot.at(root))
    covered = index.manifest.approximate.frames
    assert covered == 6000 and index.manifest.next_frame_id == 6500 and index.shard_vectors().ntotal == 500
    search = FrameSearch(index, SMALL)
    tail_hit = search.search(embeddings[6200], 1)[0]
    assert (tail_hit.frame_id, tail_hit.stream_id, tail_hit.pts_s) == (6200, "a", 2200.0)
    mixed = search.search(embeddings[6200], 50)  # the tail's data shares clusters with the rest
    assert min(h.frame_id for h in mixed) < covered <= max(h.frame_id for h in mixed)
    in_tail = search.search(embeddings[10], 3, SearchFilter(streams=("a",), start_s=2100.0))
    assert len(in_tail) == 3 and all(h.frame_id >= covered for h in in_tail)
