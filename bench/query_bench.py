"""Search figures: FAISS top-10 over synthetic retrieval embeddings written through the real
IndexWriter (which builds the approximate index) and searched with FrameSearch, against exact
search on the same vectors.

    python bench/query_bench.py                         # 1,000,000 x 512, clustered, 2 threads
    python bench/query_bench.py --frames 100000         # quick
    python bench/query_bench.py --data clustered uniform --sweep
    python bench/query_bench.py --timeline-only         # query latency split, 3-hour timeline

One figure per line: `<figure> <details>: <value> <unit>`. The embeddings are unit vectors:
"clustered" imitates video frames (topics, scenes of consecutive similar frames, and text queries
aimed at a scene); "blobs" has 500 near-duplicates per query target (long static shots);
"uniform" is pure random directions, the worst case for any approximate index
(nearest neighbours are barely nearer than the rest). FAISS uses --threads OpenMP threads
(`faiss.omp_set_num_threads`); latencies are of single queries, each figure the best of --repeats
passes. The approximate search runs in a fresh process so that its resident-memory growth is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from indexer.batches import EncodedBatch, SourceInfo
from indexer.settings import SearchSettings
from indexer.store import IndexWriter, Layout
from indexer.store.root import IndexRoot

SCENE_FRAMES = 50          # consecutive frames of one scene
TOPIC_FRAMES = 5000        # frames per topic (scenes of a topic are spread over the streams)
BLOB_FRAMES = 500          # near-duplicate frames per blob
COMMIT_FRAMES = 100_000    # frames per commit while writing


# -- data ------------------------------------------------------------------------------------------
def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic(n: int, dim: int, data: str, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 [n, dim], queries float32 [queries, dim]), unit rows.

    clustered: frame = topic + 0.8 scene + 0.5 noise (each term a random direction of that norm),
    so frames of one scene have cosine ~0.87, of one topic ~0.53, unrelated ~0; a query is
    topic + 0.8 scene + 1.0 noise of a random scene (a text aimed at it: cosine ~0.7 to its frames).
    blobs: 500 frames (in random order) around each random centre, centre + 0.7 noise (cosine ~0.67
    between them); a query is centre + 1.0 noise: its top 10 are decided by small differences among
    500 near-duplicates, the hard case for PQ candidates.
    uniform: random directions.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    if data == "blobs":  # long static shots: blobs of BLOB_FRAMES near-duplicates, queries at blob centres
        centres = unit(rng.standard_normal((-(-n // BLOB_FRAMES), dim), dtype=np.float32))  # [B, dim]
        for lo in range(0, n, COMMIT_FRAMES):
            m = min(COMMIT_FRAMES, n - lo)
            out[lo:lo + m] = (centres[rng.integers(0, len(centres), m)]
                              + rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.7 / np.sqrt(dim)))
        picked = centres[rng.integers(0, len(centres), queries)]
        return unit(out), unit(picked + rng.standard_normal(picked.shape, dtype=np.float32) / np.float32(np.sqrt(dim)))
    if data == "uniform":
        for lo in range(0, n, COMMIT_FRAMES):
            out[lo:lo + COMMIT_FRAMES] = rng.standard_normal((min(COMMIT_FRAMES, n - lo), dim), dtype=np.float32)
        return unit(out), unit(rng.standard_normal((queries, dim), dtype=np.float32))
    scenes = -(-n // SCENE_FRAMES)
    topics = unit(rng.standard_normal((max(1, n // TOPIC_FRAMES), dim), dtype=np.float32))      # [T, dim]
    topic_of = rng.integers(0, len(topics), scenes)                                               # [S]
    scene = rng.standard_normal((scenes, dim), dtype=np.float32) * np.float32(0.8 / np.sqrt(dim))  # [S, dim]

    def noisy(scene_ids: np.ndarray, noise: float) -> np.ndarray:
        base = topics[topic_of[scene_ids]] + scene[scene_ids]
        return base + rng.standard_normal(base.shape, dtype=np.float32) * np.float32(noise / np.sqrt(dim))

    for lo in range(0, n, COMMIT_FRAMES):
        ids = np.arange(lo, min(n, lo + COMMIT_FRAMES))
        out[ids] = noisy(ids // SCENE_FRAMES, 0.5)
    return unit(out), unit(noisy(rng.integers(0, scenes, queries), 1.0))


# -- writing -----------------------------------------------------------------------------------------
def write_index(root: Path, embeddings: np.ndarray, streams: int, search: SearchSettings,
                tail: int) -> tuple[float, float]:
    """Write the embeddings (row i = frame id i) through IndexWriter: all but the last `tail` as
    `streams` streams of consecutive frames (1 fps), as exact shards; then reopen the writer with
    `search` and close it, which builds the approximate index from the shards; then append the
    last `tail` to the first stream, where they stay exact (the tail FrameSearch merges in).
    Returns (write seconds, build seconds)."""
    n, dim = embeddings.shape
    layout = Layout(model_fingerprint="bench", model_name="bench", feature_shape=(1, 1), feature_format="none",
                    content_shape=(1, 1), embedding_model="synthetic", embedding_dim=dim)

    def append(writer: IndexWriter, sid: str, rows: np.ndarray) -> None:
        entry = writer.open_stream(SourceInfo(f"/v/{sid}.ts", sid, False, None, "h264", 1280, 720, 25.0, False),
                                   1.0, "file")
        for lo in range(0, len(rows), COMMIT_FRAMES):
            part = rows[lo:lo + COMMIT_FRAMES]
            m, first = len(part), entry.next_index + lo
            idx = np.arange(first, first + m, dtype=np.int64)
            writer.append(EncodedBatch(sid, first, first + m, idx, idx.astype(np.float64), np.full(m, np.nan),
                                       [None] * m, [], np.zeros((m, 1, 1), np.float16),
                                       np.zeros((m, 1, 1), np.float16), embeddings[part], [b""] * m))
            writer.commit()

    start = time.perf_counter()
    writer = IndexWriter(IndexRoot.at(root), layout, commit_interval_s=1e9,
                         search=SearchSettings(exact_max_vectors=n + 1))
    for s, rows in enumerate(np.array_split(np.arange(n - tail), streams)):  # frame ids follow this order
        append(writer, f"cam{s:02d}", rows)
    writer.close()
    written = time.perf_counter() - start
    start = time.perf_counter()
    IndexWriter(IndexRoot.at(root), layout, search=search).close()
    built = time.perf_counter() - start
    if tail:
        writer = IndexWriter(IndexRoot.at(root), layout, commit_interval_s=1e9, search=search)
        append(writer, "cam00", np.arange(n - tail, n))
        writer.close()
    return written, built


# -- measuring ---------------------------------------------------------------------------------------
def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int, timed: int) -> tuple[np.ndarray, list[float]]:
    """Ground truth (frame ids int64 [q, k]) from IndexFlatIP in one batch, and single-query times."""
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    _, truth = index.search(queries, k)  # [q, k]
    times = []
    for q in queries[:timed]:
        start = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - start)
    return truth, times


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _memory() -> dict[str, int]:
    return {key: _status_kib(key) for key in ("VmRSS", "RssAnon", "RssFile")}


def _mapped_kib(suffix: str) -> int:
    """Resident KiB of this process's mappings of files whose name ends with `suffix`."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                inside = line.rstrip().endswith(suffix)
            elif inside and head == "Rss:":
                total += int(line.split()[1])
    return total


