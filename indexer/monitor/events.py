"""`EventTracker`: one standing query on one stream, frame by frame, turned into events.

One alert per event, not one per frame: consecutive positive frames (with negative stretches
shorter than `merge_gap_s` in between) are one event; after an event ends, the query stays quiet
for its cooldown. The state is a pydantic model that the monitor commits with its cursor, so a
restarted monitor goes on exactly where the committed one stopped: an event open at the crash
stays the same event (same alert id) instead of being raised again or lost."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from indexer.monitor.conditions import Verdict
from indexer.monitor.frames import Frames


class FrameRef(BaseModel):
    frame_id: int
    index: int              # sample index
    pts_s: float            # media time
    wall_time: float | None = None

    @classmethod
    def of(cls, frames: Frames, i: int) -> FrameRef:
        return cls(frame_id=int(frames.frame_ids[i]), index=int(frames.sample_index[i]),
                   pts_s=float(frames.pts_s[i]), wall_time=frames.wall(i))


class OpenEvent(BaseModel):
    alert_id: str
    start: FrameRef          # first frame showing it
    last: FrameRef           # latest frame showing it
    best: FrameRef           # strongest frame (the alert's thumbnail)
    best_score: float
    answer: str
    since_verified: int = 0  # positive frames since the last verification


class Run(BaseModel):
    """Positive frames in a row while no event is open (not verified yet, or too short)."""

    start: FrameRef
    wait: int = 0            # after a "no" from the verifier: positive frames before asking again


class TrackerState(BaseModel):
    open: OpenEvent | None = None
    run: Run | None = None
    quiet_until_s: float | None = None   # cooldown: media time before which nothing new opens


@dataclass
class Opened:
    event: OpenEvent


@dataclass
class Closed:
    event: OpenEvent
    end_s: float             # media time the event ended (the last positive frame's end)
    wall_end: float | None


def alert_id(query_id: str, stream_id: str, start_index: int) -> str:
    """Deterministic: the same event re-evaluated after a restart gets the same id."""
    return hashlib.sha256(f"{query_id}\0{stream_id}\0{start_index}".encode()).hexdigest()[:20]


class EventTracker:
    def __init__(self, query_id: str, stream_id: str, interval_s: float, *, window_frames: int, merge_gap_s: float,
                 cooldown_s: float, min_duration_s: float, state: TrackerState | None = None):
        self.query_id, self.stream_id = query_id, stream_id
        self.interval_s = interval_s
        self.window_frames = window_frames
        self.merge_gap_s = max(merge_gap_s, interval_s)   # one negative frame never splits an event by itself
        self.cooldown_s = cooldown_s
        self.min_duration_s = min_duration_s
        self.state = state or TrackerState()

    def step(self, frames: Frames, scores: np.ndarray, positive: np.ndarray,
             verify: Callable[[int], Verdict] | None, describe: Callable[[int], str],
             starts: list[FrameRef] | None = None) -> list[Opened | Closed]:
        """Feed frames in order. scores: higher = stronger; positive: passed the prefilter or rule.
        verify(i): the verifier's verdict on the window ending at frame i (None: rules, no
        verification); describe(i): the alert's answer for a rule. starts[i]: where an event
        that frame i begins really started (a frozen picture froze one frame earlier)."""
        out: list[Opened | Closed] = []
        state = self.state
        for i in range(len(frames)):
            here = FrameRef.of(frames, i)
            if state.open is not None:
                event = state.open
                if positive[i]:
                    event.since_verified += 1
                    if verify is not None and event.since_verified >= self.window_frames:
                        event.since_verified = 0
                        if not verify(i).positive:  # the verifier no longer sees it: it ended before this frame
                            out.append(self._close())
                            continue
                    event.last = here
                    if scores[i] > event.best_score:
                        event.best, event.best_score = here, float(scores[i])
                elif here.pts_s - event.last.pts_s >= self.merge_gap_s:
                    out.append(self._close())
                continue
            if not positive[i] or (state.quiet_until_s is not None and here.pts_s < state.quiet_until_s):
                state.run = None
                continue
            if state.run is None:
                state.run = Run(start=starts[i] if starts else here)
            run = state.run
            if here.pts_s + self.interval_s - run.start.pts_s < self.min_duration_s:
                continue
            if run.wait > 0:
                run.wait -= 1
                continue
            verdict = verify(i) if verify is not None else Verdict(True, describe(i))
            if not verdict.positive:
                run.wait = self.window_frames - 1
                continue
            state.open = OpenEvent(alert_id=alert_id(self.query_id, self.stream_id, run.start.index), start=run.start,
                                   last=here, best=here, best_score=float(scores[i]), answer=verdict.answer)
            state.run = None
            out.append(Opened(state.open))
        return out

    def finish(self) -> list[Closed]:
        """The stream ended: an open event ends at its last frame."""
        return [self._close()] if self.state.open is not None else []

    def open_at(self, start: FrameRef, answer: str) -> list[Opened]:
        """An event that a clock, not a run of positive frames, says began at `start` (a source that
        stopped giving frames) opens now, unless one is open or the query is quiet at start.pts_s.
        Its id is named by `start.index`, so the same event gets the same id after a restart."""
        state = self.state
        if state.open is not None or (state.quiet_until_s is not None and start.pts_s < state.quiet_until_s):
            return []
        state.open = OpenEvent(alert_id=alert_id(self.query_id, self.stream_id, start.index), start=start,
                               last=start, best=start, best_score=0.0, answer=answer)
        state.run = None
        return [Opened(state.open)]

    def close_at(self, end_s: float, wall_end: float | None) -> list[Closed]:
        """The open event (if any) ended at media time `end_s`, by what ended it rather than by its
        last positive frame (a lost signal ends at the first frame the source gives again)."""
        return [self._end(end_s, wall_end)] if self.state.open is not None else []

    def _close(self) -> Closed:
        last = self.state.open.last
        wall_end = last.wall_time + self.interval_s if last.wall_time is not None else None
        return self._end(last.pts_s + self.interval_s, wall_end)

    def _end(self, end_s: float, wall_end: float | None) -> Closed:
        event = self.state.open
        self.state.open = None
        self.state.run = None
        self.state.quiet_until_s = end_s + self.cooldown_s   # the cooldown starts when the event ends
        return Closed(event, end_s, wall_end)


__all__ = ["Closed", "EventTracker", "FrameRef", "OpenEvent", "Opened", "Run", "TrackerState", "alert_id"]
