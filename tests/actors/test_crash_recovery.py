"""SIGKILL the writer, an encoder and the driver of an ingest job on a `ray start` cluster on
localhost, rerun it, and prove every sampled (stream, pts) is in the timeline exactly once."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from indexer.store import IndexReader
from tests.actors.test_ingest import FPS, check_index, settings  # noqa: F401  (fixture)
from tests.mediagen import make_video


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def _committed_frames(root: Path) -> int:
    try:
        return IndexReader(root).manifest.next_frame_id
    except (FileNotFoundError, ValueError):
        return 0


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkill_of_writer_encoder_and_driver_loses_and_duplicates_nothing(tmp_path, settings):  # noqa: F811
    sources = {f"s{i}": make_video(tmp_path / f"s{i}.mp4", duration_s=40, fps=FPS, gop=FPS) for i in range(2)}
    config = tmp_path / "config.yaml"
    data = settings.model_dump(mode="json")
    data["reader"]["fps"] = 4.0
    data["ingest"] |= {"batch_frames": 4, "max_inflight_batches": 2}
    config.write_text(yaml.safe_dump(data))
    root = tmp_path / "index"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run(["ray", "start", "--head", "--num-cpus=2", "--include-dashboard=false", f"--port={port}"],
                   check=True, env=env, capture_output=True)
    try:
        cmd = [sys.executable, "-m", "actors.ingest", *[f"{k}={v}" for k, v in sources.items()], "--index",
               str(root), "--config", str(config), "--address", "auto", "--no-progress"]
        driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: _committed_frames(root) > 10, 120, "first commits")
        for actor in ("ray::WriterActor", "ray::EncoderActor"):
            os.kill(_pids(actor)[0], signal.SIGKILL)
            before = _committed_frames(root)
            _wait_for(lambda b=before: _committed_frames(root) > b + 8, 120, f"progress after killing {actor}")
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        killed_at = _committed_frames(root)
        assert killed_at < 2 * 160, "the kills must happen mid-ingest"
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True)
    index = check_index(root, {"s0": 160, "s1": 160})
    assert all(s.complete for s in index.manifest.streams.values())