def evict(search, root: Path) -> None:
    """Make the next rescoring read from disk: unmap the embedding pages, drop them from the page cache."""
    search.approximate.release_pages()
    for chunk in search.approximate.entry.embeddings:
        fd = os.open(root / chunk.file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def approximate_child(root: str, queries: np.ndarray, truth: np.ndarray, k: int, threads: int,
                      settings: dict, sweep: list[tuple[int, int]], streams: int, repeats: int) -> list[str]:
    """Runs in a fresh process: open the index, search, report latency, recall and memory. Each
    latency figure is the best (lowest p99) of `repeats` passes over the queries: the machine may be
    shared, and other work only ever adds time."""
    faiss.omp_set_num_threads(threads)
    from indexer.query.search import FrameSearch, SearchFilter
    from indexer.store import IndexReader

    def recall(found: list[list[int]]) -> float:
        return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))

    def one_pass(search, where, before, count) -> tuple[list[float], list[list[int]]]:
        times, found = [], []
        for q in queries[:count]:  # count None: all
            if before is not None:
                before()
            start = time.perf_counter()
            hits = search.search(q, k, where)
            times.append(time.perf_counter() - start)
            found.append([h.frame_id for h in hits])
        return times, found

    def run(search, where=None, before=None, passes=repeats, count=None):
        """(p50 ms, p99 ms) of the best pass, and the hits of the first."""
        for q in queries[:5]:  # warm-up
            search.search(q, k, where)
        results = [one_pass(search, where, before, count) for _ in range(passes)]
        return min(percentiles(times) for times, _ in results), results[0][1]

    lines = []
    before = _memory()
    start = time.perf_counter()
    index = IndexReader(IndexRoot.at(root))
    search = FrameSearch(index, SearchSettings(**settings))
    lines.append(f"open FrameSearch ({search.kind}): {time.perf_counter() - start:.2f} s")
    opened = _memory()
    (p50, p99), found = run(search, passes=1)  # the first pass over the embeddings, for the memory figures
    after = _memory()
    mapped = _mapped_kib(".f16.npy")
    tag = f"top-{k}"
    lines.append(f"search approximate {tag} first pass p50 / p99: {p50:.2f} / {p99:.2f} ms")
    (p50, p99), found = run(search)
    lines += [f"search approximate {tag} p50: {p50:.2f} ms", f"search approximate {tag} p99: {p99:.2f} ms",
              f"search approximate recall@{k} vs exact: {recall(found):.3f}"]
    one = SearchFilter(streams=("cam00",))
    window = SearchFilter(streams=("cam00",), start_s=3600.0, end_s=7200.0)
    for name, where in [(f"1 of {streams} streams", one), ("1 stream, 1 h window", window)]:
        (p50, p99), _ = run(search, where)
        lines.append(f"search approximate filtered {name} p50 / p99: {p50:.2f} / {p99:.2f} ms")
    (p50, p99), _ = run(search, before=lambda: evict(search, Path(root)), passes=1, count=50)
    lines.append(f"search approximate cold (embeddings evicted from the page cache before each query, 50 queries) "
                 f"p50 / p99: {p50:.2f} / {p99:.2f} ms")
    for nprobe, refine in sweep:
        swept = FrameSearch(index, SearchSettings(**{**settings, "nprobe": nprobe, "refine": refine}))
        (p50, p99), found = run(swept)
        lines.append(f"search approximate sweep nprobe={nprobe} refine={refine}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                     f"recall@{k} {recall(found):.3f}")
    a = index.manifest.approximate
    growth = {key: (after[key] - before[key]) / 1024 for key in after}  # MiB
    lines += [
        (f"memory approximate search RSS growth, open + {len(queries)} queries: {growth['VmRSS']:.0f} MiB "
         f"(anonymous {growth['RssAnon']:.0f}, file-backed {growth['RssFile']:.0f})"),
        f"memory approximate search RSS growth at open: {(opened['VmRSS'] - before['VmRSS']) / 1024:.0f} MiB",
        (f"memory float16 embedding pages mapped after {len(queries) + 5} queries: {mapped / 1024:.0f} MiB "
         "(page cache, reclaimable)"),
        f"memory IVF-PQ index file (held in memory): {a.bytes / 2**20:.0f} MiB",
        (f"memory float16 embeddings (memory-mapped, only rescored rows read): "
         f"{sum(c.bytes for c in a.embeddings) / 2**20:.0f} MiB on disk"),
    ]
    return lines


def bench_search(frames: int = 1_000_000, dim: int = 512, data: str = "clustered", queries: int = 200, k: int = 10,
                 threads: int = 2, streams: int = 10, exact_timed: int = 50, settings: SearchSettings | None = None,
                 sweep: list[tuple[int, int]] | None = None, workdir: Path | None = None,
                 tail: int | None = None, repeats: int = 3) -> None:
    """Write `frames` synthetic embeddings through IndexWriter, then print exact and approximate
    top-k latency, recall@k of the approximate search, its memory, and the build time. The last
    `tail` frames (default: settings.exact_max_vectors, the most the writer leaves exact) come
    after the approximate index and are searched exactly."""
    settings = settings or SearchSettings()
    tail = settings.exact_max_vectors if tail is None else tail
    faiss.omp_set_num_threads(threads)
    tag = f"{data} {frames} x {dim}"
    print(f"data {tag}, {streams} streams, last {tail} frames after the approximate index, {queries} queries, "
          f"top-{k}, {threads} threads, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    start = time.perf_counter()
    embeddings, query = synthetic(frames, dim, data, queries)
    print(f"generate {tag}: {time.perf_counter() - start:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp) / "index"
        written, built = write_index(root, embeddings, streams, settings, tail)
        print(f"write {tag} through IndexWriter (exact shards): {written:.1f} s", flush=True)
        from indexer.store import IndexReader
        a = IndexReader(IndexRoot.at(root)).manifest.approximate
        print(f"build {a.factory} on {a.training_sample} samples, {a.frames} frames (writer commit): "
              f"{built:.1f} s", flush=True)
        print(f"build {a.factory} train + add + write: {a.build_s:.1f} s", flush=True)
        truth, times = exact_search(embeddings, query, k, exact_timed)
        p50, p99 = percentiles(times)
        print(f"search exact IndexFlatIP {tag} top-{k} p50: {p50:.1f} ms", flush=True)
        print(f"search exact IndexFlatIP {tag} top-{k} p99: {p99:.1f} ms", flush=True)
        del embeddings
        child_settings = settings.model_dump()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            lines = pool.apply(approximate_child, (str(root), query, truth, k, threads, child_settings,
                                                   sweep or [], streams, repeats))
        for line in lines:
            for figure in ("search approximate", "memory", "open"):
                if line.startswith(figure + " "):
                    line = line.replace(figure, f"{figure} {tag}", 1)
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--data", nargs="+", choices=["clustered", "blobs", "uniform"], default=["clustered"])
    parser.add_argument("--queries", type=int, default=200, help="timed queries (recall over the same)")
    parser.add_argument("--exact-queries", type=int, default=50, help="timed single exact queries")
    parser.add_argument("--threads", type=int, default=2, help="faiss.omp_set_num_threads")
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--nprobe", type=int, help="override SearchSettings.nprobe")
    parser.add_argument("--refine", type=int, help="override SearchSettings.refine")
    parser.add_argument("--tail", type=int, help="frames committed after the approximate index "
                        "(default: exact_max_vectors)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per latency figure; the best is printed")
    parser.add_argument("--sweep", action="store_true", help="also recall and latency at other nprobe / refine")
    parser.add_argument("--workdir", type=Path, help="where the temporary index goes (default: the system's)")
    parser.add_argument("--timeline-hours", type=float, default=3.0,
                        help="query latency split over a timeline this long, tiny models (0: skip)")
    parser.add_argument("--timeline-only", action="store_true", help="skip the search figures")
    args = parser.parse_args()
    if args.timeline_hours > 0:
        from query_timeline import bench_timeline  # beside this file

        bench_timeline(args.timeline_hours)
    if args.timeline_only:
        return
    overrides = {name: getattr(args, name) for name in ("nprobe", "refine") if getattr(args, name) is not None}
    settings = SearchSettings(**overrides)
    sweep = [(8, 8), (8, 16), (16, 8), (16, 32), (32, 16), (64, 16)] if args.sweep else []
    for data in args.data:
        bench_search(args.frames, args.dim, data, args.queries, 10, args.threads, args.streams, args.exact_queries,
                     settings, sweep, args.workdir, args.tail, args.repeats)


if __name__ == "__main__":
    main()
