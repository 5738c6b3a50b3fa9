"""The approximate index is built beside the commits, never inside one (indexer/store/writer.py):
commits go on while a build is held mid-way, searches meanwhile give the exact top-k, the build is
swapped in at a later commit, and a SIGKILL mid-build leaves the last commit and no stray file."""

import multiprocessing
import os
import signal
import threading

import numpy as np
import pytest

from indexer.query.search import FrameSearch
from indexer.store import IndexReader, ann
from indexer.store.root import IndexRoot
from tests.store.embedded import EmbeddingWriter, clustered
from tests.store.test_ann import DIM, SMALL, files_on_disk, grow

QUERIES = [5, 1999, 2500, 3200, 4400]   # frame ids whose embeddings are the queries


def hold_builds(started, gate) -> None:
    """Make every build really run, then wait on `gate` before it returns (its files are written)."""
    for name in ("build", "extend"):
        real = getattr(ann, name)

        def held(*args, _real=real, **kwargs):
            entry = _real(*args, **kwargs)
            started.set()
            gate.wait()
            return entry

        setattr(ann, name, held)


@pytest.fixture
def held_build(tmp_path, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """An index of 2000 frames in `tmp_path` whose builds are held (`hold_builds`) for this test:
    (started, gate)."""
    for name in ("build", "extend"):
        monkeypatch.setattr(ann, name, getattr(ann, name))  # restored after the test
    grow(tmp_path, 2000, seed=0)
    started, gate = threading.Event(), threading.Event()
    hold_builds(started, gate)
    return started, gate


def top_ids(root, queries: np.ndarray, k: int = 10) -> list[list[int]]:
    search = FrameSearch(IndexReader(IndexRoot.at(root)), SMALL)
    return [[hit.frame_id for hit in search.search(q, k)] for q in queries]


def exact_ids(embeddings: np.ndarray, queries: np.ndarray, k: int = 10) -> list[list[int]]:
    return [[int(i) for i in np.argsort(-(embeddings @ q), kind="stable")[:k]] for q in queries]


def vector_files(root) -> set[str]:
    m = IndexReader(IndexRoot.at(root)).manifest
    return {s.file for s in m.vectors} | (m.approximate.files() if m.approximate else set())


def test_commits_go_on_during_a_build_and_the_next_commit_swaps_it_in(tmp_path, held_build):
    started, gate = held_build
    w = EmbeddingWriter(tmp_path, DIM, SMALL)
    w.writer.max_vector_shards = 2
    parts = [clustered(1000 if seed in (1, 5) else 500, DIM, seed) for seed in range(6)]
    w.add("cam", parts[1])
    snapshot = w.commit()  # 3,000 frames, 1,000 beyond exact_max_vectors: the build starts after it
    assert started.wait(timeout=300)
    covered = {s.file for s in IndexReader(IndexRoot.at(tmp_path)).manifest.vectors}
    assert len(covered) == 1  # the commit folded the shards before the build took them
    for seed in (2, 3, 4):  # commits go on while the build waits, the exact part beyond exact_max_vectors
        w.add("cam", parts[seed])
        assert w.commit() == snapshot + seed - 1
        index = IndexReader(IndexRoot.at(tmp_path))
        assert index.manifest.approximate is None and index.shard_vectors().ntotal == 3000 + 500 * (seed - 1)
        assert covered <= {s.file for s in index.manifest.vectors} and len(index.manifest.vectors) <= 2
    assert {f"vectors/ivf-{snapshot:08d}.faiss", f"vectors/emb-{snapshot:08d}.f16.npy"} <= files_on_disk(tmp_path)
    assert files_on_disk(tmp_path) - vector_files(tmp_path) == {f"vectors/ivf-{snapshot:08d}.faiss",
                                                               f"vectors/emb-{snapshot:08d}.f16.npy"}
    embeddings = np.concatenate([clustered(2000, DIM, 0), *parts[1:5]])
    queries = embeddings[QUERIES]
    during = top_ids(tmp_path, queries)
    assert during == exact_ids(embeddings, queries)  # exact until the swap, whatever the build is doing
    gate.set()
    swapped = w.writer.wait_for_build()
    index = IndexReader(IndexRoot.at(tmp_path))
    a = index.manifest.approximate
    assert swapped == snapshot + 4 and index.manifest.generation == swapped
    assert (a.generation, a.frames, a.trained_frames) == (snapshot, 3000, 3000)
    assert not covered & {s.file for s in index.manifest.vectors} and index.shard_vectors().ntotal == 1500
    assert files_on_disk(tmp_path) == vector_files(tmp_path)  # the covered shards were deleted at the swap
    after = top_ids(tmp_path, queries)
    for q, before, now in zip(QUERIES, during, after, strict=True):
        assert now[0] == before[0] == q and len(set(now) & set(before)) >= 9  # approximate: at most one swapped
    w.add("cam", parts[5])
    w.close()  # 2,500 beyond the index: extended by the next build, which close finishes
    a = IndexReader(IndexRoot.at(tmp_path)).manifest.approximate
    assert (a.frames, a.trained_frames) == (5500, 3000) and files_on_disk(tmp_path) == vector_files(tmp_path)


def _ingest_until_killed(root, started, committed) -> None:
    gate = threading.Event()  # never set: the build stays in flight until the SIGKILL
    hold_builds(started, gate)
    w = EmbeddingWriter(root, DIM, SMALL)
    w.add("cam", clustered(1000, DIM, 1))
    w.commit()  # the build from this commit starts
    started.wait()
    w.add("cam", clustered(1000, DIM, 2))
    w.commit()
    committed.set()
    gate.wait()


def test_a_sigkill_during_a_build_leaves_the_last_commit_and_no_stray_file_after_the_clean_up(tmp_path):
    grow(tmp_path, 2000, seed=0)
    # spawn, not fork: FAISS's OpenMP threads, started earlier in this process, deadlock a forked child
    spawn = multiprocessing.get_context("spawn")
    started, committed = spawn.Event(), spawn.Event()
    child = spawn.Process(target=_ingest_until_killed, args=(tmp_path, started, committed))
    child.start()
    assert committed.wait(timeout=300)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    index = IndexReader(IndexRoot.at(tmp_path))
    assert index.manifest.approximate is None and index.manifest.next_frame_id == 4000
    assert any(name.startswith("vectors/ivf-") for name in files_on_disk(tmp_path))  # written, never named
    embeddings = np.concatenate([clustered(2000, DIM, 0), clustered(1000, DIM, 1), clustered(1000, DIM, 2)])
    queries = embeddings[[5, 2500, 3999]]
    before = top_ids(tmp_path, queries)
    assert before == exact_ids(embeddings, queries)
    w = EmbeddingWriter(tmp_path, DIM, SMALL)  # the clean-up on open removes the build's files
    assert files_on_disk(tmp_path) == vector_files(tmp_path)
    assert top_ids(tmp_path, queries) == before
    w.close()  # builds again, from everything committed
    a = IndexReader(IndexRoot.at(tmp_path)).manifest.approximate
    assert a.frames == 4000 and files_on_disk(tmp_path) == vector_files(tmp_path)
    for q, old, new in zip([5, 2500, 3999], before, top_ids(tmp_path, queries), strict=True):
        assert new[0] == old[0] == q and len(set(new) & set(old)) >= 9


def test_close_swaps_in_the_build_and_the_one_for_what_was_committed_during_it(tmp_path, held_build):
    started, gate = held_build
    w = EmbeddingWriter(tmp_path, DIM, SMALL)
    w.add("cam", clustered(1000, DIM, 1))
    w.commit()
    assert started.wait(timeout=300)
    w.add("cam", clustered(3000, DIM, 2))  # 3,000 beyond the build's 3,000: a second build after the swap
    w.commit()
    gate.set()
    w.close()
    index = IndexReader(IndexRoot.at(tmp_path))
    a = index.manifest.approximate
    assert (a.frames, a.trained_frames) == (6000, 3000) and index.manifest.vectors == []
    assert files_on_disk(tmp_path) == vector_files(tmp_path)
