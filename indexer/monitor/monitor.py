"""`Monitor`: standing queries evaluated on every commit of an index that ingestion is writing.

    monitor = Monitor(IndexRoot.at(path), settings, on_alert=print)
    monitor.run(stop)          # or monitor.poll() step by step

The queries are evaluated in lanes (lanes.py): the model-free rules in one, the natural-language
conditions (prefilter and LLaMA-VID verification) in another, each reading the frames committed
since its last step. `run` steps them in threads of their own, so a rule's alert never waits
behind a verification. Each lane's step is committed on its own: alert rows first, then
`state.json` with that lane's cursors and open events (and the other lanes' as they last
committed). Webhooks are handed to the durable outbox only after that commit, and a restart hands
over again whatever the last run committed but may not have handed over; the outbox ignores ids
it already has. So after a crash no alert is lost and none is sent twice. The monitor only reads
the index: it runs beside the writer, in any process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Self

from indexer.media.clips import cut_clip
from indexer.media.ring import ring_segments
from indexer.monitor.alerts import Alert, AlertLog, write_alerts
from indexer.monitor.conditions import ConditionEvaluator, load_evaluator
from indexer.monitor.lanes import LANES, Lane
from indexer.monitor.queries import QueryStore, StandingQuery
from indexer.monitor.state import LaneState, PendingClose, read_state, write_state
from indexer.monitor.webhooks import WebhookSender
from indexer.settings import Settings
from indexer.store.credentials import source_uri
from indexer.store.manifest import Manifest, StreamEntry, read_manifest
from indexer.store.root import IndexRoot

logger = logging.getLogger(__name__)
HURRY_CHECK_S = 0.2  # how often a wait for webhook deliveries looks whether it should end


class Monitor:
    def __init__(self, root: IndexRoot, settings: Settings, *, evaluator: ConditionEvaluator | None = None,
                 on_alert: Callable[[Alert], None] | None = None):
        self.root = root
        self.settings = settings
        self.on_alert = on_alert
        self._lock = root.lock_monitor()
        self._evaluator = evaluator
        self._evaluator_lock = threading.Lock()
        self.queries = QueryStore(self.root)
        self._queries: list[StandingQuery] = []
        self._queries_version = None
        self._queries_lock = threading.Lock()
        self._commit_lock = threading.Lock()   # lanes commit one at a time, each onto the latest state
        # natural-language conditions: frames evaluated, frames past the prefilter, windows verified
        self.stats = {"frames": 0, "candidates": 0, "verifications": 0}
        self.state = read_state(self.root)
        self.root.remove_uncommitted_alerts({name for _, name in self.state.alert_files})  # a crashed commit's
        self.lanes = [Lane(name, self.root, settings, self.state.lanes.get(name, LaneState()),
                           lambda: self.evaluator, self.stats) for name in LANES]
        hooks = settings.monitor.webhooks
        self.sender = WebhookSender(self.root.outbox, timeout_s=hooks.timeout_s, max_attempts=hooks.max_attempts,
                                    backoff_initial_s=hooks.backoff_initial_s, backoff_max_s=hooks.backoff_max_s,
                                    concurrency=hooks.concurrency)
        self.sender.start()
        self._submit(AlertLog(self.root).rows(after_generation=self.state.submitted_through))

    # -- running ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Step every lane in a thread of its own until `stop` is set, then once more (frames
        committed by a stopping ingest). This thread runs the first lane and cuts the clips."""
        first, *others = self.lanes
        threads = [threading.Thread(target=self._run_lane, args=(lane, stop), name=f"monitor-{lane.name}", daemon=True)
                   for lane in others]
        for thread in threads:
            thread.start()
        self._run_lane(first, stop)
        for thread in threads:
            thread.join()

    def _run_lane(self, lane: Lane, stop: threading.Event) -> None:
        interval = self.settings.monitor.poll_interval_s
        while True:
            stopping = stop.is_set()
            started = time.monotonic()
            try:
                self._poll_lane(lane)
            except Exception:  # a bad step must not end monitoring; the next one retries from the commit
                logger.exception("monitor: the %s lane's step failed", lane.name)
            if stopping:
                return
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def drain(self, timeout_s: float, hurry: threading.Event | None = None) -> None:
        """Wait (up to timeout_s, or until `hurry` is set) for pending clips and webhook deliveries,
        e.g. before exiting. What is still pending then stays so (in the state, in the outbox) for
        the next run."""
        hurry = hurry or threading.Event()
        deadline = time.monotonic() + timeout_s
        poll_s = self.settings.monitor.poll_interval_s
        while self.state.pending and time.monotonic() < deadline and not hurry.wait(poll_s):
            self.poll()
        while not hurry.is_set():
            left_s = deadline - time.monotonic()
            if self.sender.wait_idle(min(HURRY_CHECK_S, max(0.0, left_s))) or left_s <= 0:
                break

    def pending_work(self) -> tuple[int, int]:
        """(clips, webhook deliveries) not yet done."""
        return len(self.state.pending), len(self.sender.deliveries("pending"))

    def close(self) -> None:
        self.sender.stop()
        if self._evaluator is not None and hasattr(self._evaluator, "close"):
            self._evaluator.close()
        self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one step ---------------------------------------------------------------------------------
    def poll(self) -> list[Alert]:
        """Step every lane in turn over what was committed since; commit each; hand alerts over."""
        return [row for lane in self.lanes for row in self._poll_lane(lane)]

    def _poll_lane(self, lane: Lane) -> list[Alert]:
        manifest = read_manifest(self.root)
        clips = lane is self.lanes[0]   # one lane cuts the clips of every lane's ended events
        closed, finished = self._finish_pending(manifest) if clips else ([], set())
        try:
            step = lane.step(manifest, self._load_queries())
            if step is None and not closed:
                return []
            rows = closed + (step.rows if step else [])
            self._commit(rows, lane, step.closes if step else [], finished)
        except BaseException:
            lane.rollback()
            raise
        return rows

    def _finish_pending(self, manifest: Manifest | None) -> tuple[list[Alert], set[str]]:
        """Closing rows, with their clips, of the ended events whose clip can be cut now."""
        m = self.settings.monitor
        ready = []
        for pending in list(self.state.pending):   # the cheap check first: a live recording covers the post-roll
            entry = manifest.streams.get(pending.stream_id) if manifest else None
            recording = self.root.recording_dir(pending.stream_id)
            covered = entry is None or not entry.live or _ring_covers(recording, pending.end_s + m.post_roll_s)
            if covered or time.time() >= pending.deadline:
                ready.append(pending)
        if not ready:
            return [], set()
        opened_rows = {row.alert_id: row for row in AlertLog(self.root).rows()}   # read once, not per alert
        rows = []
        for pending in ready:
            opened = opened_rows.get(pending.alert_id)   # committed no later than its close
            if opened is None:
                logger.warning("monitor: ended alert %s has no opening row; dropped", pending.alert_id)
                continue
            entry = manifest.streams.get(pending.stream_id) if manifest else None
            closed = Alert(**{**opened.__dict__, "status": "closed", "end_s": pending.end_s,
                              "wall_end": pending.wall_end, "raised_at": time.time()})
            if opened.frame_id is not None and entry is not None:   # an event with no frame (a lost signal): no clip
                start, end = opened.start_s - m.pre_roll_s, pending.end_s + m.post_roll_s
                self._attach_clip(closed, entry, self.root.recording_dir(pending.stream_id), max(0.0, start), end)
            rows.append(closed)
        return rows, {p.alert_id for p in ready}

    def _attach_clip(self, alert: Alert, entry: StreamEntry, recording: Path, start_s: float, end_s: float) -> None:
        out = self.root.clip_file(alert.alert_id)
        try:
            if entry.live:
                clip = cut_clip(out, start_s, end_s, recording_dir=recording)
            else:
                clip = cut_clip(out, start_s, end_s, source=source_uri(self.root, entry))
        except (ValueError, OSError) as exc:
            logger.warning("alert %s: no clip: %s", alert.alert_id, exc)
            return
        alert.clip = out.relative_to(self.root.path).as_posix()
        alert.clip_start_s, alert.clip_end_s, alert.clip_covered = clip.start_s, clip.end_s, clip.covered

    def _commit(self, rows: list[Alert], lane: Lane, closes: list[PendingClose], finished: Iterable[str]) -> None:
        """Alert rows, then state.json with `lane`'s new state; the in-memory state changes only
        once both are written, so a failed commit is simply evaluated again."""
        with self._commit_lock:
            old = self.state
            generation = old.generation + 1
            alert_files = list(old.alert_files)
            if rows:
                alert_files.append((generation, write_alerts(self.root, generation, rows)))
            snapshot = lane.state.model_copy(deep=True)
            finished = set(finished)
            state = old.model_copy(update={
                "generation": generation, "alert_files": alert_files, "lanes": {**old.lanes, lane.name: snapshot},
                "pending": [p for p in old.pending if p.alert_id not in finished] + closes})
            write_state(self.root, state)
            self.state, lane.committed = state, snapshot
            self._submit(rows)
            state.submitted_through = generation   # persisted with the next commit
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
                self.sender.submit(f"{row.alert_id}:{event}:{n}", hook.url, hook.secret, event, payload,
                                   allow_private=hook.allow_private or self.settings.monitor.webhooks.allow_private)

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def evaluator(self) -> ConditionEvaluator:
        with self._evaluator_lock:
            if self._evaluator is None:
                self._evaluator = load_evaluator(self.settings.monitor.evaluator, self.root, self.settings)
            return self._evaluator

    def _load_queries(self) -> list[StandingQuery]:
        with self._queries_lock:
            version = self.queries.version()
            if version != self._queries_version:
                self._queries, self._queries_version = self.queries.load(), version
            return self._queries


def _ring_covers(ring: Path, end_s: float) -> bool:
    segments = ring_segments(ring) if ring.exists() else []
    return bool(segments) and segments[-1].media_end_s >= end_s


__all__ = ["Monitor"]
