"""The Monitor over a real index that grows commit by commit (a real IndexWriter fed with frames
the tiny models encoded from a real video with planted events): one alert per event with its
clip and webhooks, and exactly once across crashes at each step of a monitor commit."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pyarrow.compute as pc
import pytest

from indexer.batches import FrameBatch
from indexer.encoding import FrameEncoder
from indexer.media.reader import SourceReader
from indexer.media.source import parse_source
from indexer.monitor import monitor as monitor_module
from indexer.monitor.alerts import AlertLog
from indexer.monitor.monitor import Monitor
from indexer.monitor.queries import QueryStore, Webhook
from indexer.store.root import IndexRoot
from indexer.store.writer import IndexWriter
from tests.indexes import tiny_settings
from tests.monitor.colour import ColourDetector
from tests.monitor.receiver import receiver
from tests.monitor.scenes import make_scene_video

SCENES = {"planted": (6.0, 10.0), "black": (14.0, 18.0), "frozen": (22.0, 27.0)}
SECRET = "monitor-test-secret"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """(settings, source info, encoded batches of 4 frames, layout) of a 32 s video sampled at 1 fps."""
    work = tmp_path_factory.mktemp("monitor")
    settings = tiny_settings(work)
    settings.monitor = settings.monitor.model_copy(update={"evaluator": "tests.monitor.colour:ColourDetector",
                                                           "poll_interval_s": 0.05, "clip_wait_s": 0.0})
    video = make_scene_video(work / "scenes.mp4", 32.0, SCENES, fps=10)
    reader = SourceReader(parse_source(f"cam={video}"), settings.reader)
    info = reader.open()
    samples = list(reader.samples())
    encoder = FrameEncoder.from_settings(settings)
    batches = [encoder([FrameBatch.of("cam", i, samples[i:i + 4], [], min(i + 4, len(samples)))])[0]
               for i in range(0, len(samples), 4)]
    return settings, info, batches, encoder.layout()


def queries(root, url: str) -> None:
    store = QueryStore(IndexRoot.at(root))
    hooks = [Webhook(url=url, secret=SECRET)]
    store.create(id="disc", condition="an orange board with a blue disc", webhooks=hooks, cooldown_s=5,
                 allow_private_webhooks=True)  # the receivers listen on 127.0.0.1
    store.create(id="black", kind="black", min_duration_s=2.0, webhooks=hooks, allow_private_webhooks=True)
    store.create(id="frozen", kind="frozen", min_duration_s=3.0, webhooks=hooks, allow_private_webhooks=True)


def feed(root, encoded, batches: slice, writer: IndexWriter | None = None, on_commit=None) -> IndexWriter:
    settings, info, all_batches, layout = encoded
    if writer is None:
        writer = IndexWriter(IndexRoot.at(root), layout, commit_interval_s=1e9)
        writer.open_stream(info, settings.reader.fps, "file")
    for batch in all_batches[batches]:
        writer.append(batch)
        writer.commit()
        if on_commit is not None:
            on_commit()
    return writer


def check_alerts(root, hook) -> dict:
    alerts = {a.query_id: a for a in AlertLog(IndexRoot.at(root)).alerts()}
    assert sorted(alerts) == ["black", "disc", "frozen"]
    for query_id, scene in (("disc", "planted"), ("black", "black"), ("frozen", "frozen")):
        alert, (start, end) = alerts[query_id], SCENES[scene]
        assert alert.status == "closed" and alert.stream_id == "cam"
        assert abs(alert.start_s - start) <= 2.0, (query_id, alert.start_s)   # within two sampling intervals
        assert abs(alert.end_s - end) <= 2.0, (query_id, alert.end_s)
        assert alert.thumbnail[:2] == b"\xff\xd8" and alert.answer
        with av.open(str(root / alert.clip)) as clip:      # cut from the file without re-encoding
            times = [f.time for f in clip.decode(video=0)]
        assert alert.clip_start_s <= alert.start_s and alert.clip_end_s >= alert.end_s and alert.clip_covered
        assert times[-1] - times[0] >= alert.end_s - alert.start_s - 0.2
    events = hook.events(SECRET)
    assert sorted(events) == sorted([(e, alerts[q].alert_id) for q in alerts for e in ("alert.opened",
                                                                                    "alert.closed")]), events
    return alerts


def test_one_alert_per_planted_event_with_clip_thumbnail_and_signed_webhooks(tmp_path, encoded):
    root = tmp_path / "index"
    with receiver() as hook:
        root.mkdir()
        queries(root, hook.url)
        with Monitor(IndexRoot.at(root), encoded[0]) as monitor:
            writer = feed(root, encoded, slice(None), on_commit=monitor.poll)
            writer.finish_stream("cam")
            writer.close()
            monitor.poll()
            monitor.drain(10.0)
            alerts = check_alerts(root, hook)
    # the planted picture's alert was verified (the colour detector's answer) and names its frame
    assert alerts["disc"].answer.startswith("yes") and alerts["disc"].frame_id is not None
    assert "luma" in alerts["black"].answer and "frozen" in alerts["frozen"].answer


def test_a_crash_at_any_step_of_a_monitor_commit_loses_and_repeats_nothing(tmp_path, encoded, monkeypatch):
    """Crash 1: the alert file is written, state.json is not. Crash 2: state.json is written, the
    webhooks were not handed to the outbox. Each time a new Monitor takes over."""
    root = tmp_path / "index"
    root.mkdir()
    settings = encoded[0]
    with receiver() as hook:
        queries(root, hook.url)
        real_write_state = monitor_module.write_state

        def crash_on_alert(root_, state):
            if state.alert_files and state.alert_files[-1][0] == state.generation:
                raise OSError("simulated crash after the alert file")
            real_write_state(root_, state)

        monkeypatch.setattr(monitor_module, "write_state", crash_on_alert)
        monitor = Monitor(IndexRoot.at(root), settings)
        writer = feed(root, encoded, slice(0, 3))       # frames 0-11: the planted event opens at 6
        with pytest.raises(OSError, match="simulated crash"):
            monitor.poll()
        assert len(list((root / "monitor" / "alerts").iterdir())) == 1   # written, never committed
        monitor.close()
        monkeypatch.setattr(monitor_module, "write_state", real_write_state)

        monitor = Monitor(IndexRoot.at(root), settings)               # removes the uncommitted file, evaluates again
        monkeypatch.setattr(Monitor, "_submit", lambda self, rows: None)   # crash 2: nothing handed over
        monitor.poll()
        assert [a.status for a in AlertLog(IndexRoot.at(root)).alerts()] == ["open"]
        monitor.close()
        monkeypatch.undo()
        assert hook.received() == []

        with Monitor(IndexRoot.at(root), settings) as monitor:         # hands over what the last commit raised
            feed(root, encoded, slice(3, None), writer, on_commit=monitor.poll)
            writer.finish_stream("cam")
            writer.close()
            monitor.poll()
            monitor.drain(10.0)
        with Monitor(IndexRoot.at(root), settings) as monitor:         # a further restart sends nothing again
            monitor.poll()
            monitor.drain(2.0)
        check_alerts(root, hook)


class StuckVerifier(ColourDetector):
    """Verification that hangs until released, then fails: a LLaMA-VID call that never returns
    before the process dies."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def verify(self, condition, frames):
        self.entered.set()
        self.release.wait(60)
        raise RuntimeError("the verifier died")


