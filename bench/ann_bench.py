"""Commit durations while the approximate index is built (indexer/store/writer.py builds it in a
thread beside the commits): the longest commit during a build, and the longest without one, at
the same index size.

    python bench/ann_bench.py                                # 1M and 4M frames, 128-d
    python bench/ann_bench.py --frames 100000 --dim 64       # quick
    python bench/ann_bench.py --gil --frames 1000000 --dim 512   # how long the build thread holds the GIL

Each size: `frames` clustered unit embeddings are written through IndexWriter as exact shards
(exact_max_vectors above the size, so nothing is built), then a writer session commits
--commit-frames frames every --interval seconds (100 cameras at 1 fps, one commit a second) with
no build (exact_max_vectors still above the size): the baseline; then a session with the default
exact_max_vectors (10,000) commits the same way until the build its first commit started from
everything committed (train + add, as at a 4-fold retrain) is swapped in. PQ codes are dim / 4
bytes (dim / 2 sub-quantizers), the ratio of the real 512-d default. Shard folding
(`max_vector_shards`), a cost of its own, is kept out of the baseline; during the build the
commits fold the shards committed after its start every 10 commits. One figure per line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from indexer.batches import EncodedBatch, SourceInfo
from indexer.settings import SearchSettings
from indexer.store import IndexReader, IndexWriter, Layout, ann
from indexer.store import vectors as vec
from indexer.store.root import IndexRoot

WRITE_FRAMES = 100_000    # frames per commit while writing the index
NO_FOLDING = 1_000_000
CLUSTERS = 1000


class Feeder:
    """Appends clustered unit embeddings to one stream of a writer, `count` at a time."""

    def __init__(self, writer: IndexWriter, dim: int, seed: int):
        self.writer, self.dim = writer, dim
        self.rng = np.random.default_rng(seed)
        self.centres = unit(np.random.default_rng(0).normal(size=(CLUSTERS, dim)))
        info = SourceInfo("/v/cam.ts", "cam", False, None, "h264", 1280, 720, 25.0, False)
        self.next = writer.open_stream(info, 1.0, "file").next_index

    def append(self, count: int) -> None:
        noise = self.rng.normal(size=(count, self.dim)) * 0.5 / np.sqrt(self.dim)
        rows = unit(self.centres[self.rng.integers(0, CLUSTERS, count)] + noise)  # [count, dim]
        idx = np.arange(self.next, self.next + count, dtype=np.int64)
        assert self.writer.append(EncodedBatch("cam", self.next, self.next + count, idx, idx.astype(np.float64),
                                               np.full(count, np.nan), [None] * count, [],
                                               np.zeros((count, 1, 1), np.float16),
                                               np.zeros((count, 1, 1), np.float16), rows, [b""] * count)).accepted
        self.next += count


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def timed_commits(writer: IndexWriter, feeder: Feeder, frames: int, interval: float,
                  until_swapped: bool, commits: int) -> list[float]:
    """Seconds per commit of `frames` frames, one every `interval` s: `commits` of them, or until the
    build in flight is swapped in."""
    took = []
    while (until_swapped and writer.manifest.approximate is None) or (not until_swapped and len(took) < commits):
        feeder.append(frames)
        start = time.perf_counter()
        writer.commit()
        took.append(time.perf_counter() - start)
        time.sleep(max(0.0, interval - took[-1]))
    return took


def bench_size(frames: int, dim: int, commit_frames: int, interval: float, baseline_commits: int,
               workdir: Path | None) -> None:
    layout = Layout(model_fingerprint="bench", model_name="bench", feature_shape=(1, 1), feature_format="none",
                    content_shape=(1, 1), embedding_model="synthetic", embedding_dim=dim)
    tag = f"{frames} x {dim}"
    no_build = SearchSettings(exact_max_vectors=10 * frames, pq_bytes=dim // 4)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = IndexRoot.at(Path(tmp) / "index")
        start = time.perf_counter()
        writer = IndexWriter(root, layout, commit_interval_s=1e9, max_vector_shards=NO_FOLDING, search=no_build)
        feeder = Feeder(writer, dim, seed=1)
        for lo in range(0, frames, WRITE_FRAMES):
            feeder.append(min(WRITE_FRAMES, frames - lo))
            writer.commit()
        print(f"write {tag} through IndexWriter (exact shards): {time.perf_counter() - start:.1f} s", flush=True)
        took = timed_commits(writer, feeder, commit_frames, interval, until_swapped=False, commits=baseline_commits)
        writer.close()
        print(f"commit {commit_frames} frames at {tag}, no build, {len(took)} commits, longest: {max(took):.3f} s",
              flush=True)
        print(f"commit {commit_frames} frames at {tag}, no build, median: {np.median(took):.3f} s", flush=True)

        shards = len(writer.manifest.vectors)  # the build takes these in; later ones fold every 10 commits
        writer = IndexWriter(root, layout, commit_interval_s=1e9, max_vector_shards=shards + 10,
                             search=SearchSettings(pq_bytes=dim // 4))
        feeder = Feeder(writer, dim, seed=2)
        start = time.perf_counter()
        took = timed_commits(writer, feeder, commit_frames, interval, until_swapped=True, commits=0)
        swapped = time.perf_counter() - start
        writer.close()
        a = IndexReader(root).manifest.approximate
        print(f"build {a.factory} over {a.frames} frames beside the commits (train + add + write): "
              f"{a.build_s:.1f} s", flush=True)
        print(f"commit {commit_frames} frames at {tag}, during the build, {len(took)} commits in {swapped:.0f} s, "
              f"longest: {max(took):.3f} s", flush=True)
        print(f"commit {commit_frames} frames at {tag}, during the build, median: {np.median(took):.3f} s",
              flush=True)


def bench_gil(frames: int, dim: int, workdir: Path | None) -> None:
    """The build thread's path (shards of 100,000 vectors read, their contents in frame-id order, then
    ann.build) in a thread, while the main thread sleeps 1 ms in a loop: its longest wait per step is
    how long that step held the GIL (plus the scheduler's delay on busy cores)."""
    rng = np.random.default_rng(0)
    steps: list[tuple[str, float, float]] = []

    def timed(name: str, step: Callable):
        start = time.perf_counter()
        result = step()
        steps.append((name, start, time.perf_counter()))
        return result

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = IndexRoot.at(Path(tmp))
        (root / "vectors").mkdir()
        files = []
        for lo in range(0, frames, WRITE_FRAMES):
            rows = unit(rng.normal(size=(min(WRITE_FRAMES, frames - lo), dim)))
            files.append((lo, root / f"vectors/shard-{lo}.faiss"))
            vec.write_shard(files[-1][1], vec.build_shard(rows, np.arange(lo, lo + len(rows))))

        def build() -> None:
            blocks = []
            for lo, path in files:
                shard = timed("read shard", lambda path=path: faiss.read_index(str(path)))
                vectors, ids = timed("shard contents", lambda shard=shard: vec.shard_contents(shard))
                vectors = timed("frame-id order", lambda v=vectors, i=ids: v[np.argsort(i)])
                blocks.append(ann.VectorBlock(lo, vectors))
            timed("ann.build", lambda: ann.build(root, 1, blocks, None, dim // 4, 16, 16))

        thread = threading.Thread(target=build)
        thread.start()
        waits, last = [], time.perf_counter()  # (seconds waited, when the wait ended)
        while thread.is_alive():
            time.sleep(0.001)
            now = time.perf_counter()
            waits.append((now - last, now))
            last = now
        thread.join()
    for name in dict.fromkeys(name for name, _, _ in steps):
        spans = [(a, b) for n, a, b in steps if n == name]
        inside = [w for w, at in waits if any(a <= at <= b + 0.01 for a, b in spans)]
        print(f"gil {name} {frames} x {dim} ({sum(b - a for a, b in spans):.1f} s in the build thread), "
              f"main thread's longest wait: {max(inside) * 1e3:.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension (the real one is 512)")
    parser.add_argument("--commit-frames", type=int, default=100, help="frames per timed commit")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds from one timed commit to the next")
    parser.add_argument("--baseline-commits", type=int, default=30, help="timed commits without a build")
    parser.add_argument("--threads", type=int, default=2, help="faiss.omp_set_num_threads")
    parser.add_argument("--workdir", type=Path, help="where the temporary index goes (default: the system's)")
    parser.add_argument("--gil", action="store_true", help="only how long each step of a build holds the GIL")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    print(f"{os.cpu_count()} cores, {args.threads} FAISS threads, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    for frames in args.frames:
        if args.gil:
            bench_gil(frames, args.dim, args.workdir)
            continue
        bench_size(frames, args.dim, args.commit_frames, args.interval, args.baseline_commits, args.workdir)


if __name__ == "__main__":
    main()
