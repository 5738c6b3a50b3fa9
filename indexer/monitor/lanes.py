"""`Lane`: the monitor's evaluation of one group of query kinds, at its own pace.

A model-free rule (black, frozen, lost signal) costs microseconds a frame; a natural-language
condition may wait seconds for LLaMA-VID's verdict. Each group is a lane with its own cursor per
stream and its own trackers, so a rule's alert never waits behind a verification: the monitor
runs the lanes side by side and commits each lane's state with the alerts that lane raised."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.monitor import conditions
from indexer.monitor.alerts import Alert
from indexer.monitor.conditions import ConditionEvaluator, Verdict
from indexer.monitor.events import (
    Closed,
    EventTracker,
    FrameRef,
    Opened,
    OpenEvent,
    TrackerState,
    alert_id,
)
from indexer.monitor.frames import FRAME_COLUMNS, Frames
from indexer.monitor.queries import RULES, StandingQuery
from indexer.monitor.state import LaneState, PendingClose, StreamCursor
from indexer.settings import Settings
from indexer.store.manifest import Manifest, StreamEntry
from indexer.store.root import IndexRoot
from indexer.store.timeline import read_timeline

LANES = {"rules": RULES, "conditions": ("condition",)}
RECENT_FRAMES = 32    # per stream, kept for verification windows and the frozen-picture rule


@dataclass
class LaneStep:
    """What one step raised: opening rows, and ended events whose closing rows wait for a clip."""

    rows: list[Alert] = field(default_factory=list)
    closes: list[PendingClose] = field(default_factory=list)


class Lane:
    def __init__(self, name: str, root: IndexRoot, settings: Settings, committed: LaneState,
                 evaluator: Callable[[], ConditionEvaluator], stats: dict[str, int]):
        self.name, self.kinds = name, LANES[name]
        self.root = root
        self.settings = settings
        self.committed = committed                       # as the last monitor commit wrote it
        self.state = committed.model_copy(deep=True)     # as evaluated since
        self._evaluator = evaluator                      # loads the models on first call
        self.stats = stats
        self._recent: dict[str, Frames] = {}
        self._queries: list[StandingQuery] = []
        self._out = LaneStep()

    def step(self, manifest: Manifest | None, queries: list[StandingQuery]) -> LaneStep | None:
        """Evaluate every commit since the last step; None when there was nothing new."""
        self._queries = [q for q in queries if q.kind in self.kinds]
        live = {q.id for q in self._queries}
        for key in [k for k in self.state.trackers if k.split("/", 1)[0] not in live]:
            del self.state.trackers[key]   # a removed query's open event goes with it
        self._out, changed = LaneStep(), False
        for stream_id, entry in (manifest.streams.items() if manifest else []):
            cursor = self.state.streams.setdefault(stream_id, StreamCursor())
            new = [seg for seg in entry.segments if seg.generation > cursor.generation]
            if new:
                if self._active(stream_id):
                    for segment in new:
                        self._evaluate(entry, read_timeline(self.root, segment.timeline, FRAME_COLUMNS),
                                       cursor)
                else:   # nothing in this lane watches the stream: past what is committed, unread
                    cursor.next_index = max(cursor.next_index, entry.next_index)
                    self._recent.pop(stream_id, None)
                cursor.generation = max(seg.generation for seg in new)
                changed = True
            if entry.complete or entry.error:
                self._finish_stream(entry)
            elif entry.liveness is not None and entry.liveness.waiting_since is not None:
                self._no_signal(entry)
        return self._out if changed or self._out.rows or self._out.closes else None

    def rollback(self) -> None:
        """Back to the last commit: a failed step or commit is evaluated again from there."""
        self.state = self.committed.model_copy(deep=True)
        self._recent.clear()

    # -- evaluation -------------------------------------------------------------------------------
    def _evaluate(self, entry: StreamEntry, table: pa.Table, cursor: StreamCursor) -> None:
        gaps = table.filter(pc.equal(table["kind"], "gap"))
        frames_table = table.filter(pc.and_(pc.equal(table["kind"], "frame"),
                                            pc.greater_equal(table["sample_index"], cursor.next_index)))
        if gaps.num_rows:
            self._signal_lost(entry, gaps)
        if frames_table.num_rows:
            frames = Frames.from_rows(entry.stream_id, frames_table.sort_by("sample_index"))
            self._frames(entry, frames)
            cursor.next_index = int(frames.sample_index[-1]) + 1

    def _frames(self, entry: StreamEntry, frames: Frames) -> None:
        recent = self._recent.get(entry.stream_id)
        context = Frames.concat([recent, frames]) if recent is not None else frames
        offset = len(context) - len(frames)   # frames[i] is context[offset + i]
        window = self.settings.monitor.window_frames
        rule_scores: dict[str, np.ndarray] = {}
        for query in self._active(entry.stream_id):
            tracker = self._tracker(query, entry)
            if query.kind == "signal_lost":
                self._signal_back(query, entry, tracker, frames)
                continue
            starts = None
            if query.kind == "condition":
                evaluator = self._evaluator()
                scores = np.asarray(evaluator.scores(query.condition, frames), np.float32)
                positive = scores >= evaluator.threshold(query.sensitivity)
                self.stats["frames"] += len(frames)
                self.stats["candidates"] += int(positive.sum())

                def verify(i: int, condition: str = query.condition, evaluator=evaluator) -> Verdict:
                    end = offset + i + 1
                    self.stats["verifications"] += 1
                    return evaluator.verify(condition, context[max(0, end - window):end])

                def describe(i: int) -> str:
                    return ""
            else:
                if query.kind not in rule_scores:
                    previous = conditions.luma(context.image(offset - 1)) if offset else None
                    rule_scores[query.kind] = (conditions.black_scores(frames) if query.kind == "black" else
                                               conditions.frozen_scores(frames, previous))
                measured = rule_scores[query.kind]
                limit = (conditions.black_threshold if query.kind == "black" else
                         conditions.frozen_threshold)(query.sensitivity)
                positive, scores, verify = measured <= limit, -measured, None
                describe = _rule_description(query.kind, measured, limit)
                if query.kind == "frozen":  # the picture froze on the frame before the first repeat
                    starts = [FrameRef.of(context, offset + i - 1) if offset + i > 0 else FrameRef.of(frames, i)
                              for i in range(len(frames))]
            for event in tracker.step(frames, scores, positive, verify, describe, starts):
                self._on_event(query, entry, event)
        # built after the rules ran, so the thumbnails they decoded stay decoded for the next commit
        self._recent[entry.stream_id] = (Frames.concat([recent, frames]) if recent is not None
                                         else frames)[-RECENT_FRAMES:]

    def _signal_lost(self, entry: StreamEntry, gaps: pa.Table) -> None:
        """Gap rows: a live source was gone (or a file's stretch undecodable) from start_s to end_s."""
        for gap in gaps.to_pylist():
            if gap["reason"] and gap["reason"].startswith("timestamp discontinuity"):
                continue  # the clock jumped, the picture did not stop
            for query in self._active(entry.stream_id):
                if query.kind != "signal_lost":
                    continue
                tracker = self._tracker(query, entry)
                state = tracker.state
                lasted = (gap["end_s"] - gap["pts_s"]) if gap["end_s"] is not None else math.inf
                quiet = state.quiet_until_s is not None and gap["pts_s"] < state.quiet_until_s
                if state.open is not None or lasted < query.min_duration_s or quiet:
                    continue
                wall = gap["wall_time"].timestamp() if gap["wall_time"] is not None else None
                start = FrameRef(frame_id=-1, index=round(gap["pts_s"] * 1000), pts_s=gap["pts_s"], wall_time=wall)
                state.open = OpenEvent(alert_id=alert_id(query.id, entry.stream_id, start.index), start=start,
                                       last=start, best=start, best_score=0.0, answer=f"signal lost: {gap['reason']}")
                self._on_event(query, entry, Opened(state.open))
                if gap["end_s"] is not None:
                    wall_end = gap["wall_end"].timestamp() if gap["wall_end"] is not None else None
                    self._on_event(query, entry, _closed_at(tracker, gap["end_s"], wall_end))

    def _no_signal(self, entry: StreamEntry) -> None:
        """The source is still down: its reader has waited `monitor.signal_lost_after_s` (and the
        query's min_duration_s) for a frame, by its last report. The event opens now; frames
        from the source end it (`_signal_back`), and the gap row written when the outage ends is
        this event, not another."""
        liveness = entry.liveness
        start_s = entry.watermark_s or 0.0   # media time of the last committed frame
        for query in self._active(entry.stream_id):
            if query.kind != "signal_lost":
                continue
            if liveness.waited_s < max(self.settings.monitor.signal_lost_after_s, query.min_duration_s):
                continue
            state = self._tracker(query, entry).state
            if state.open is not None or (state.quiet_until_s is not None and start_s < state.quiet_until_s):
                continue
            # the event is named by when the frames stopped: the same outage gets the same id after a restart
            start = FrameRef(frame_id=-1, index=round(liveness.waiting_since * 1000), pts_s=start_s,
                             wall_time=liveness.waiting_since)
            state.open = OpenEvent(alert_id=alert_id(query.id, entry.stream_id, start.index), start=start,
                                   last=start, best=start, best_score=0.0,
                                   answer=f"signal lost: no frame for {liveness.waited_s:.0f} s")
            self._on_event(query, entry, Opened(state.open))

    def _signal_back(self, query: StandingQuery, entry: StreamEntry, tracker: EventTracker, frames: Frames) -> None:
        """A lost signal ends at the first frame the source gave after it: by the wall clock when
        both have one (frames held back in the reader from before the outage are committed after
        it began), else by media time (an outage recorded as given up, ended in a later run)."""
        event = tracker.state.open
        if event is None:
            return
        if event.start.wall_time is not None and not np.isnan(frames.wall_time).all():
            after = np.flatnonzero(frames.wall_time > event.start.wall_time)
        else:
            after = np.flatnonzero(frames.pts_s > event.start.pts_s)
        if len(after):
            i = int(after[0])
            self._on_event(query, entry, _closed_at(tracker, float(frames.pts_s[i]), frames.wall(i)))

    def _finish_stream(self, entry: StreamEntry) -> None:
        for query in self._active(entry.stream_id):
            key = _key(query.id, entry.stream_id)
            if key in self.state.trackers and self.state.trackers[key].open is not None and query.kind != "signal_lost":
                for event in self._tracker(query, entry).finish():
                    self._on_event(query, entry, event)

    def _on_event(self, query: StandingQuery, entry: StreamEntry, event: Opened | Closed) -> None:
        e = event.event
        stream_id = entry.stream_id
        if isinstance(event, Closed):   # the closing row waits for the clip
            self._out.closes.append(PendingClose(
                alert_id=e.alert_id, stream_id=stream_id, end_s=event.end_s, wall_end=event.wall_end,
                deadline=time.time() + self.settings.monitor.clip_wait_s))
            return
        has_frame = e.best.frame_id >= 0   # a lost signal has none
        self._out.rows.append(Alert(
            e.alert_id, query.id, query.kind, query.describe(), stream_id, "open", e.start.pts_s, None,
            e.start.wall_time, None, e.best.frame_id if has_frame else None, e.best_score if has_frame else None,
            e.answer, self._thumbnail(stream_id, e.best.frame_id) if has_frame else None, raised_at=time.time()))

    # -- helpers ----------------------------------------------------------------------------------
    def _active(self, stream_id: str) -> list[StandingQuery]:
        return [q for q in self._queries if not q.paused and q.watches(stream_id)]

    def _tracker(self, query: StandingQuery, entry: StreamEntry) -> EventTracker:
        state = self.state.trackers.setdefault(_key(query.id, entry.stream_id), TrackerState())
        m = self.settings.monitor
        return EventTracker(query.id, entry.stream_id, 1.0 / entry.fps, window_frames=m.window_frames,
                            merge_gap_s=m.merge_gap_s, cooldown_s=query.cooldown_s,
                            min_duration_s=query.min_duration_s, state=state)

    def _thumbnail(self, stream_id: str, frame_id: int) -> bytes | None:
        recent = self._recent.get(stream_id)   # the frame is almost always among the latest
        if recent is not None and frame_id in recent.frame_ids:
            return recent.thumbnails[int(np.flatnonzero(recent.frame_ids == frame_id)[0])]
        from indexer.store.index import IndexReader

        return IndexReader(self.root).frame_row(frame_id, ["thumbnail"])["thumbnail"]


def _key(query_id: str, stream_id: str) -> str:
    return f"{query_id}/{stream_id}"


def _closed_at(tracker: EventTracker, end_s: float, wall_end: float | None) -> Closed:
    event = tracker.state.open
    tracker.state.open = None
    tracker.state.quiet_until_s = end_s + tracker.cooldown_s
    return Closed(event, end_s, wall_end)


def _rule_description(kind: str, measured: np.ndarray, limit: float) -> Callable[[int], str]:
    if kind == "black":
        return lambda i: f"black picture: 99th-percentile luma {measured[i]:.0f} <= {limit:.0f}"
    return lambda i: f"frozen picture: mean luma change {measured[i]:.2f} <= {limit:.2f} between frames"


__all__ = ["LANES", "Lane", "LaneStep"]
