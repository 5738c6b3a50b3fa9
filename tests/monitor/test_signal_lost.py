"""A camera that goes dark for a while, as `vidx monitor` sees it: an RTSP server (GStreamer, on
127.0.0.1) SIGKILLed mid-stream and started again on the same port 20 s later. With the reader's
default settings the source is never given up: it reconnects with capped backoff until the server
answers, and the stream goes on. The signal-lost alert opens while the server is still down,
within `monitor.signal_lost_after_s` (plus a liveness report, a commit and a poll) of the last
frame by the wall clock, is raised once and closed once (webhooks too), and the outage is one gap
row, written when it ended."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.monitor.alerts import AlertLog
from indexer.settings import load_settings
from indexer.store import IndexReader
from indexer.store.root import IndexRoot
from tests.actors.jobs import wait_for, write_config
from tests.indexes import tiny_settings
from tests.mediagen import make_video
from tests.monitor.receiver import receiver
from tests.monitor.test_live_monitor import SECRET, start_monitor, stop, vidx_watch
from tests.streams import RTSP_SCRIPT, SYSTEM_PYTHON

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
LOST_AFTER_S = 4.0
OUTAGE_S = 20.0
# the reader reports every second (actors.reader.LIVENESS_REPORT_S), the writer commits every
# 0.5 s, the monitor polls every 0.2 s: room for all three on a busy machine
REPORT_AND_POLL_S = 6.0


class RestartableRtsp:
    """tests/rtsp_server.py on one port, killed and started again at will (each client gets the
    video from its start, in real time)."""

    def __init__(self, video: Path, logdir: Path):
        self.video, self.logdir = video, logdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{self.port}/stream"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        out = self.logdir / f"rtsp-{self.starts}.out"
        with open(out, "wb") as stdout:
            self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SCRIPT), str(self.video), "--port", str(self.port)],
                                         stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_for(lambda: re.search(r"READY \d+", out.read_text(errors="replace")) is not None, 30,
                 "the RTSP server", self.proc, out)

    def kill(self) -> None:
        """SIGKILL, as a camera that loses power: no RTSP teardown, the connection just breaks."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def restartable_rtsp(video: Path, logdir: Path) -> Iterator[RestartableRtsp]:
    server = RestartableRtsp(video, logdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def frames_after(root: Path, wall: float) -> int:
    try:
        rows = IndexReader(IndexRoot.at(root)).timeline("cam", columns=["kind", "wall_time"]).to_pylist()
    except (FileNotFoundError, ValueError, KeyError):
        return 0
    return sum(r["kind"] == "frame" and r["wall_time"] is not None and r["wall_time"].timestamp() > wall
               for r in rows)


def test_an_rtsp_camera_down_for_20_s_raises_signal_lost_while_down_once_and_resumes(tmp_path):
    config = write_config(
        tiny_settings(tmp_path), tmp_path / "config.yaml",
        reader={"fps": 1.0, "read_timeout_s": 2.0, "open_timeout_s": 5.0, "reconnect_initial_s": 0.2,
                "reconnect_max_s": 2.0},   # give_up_after_s left at its default
        index={"commit_interval_s": 0.5, "retention": {"recording_s": 0.0}}, ingest={"reader_num_cpus": 0.25},
        monitor={"evaluator": "tests.monitor.colour:ColourDetector", "poll_interval_s": 0.2,
                 "signal_lost_after_s": LOST_AFTER_S})
    assert load_settings(config).reader.give_up_after_s is None
    video = make_video(tmp_path / "cam.ts", duration_s=180, fps=10, size=(160, 120), codec="libx264", gop=10)
    root = tmp_path / "index"
    root.mkdir()
    log = tmp_path / "monitor.log"
    with receiver() as hook, restartable_rtsp(video, tmp_path) as camera:
        vidx_watch("add", str(root), "--rule", "signal-lost", "--id", "lost", "--webhook", hook.url, "--allow-private",
                   "--secret", SECRET)
        proc = start_monitor(f"cam={camera.url}", root, config, log)
        try:
            wait_for(lambda: frames_after(root, 0.0) >= 5, 150, "frames committed", proc, log)
            camera.kill()
            killed_at = time.time()
            wait_for(lambda: len(hook.received()) >= 1, OUTAGE_S, "the signal-lost alert while the camera is down",
                     proc, log)
            opened_at = hook.received()[0].received_at
            time.sleep(max(0.0, killed_at + OUTAGE_S - time.time()))
            assert len(hook.received()) == 1, "closed while the camera was still down"
            camera.start()
            back_at = time.time()
            wait_for(lambda: len(hook.received()) >= 2, 60, "the alert closed", proc, log)
            wait_for(lambda: frames_after(root, back_at) >= 5, 60, "the stream resumed", proc, log)
            time.sleep(2.0)   # anything sent twice would arrive by now
        finally:
            output = stop(proc, log)
        events = hook.events(SECRET)
    alerts = AlertLog(IndexRoot.at(root)).alerts()
    assert len(alerts) == 1, output[-3000:]
    alert = alerts[0]
    assert events == [("alert.opened", alert.alert_id), ("alert.closed", alert.alert_id)]
    assert alert.status == "closed" and alert.kind == "signal_lost"
    # the last frame came at the kill (what was in the socket is still decoded after it); the alert
    # opened after LOST_AFTER_S without one, while the camera was still down
    assert abs(alert.wall_start - killed_at) < 5.0, (alert.wall_start - killed_at)
    assert LOST_AFTER_S <= opened_at - alert.wall_start <= LOST_AFTER_S + REPORT_AND_POLL_S, \
        (opened_at - alert.wall_start, output[-3000:])
    assert opened_at < back_at
    assert alert.wall_end >= back_at and alert.end_s > alert.start_s
    print(f"signal lost noticed {opened_at - alert.wall_start:.1f} s after the last frame "
          f"(signal_lost_after_s {LOST_AFTER_S})")
    # the outage is one gap row, from the last frame before it to the first after it; the stream goes on
    index = IndexReader(IndexRoot.at(root))
    entry = index.manifest.streams["cam"]
    assert entry.error is None and not entry.complete
    gaps = [r for r in index.timeline("cam").to_pylist() if r["kind"] == "gap"]
    assert len(gaps) == 1, gaps
    # the gap starts at the last frame sampled, the alert when the reader began to wait after it
    assert 0 <= alert.wall_start - gaps[0]["wall_time"].timestamp() < 3.0
    assert gaps[0]["wall_end"].timestamp() >= back_at
    assert not gaps[0]["reason"].startswith("gave up")
    assert "ALERT" in output and "ENDED" in output
