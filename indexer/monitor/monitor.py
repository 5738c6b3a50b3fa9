"""`Monitor`: standing queries evaluated on every commit of an index that ingestion is writing.

    monitor = Monitor(root, settings, on_alert=print)
    monitor.run(stop)          # or monitor.poll() step by step

Each poll reads the frames committed since the last one (only those segments' files), runs every
active query over them (`EventTracker`), and commits: alert rows first, then `state.json` with
the cursors and the open events. Webhooks are handed to the durable outbox only after that
commit, and a restart hands over again whatever the last run committed but may not have handed
over; the outbox ignores ids it already has. So after a crash no alert is lost and none is sent
twice. The monitor only reads the index: it runs beside the writer, in any process."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.media.clips import cut_clip
from indexer.media.ring import ring_segments
from indexer.monitor import conditions
from indexer.monitor.alerts import Alert, AlertLog, write_alerts
from indexer.monitor.conditions import ConditionEvaluator, load_evaluator
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
from indexer.monitor.queries import MONITOR_DIR, QueryStore, StandingQuery
from indexer.monitor.state import (
    PendingClose,
    StreamCursor,
    read_state,
    write_state,
)
from indexer.monitor.webhooks import WebhookSender
from indexer.settings import Settings
from indexer.store.manifest import Manifest, StreamEntry, read_manifest

logger = logging.getLogger(__name__)
RECENT_FRAMES = 32    # per stream, kept for verification windows and the frozen-picture rule


def ring_dir(root: str | os.PathLike, stream_id: str) -> Path:
    """Where a live stream's reader keeps its recent segments for alert clips."""
    return Path(root) / MONITOR_DIR / "ring" / stream_id


def clip_path(root: Path, alert: str) -> Path:
    return root / MONITOR_DIR / "clips" / f"{alert}.mp4"


