"""EventTracker: positive frames become one event each, merged across short negative stretches,
quiet for the cooldown, verified before opening, and resumable from its saved state."""

import numpy as np

from indexer.monitor.conditions import Verdict
from indexer.monitor.events import Closed, EventTracker, Opened, TrackerState
from indexer.monitor.frames import Frames


def frames(pattern: str, first: int = 0, fps: float = 1.0) -> tuple[Frames, np.ndarray]:
    """One frame per character at 1/fps: '1' positive, '0' negative."""
    n = len(pattern)
    idx = np.arange(first, first + n)
    f = Frames("cam", idx + 100, idx, idx / fps, 1e9 + idx / fps, np.zeros((n, 4), np.float32), [b""] * n)
    return f, np.array([c == "1" for c in pattern])


def track(tracker: EventTracker, pattern: str, first: int = 0, verify=None) -> list:
    f, positive = frames(pattern, first)
    return tracker.step(f, positive.astype(np.float32), positive, verify, lambda i: "rule")


def spans(events: list) -> list[tuple]:
    return [("open", e.event.start.pts_s) if isinstance(e, Opened) else ("close", e.end_s) for e in events]


def make(**kw) -> EventTracker:
    options = {"window_frames": 2, "merge_gap_s": 2.0, "cooldown_s": 0.0, "min_duration_s": 0.0} | kw
    return EventTracker("q", "cam", 1.0, **options)


def test_one_event_per_run_with_short_negative_stretches_merged():
    events = track(make(), "0001101100000111000")
    assert spans(events) == [("open", 3.0), ("close", 8.0), ("open", 13.0), ("close", 16.0)]
    opened = events[0].event
    assert opened.start.frame_id == 103 and opened.start.wall_time == 1e9 + 3


def test_cooldown_suppresses_a_new_event_soon_after_the_last():
    events = track(make(cooldown_s=5.0), "0110001100000011")
    # first event 1..3; a run at 6 starts within 3 + 5 s: quiet; the run at 14 opens
    assert spans(events) == [("open", 1.0), ("close", 3.0), ("open", 14.0)]


def test_min_duration_opens_only_once_long_enough_and_starts_at_the_run_start():
    events = track(make(min_duration_s=3.0), "0110011110")
    assert spans(events) == [("open", 5.0)]
    assert events[0].event.best.pts_s == 7.0  # opened on the frame that made it 3 s long


def test_verifier_no_then_yes_asks_again_after_a_window():
    answers = iter([False, True])
    asked = []

    def verify(i):
        asked.append(i)
        return Verdict(next(answers), "v")

    events = track(make(window_frames=3), "0111111", verify=verify)
    assert asked == [1, 4]             # a "no" at frame 1: the next 2 positives are not verified
    assert spans(events) == [("open", 1.0)] and events[0].event.answer == "v"


def test_verifier_rechecks_an_open_event_every_window_and_a_no_ends_it():
    answers = iter([True, True, False])
    events = track(make(window_frames=2, cooldown_s=10.0), "11111111", verify=lambda i: Verdict(next(answers), "v"))
    # opened at 0 (asked), re-asked at 2 (yes), 4 (no): ends after the last positive before, 3 + 1 s
    assert spans(events) == [("open", 0.0), ("close", 4.0)]


def test_state_round_trips_so_a_restart_continues_the_same_event():
    first = make()
    opened = track(first, "00111")
    saved = TrackerState.model_validate_json(first.state.model_dump_json())
    second = make(state=saved)
    closed = track(second, "110000", first=5)
    assert spans(opened) == [("open", 2.0)]
    assert len(closed) == 1 and isinstance(closed[0], Closed)
    assert closed[0].event.alert_id == opened[0].event.alert_id and closed[0].end_s == 7.0


def test_a_stream_end_closes_the_open_event():
    tracker = make()
    track(tracker, "0011")
    assert [(c.end_s, c.event.start.pts_s) for c in tracker.finish()] == [(4.0, 2.0)]
    assert tracker.finish() == []


def test_alert_ids_are_deterministic_and_distinct():
    a, b = make(), make()
    ea, eb = track(a, "011"), track(b, "011")
    assert ea[0].event.alert_id == eb[0].event.alert_id
    other = EventTracker("q2", "cam", 1.0, window_frames=2, merge_gap_s=2, cooldown_s=0, min_duration_s=0)
    assert track(other, "011")[0].event.alert_id != ea[0].event.alert_id


def test_an_event_opened_and_closed_by_a_clock_keeps_the_tracker_rules():
    """open_at/close_at (a lost signal: no positive frames, a wall clock says when): one event at a
    time, quiet for the cooldown after it, the same id for the same start after a restart."""
    from indexer.monitor.events import FrameRef

    tracker = make(cooldown_s=5.0)
    start = FrameRef(frame_id=-1, index=12_000, pts_s=12.0, wall_time=1e9 + 12)
    [opened] = tracker.open_at(start, "signal lost")
    assert opened.event.start == start and opened.event.answer == "signal lost" and opened.event.best_score == 0.0
    assert tracker.open_at(FrameRef(frame_id=-1, index=13_000, pts_s=13.0), "again") == []   # one open at a time
    restarted = make(cooldown_s=5.0, state=TrackerState.model_validate_json(tracker.state.model_dump_json()))
    [closed] = restarted.close_at(20.0, 1e9 + 30)
    assert (closed.event.alert_id, closed.end_s, closed.wall_end) == (opened.event.alert_id, 20.0, 1e9 + 30)
    assert restarted.state.open is None and restarted.close_at(21.0, None) == []
    assert restarted.open_at(FrameRef(frame_id=-1, index=24_000, pts_s=24.0), "quiet") == []   # 20 + 5 s cooldown
    [later] = restarted.open_at(FrameRef(frame_id=-1, index=25_000, pts_s=25.0), "lost again")
    assert later.event.alert_id != opened.event.alert_id
    assert make().open_at(start, "x")[0].event.alert_id == opened.event.alert_id
