"""`vidx monitor` end to end, as a user runs it: `python -m actors.monitor` in its own process with
its own local Ray, on live streams published by ffmpeg / GStreamer on 127.0.0.1, standing queries
added with `vidx watch add`, a webhook receiver in this test.

The planted events: an orange picture with a moving blue disc (found by the colour detector
plugged in where the retrieval prefilter and LLaMA-VID verifier sit, tests.monitor.colour), a
black stretch and a frozen picture (model-free rules)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import av
import numpy as np
import pytest

from indexer.monitor.alerts import AlertLog
from indexer.monitor.webhooks import read_deliveries
from indexer.store.root import IndexRoot
from tests.actors.jobs import REPO, driver_env, kill_tree, wait_for, write_config
from tests.indexes import tiny_settings
from tests.monitor.colour import orange_share
from tests.monitor.receiver import receiver
from tests.monitor.scenes import make_scene_video
from tests.streams import hls_live, rtsp_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SECRET = "live-monitor-secret"
FPS = 10


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    work = tmp_path_factory.mktemp("live-monitor")
    return write_config(
        tiny_settings(work), work / "config.yaml",
        reader={"fps": 1.0, "read_timeout_s": 3.0, "reconnect_initial_s": 0.2, "give_up_after_s": 5.0},
        index={"commit_interval_s": 0.5, "retention": {"recording_segment_s": 1.0}}, ingest={"reader_num_cpus": 0.25},
        monitor={"evaluator": "tests.monitor.colour:ColourDetector", "poll_interval_s": 0.2, "clip_wait_s": 20.0,
                 "pre_roll_s": 2.0, "post_roll_s": 2.0})


def vidx_watch(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "actors.cli", "watch", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def start_monitor(source: str, root, config, log) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "actors.monitor", source, "--index", str(root), "--config",
                                 str(config), "--no-progress"], cwd=REPO, env=driver_env(), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, log) -> str:
    """Ctrl-C, as a terminal sends it: ingestion commits, the monitor evaluates it, and both exit."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=90)
    finally:
        kill_tree(proc)
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    return output


