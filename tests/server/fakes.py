"""A stand-in for `QueryEngine` (no models): the calls the server makes, with a gate to hold a
question mid-way and a live stream whose latest frame can be moved on; and alerts committed the
way the monitor commits them (alert rows, then the state.json that lists them)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from indexer.monitor.alerts import Alert, write_alerts
from indexer.monitor.state import read_state, write_state
from indexer.query.answer import Answer, Citation
from indexer.query.prompt import Turn
from indexer.store.manifest import StreamEntry
from indexer.store.root import IndexRoot
from tests.mediagen import make_video


def entry(stream_id: str, uri: str, protocol: str, live: bool = False, error: str | None = None) -> StreamEntry:
    """A stream with two committed frames, or (with an `error`) a source that failed and has none."""
    return StreamEntry(stream_id=stream_id, uri=uri, protocol=protocol, live=live, fps=1.0,
                       frames=0 if error else 2, error=error)


def jpeg(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (value, value, value)).save(out, format="JPEG")
    return out.getvalue()


class FakeEngine:
    """The QueryEngine calls the server makes; `release` cleared holds questions mid-way.

    root: the index root the monitor routes read (default: one that does not exist: no standing
    queries, no alerts)."""

    def __init__(self, entries: list[StreamEntry], root: Path | None = None):
        self.entries = entries
        self.root = IndexRoot.at(root if root is not None else "/nonexistent/fake-index")
        self.frames = SimpleNamespace(streams={  # two frames a stream, at 0 s and 1 s (none if it failed)
            e.stream_id: SimpleNamespace(frame_ids=np.array([2 * i, 2 * i + 1][:e.frames], dtype=np.int64),
                                         pts_s=np.array([0.0, 1.0][:e.frames]))
            for i, e in enumerate(entries)})
        self.release = threading.Event()
        self.release.set()
        self.inside = 0
        self.most_inside = 0
        self.refreshes = 0
        self._count = threading.Lock()

    def refresh(self, force: bool = False) -> bool:
        self.refreshes += 1
        return False

    def streams(self) -> list[StreamEntry]:
        return list(self.entries)

    def add_frame(self, stream_id: str, pts_s: float) -> int:
        """A new committed frame of `stream_id` (as a live ingest would add); returns its id."""
        frames = self.frames.streams[stream_id]
        frame_id = int(max(f.frame_ids.max(initial=-1) for f in self.frames.streams.values())) + 1
        frames.frame_ids, frames.pts_s = np.append(frames.frame_ids, frame_id), np.append(frames.pts_s, pts_s)
        return frame_id

    def latest_frame(self, stream_id: str) -> tuple[int, float] | None:
        frames = self.frames.streams[stream_id]
        if not len(frames.frame_ids):
            return None
        newest = int(np.argmax(frames.frame_ids))
        return int(frames.frame_ids[newest]), float(frames.pts_s[newest])

    def thumbnail(self, frame_id: int) -> bytes:
        if not any(frame_id in f.frame_ids for f in self.frames.streams.values()):
            raise KeyError(f"no frame {frame_id}")
        return jpeg(frame_id * 10 % 256)

    def ask(self, question, where=None, history=None, k=None) -> Answer:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            assert self.release.wait(20), "the test never released the question"
            return Answer(question, "an answer", [Citation("file", 0.0, 1.0, (0, 1), 1, 0.5)], "whole", 2, 2, 30,
                          {"embed": 0.01, "llm_first_token": float("nan")},
                          list(history or []) + [Turn(question, "an answer")])
        finally:
            with self._count:
                self.inside -= 1

    def search(self, text=None, image=None, k=None, where=None):
        return []


# -- monitor commits ------------------------------------------------------------------------------
PICTURE = jpeg(200)


def alert(alert_id: str, status: str = "open", *, stream_id: str = "cam", query_id: str = "van",
          clip: str | None = None, wall_start: float = 1000.0, thumbnail: bytes | None = PICTURE) -> Alert:
    """A row of alert `alert_id` ("a red van" on `stream_id`, media time 10-14 s once closed)."""
    closed = status == "closed"
    return Alert(alert_id=alert_id, query_id=query_id, kind="condition", condition="a red van", stream_id=stream_id,
                 status=status, start_s=10.0, end_s=14.0 if closed else None, wall_start=wall_start,
                 wall_end=wall_start + 4 if closed else None, frame_id=7, score=0.9, answer="Yes, a red van.",
                 thumbnail=thumbnail, clip=clip, clip_start_s=5.0 if clip else None,
                 clip_end_s=19.0 if clip else None, clip_covered=True if clip else None, raised_at=time.time())


def commit(root: Path, rows: list[Alert]) -> int:
    """A monitor commit, the monitor's way: the alert rows, then state.json that lists them."""
    index = IndexRoot.at(root)
    state = read_state(index)
    generation = state.generation + 1
    state.alert_files.append((generation, write_alerts(index, generation, rows)))
    state.generation = generation
    write_state(index, state)
    return generation


def clip_file(root: Path, name: str) -> str:
    """A real 2 s H.264 MP4 in monitor/clips/; its path relative to the root (as alert rows hold it)."""
    index = IndexRoot.at(root)
    path = index.clip_file(Path(name).stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_video(path, duration_s=2.0, fps=10, size=(160, 120))
    return path.relative_to(index.path).as_posix()