def test_rule_alerts_do_not_wait_behind_a_verification_and_a_crash_then_repeats_nothing(tmp_path, encoded):
    """The conditions lane runs beside the rules lane: while verification of the planted disc
    (6-10 s) hangs, the black (14-18 s) and frozen (22-27 s) alerts are raised and committed. The
    verifier then dies with nothing of its lane committed; a restarted monitor raises the disc
    alert once and neither rule alert again, and the receiver gets every event once."""
    root = tmp_path / "index"
    root.mkdir()
    settings = encoded[0]
    with receiver() as hook:
        queries(root, hook.url)
        stuck, stop = StuckVerifier(), threading.Event()
        monitor = Monitor(IndexRoot.at(root), settings, evaluator=stuck)
        thread = threading.Thread(target=monitor.run, args=(stop,))
        thread.start()
        try:
            writer = feed(root, encoded, slice(None))
            writer.finish_stream("cam")
            writer.close()
            deadline = time.monotonic() + 120
            index = IndexRoot.at(root)
            while {a.query_id for a in AlertLog(index).alerts() if a.status == "closed"} != {"black", "frozen"}:
                assert time.monotonic() < deadline, AlertLog(index).alerts()
                time.sleep(0.1)
            assert stuck.entered.is_set() and not stuck.release.is_set()   # the disc is still being verified
            lanes = monitor.state.lanes
            assert lanes["rules"].streams["cam"].next_index == 32
            assert lanes.get("conditions") is None or lanes["conditions"].streams["cam"].next_index < 32
        finally:
            stuck.release.set()
            stop.set()
            thread.join()
        monitor.sender.wait_idle(60.0)
        monitor.close()
        assert {(e, q) for e, q in hook.events(SECRET)} == {
            (e, a.alert_id) for a in AlertLog(IndexRoot.at(root)).alerts() for e in ("alert.opened", "alert.closed")}
        with Monitor(IndexRoot.at(root), settings) as monitor:       # the colour detector of the settings verifies
            monitor.poll()
            monitor.drain(10.0)
        check_alerts(root, hook)