def clip_frames(path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as clip:
        return [(f.time, f.to_ndarray(format="rgb24")) for f in clip.decode(video=0)]


def test_ctrl_c_once_every_source_ended_leaves_pending_webhooks_for_the_next_run_and_exits_0(tmp_path, config):
    """The file ended and was indexed whole; its alert's webhooks retry against a receiver that is
    down, so the monitor waits for them before exiting. A Ctrl-C then loses nothing (the deliveries
    stay pending in the outbox for the next run): exit 0, as `vidx ingest` after a Ctrl-C that
    committed (before: KeyboardInterrupt mid-wait, "aborted", exit 130)."""
    video = make_scene_video(tmp_path / "scenes.mp4", 10.0, {"black": (3.0, 7.0)}, fps=FPS)
    root = tmp_path / "index"
    root.mkdir()
    log = tmp_path / "monitor.log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        hook = f"http://127.0.0.1:{s.getsockname()[1]}/hook"   # nothing listens there once closed
    vidx_watch("add", str(root), "--rule", "black", "--id", "dark", "--webhook", hook, "--allow-private")
    proc = start_monitor(f"cam={video}", root, config, log)
    try:
        wait_for(lambda: "(Ctrl-C leaves them for the next run)" in log.read_text(errors="replace"), 240,
                 "the monitor waiting for webhook deliveries", proc, log)
    finally:
        output = stop(proc, log)   # asserts exit 0
    assert "finishing: leaving pending clips and webhook deliveries for the next run" in output, output[-3000:]
    assert "aborted" not in output
    assert "cam: 10 frames, 0 gaps, 10.0 s; done" in output, output[-3000:]
    deliveries = read_deliveries(IndexRoot.at(root).outbox)
    # left for the next run, not dropped (the closing one exists once the event's clip is cut, which
    # the Ctrl-C may have left for the next run too)
    assert [d.event for d in deliveries] in (["alert.opened"], ["alert.opened", "alert.closed"])
    assert {d.state for d in deliveries} == {"pending"}


def test_planted_black_and_frozen_events_each_raise_one_alert_on_a_live_rtsp_stream(tmp_path, config):
    scenes = {"planted": (12.0, 20.0), "black": (24.0, 28.0), "frozen": (31.0, 36.0)}
    video = make_scene_video(tmp_path / "scenes.ts", 45.0, scenes, fps=FPS)
    root = tmp_path / "index"
    root.mkdir()
    log = tmp_path / "monitor.log"
    with receiver() as hook, rtsp_server(duration_s=45.0, fps=FPS, size=(160, 120), source=video) as url:
        vidx_watch("add", str(root), "an orange board with a blue disc", "--id", "disc", "--webhook", hook.url,
                   "--allow-private", "--secret", SECRET)
        vidx_watch("add", str(root), "--rule", "black", "--webhook", hook.url, "--allow-private", "--secret", SECRET)
        vidx_watch("add", str(root), "--rule", "frozen", "--webhook", hook.url, "--allow-private", "--secret", SECRET)
        proc = start_monitor(f"cam={url}", root, config, log)
        try:
            wait_for(lambda: len(hook.received()) >= 6, 150, "3 alerts opened and closed", proc, log)
            time.sleep(3.0)   # anything sent twice would arrive by now
        finally:
            output = stop(proc, log)
        posts = hook.received()
    alerts = {a.query_id: a for a in AlertLog(IndexRoot.at(root)).alerts()}
    assert sorted(alerts) == ["disc", "q1", "q2"], output[-3000:]
    by_kind = {a.kind if a.kind != "condition" else "planted": a for a in alerts.values()}
    for name, (start, end) in scenes.items():
        alert = by_kind[name]
        assert abs(alert.start_s - start) <= 2.0, (name, alert.start_s)   # within two sampling intervals
        assert abs(alert.end_s - end) <= 2.0, (name, alert.end_s)
        assert alert.wall_start is not None and alert.status == "closed"
        assert f"ALERT {alert.alert_id}" in output and f"ENDED {alert.alert_id}" in output
    # exactly one opening and one closing webhook per alert, each validly signed
    assert sorted(hook.events(SECRET)) == sorted((e, a.alert_id) for a in alerts.values()
                                                 for e in ("alert.opened", "alert.closed"))
    assert len({p.delivery for p in posts}) == len(posts) == 6
    # the planted event's clip, cut from the live stream's recording, decodes and covers it
    disc = by_kind["planted"]
    frames = clip_frames(root / disc.clip)
    assert disc.clip_covered and disc.clip_start_s <= disc.start_s and disc.clip_end_s >= disc.end_s
    orange = [t for t, image in frames if orange_share(image) > 0.3]
    assert len(orange) >= 7 * FPS, f"{len(orange)} planted frames in the clip"    # the 8 s event, keyframe-aligned
    assert frames[-1][0] - frames[0][0] >= disc.end_s - disc.start_s
    opened = next(p for p in posts if p.json["event"] == "alert.opened" and p.json["alert"]["query_id"] == "disc")
    print(f"alert latency (frame arrival to webhook receipt): {opened.received_at - disc.wall_start:.2f} s")


@pytest.mark.timeout(900)  # two monitor start-ups on a busy machine, and 2 min of stream before the event
def test_a_monitor_killed_mid_event_and_restarted_raises_the_event_once(tmp_path, config):
    # late enough for the monitor (Ray, models) to be reading before it even on a busy machine
    # (a start of over 60 s was seen); the restarted one reads it while it goes on because the
    # stream holds still until then
    scenes = {"planted": (100.0, 130.0)}
    # still live when the test stops the monitor (after the pause the publisher catches up with
    # the wall clock): a stream that ended first would leave the monitor winding down instead
    video = make_scene_video(tmp_path / "scenes.ts", 360.0, scenes, fps=FPS)
    root = tmp_path / "index"
    root.mkdir()
    log = tmp_path / "monitor.log"
    with receiver() as hook, hls_live(duration_s=360.0, fps=FPS, size=(160, 120), source=video,
                                      list_size=0) as (url, stream):
        vidx_watch("add", str(root), "an orange board with a blue disc", "--id", "disc", "--webhook", hook.url,
                   "--allow-private", "--secret", SECRET)
        proc = start_monitor(f"cam={url}", root, config, log)
        try:
            wait_for(lambda: len(hook.received()) >= 1, 240, "the alert opened", proc, log)
            # mid-event: the stream holds still until the restarted monitor reads it, however long
            # that start takes on a busy machine, so the event is still going on when it does
            stream.pause()
        finally:
            kill_tree(proc)  # SIGKILL, the driver and its local Ray
        assert [a.status for a in AlertLog(IndexRoot.at(root)).alerts()] == ["open"]
        fetched = stream.segments_fetched()
        proc = start_monitor(f"cam={url}", root, config, log)
        try:
            wait_for(lambda: stream.segments_fetched() > fetched, 150, "the restarted monitor reading", proc, log)
            stream.resume()
            wait_for(lambda: len(hook.received()) >= 2, 150, "the alert closed", proc, log)
            time.sleep(3.0)
        finally:
            output = stop(proc, log)
        events = hook.events(SECRET)
    alerts = AlertLog(IndexRoot.at(root)).alerts()
    assert len(alerts) == 1, output[-3000:]
    assert events == [("alert.opened", alerts[0].alert_id), ("alert.closed", alerts[0].alert_id)]
    assert abs(alerts[0].start_s - 100.0) <= 2.0 and alerts[0].end_s > 120.0   # it saw the event after the restart
    assert alerts[0].clip is not None and clip_frames(root / alerts[0].clip)
