"""Ctrl-C and SIGTERM on a running `python -m actors.ingest` (local Ray): the readers stop, what
was sent is committed, the driver exits 0 on its own, and a rerun resumes at the watermark."""

import os
import re
import signal

import pytest

from indexer.store import IndexReader
from indexer.store.root import IndexRoot
from tests.actors.jobs import committed, kill_tree, start_ingest, summary_frames, wait_for, write_config
from tests.actors.test_ingest import FPS, check_index, settings  # noqa: F401  (fixture)
from tests.streams import hls_live, rtmp_server

STOP_S = 60  # a stopped ingest must exit on its own within this


def _live_rows(root):
    rows = IndexReader(IndexRoot.at(root)).timeline("live").to_pylist()
    return sorted((r for r in rows if r["kind"] == "frame"), key=lambda r: r["frame_id"])


@pytest.mark.slow
def test_ctrl_c_and_sigterm_commit_what_was_sent_and_a_rerun_resumes(tmp_path, settings):  # noqa: F811
    # give_up_after_s=None: a source that went away is retried forever, so only the stop ends it
    config = write_config(settings, tmp_path / "config.yaml", reader={"give_up_after_s": None, "reconnect_max_s": 2.0})
    root = tmp_path / "index"
    run1, run2 = tmp_path / "run1.log", tmp_path / "run2.log"
    # "live" outlasts the test; "gone" sends 4 s and exits, refusing every reconnect after that
    with hls_live(duration_s=240, fps=FPS, size=(160, 120)) as (live, _), rtmp_server(duration_s=4, fps=FPS) as gone:
        driver = start_ingest([f"live={live}", f"gone={gone}", "--index", str(root), "--config", str(config)], run1)
        try:
            retrying = re.compile(re.escape(gone) + r": .*; reconnecting in")  # the reader's warning
            wait_for(lambda: committed(root, "live") >= 2 and retrying.search(run1.read_text(errors="replace")),
                     240, "live frames committed and the gone source retrying", driver, run1)
            os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground group
            assert driver.wait(timeout=STOP_S) == 0, run1.read_text(errors="replace")[-3000:]
        finally:
            kill_tree(driver)
        output = run1.read_text(errors="replace")
        assert "(interrupted, committed)" in output
        index = check_index(IndexRoot.at(root))  # one row per sample, FAISS ids = frame ids, true timestamps
        sent = summary_frames(output)
        for sid in ("live", "gone"):
            entry = index.manifest.streams[sid]
            assert entry.live and entry.error is None and not entry.complete
            assert entry.frames == sent[sid] > 0, (sid, entry.frames, sent)  # every frame sent is committed
        first_rows = _live_rows(root)
        watermark = index.manifest.streams["live"].next_index

        # the rerun resumes at the watermark; SIGTERM (`kill`, `ray job stop`) stops it the same way
        driver = start_ingest([f"live={live}", "--index", str(root), "--config", str(config)], run2)
        try:
            wait_for(lambda: committed(root, "live") >= len(first_rows) + 2, 240, "rerun frames committed", driver,
                     run2)
            driver.send_signal(signal.SIGTERM)
            assert driver.wait(timeout=STOP_S) == 0, run2.read_text(errors="replace")[-3000:]
        finally:
            kill_tree(driver)
    output = run2.read_text(errors="replace")
    assert "(interrupted, committed)" in output
    index = check_index(IndexRoot.at(root))
    rows = _live_rows(root)
    assert [r["sample_index"] for r in rows[:len(first_rows)]] == [r["sample_index"] for r in first_rows]
    new = [r["sample_index"] for r in rows[len(first_rows):]]
    assert len(new) == summary_frames(output)["live"] > 0
    assert new[0] >= watermark and new == sorted(set(new))  # after the watermark, each sample once
    assert index.manifest.streams["gone"].frames == sent["gone"]  # the stream not in the rerun is untouched