def test_queries_added_paused_and_removed_while_it_runs(tmp_path, encoded):
    root = tmp_path / "index"
    root.mkdir()
    store = QueryStore(IndexRoot.at(root))
    with Monitor(IndexRoot.at(root), encoded[0]) as monitor:
        writer = feed(root, encoded, slice(0, 2), on_commit=monitor.poll)     # 0-7 s: nothing asked yet
        store.create(id="disc", condition="an orange board with a blue disc")
        store.create(id="black", kind="black", paused=True)
        feed(root, encoded, slice(2, 4), writer, on_commit=monitor.poll)       # 8-15 s
        opened = AlertLog(IndexRoot.at(root)).alerts()
        # a query added late sees frames from then on: the disc (6-10 s) is caught from 8 s
        assert [(a.query_id, a.start_s) for a in opened] == [("disc", 8.0)]
        store.set_paused("black", False)
        store.remove("disc")
        feed(root, encoded, slice(4, None), writer, on_commit=monitor.poll)
        writer.close()
        monitor.poll()
    alerts = {a.query_id: a for a in AlertLog(IndexRoot.at(root)).alerts()}
    assert set(alerts) == {"disc", "black"}
    assert alerts["disc"].status == "closed" and alerts["disc"].end_s == 10.0   # ended (at 12 s) before removal
    lanes = monitor.state.lanes.values()
    assert not any(key.startswith("disc/") for lane in lanes for key in lane.trackers)  # a removed query: no state
    assert alerts["black"].start_s >= 16.0      # resumed at 16 s, mid-way through the black stretch
    assert [lane.streams["cam"].next_index for lane in lanes] == [32, 32]


def test_model_evaluator_scores_with_the_retrieval_embedding_and_verifies_with_llamavid(tiny_index):
    """The stages a real checkpoint runs, on the tiny random models: the prefilter is the cosine the
    search uses, the verifier a LLaMA-VID answer over the window's stored features."""
    from indexer.monitor.conditions import ModelEvaluator, is_yes
    from indexer.monitor.frames import FRAME_COLUMNS, Frames
    from indexer.query.search import SearchFilter
    from indexer.store.index import IndexReader

    evaluator = ModelEvaluator(IndexRoot.at(tiny_index.root), tiny_index.settings)
    rows = IndexReader(IndexRoot.at(tiny_index.root)).timeline("b", columns=FRAME_COLUMNS)
    frames = Frames.from_rows("b", rows.filter(pc.equal(rows["kind"], "frame")).sort_by("sample_index"))
    condition = "an orange board with a blue disc"
    scores = evaluator.scores(condition, frames)
    hits = evaluator.engine.search(text=condition, k=len(frames), where=SearchFilter(streams=("b",)))
    by_frame = {h.frame_id: h.score for h in hits}
    assert np.allclose(scores, [by_frame[int(f)] for f in frames.frame_ids], atol=1e-5)
    low, high = tiny_index.settings.monitor.score_range
    assert evaluator.threshold(0.0) == high and evaluator.threshold(1.0) == low
    verdict = evaluator.verify(condition, frames[2:6])
    assert verdict.answer and verdict.positive == is_yes(verdict.answer)
    evaluator.close()


