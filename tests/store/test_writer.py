import json
import multiprocessing
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from indexer.batches import EncodedBatch, Gap, SourceInfo
from indexer.store import IndexReader, IndexWriter, Layout
from indexer.store.features import Float16Features, Int4Features
from indexer.store.root import IndexRoot

LAYOUT = Layout(model_fingerprint="abc", model_name="tiny", feature_shape=(5, 8), feature_format="float16",
                content_shape=(1, 6), embedding_model="clip", embedding_dim=4)


def info(sid="cam", uri="/v/cam.mp4"):
    return SourceInfo(uri, sid, False, 100.0, "h264", 320, 240, 25.0, False)


def batch(first, count, sid="cam", gaps=(), seed=None):
    rng = np.random.default_rng(first if seed is None else seed)
    idx = np.arange(first, first + count, dtype=np.int64)
    emb = rng.normal(size=(count, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return EncodedBatch(sid, first, first + count, idx, idx.astype(float), np.full(count, np.nan), [None] * count,
                        list(gaps), rng.normal(size=(count, 5, 8)).astype(np.float16),
                        rng.normal(size=(count, 1, 6)).astype(np.float16), emb, [b"jpg"] * count)


def test_commit_makes_rows_features_and_vectors_visible_with_shared_ids(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    b = batch(0, 6)
    assert w.append(b).accepted
    assert IndexReader(IndexRoot.at(tmp_path)).timeline().num_rows == 0  # appended is not committed
    w.commit()
    index = IndexReader(IndexRoot.at(tmp_path))
    table = index.timeline("cam")
    assert table.column("frame_id").to_pylist() == list(range(6))
    assert table.column("pts_s").to_pylist() == list(map(float, range(6)))
    np.testing.assert_array_equal(index.features([2, 4]), b.features[[2, 4]])
    vectors = index.vectors()
    _, ids = vectors.search(b.embedding[3:4], 1)
    assert ids[0, 0] == 3 and vectors.ntotal == 6
    w.close()


def test_duplicates_are_dropped_and_a_batch_after_a_hole_is_refused(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    assert w.append(batch(0, 4)).accepted
    again = w.append(batch(2, 4))  # overlaps 2, 3: only 4, 5 are new
    assert again.accepted and again.expected_index == 6
    hole = w.append(batch(8, 2))
    assert not hole.accepted and hole.expected_index == 6
    w.commit()
    assert IndexReader(IndexRoot.at(tmp_path)).timeline("cam").column("sample_index").to_pylist() == list(range(6))
    w.close()


def test_gaps_are_rows_and_a_resent_gap_is_written_once(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "rtsp")
    gap = Gap(3.0, 9.0, "connection lost", index=9)
    w.append(batch(0, 4))
    w.append(batch(4, 0, gaps=[gap]))
    w.commit()
    w.append(batch(4, 0, gaps=[gap]))  # resend after a restart
    w.commit()
    rows = IndexReader(IndexRoot.at(tmp_path)).timeline("cam").to_pylist()
    gaps = [r for r in rows if r["kind"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["reason"] == "connection lost" and gaps[0]["end_s"] == 9.0
    assert gaps[0]["frame_id"] is None
    w.close()


def test_reopening_resumes_at_the_committed_cursor_and_forgets_uncommitted_rows(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    w.append(batch(0, 4))
    w.commit()
    w.append(batch(4, 4))  # never committed: a crash
    w.close = None  # simulate the process dying: no commit, lock released below
    w._lock.release()
    w2 = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    entry = w2.open_stream(info(), 1.0, "file")
    assert entry.next_index == 4 and w2.expected_index("cam") == 4
    assert not w2.append(batch(6, 2)).accepted
    w2.close()


def test_files_of_a_crashed_commit_are_invisible_then_removed(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    w.append(batch(0, 3))
    w.commit()
    w.close()
    orphan = tmp_path / "timeline" / "stream=cam" / "part-00000099.parquet"
    orphan.write_bytes(b"half")
    (tmp_path / "features" / "stream=cam" / "part-00000099.f16.npy.tmp").write_bytes(b"x")
    assert IndexReader(IndexRoot.at(tmp_path)).timeline().num_rows == 3  # readers only see manifest files
    IndexWriter(IndexRoot.at(tmp_path), LAYOUT).close()
    assert not orphan.exists()
    assert not list((tmp_path / "features").rglob("*.tmp"))


def _crash_mid_commit(root):
    w = IndexWriter(IndexRoot.at(root), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    w.append(batch(3, 3))
    import indexer.store.writer as writer_module

    def die(*args, **kwargs):
        os._exit(9)  # SIGKILL-like: no cleanup, after the data files, before the manifest

    writer_module.write_manifest = die
    w.commit()


def test_a_process_killed_mid_commit_leaves_the_last_commit_readable(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    w.append(batch(0, 3))
    w.commit()
    w.close()
    before = json.loads((tmp_path / "manifest.json").read_text())
    child = multiprocessing.get_context("fork").Process(target=_crash_mid_commit, args=(tmp_path,))
    child.start()
    child.join()
    assert child.exitcode == 9
    assert json.loads((tmp_path / "manifest.json").read_text()) == before
    assert len(list((tmp_path / "timeline").rglob("*.parquet"))) == 2  # the crashed commit's file is there...
    index = IndexReader(IndexRoot.at(tmp_path))
    assert index.timeline().num_rows == 3 and index.vectors().ntotal == 3  # ...but invisible


def test_a_second_writer_on_the_same_root_is_refused(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    with pytest.raises(RuntimeError, match="another process is writing"):
        IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.close()


def test_another_models_index_is_refused_with_the_differences_named(tmp_path):
    IndexWriter(IndexRoot.at(tmp_path), LAYOUT).close()
    other = LAYOUT.model_copy(update={"embedding_dim": 8})
    with pytest.raises(ValueError, match="embedding_dim: index has 4, this ingest makes 8"):
        IndexWriter(IndexRoot.at(tmp_path), other)


def test_resuming_a_stream_at_another_fps_is_refused(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    with pytest.raises(ValueError, match="indexed at 1.0 fps"):
        w.open_stream(info(), 2.0, "file")
    w.close()


def test_vector_shards_are_folded_when_they_pile_up(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT, max_vector_shards=3)
    w.open_stream(info(), 1.0, "file")
    for i in range(5):
        w.append(batch(i * 2, 2))
        w.commit()
    w.close()
    index = IndexReader(IndexRoot.at(tmp_path))
    assert len(index.manifest.vectors) <= 3 and index.vectors().ntotal == 10
    assert len(list((tmp_path / "vectors").glob("*.faiss"))) == len(index.manifest.vectors)
    timeline = index.timeline()
    emb = np.array(timeline.column("embedding").to_pylist(), dtype=np.float32)
    _, ids = index.vectors().search(emb, 1)
    assert ids[:, 0].tolist() == timeline.column("frame_id").to_pylist()


def test_timeline_is_plain_parquet_partitioned_by_stream(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info("a", "/v/a.mp4"), 1.0, "file")
    w.open_stream(info("b", "/v/b.mp4"), 1.0, "file")
    w.append(batch(0, 2, "a"))
    w.append(batch(0, 3, "b"))
    w.close()
    files = sorted(p.relative_to(tmp_path).parent.as_posix() for p in (tmp_path / "timeline").rglob("*.parquet"))
    assert files == ["timeline/stream=a", "timeline/stream=b"]
    table = pq.read_table(next((tmp_path / "timeline" / "stream=b").glob("*.parquet")))
    assert table.column("content_tokens").type.list_size == 6 and table.num_rows == 3


@pytest.mark.parametrize("fmt", [Float16Features(), Int4Features(group_size=4)])
def test_feature_formats_round_trip(fmt):
    x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float16)
    y = fmt.decode(fmt.encode(x))
    assert y.shape == x.shape and y.dtype == np.float16
    tolerance = 0 if fmt.name == "float16" else float(np.ptp(x)) / 15
    assert np.abs(y.astype(np.float32) - x).max() <= tolerance + 1e-3


def test_int4_is_a_quarter_of_float16_plus_scales():
    x = np.zeros((2, 257, 1408), np.float16)
    size = sum(a.nbytes for a in Int4Features().encode(x)) / 2
    assert size == 257 * 1408 / 2 + 257 * (1408 // 128) * 2 * 2
    assert size * 3600 <= 0.7e9


def test_a_live_readers_liveness_report_is_committed_until_a_later_frame_proves_the_wait_over(tmp_path):
    from indexer.store.manifest import Liveness

    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info("cam", "rtsp://127.0.0.1/cam"), 1.0, "rtsp")
    held = batch(0, 2)
    held.wall_time[:] = [1000.0, 1001.0]   # decoded before the wait began
    w.append(held)
    generation = w.commit()
    w.report_liveness("cam", Liveness(reported_at=1015.0, waiting_since=1001.0))
    assert w.commit() == generation + 1   # the report alone makes a commit: the monitor sees the outage grow
    liveness = IndexReader(IndexRoot.at(tmp_path)).manifest.streams["cam"].liveness
    assert liveness == Liveness(reported_at=1015.0, waiting_since=1001.0)
    assert IndexReader(IndexRoot.at(tmp_path)).manifest.streams["cam"].liveness.waited_s == 14.0
    back = batch(2, 1, gaps=[Gap(1.0, 2.0, "connection lost", 1001.0, 1020.0, 2)])
    back.wall_time[:] = [1020.0]
    w.append(back)   # the report from before the frames came arrives after them
    w.report_liveness("cam", Liveness(reported_at=1019.5, waiting_since=1001.0))
    w.commit()
    liveness = IndexReader(IndexRoot.at(tmp_path)).manifest.streams["cam"].liveness
    assert liveness == Liveness(reported_at=1019.5, waiting_since=None)
    w.close()


def test_commit_if_due_commits_on_time_without_an_append(tmp_path):
    import time

    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT, commit_interval_s=0.3)
    w.open_stream(info(), 1.0, "file")
    w.append(batch(0, 3))
    assert IndexReader(IndexRoot.at(tmp_path)).manifest.generation == 0
    assert 0 < w.commit_if_due() <= 0.3      # not due yet: nothing committed, seconds until it is
    assert IndexReader(IndexRoot.at(tmp_path)).manifest.generation == 0
    time.sleep(0.3)
    w.commit_if_due()
    assert IndexReader(IndexRoot.at(tmp_path)).manifest.streams["cam"].frames == 3
    w.close()


def test_warnings_are_committed_and_a_resumed_read_adds_to_them(tmp_path):
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    w.append(batch(0, 4))
    w.stream_warning("cam", ["undecodable 2.880-5.000 s skipped (35 damaged packets)"])
    w.commit()
    w.close()
    w2 = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    assert w2.open_stream(info(), 1.0, "file").warning == "undecodable 2.880-5.000 s skipped (35 damaged packets)"
    w2.stream_warning("cam", ["undecodable 2.880-5.000 s skipped (35 damaged packets)",
                              "ends early: read 4.000-5.320 s of 12.000 s"])
    w2.close()
    assert IndexReader(IndexRoot.at(tmp_path)).manifest.streams["cam"].warning == (
        "undecodable 2.880-5.000 s skipped (35 damaged packets); ends early: read 4.000-5.320 s of 12.000 s")
