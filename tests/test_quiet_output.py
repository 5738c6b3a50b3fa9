"""Quiet, parseable output, as a user sees it: `vidx monitor --json` on a local Ray (token auth as
Ray sets it up by default) writes only JSON alert rows to stdout; stderr holds the summary and
the webhook's failed delivery, and none of the libraries' noise (Ray's token warning or
core_worker lines, "Loading weights" bars, colour codes). `vidx watch alerts` then shows how the
alert's deliveries went, and a rerun of the same file has nothing to do."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.actors.jobs import REPO, write_config
from tests.indexes import tiny_settings
from tests.monitor.scenes import make_scene_video

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NOISE = ("Token authentication", "core_worker", "Loading weights", "\x1b[", "Traceback", "it/s]")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_monitor_json_is_json_only_and_webhook_failures_are_shown(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}

    def vidx(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "actors.cli", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=500, check=False)

    config = write_config(tiny_settings(tmp_path), tmp_path / "config.yaml",
                          monitor={"webhooks": {"max_attempts": 2, "backoff_initial_s": 0.1, "timeout_s": 1.0}})
    video = make_scene_video(tmp_path / "scenes.mp4", 10.0, {"black": (3.0, 7.0)})
    root = tmp_path / "cams"
    hook = f"http://127.0.0.1:{closed_port()}/hooks"
    assert vidx("watch", "add", str(root), "--rule", "black", "--id", "dark", "--webhook", hook,
                "--allow-private").returncode == 0

    done = vidx("monitor", f"cam={video}", "--index", str(root), "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but JSON on stdout
    assert [(r["query_id"], r["status"]) for r in rows] == [("dark", "open"), ("dark", "closed")]
    assert "10 frames from 1 source in" in done.stderr  # the summary, on stderr
    assert f"webhook alert.opened to {hook}: attempt 1 of 2 failed" in done.stderr
    assert not [noise for noise in NOISE if noise in done.stderr], done.stderr

    alerts = vidx("watch", "alerts", str(root))
    assert alerts.returncode == 0, alerts.stderr
    assert "| webhooks: 2 dead (connect error" in alerts.stdout, alerts.stdout
    listing = vidx("watch", "list", str(root)).stdout
    assert f"{hook} [2 dead (connect error" in listing, listing

    again = vidx("ingest", f"cam={video}", "--index", str(root), "--config", str(config))
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert "nothing to do: 1 source already indexed to the end" in again.stdout