def test_a_lost_signal_recorded_as_a_gap_raises_one_alert(tmp_path, encoded):
    """Ingestion records a live source's outage as a gap row when it reconnects (or gives up);
    the signal_lost rule turns each outage of at least min_duration_s into one alert."""
    from dataclasses import replace

    from indexer.batches import Gap

    settings, info, batches, layout = encoded
    root = tmp_path / "index"
    root.mkdir()
    store = QueryStore(IndexRoot.at(root))
    store.create(id="lost", kind="signal_lost", min_duration_s=3.0, cooldown_s=0.0)
    writer = IndexWriter(IndexRoot.at(root), layout, commit_interval_s=1e9)
    writer.open_stream(info, settings.reader.fps, "file")
    outages = {1: Gap(7.0, 12.0, "connection lost: timed out", 1e9 + 7, 1e9 + 12, 8),
               3: Gap(15.0, 16.0, "connection lost: reset", 1e9 + 15, 1e9 + 16, 12),   # 1 s: too short
               7: Gap(31.0, None, "gave up: connection refused", 1e9 + 31, None, 32)}   # the last batch
    with Monitor(IndexRoot.at(root), settings) as monitor:
        for i, batch in enumerate(batches):
            writer.append(replace(batch, gaps=[outages[i]]) if i in outages else batch)
            writer.commit()
            monitor.poll()
        monitor.drain(2.0)
        writer.close()
    alerts = sorted(AlertLog(IndexRoot.at(root)).alerts(), key=lambda a: a.start_s)
    assert [(a.start_s, a.end_s, a.status) for a in alerts] == [(7.0, 12.0, "closed"), (31.0, None, "open")]
    assert alerts[0].wall_start == 1e9 + 7 and alerts[0].wall_end == 1e9 + 12
    assert alerts[0].answer == "signal lost: connection lost: timed out" and alerts[0].clip is None
    assert alerts[1].answer.startswith("signal lost: gave up")


