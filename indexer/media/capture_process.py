"""Live captures in a child process: `LiveCapture`s run there, the parent takes their samples.

    process = CaptureProcess([CaptureRequest(source, options, start_index, resume_time_s, ring)])
    capture = process.captures[source.stream_id]   # LiveCapture's interface: wait_opened, take, ...
    ...
    process.close()

Why a process and not threads in the parent: `ray.init` starts its daemons with
`subprocess.Popen(preexec_fn=...)`, and a child forked that way runs Python code that frees
the other threads' frames; a PyAV frame freed there destroys FFmpeg's worker threads' condition
variables and hangs forever. The capture process is started without `preexec_fn` (fork + exec)
before Ray, runs no Ray, and forks nothing. It ends when the parent closes the connection or dies.

The parent and this child speak over a socket pair with `multiprocessing.connection` (pickles
between the two processes of one command, never read from a file).
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from indexer.batches import Gap, SampledFrame, SourceInfo
from indexer.media.capture import LiveCapture
from indexer.media.ring import SegmentRing
from indexer.media.source import Source, SourceError
from indexer.settings import ReaderOptions

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 15.0   # the child stops its captures (each closes its ring) within this


@dataclass(frozen=True)
class RingSettings:
    """A live source's recording (see `SegmentRing`)."""

    directory: str
    keep_s: float | None
    segment_s: float
    keep_bytes: int | None = None


@dataclass(frozen=True)
class CaptureRequest:
    """One source to capture, resuming at `start_index` / `resume_time_s` (see `SourceReader`)."""

    source: Source
    options: ReaderOptions
    start_index: int = 0
    resume_time_s: float | None = None
    ring: RingSettings | None = None


class CaptureProcess:
    """The parent's side: starts the child at once, which starts every capture."""

    def __init__(self, requests: list[CaptureRequest]):
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())],
                                             pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self._conn = Connection(ours.detach())
        self._lock = threading.Lock()   # one request at a time: feeders call from their threads
        self._conn.send(requests)
        self.captures = {r.source.stream_id: RemoteCapture(self, r.source) for r in requests}

    def call(self, *request):
        with self._lock:
            self._conn.send(request)
            return self._conn.recv()

    def close(self) -> None:
        """Stop every capture and wait for the child (killed if it does not end in time)."""
        try:
            with self._lock:
                self._conn.send(("close", None))
                self._conn.close()
        except OSError:
            pass  # the child is gone already
        try:
            self._process.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class RemoteCapture:
    """`LiveCapture`'s interface for a capture that runs in the child."""

    def __init__(self, process: CaptureProcess, source: Source):
        self.process = process
        self.source = source
        self.info: SourceInfo | None = None
        self.error: SourceError | None = None
        self.finished = False
        self.last_frame_wall: float | None = None  # unix time the child last decoded a frame (liveness)

    def wait_opened(self) -> SourceInfo:
        info, error = self.process.call("opened", self.source.stream_id)
        self.info = info
        if info is None:
            self.error = SourceError(self.source.uri, error)
            raise self.error
        return info

    @property
    def live(self) -> bool:
        return self.info is not None and self.info.live

    def take(self, max_items: int, timeout_s: float) -> list[SampledFrame | Gap]:
        """What the child holds, up to `max_items`; when it holds nothing, waits `timeout_s` first."""
        items, self.finished, error, self.last_frame_wall = self.process.call("take", self.source.stream_id, max_items)
        if error is not None:
            self.error = SourceError(self.source.uri, error)
        if not items and not self.finished:
            time.sleep(timeout_s)
        return items

    def close(self) -> None:
        """Stop it and forget what it holds (the child goes with `CaptureProcess.close`)."""
        self.process.call("close_one", self.source.stream_id)


def _serve(conn: Connection) -> None:
    requests: list[CaptureRequest] = conn.recv()
    captures: dict[str, LiveCapture] = {}
    for r in requests:
        ring = r.ring and SegmentRing(Path(r.ring.directory), keep_s=r.ring.keep_s, segment_s=r.ring.segment_s,
                                      keep_bytes=r.ring.keep_bytes)
        captures[r.source.stream_id] = LiveCapture(r.source, r.options, r.start_index, r.resume_time_s, ring).start()
    try:
        while True:
            try:
                op, stream_id, *args = conn.recv()
            except EOFError:  # the parent is gone
                break
            if op == "close":
                break
            capture = captures[stream_id]
            if op == "opened":
                try:
                    reply = (capture.wait_opened(), None)
                except SourceError as exc:
                    reply = (None, exc.reason)
            elif op == "take":
                items = capture.take(args[0], 0.0)
                reply = (items, capture.finished, capture.error.reason if capture.error else None,
                         capture.reader.last_frame_wall)
            elif op == "close_one":
                reply = capture.close()
            else:
                raise ValueError(f"unknown capture request {op!r}")
            conn.send(reply)
    finally:
        for capture in captures.values():
            capture.close()


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the parent decides when captures stop (it commits
    # what they sampled first); when it dies, the connection closes and this process ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _serve(Connection(int(sys.argv[1])))
