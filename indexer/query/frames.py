"""`FrameTable`: the frame rows of an index's timeline (ids, streams, times, subtitles) held
in memory, one time-sorted run per stream, for turning filters and spans into frame ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from indexer.store.index import IndexReader


@dataclass(frozen=True)
class StreamFrames:
    frame_ids: np.ndarray    # int64 [n], time order
    pts_s: np.ndarray        # float64 [n]

    def between(self, start_s: float | None, end_s: float | None) -> np.ndarray:
        lo = 0 if start_s is None else int(np.searchsorted(self.pts_s, start_s, "left"))
        hi = len(self.pts_s) if end_s is None else int(np.searchsorted(self.pts_s, end_s, "right"))
        return self.frame_ids[lo:hi]


class FrameTable:
    def __init__(self, index: IndexReader):
        table = index.timeline(columns=["frame_id", "stream_id", "pts_s", "subtitle", "kind"])
        table = table.filter(pc.equal(table["kind"], "frame"))
        ids = table["frame_id"].to_numpy()
        pts = table["pts_s"].to_numpy()
        streams = np.asarray(table["stream_id"].to_pylist(), dtype=object)
        self.streams: dict[str, StreamFrames] = {}
        for stream_id in index.manifest.streams:
            mask = streams == stream_id
            order = np.argsort(pts[mask], kind="stable")
            self.streams[stream_id] = StreamFrames(ids[mask][order], pts[mask][order])
        self._pts = np.zeros(index.manifest.next_frame_id, dtype=np.float64)
        self._pts[ids] = pts
        self._stream = np.empty(index.manifest.next_frame_id, dtype=object)
        self._stream[ids] = streams
        self._subtitles = {int(i): s for i, s in zip(ids, table["subtitle"].to_pylist()) if s}

    def __len__(self) -> int:
        return sum(len(s.frame_ids) for s in self.streams.values())

    def stream(self, stream_id: str) -> StreamFrames:
        if stream_id not in self.streams:
            raise KeyError(f"unknown stream {stream_id!r}; streams: {sorted(self.streams)}")
        return self.streams[stream_id]

    def pts(self, frame_id: int) -> float:
        return float(self._pts[frame_id])

    def stream_of(self, frame_id: int) -> str:
        return str(self._stream[frame_id])

    def subtitle(self, frame_id: int) -> str | None:
        return self._subtitles.get(int(frame_id))


__all__ = ["FrameTable", "StreamFrames"]
