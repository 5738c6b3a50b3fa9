"""Start-up figures of the commands, measured from outside as a user starts them (`vidx ...` in a
fresh process, a fresh local Ray, the tiny models):

- first frame read from a live source: a live HLS stream on 127.0.0.1, `vidx ingest` started at
  t0; the earliest indexed frame's `wall_time` (when it was decoded) minus t0;
- first commit: t0 to the first manifest that holds frames of the stream (then Ctrl-C);
- the same two for `vidx monitor`;
- no-op resume: `vidx ingest FILE` on an index that holds FILE complete, start to exit;
- `vidx ask` argument errors: a missing index, an empty question, start to exit.

    python bench/startup_bench.py
    python bench/startup_bench.py --repeats 3 --repo /path/to/other/checkout   # that code, same venv

One figure per line: `<figure> <details>: <value> <unit>` (the median of --repeats). The machine
may be shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (the live stream helpers)

from indexer.embedding import make_tiny_clip
from indexer.llamavid.tiny import make_tiny_checkpoint
from indexer.store import IndexReader
from indexer.store.root import IndexRoot
from tests.mediagen import make_video
from tests.streams import hls_live

REPO = Path(__file__).resolve().parents[1]
FPS = 25
STREAM_S = 180   # longer than any start-up: the command is stopped after its first commit
TIMEOUT_S = 300


def vidx(repo: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    """`vidx ARGS` as a user runs it: a fresh process, its own local Ray (no RAY_ADDRESS), the code
    of `repo` (first on PYTHONPATH, so Ray's workers import it too)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(repo)}
    with open(log or os.devnull, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "actors.cli", *args], cwd=repo, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def timed_exit(repo: Path, *args: str) -> float:
    """Seconds from start to exit of `vidx ARGS`."""
    started = time.monotonic()
    vidx(repo, *args).wait(TIMEOUT_S)
    return time.monotonic() - started


def live_start(repo: Path, command: str, config: Path, work: Path) -> tuple[float, float]:
    """(first frame read, first commit) in seconds after `vidx COMMAND live=URL` started; the
    command is stopped with SIGINT (Ctrl-C) after its first commit."""
    root = work / f"{command}-{time.monotonic_ns()}"
    with hls_live(duration_s=STREAM_S, fps=FPS, size=(320, 240)) as (url, _):
        time.sleep(3.0)  # a stream that has been on for a while, as a camera is
        t0_wall, t0 = time.time(), time.monotonic()
        proc = vidx(repo, command, f"live={url}", "--index", str(root), "--config", str(config), "--no-progress",
                    log=work / f"{root.name}.log")
        first_commit = None
        try:
            while first_commit is None and time.monotonic() - t0 < TIMEOUT_S and proc.poll() is None:
                manifest = root / "manifest.json"
                if manifest.exists() and json.loads(manifest.read_text())["next_frame_id"] > 0:
                    first_commit = time.monotonic() - t0
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    if first_commit is None:
        raise RuntimeError(f"vidx {command}: nothing committed; see {work / root.name}.log")
    rows = IndexReader(IndexRoot.at(root)).timeline("live").to_pylist()
    walls = [r["wall_time"] for r in rows if r["kind"] == "frame"]
    if None in walls:
        raise RuntimeError(f"vidx {command} read the stream once it had ended (no longer live): "
                           f"make STREAM_S longer than the start-up")
    return min(w.timestamp() for w in walls) - t0_wall, first_commit


def median_of(repeats: int, measure: Callable[[], float | tuple[float, ...]]):
    runs = [measure() for _ in range(repeats)]
    if isinstance(runs[0], tuple):
        return tuple(statistics.median(r[i] for r in runs) for i in range(len(runs[0])))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose `vidx` is measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        work = Path(tmp)
        config = work / "tiny.yaml"
        settings = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
        settings["model"]["model_dir"] = str(make_tiny_checkpoint(work / "tiny"))
        settings["embedding"]["model"] = str(make_tiny_clip(work / "tiny" / "clip"))
        settings["reader"] |= {"read_timeout_s": 2.0, "give_up_after_s": 2.0}
        config.write_text(yaml.safe_dump(settings))
        print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)

        first_frame, first_commit = median_of(args.repeats, lambda: live_start(args.repo, "ingest", config, work))
        print(f"first frame read from a live source, vidx ingest, after the command starts: {first_frame:.1f} s",
              flush=True)
        print(f"first commit, vidx ingest, tiny models, after the command starts: {first_commit:.1f} s", flush=True)
        first_frame, first_commit = median_of(args.repeats, lambda: live_start(args.repo, "monitor", config, work))
        print(f"first frame read from a live source, vidx monitor, after the command starts: {first_frame:.1f} s",
              flush=True)
        print(f"first commit, vidx monitor, tiny models, after the command starts: {first_commit:.1f} s",
              flush=True)

        clip = make_video(work / "clip.mp4", duration_s=5, fps=FPS, codec="libx264")
        root = work / "noop"
        vidx(args.repo, "ingest", str(clip), "--index", str(root), "--config", str(config), "--no-progress").wait()
        if not IndexReader(IndexRoot.at(root)).manifest.streams:
            raise RuntimeError("the first ingest of the no-op benchmark wrote nothing")
        noop = median_of(args.repeats, lambda: timed_exit(args.repo, "ingest", str(clip), "--index", str(root),
                                                          "--config", str(config), "--no-progress"))
        print(f"no-op resume, vidx ingest of a file the index holds complete, start to exit: {noop:.1f} s", flush=True)

        missing = median_of(args.repeats, lambda: timed_exit(args.repo, "ask", str(work / "missing"), "what?"))
        print(f"vidx ask argument error, no index there, start to exit: {missing:.1f} s", flush=True)
        empty = median_of(args.repeats, lambda: timed_exit(args.repo, "ask", str(root), ""))
        print(f"vidx ask argument error, empty question, start to exit: {empty:.1f} s", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
