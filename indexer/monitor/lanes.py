"""`Lane`: the monitor's evaluation of the query kinds of one lane, at its own pace.

A model-free rule (black, frozen, lost signal) costs microseconds a frame; a natural-language
condition may wait seconds for LLaMA-VID's verdict. Each `RuleKind` names its lane (kinds.py); a
lane has its own cursor per stream and its own trackers, so a rule's alert never waits behind a
verification: the monitor runs the lanes side by side and commits each lane's state with the
alerts that lane raised. A lane reads the committed rows and hands them to each query's kind; it
never asks which kind a query is."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.batches import Gap
from indexer.monitor.alerts import Alert
from indexer.monitor.conditions import ConditionEvaluator
from indexer.monitor.events import Closed, EventTracker, Opened, TrackerState
from indexer.monitor.frames import FRAME_COLUMNS, Frames
from indexer.monitor.kinds import LANES, LaneContext, NewFrames, rule_kind
from indexer.monitor.queries import StandingQuery
from indexer.monitor.state import LaneState, PendingClose, StreamCursor
from indexer.settings import Settings
from indexer.store.manifest import Manifest, StreamEntry
from indexer.store.root import IndexRoot
from indexer.store.timeline import read_timeline

RECENT_FRAMES = 32    # per stream, kept for verification windows and the frozen-picture rule


@dataclass
class LaneStep:
    """What one step raised: opening rows, and ended events whose closing rows wait for a clip."""

    rows: list[Alert] = field(default_factory=list)
    closes: list[PendingClose] = field(default_factory=list)


class Lane:
    def __init__(self, name: str, root: IndexRoot, settings: Settings, committed: LaneState,
                 evaluator: Callable[[], ConditionEvaluator], stats: dict[str, int]):
        if name not in LANES:
            raise ValueError(f"no lane {name!r}; the lanes are {', '.join(LANES)}")
        self.name = name
        self.root = root
        self.settings = settings
        self.committed = committed                       # as the last monitor commit wrote it
        self.state = committed.model_copy(deep=True)     # as evaluated since
        self._context = LaneContext(evaluator, settings.monitor, stats)   # evaluator: loads the models on first call
        self._recent: dict[str, Frames] = {}
        self._queries: list[StandingQuery] = []
        self._out = LaneStep()

    def step(self, manifest: Manifest | None, queries: list[StandingQuery]) -> LaneStep | None:
        """Evaluate every commit since the last step; None when there was nothing new."""
        self._queries = [q for q in queries if rule_kind(q.kind).lane == self.name]
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
            self._gaps(entry, gaps)
        if frames_table.num_rows:
            frames = Frames.from_rows(entry.stream_id, frames_table.sort_by("sample_index"))
            self._frames(entry, frames)
            cursor.next_index = int(frames.sample_index[-1]) + 1

    def _frames(self, entry: StreamEntry, frames: Frames) -> None:
        recent = self._recent.get(entry.stream_id)
        context = Frames.concat([recent, frames]) if recent is not None else frames
        new = NewFrames(frames, context, offset=len(context) - len(frames))
        for query in self._active(entry.stream_id):
            for event in query.rule().on_frames(self._tracker(query, entry), new, self._context):
                self._on_event(query, entry, event)
        # built after the rules ran, so the thumbnails they decoded stay decoded for the next commit
        self._recent[entry.stream_id] = (Frames.concat([recent, frames]) if recent is not None
                                         else frames)[-RECENT_FRAMES:]

    def _gaps(self, entry: StreamEntry, rows: pa.Table) -> None:
        """Gap rows: a live source was gone (or a file's stretch undecodable) from start_s to end_s."""
        for gap in rows.to_pylist():
            outage = Gap(gap["pts_s"], gap["end_s"], gap["reason"] or "",
                         gap["wall_time"].timestamp() if gap["wall_time"] is not None else None,
                         gap["wall_end"].timestamp() if gap["wall_end"] is not None else None)
            for query in self._active(entry.stream_id):
                for event in query.rule().on_gap(self._tracker(query, entry), outage):
                    self._on_event(query, entry, event)

    def _no_signal(self, entry: StreamEntry) -> None:
        """The source is still down: its reader has waited for a frame since
        `entry.liveness.waiting_since`, by its last report."""
        for query in self._active(entry.stream_id):
            for event in query.rule().on_waiting(self._tracker(query, entry), entry, self._context):
                self._on_event(query, entry, event)

    def _finish_stream(self, entry: StreamEntry) -> None:
        for query in self._active(entry.stream_id):
            state = self.state.trackers.get(_key(query.id, entry.stream_id))
            if state is not None and state.open is not None:
                for event in query.rule().on_stream_end(self._tracker(query, entry)):
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


__all__ = ["LANES", "Lane", "LaneStep"]