def test_a_source_still_down_raises_signal_lost_once_and_its_frames_returning_close_it(tmp_path, encoded):
    """A live source's reader reports since when it has waited for a frame (the writer records it
    in the manifest): the alert opens once the wait reaches monitor.signal_lost_after_s, while the
    source is still down, survives a monitor restart as the same alert, and closes at the first
    frame the source gives again, not at a frame held back from before the outage. The gap row
    written when the outage ends is that alert, not a second one."""
    from dataclasses import replace

    from indexer.batches import Gap
    from indexer.store.manifest import Liveness

    settings, info, batches, layout = encoded
    settings = settings.model_copy(update={"monitor": settings.monitor.model_copy(
        update={"signal_lost_after_s": 5.0})})
    t0 = 1e9   # the frame at media time t was decoded at t0 + t until the source went down
    live = [replace(b, wall_time=t0 + b.pts_s) for b in batches]
    root = tmp_path / "index"
    root.mkdir()
    QueryStore(IndexRoot.at(root)).create(id="lost", kind="signal_lost", cooldown_s=0.0)
    writer = IndexWriter(IndexRoot.at(root), layout, commit_interval_s=1e9)
    writer.open_stream(info, settings.reader.fps, "rtsp")

    def report(at: float, waiting_since: float | None) -> None:
        writer.report_liveness("cam", Liveness(reported_at=t0 + at, waiting_since=t0 + waiting_since
                                               if waiting_since is not None else None))
        writer.commit()

    with Monitor(IndexRoot.at(root), settings) as monitor:
        for batch in live[:3]:   # frames 0-11, then the source goes quiet after the frame at 12 s
            writer.append(batch)
            report(batch.pts_s[-1] + 0.5, None)
            assert monitor.poll() == []
        report(16.0, 12.0)   # 4 s without a frame: not yet
        assert monitor.poll() == []
        report(17.5, 12.0)
        opened = monitor.poll()
        assert [(a.status, a.start_s, a.wall_start, a.answer) for a in opened] == [
            ("open", 11.0, t0 + 12.0, "signal lost: no frame for 6 s")]
        report(18.5, 12.0)
        assert monitor.poll() == []   # still down: the same event, no second alert
    with Monitor(IndexRoot.at(root), settings) as monitor:   # a restarted monitor goes on with the open event
        report(19.5, 12.0)
        assert monitor.poll() == []
        # the source is back at 30 s: the frame at 12 s was held in the reader and comes first, then
        # the gap, then the new frames
        back = live[3]
        back = replace(back, wall_time=np.array([t0 + 12.0, t0 + 30.0, t0 + 31.0, t0 + 32.0]),
                       gaps=[Gap(12.0, 13.0, "connection lost: timed out", t0 + 12.0, t0 + 30.0, 13)])
        writer.append(back)
        report(29.8, 12.0)   # sent before the frames came, arrived after them
        assert writer.manifest.streams["cam"].liveness.waiting_since is None
        monitor.poll()
        monitor.drain(2.0)
        writer.close()
    alerts = AlertLog(IndexRoot.at(root)).alerts()
    assert len(alerts) == 1 and alerts[0].alert_id == opened[0].alert_id
    assert (alerts[0].status, alerts[0].start_s, alerts[0].end_s) == ("closed", 11.0, 13.0)
    assert alerts[0].wall_end == t0 + 30.0 and alerts[0].clip is None
    assert [r.status for r in AlertLog(IndexRoot.at(root)).rows()] == ["open", "closed"]


def test_a_receiver_down_or_failing_never_holds_up_evaluation(tmp_path, encoded):
    """One webhook answers 500 until the test lets it recover, another points at a closed port:
    every commit is evaluated as it comes, the first is delivered after retries, the second
    dead-lettered with its error."""
    import socket

    from indexer.monitor.webhooks import WebhookSender

    settings = encoded[0].model_copy(deep=True)
    settings.monitor.webhooks = settings.monitor.webhooks.model_copy(
        update={"max_attempts": 3, "backoff_initial_s": 0.2, "backoff_max_s": 0.5, "timeout_s": 1.0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    root = tmp_path / "index"
    root.mkdir()
    with receiver() as hook:
        hook.status = 500
        hooks = [Webhook(url=hook.url, secret=SECRET),
                 Webhook(url=f"http://127.0.0.1:{closed_port}/hook", secret=SECRET)]
        QueryStore(IndexRoot.at(root)).create(id="black", kind="black", min_duration_s=2.0, allow_private_webhooks=True,
                                              webhooks=hooks)
        with Monitor(IndexRoot.at(root), settings) as monitor:
            started = time.monotonic()
            writer = feed(root, encoded, slice(None), on_commit=monitor.poll)
            writer.close()
            monitor.poll()
            evaluated_in = time.monotonic() - started
            assert monitor.state.lanes["rules"].streams["cam"].next_index == 32
            assert len(AlertLog(IndexRoot.at(root)).alerts()) == 1
            hook.status = 200   # the receiver recovers
            monitor.drain(10.0)
            outbox = WebhookSender(IndexRoot.at(root).outbox)
            dead = outbox.deliveries(state="dead")
            delivered = outbox.deliveries(state="delivered")
        assert {d.url for d in dead} == {f"http://127.0.0.1:{closed_port}/hook"} and len(dead) == 2
        assert all(d.attempts == 3 and "connect" in d.last_error for d in dead)
        assert {d.url for d in delivered} == {hook.url} and len(delivered) == 2
        assert sorted(e for e, _ in hook.events(SECRET)) == ["alert.closed", "alert.opened"]
    assert evaluated_in < 5.0, f"evaluation waited on the webhooks ({evaluated_in:.1f} s)"
