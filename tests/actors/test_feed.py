"""Start at once: `python -m actors.ingest` reads a live source from the moment it starts, while
Ray and the models load, and the index holds every sample time from then on, once; also when
the reader it feeds dies and restarts."""

import os
import signal
import time

import pytest
import ray

from actors.ingest import run_ingest
from indexer.store import IndexReader
from indexer.store.root import IndexRoot
from tests.actors.jobs import committed, kill_tree, own_pids, start_ingest, summary_frames, wait_for, write_config
from tests.actors.test_ingest import FPS, check_index, settings  # noqa: F401  (fixture)
from tests.mediagen import make_video
from tests.streams import hls_live

DURATION_S = 30
# HLS joins a live playlist a few segments behind its end, so the first sample read soon after the
# start is at or before the picture sent at the start; without the early capture it is the picture
# sent once Ray and the encoder are up, 10 s and more later even on an idle machine
FIRST_SAMPLE_LATE_S = 6.0


@pytest.mark.slow
def test_a_live_stream_is_indexed_from_the_moment_the_command_starts(tmp_path, settings):  # noqa: F811
    config = write_config(settings, tmp_path / "config.yaml")
    root, log = tmp_path / "index", tmp_path / "ingest.log"
    with hls_live(duration_s=DURATION_S, fps=FPS, size=(160, 120)) as (url, info):
        started = time.monotonic()
        pts_at_start = info.live_frame(started) / FPS
        driver = start_ingest([f"live={url}", "--index", str(root), "--config", str(config)], log)
        try:
            assert driver.wait(timeout=240) == 0, log.read_text(errors="replace")[-3000:]
        finally:
            kill_tree(driver)
    index = check_index(IndexRoot.at(root))  # once per sample time, FAISS ids = frame ids, pts = the frame shown
    frames = sorted((r for r in index.timeline("live").to_pylist() if r["kind"] == "frame"),
                    key=lambda r: r["sample_index"])
    indices = [r["sample_index"] for r in frames]
    assert frames[0]["pts_s"] <= pts_at_start + FIRST_SAMPLE_LATE_S, (pts_at_start, indices)
    last = DURATION_S * int(settings.reader.fps) - 1
    assert indices == list(range(indices[0], last + 1)), indices  # none lost, none twice, to the end
    assert summary_frames(log.read_text(errors="replace"))["live"] == len(frames)


def test_a_rerun_with_nothing_left_does_not_start_ray(tmp_path, settings):  # noqa: F811
    """Decided from the manifest alone: no Ray session is made (and so the rerun is fast)."""
    clip = make_video(tmp_path / "clip.mp4", duration_s=2, fps=FPS)
    config = write_config(settings, tmp_path / "config.yaml")
    root, log = tmp_path / "index", tmp_path / "first.log"
    driver = start_ingest([str(clip), "--index", str(root), "--config", str(config)], log)
    try:
        assert driver.wait(timeout=240) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        kill_tree(driver)
    assert not ray.is_initialized()
    again = run_ingest([str(clip)], IndexRoot.at(root), settings, progress=False)
    assert not ray.is_initialized()
    assert [(s.frames_sent, s.error) for s in again.streams] == [(0, None)]
    assert IndexReader(IndexRoot.at(root)).manifest.next_frame_id == 2


@pytest.mark.slow
def test_a_fed_reader_killed_mid_stream_gets_back_the_samples_it_held(tmp_path, settings):  # noqa: F811
    """The writer is paused (SIGSTOP) so that the reader holds pushed samples it cannot send on,
    then the reader is SIGKILLed and Ray restarts it: the feeder pushes what was not committed
    again, and the live stream's timeline is every sample time once to the end, with no hole
    (before: the samples the dead reader held were missing, with no gap row)."""
    fps = 2
    config = write_config(settings, tmp_path / "config.yaml", reader={"fps": float(fps)})
    root, log = tmp_path / "index", tmp_path / "ingest.log"
    duration_s = 40
    with hls_live(duration_s=duration_s, fps=FPS, size=(160, 120)) as (url, _):
        driver = start_ingest([f"live={url}", "--index", str(root), "--config", str(config)], log)
        try:
            wait_for(lambda: committed(root, "live") >= 4, 180, "the first live frames committed", driver, log)
            writers, readers = own_pids("ray::WriterActor"), own_pids("ray::ReaderActor")
            assert len(writers) == len(readers) == 1, (writers, readers)
            os.kill(writers[0], signal.SIGSTOP)
            try:
                time.sleep(6.0)  # 12 samples arrive: the reader waits on an append and holds what is pushed
                os.kill(readers[0], signal.SIGKILL)
            finally:
                os.kill(writers[0], signal.SIGCONT)
            assert driver.wait(timeout=240) == 0, log.read_text(errors="replace")[-3000:]
        finally:
            kill_tree(driver)
    check_index(IndexRoot.at(root))  # once per sample time
    rows = IndexReader(IndexRoot.at(root)).timeline("live").to_pylist()
    # nothing was lost, so no gap but the stream's end
    assert [r["reason"] for r in rows if r["kind"] != "frame"] == ["gave up: stream ended"]
    indices = sorted(r["sample_index"] for r in rows if r["kind"] == "frame")
    assert indices == list(range(indices[0], duration_s * fps)), indices   # none lost, none twice, to the end
