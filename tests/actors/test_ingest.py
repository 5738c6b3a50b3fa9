"""The ingest job on a real Ray runtime: files of several kinds and a live HLS stream into one
index root; bad inputs fail alone; a rerun writes nothing twice; SIGKILLs lose nothing."""

import io
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from actors.ingest import run_ingest
from indexer.embedding import make_tiny_clip
from indexer.llamavid.tiny import make_tiny_checkpoint
from indexer.settings import Settings
from indexer.store import IndexReader
from indexer.store.info import describe_index
from indexer.store.root import IndexRoot
from tests.mediagen import (
    make_spliced_ts,
    make_truncated,
    make_video,
    make_zero_byte,
    read_frame_number,
)
from tests.streams import HlsInfo, hls_live

FPS = 25


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("tiny")
    model_dir = make_tiny_checkpoint(root)
    clip = make_tiny_clip(root / "clip")
    return Settings.model_validate({
        "model": {"model_dir": str(model_dir)}, "embedding": {"model": str(clip)},
        "reader": {"fps": 1.0, "read_timeout_s": 2.0, "give_up_after_s": 2.0, "reconnect_initial_s": 0.2},
        "encoder": {"max_batch_frames": 16}, "index": {"commit_interval_s": 0.5},
        "ingest": {"reader_num_cpus": 0.25}})


@pytest.fixture(scope="module")
def ray_runtime():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def end_once_read(stream: HlsInfo, segments: int) -> None:
    """End the live HLS stream once its readers have fetched `segments` media segments."""
    while stream.segments_fetched() < segments:
        time.sleep(0.1)
    stream.end()


def check_index(root: Path, expect_frames: dict[str, int] | None = None) -> IndexReader:
    """Every (stream, sample) once; FAISS ids = Parquet frame ids one to one; true timestamps."""
    index = IndexReader(IndexRoot.at(root))
    table = index.timeline().to_pylist()
    frames = [r for r in table if r["kind"] == "frame"]
    keys = [(r["stream_id"], r["sample_index"]) for r in frames]
    assert len(keys) == len(set(keys)), "a sample was written twice"
    ids = sorted(r["frame_id"] for r in frames)
    assert ids == list(range(len(ids)))
    vectors = index.vectors()
    assert vectors.ntotal == len(ids)
    for r in frames:  # the vector stored under each frame id is that row's embedding
        np.testing.assert_allclose(vectors.reconstruct(r["frame_id"]), r["embedding"], rtol=1e-6)
    for r in frames:
        n = read_frame_number(np.asarray(Image.open(io.BytesIO(r["thumbnail"])).convert("RGB")))
        fps = index.manifest.streams[r["stream_id"]].fps
        assert abs(r["pts_s"] - n / FPS) < 1 / fps, (r["stream_id"], r["pts_s"], n)
    if expect_frames:
        for sid, count in expect_frames.items():
            got = sorted(r["sample_index"] for r in frames if r["stream_id"] == sid)
            assert got == list(range(count)), (sid, got)
    return index


@pytest.mark.timeout(900)  # on a busy machine Ray, the models and the live join take minutes
def test_files_and_a_live_stream_into_one_index_then_a_rerun_adds_nothing(tmp_path, settings, ray_runtime):
    mp4 = make_video(tmp_path / "a.mp4", duration_s=6, fps=FPS, codec="libx264")
    mkv = make_video(tmp_path / "b.mkv", duration_s=5, fps=FPS, codec="libx265")
    root = tmp_path / "index"
    with hls_live(duration_s=180, fps=FPS) as (url, stream):
        # live until the job has read it for a while, however long the job (Ray, models) takes to
        # start on a busy machine; then the playlist ends and so does the job
        ended = threading.Thread(target=end_once_read, args=(stream, 5), daemon=True)
        ended.start()
        summary = run_ingest([f"a={mp4}", f"b={mkv}", f"live={url}"], IndexRoot.at(root), settings, progress=False)
        ended.join(timeout=60)
        assert not ended.is_alive(), "the job ended before it read the live stream"
    assert not summary.failed, summary.lines()
    index = check_index(IndexRoot.at(root), {"a": 6, "b": 5})
    live = index.manifest.streams["live"]
    assert live.live and live.frames >= 3
    assert index.features([0]).shape == (1, *index.layout.feature_shape)
    rows = index.timeline("live").to_pylist()
    assert all(r["wall_time"] is not None for r in rows if r["kind"] == "frame")

    again = run_ingest([f"a={mp4}", f"b={mkv}"], IndexRoot.at(root), settings, progress=False)
    assert [s.frames_sent for s in again.streams] == [0, 0]
    assert IndexReader(IndexRoot.at(root)).manifest.next_frame_id == index.manifest.next_frame_id


def test_bad_inputs_fail_alone_with_the_source_named(tmp_path, settings, ray_runtime):
    good = make_video(tmp_path / "good.mp4", duration_s=4, fps=FPS)
    empty = make_zero_byte(tmp_path / "empty.mp4")
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    summary = run_ingest([str(good), str(empty), str(text)], IndexRoot.at(tmp_path / "index"), settings, progress=False)
    by_uri = {s.uri: s for s in summary.streams}
    assert by_uri[str(good)].error is None and by_uri[str(good)].frames_sent == 4
    for bad in (empty, text):
        assert str(bad) in by_uri[str(bad)].error and "cannot open" in by_uri[str(bad)].error
    manifest = IndexReader(IndexRoot.at(tmp_path / "index")).manifest
    assert sum(s.error is not None for s in manifest.streams.values()) == 2


def test_a_splice_and_a_file_cut_short_give_exact_rows_and_name_what_was_not_read(tmp_path, settings, ray_runtime):
    spliced = make_spliced_ts(tmp_path / "spliced.ts", resume_pts_s=990.0)  # pts jump 984 s ahead at 6 s
    whole = make_video(tmp_path / "whole.mp4", duration_s=12, fps=FPS, gop=FPS,
                       extra_args=["-bf", "0", "-movflags", "+faststart"])
    cut = make_truncated(whole, tmp_path / "cut.mp4", keep_fraction=0.5)
    root = tmp_path / "index"
    summary = run_ingest([f"spliced={spliced}", f"cut={cut}"], IndexRoot.at(root), settings, progress=False)
    assert not summary.failed, summary.lines()
    index = IndexReader(IndexRoot.at(root))
    rows = index.timeline("spliced", columns=["kind", "sample_index", "pts_s", "end_s", "reason"]).to_pylist()
    frames = sorted((r["sample_index"], r["pts_s"]) for r in rows if r["kind"] == "frame")
    assert frames == [(k, float(k)) for k in [*range(6), *range(990, 996)]]  # not ~1,000 copies of one frame
    assert [(r["pts_s"], r["end_s"], r["reason"]) for r in rows if r["kind"] == "gap"] == [
        (5.96, 990.0, "timestamp discontinuity of +984.040 s (forward: a new segment of the timeline)")]
    assert index.manifest.streams["spliced"].warning is None

    cut_rows = index.timeline("cut", columns=["kind", "sample_index"]).to_pylist()
    assert sorted(r["sample_index"] for r in cut_rows) == list(range(6))  # nothing past what decodes
    entry = index.manifest.streams["cut"]
    assert entry.complete and entry.error is None
    assert re.fullmatch(r"ends early: read 0\.000-5\.\d{3} s of 12\.000 s", entry.warning), entry.warning
    assert f"    warning: {cut}: {entry.warning}" in summary.lines()       # the ingest output names the file
    assert f"    warning: {entry.warning}" in describe_index(IndexRoot.at(root))          # and so does `vidx info`
