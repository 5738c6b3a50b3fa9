"""Ingestion always progresses or stops: whatever the commit interval and flow-control limits, a
file is ingested to its end by itself, also when the writer is SIGKILLed while readers wait for a
commit; and SIGTERM stops a reader held at its limit of uncommitted frames, with what it sent
committed. (A reader at `ingest.max_uncommitted_frames` once waited for a commit that only an
append could trigger: 0 frames committed after 150 s with `commit_interval_s: 30`.)"""

import os
import signal
import threading
import time

import pytest

from actors.ingest import run_ingest
from indexer.store import IndexReader
from indexer.store.root import IndexRoot
from tests.actors.jobs import (
    committed,
    kill_tree,
    own_pids,
    start_ingest,
    summary_frames,
    wait_for,
    write_config,
)
from tests.actors.test_ingest import FPS, check_index, ray_runtime, settings  # noqa: F401  (fixtures)
from tests.mediagen import make_video
from tests.streams import hls_live

pytestmark = pytest.mark.timeout(240)


def limits(settings, commit_interval_s: float, **ingest):  # noqa: F811
    return settings.model_copy(update={
        "reader": settings.reader.model_copy(update={"fps": 2.0}),
        "index": settings.index.model_copy(update={"commit_interval_s": commit_interval_s}),
        "ingest": settings.ingest.model_copy(update=ingest)})


@pytest.mark.parametrize(("commit_interval_s", "ingest"), [
    (30.0, {"batch_frames": 4, "max_inflight_batches": 1, "max_uncommitted_frames": 1}),   # a commit per batch
    (30.0, {"batch_frames": 4, "max_inflight_batches": 3, "max_uncommitted_frames": 6}),   # not a batch multiple
    (0.05, {"batch_frames": 8, "max_inflight_batches": 2, "max_uncommitted_frames": 512}),  # the timer's commits
], ids=["interval-30s-limit-1", "interval-30s-limit-6", "interval-50ms-limit-512"])
def test_any_commit_interval_and_flow_limits_finish_a_file(tmp_path, settings, ray_runtime, commit_interval_s,  # noqa: F811
                                                           ingest):
    video = make_video(tmp_path / "a.mp4", duration_s=8, fps=FPS, gop=FPS)
    summary = run_ingest([f"a={video}"], IndexRoot.at(tmp_path / "index"),
                         limits(settings, commit_interval_s, **ingest), progress=False)
    assert not summary.failed and not summary.interrupted, summary.lines()
    index = check_index(IndexRoot.at(tmp_path / "index"), {"a": 16})   # every sample once
    assert index.manifest.streams["a"].complete


@pytest.mark.parametrize(("commit_interval_s", "max_uncommitted_frames"), [(30.0, 8), (0.2, 512)],
                         ids=["reader-asks-for-commits", "timer-commits"])
def test_a_writer_killed_twice_mid_file_loses_and_duplicates_nothing(tmp_path, settings, ray_runtime,  # noqa: F811
                                                                     commit_interval_s, max_uncommitted_frames):
    """SIGKILL the writer actor once the first frames are committed and again a third of the way
    in: whatever each restarted writer lost (appended, not committed) the readers send again,
    also when they were waiting for a commit, and the run finishes by itself."""
    video = make_video(tmp_path / "a.mp4", duration_s=30, fps=FPS, gop=FPS)
    total = 60
    root = tmp_path / "index"
    options = limits(settings, commit_interval_s, batch_frames=4, max_inflight_batches=2,
                     max_uncommitted_frames=max_uncommitted_frames)
    result = {}
    run = threading.Thread(target=lambda: result.update(summary=run_ingest([f"a={video}"], IndexRoot.at(root), options,
                                                                           progress=False)))
    run.start()
    try:
        killed_at = []
        for frames in (1, total // 3):
            wait_for(lambda n=frames: committed(root) >= n, 180, f"{frames} frames committed")
            wait_for(lambda: len(own_pids("ray::WriterActor")) == 1, 60, "the (restarted) writer")
            writers = own_pids("ray::WriterActor")
            killed_at.append(committed(root))
            os.kill(writers[0], signal.SIGKILL)
    finally:
        run.join(timeout=200)
    assert not run.is_alive(), "the ingest did not finish after the writer's restarts"
    assert killed_at[-1] < total, f"the kills must happen mid-file (at {killed_at} of {total} frames)"
    summary = result["summary"]
    assert not summary.failed, summary.lines()
    index = check_index(IndexRoot.at(root), {"a": total})
    assert index.manifest.streams["a"].complete


@pytest.mark.slow
def test_sigterm_stops_a_live_reader_held_at_its_uncommitted_limit(tmp_path, settings):  # noqa: F811
    """Beside a file already done (its reader gone): the stop reaches the readers still running."""
    config = write_config(settings, tmp_path / "config.yaml", index={"commit_interval_s": 30.0},
                          ingest={"max_inflight_batches": 1, "max_uncommitted_frames": 2})
    video = make_video(tmp_path / "a.mp4", duration_s=4, fps=FPS, gop=FPS)
    root = tmp_path / "index"
    log = tmp_path / "run.log"
    with hls_live(duration_s=240, fps=FPS, size=(160, 120)) as (url, _):
        driver = start_ingest([f"live={url}", f"a={video}", "--index", str(root), "--config", str(config)], log)
        try:
            # three frames fill the limit; more are committed only if the reader's waits get commits
            wait_for(lambda: committed(root, "live") >= 6
                     and IndexReader(IndexRoot.at(root)).manifest.streams["a"].complete, 180,
                     "live frames committed and the file done", driver, log)
            time.sleep(2.0)   # the driver has seen the file's reader end
            driver.send_signal(signal.SIGTERM)
            assert driver.wait(timeout=60) == 0, log.read_text(errors="replace")[-3000:]
        finally:
            kill_tree(driver)
    output = log.read_text(errors="replace")
    assert "(interrupted, committed)" in output
    index = check_index(IndexRoot.at(root))
    assert index.manifest.streams["live"].frames == summary_frames(output)["live"] > 0   # all it sent
    assert summary_frames(output)["a"] == index.manifest.streams["a"].frames == 4