class Monitor:
    def __init__(self, root: str | os.PathLike, settings: Settings, *, evaluator: ConditionEvaluator | None = None,
                 on_alert: Callable[[Alert], None] | None = None):
        self.root = Path(root).expanduser().resolve()
        self.dir = self.root / MONITOR_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.on_alert = on_alert
        self._lock_fd = _lock(self.dir / "monitor.lock")
        self._evaluator = evaluator
        self.queries = QueryStore(self.root)
        self._queries: list[StandingQuery] = []
        self._queries_version = None
        self._recent: dict[str, Frames] = {}
        # natural-language conditions: frames evaluated, frames past the prefilter, windows verified
        self.stats = {"frames": 0, "candidates": 0, "verifications": 0}
        self.state = read_state(self.root)
        self._remove_uncommitted()
        hooks = settings.monitor.webhooks
        self.sender = WebhookSender(self.dir / "outbox", timeout_s=hooks.timeout_s, max_attempts=hooks.max_attempts,
                                    backoff_initial_s=hooks.backoff_initial_s, backoff_max_s=hooks.backoff_max_s,
                                    concurrency=hooks.concurrency)
        self.sender.start()
        self._submit(AlertLog(self.root).rows(after_generation=self.state.submitted_through))

    # -- running ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set, then once more (frames committed by a stopping ingest)."""
        interval = self.settings.monitor.poll_interval_s
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
            except Exception:  # a bad poll must not end monitoring; the next poll retries from the commit
                logger.exception("monitor poll failed")
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
        self.poll()

    def drain(self, timeout_s: float) -> None:
        """Wait (up to timeout_s) for pending clips and webhook deliveries, e.g. before exiting."""
        deadline = time.monotonic() + timeout_s
        while self.state.pending and time.monotonic() < deadline:
            time.sleep(self.settings.monitor.poll_interval_s)
            self.poll()
        self.sender.wait_idle(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.sender.stop()
        if self._evaluator is not None and hasattr(self._evaluator, "close"):
            self._evaluator.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one step ---------------------------------------------------------------------------------
    def poll(self) -> list[Alert]:
        """Evaluate what was committed since the last poll; commit; hand alerts to the webhooks."""
        manifest = read_manifest(self.root)
        self._load_queries()
        rows: list[Alert] = self._finish_pending(manifest)
        changed = bool(rows)
        for stream_id, entry in (manifest.streams.items() if manifest else []):
            cursor = self.state.streams.setdefault(stream_id, StreamCursor())
            new = [seg for seg in entry.segments if seg.generation > cursor.generation]
            if new:
                rows += self._evaluate(entry, [self.root / seg.timeline for seg in new], cursor)
                cursor.generation = max(seg.generation for seg in new)
                changed = True
            if entry.complete or entry.error:
                rows += self._finish_stream(entry)
        if changed:
            self._commit(rows)
        return rows

    def _evaluate(self, entry: StreamEntry, files: list[Path], cursor: StreamCursor) -> list[Alert]:
        tables = [pq.read_table(f, columns=FRAME_COLUMNS) for f in files]
        rows: list[Alert] = []
        for table in tables:
            gaps = table.filter(pc.equal(table["kind"], "gap"))
            frames_table = table.filter(pc.and_(pc.equal(table["kind"], "frame"),
                                                pc.greater_equal(table["sample_index"], cursor.next_index)))
            if gaps.num_rows:
                rows += self._signal_lost(entry, gaps)
            if frames_table.num_rows:
                frames = Frames.from_rows(entry.stream_id, frames_table.sort_by("sample_index"))
                rows += self._frames(entry, frames)
                cursor.next_index = int(frames.sample_index[-1]) + 1
        return rows

    def _frames(self, entry: StreamEntry, frames: Frames) -> list[Alert]:
        recent = self._recent.get(entry.stream_id)
        context = Frames.concat([recent, frames]) if recent is not None else frames
        offset = len(context) - len(frames)   # frames[i] is context[offset + i]
        window = self.settings.monitor.window_frames
        rule_scores: dict[str, np.ndarray] = {}
        rows: list[Alert] = []
        for query in self._active(entry.stream_id):
            tracker = self._tracker(query, entry)
            if query.kind == "signal_lost":
                rows += self._signal_back(query, entry, tracker, frames)
                continue
            starts = None
            if query.kind == "condition":
                evaluator = self.evaluator
                scores = np.asarray(evaluator.scores(query.condition, frames), np.float32)
                positive = scores >= evaluator.threshold(query.sensitivity)
                self.stats["frames"] += len(frames)
                self.stats["candidates"] += int(positive.sum())

                def verify(i: int, condition: str = query.condition, evaluator=evaluator) -> conditions.Verdict:
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
                rows += self._on_event(query, entry, event)
        # built after the rules ran, so the thumbnails they decoded stay decoded for the next commit
        self._recent[entry.stream_id] = (Frames.concat([recent, frames]) if recent is not None
                                         else frames)[-RECENT_FRAMES:]
        return rows

    def _signal_lost(self, entry: StreamEntry, gaps) -> list[Alert]:
        """Gap rows: a live source was gone (or a file's stretch undecodable) from start_s to end_s."""
        rows: list[Alert] = []
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
                rows += self._on_event(query, entry, Opened(state.open))
                if gap["end_s"] is not None:
                    wall_end = gap["wall_end"].timestamp() if gap["wall_end"] is not None else None
                    rows += self._on_event(query, entry, _closed_at(tracker, gap["end_s"], wall_end))
        return rows

    def _signal_back(self, query: StandingQuery, entry: StreamEntry, tracker: EventTracker,
                     frames: Frames) -> list[Alert]:
        """A lost signal recorded as given up ends when frames after it come (a later run)."""
        event = tracker.state.open
        after = np.flatnonzero(frames.pts_s > event.start.pts_s) if event is not None else []
        if not len(after):
            return []
        i = int(after[0])
        return self._on_event(query, entry, _closed_at(tracker, float(frames.pts_s[i]), frames.wall(i)))

    def _finish_stream(self, entry: StreamEntry) -> list[Alert]:
        rows: list[Alert] = []
        for query in self._active(entry.stream_id):
            key = _key(query.id, entry.stream_id)
            if key in self.state.trackers and self.state.trackers[key].open is not None and query.kind != "signal_lost":
                for event in self._tracker(query, entry).finish():
                    rows += self._on_event(query, entry, event)
        return rows

    # -- alerts -----------------------------------------------------------------------------------
    def _on_event(self, query: StandingQuery, entry: StreamEntry, event: Opened | Closed) -> list[Alert]:
        e = event.event
        stream_id = entry.stream_id
        if isinstance(event, Opened):
            thumbnail = None
            if e.best.frame_id >= 0:
                thumbnail = self._thumbnail(stream_id, e.best.frame_id)
            return [Alert(e.alert_id, query.id, query.kind, query.describe(), stream_id, "open", e.start.pts_s, None,
                          e.start.wall_time, None, e.best.frame_id if e.best.frame_id >= 0 else None,
                          e.best_score if e.best.frame_id >= 0 else None, e.answer, thumbnail, raised_at=time.time())]
        # the closing row waits for the clip
        self.state.pending.append(PendingClose(alert_id=e.alert_id, stream_id=stream_id, end_s=event.end_s,
                                               wall_end=event.wall_end,
                                               deadline=time.time() + self.settings.monitor.clip_wait_s))
        return []

    def _finish_pending(self, manifest: Manifest | None) -> list[Alert]:
        m = self.settings.monitor
        ready, waiting = [], []
        for pending in self.state.pending:   # the cheap check first: a live ring covers the post-roll
            entry = manifest.streams.get(pending.stream_id) if manifest else None
            ring = ring_dir(self.root, pending.stream_id)
            covered = entry is None or not entry.live or _ring_covers(ring, pending.end_s + m.post_roll_s)
            (ready if covered or time.time() >= pending.deadline else waiting).append(pending)
        if not ready:
            return []
        opened_rows = {row.alert_id: row for row in AlertLog(self.root).rows()}   # read once, not per alert
        rows = []
        for pending in ready:
            opened = opened_rows.get(pending.alert_id)
            if opened is None:  # opened in this very poll's commit-to-be: next poll
                waiting.append(pending)
                continue
            entry = manifest.streams.get(pending.stream_id) if manifest else None
            closed = Alert(**{**opened.__dict__, "status": "closed", "end_s": pending.end_s,
                              "wall_end": pending.wall_end, "raised_at": time.time()})
            if opened.kind != "signal_lost" and entry is not None:
                start, end = opened.start_s - m.pre_roll_s, pending.end_s + m.post_roll_s
                self._attach_clip(closed, entry, ring_dir(self.root, pending.stream_id), max(0.0, start), end)
            rows.append(closed)
        self.state.pending = waiting
        return rows

    def _attach_clip(self, alert: Alert, entry: StreamEntry, ring: Path, start_s: float, end_s: float) -> None:
        out = clip_path(self.root, alert.alert_id)
        try:
            if entry.live:
                clip = cut_clip(out, start_s, end_s, ring_dir=ring)
            else:
                clip = cut_clip(out, start_s, end_s, source=entry.uri)
        except (ValueError, OSError) as exc:
            logger.warning("alert %s: no clip: %s", alert.alert_id, exc)
            return
        alert.clip = out.relative_to(self.root).as_posix()
        alert.clip_start_s, alert.clip_end_s, alert.clip_covered = clip.start_s, clip.end_s, clip.covered

    def _commit(self, rows: list[Alert]) -> None:
        state = self.state
        state.generation += 1
        if rows:
            state.alert_files.append((state.generation, write_alerts(self.dir, state.generation, rows)))
        write_state(self.root, state)
        self._submit(rows)
        state.submitted_through = state.generation  # persisted with the next commit
        for row in rows:
            if self.on_alert is not None:
                self.on_alert(row)

    def _submit(self, rows: list[Alert]) -> None:
        queries = {q.id: q for q in self._queries or self.queries.load()}
        for row in rows:
            query = queries.get(row.query_id)
            if query is None:
                continue  # removed since: nobody to tell
            event = "alert.opened" if row.status == "open" else "alert.closed"
            payload = {"event": event, "index": str(self.root), "alert": row.to_json()}
            for n, hook in enumerate(query.webhooks):
                self.sender.submit(f"{row.alert_id}:{event}:{n}", hook.url, hook.secret, event, payload)

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def evaluator(self) -> ConditionEvaluator:
        if self._evaluator is None:
            self._evaluator = load_evaluator(self.settings.monitor.evaluator, self.root, self.settings)
        return self._evaluator

    def _load_queries(self) -> None:
        version = self.queries.version()
        if version != self._queries_version:
            self._queries, self._queries_version = self.queries.load(), version
            live = {q.id for q in self._queries}
            for key in [k for k in self.state.trackers if k.split("/", 1)[0] not in live]:
                del self.state.trackers[key]   # a removed query's open event goes with it

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

    def _remove_uncommitted(self) -> None:
        """Alert files a crashed commit wrote but never listed, and half-written temporaries."""
        keep = {name for _, name in self.state.alert_files}
        folder = self.dir / "alerts"
        for path in folder.iterdir() if folder.exists() else []:
            if path.relative_to(self.dir).as_posix() not in keep:
                path.unlink()


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


def _ring_covers(ring: Path, end_s: float) -> bool:
    segments = ring_segments(ring) if ring.exists() else []
    return bool(segments) and segments[-1].media_end_s >= end_s


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another monitor is running on {path.parent.parent} (lock {path})") from None
    return fd


__all__ = ["Monitor", "clip_path", "ring_dir"]
