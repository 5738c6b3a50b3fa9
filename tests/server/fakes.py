"""A stand-in for `QueryEngine` (no models): the calls the server makes, with a gate to hold a
question mid-way and a live stream whose latest frame can be moved on."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import numpy as np
from PIL import Image

from indexer.query.answer import Answer, Citation
from indexer.query.prompt import Turn
from indexer.store.manifest import StreamEntry


def entry(stream_id: str, uri: str, protocol: str, live: bool = False) -> StreamEntry:
    return StreamEntry(stream_id=stream_id, uri=uri, protocol=protocol, live=live, fps=1.0, frames=2)


def jpeg(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (value, value, value)).save(out, format="JPEG")
    return out.getvalue()


class FakeEngine:
    """The QueryEngine calls the server makes; `release` cleared holds questions mid-way."""

    def __init__(self, entries: list[StreamEntry]):
        self.entries = entries
        self.frames = SimpleNamespace(streams={  # two frames a stream, at 0 s and 1 s
            e.stream_id: SimpleNamespace(frame_ids=np.array([2 * i, 2 * i + 1]), pts_s=np.array([0.0, 1.0]))
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
        frame_id = int(max(f.frame_ids.max() for f in self.frames.streams.values())) + 1
        frames.frame_ids, frames.pts_s = np.append(frames.frame_ids, frame_id), np.append(frames.pts_s, pts_s)
        return frame_id

    def latest_frame(self, stream_id: str) -> tuple[int, float] | None:
        frames = self.frames.streams[stream_id]
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
