"""Live sources captured by the driver and fed to their `ReaderActor`s.

The ingest driver opens every live source before it starts Ray (actors/capture.py: `LiveCapture`s
in a child process, sampling on the stream's own clock from the first second). Once the reader
actors exist, a `Feeder` thread per source pushes what was captured, and then what goes on
arriving, to `ReaderActor.feed`, one chunk in flight: every sample reaches the reader once, in
order, through the one connection.
In the actor a `FedSource` stands in for the `SourceReader` the reader would otherwise open.

A reader that restarts (its process died; Ray restarts the actor and runs it again) has lost what
it held: samples pushed but not yet committed. The source cannot be read again, so the `Feeder`
keeps every sample it pushed until the reader reports it committed; a restarted reader's
`FedSource` refuses pushes until the feeder sends all it keeps again, from the oldest, and drops
what the writer already has. The stream's timeline stays exactly once, with no hole."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import ray

from indexer.batches import Gap, SampledFrame, SourceInfo
from indexer.media.capture_process import RemoteCapture
from indexer.media.source import Source, SourceError
from indexer.redaction import redact_uri

logger = logging.getLogger(__name__)

FEED_FRAMES = 32        # samples per push
FEEDS_WAITING = 2       # pushes a reader holds before `feed` waits (bounds the actor's memory)
POLL_S = 0.2


@dataclass
class Feed:
    """One push: the source's info (with each push, so a restarted reader has it), the next
    samples and gaps, and whether the source ended (`error`: why it failed)."""

    info: SourceInfo | None
    items: list[SampledFrame | Gap] = field(default_factory=list)
    ended: bool = False
    error: str | None = None
    last_frame_wall: float | None = None  # unix time the capture last decoded a frame (sampled or not)
    from_start: bool = False   # `items` begin with the oldest sample the feeder keeps (not yet committed)


@dataclass(frozen=True)
class FeedReply:
    """`accepted` False: the reader (restarted, or rewound) needs every kept sample again, in one
    push with `from_start`. `committed_index`: samples below it are in the index; the feeder
    forgets them."""

    accepted: bool
    committed_index: int


class FedSource:
    """`SourceReader`'s interface (`open`, `samples`, `close`, `start_index`, `resume_time_s`) over
    the feeds `put` receives. Samples before `start_index` (what the writer already holds) are
    dropped. `samples` ends when the source ended, or at once when `stop` is set. Until a push
    `from_start` arrives (a new one, or after `forget`), pushes are refused."""

    def __init__(self, source: Source, stop: threading.Event):
        self.source = source
        self.stop = stop
        self.start_index = 0
        self.resume_time_s: float | None = None   # the capture resumed on the stream's clock already
        self.info: SourceInfo | None = None
        self._feeds: deque[list[SampledFrame | Gap]] = deque()
        self._ended = False
        self._error: str | None = None
        self._changed = threading.Condition()
        self._fresh = True   # holds nothing: takes only a push that starts at the feeder's oldest kept sample
        self.last_frame_wall: float | None = None  # unix time the capture decoded the newest frame fed (liveness)

    def put(self, feed: Feed) -> bool:
        """Called by `ReaderActor.feed`; waits while `FEEDS_WAITING` pushes are not yet read. False:
        refused, the feeder must push everything it keeps again (`from_start`)."""
        with self._changed:
            while len(self._feeds) >= FEEDS_WAITING and not self.stop.is_set():
                self._changed.wait(POLL_S)
            if self._fresh and not feed.from_start:
                return False
            self._fresh = False
            if self.info is None:
                self.info = feed.info
            elif feed.info is not None:
                self.info.errors[:] = feed.info.errors
                self.info.warnings[:] = feed.info.warnings
            if feed.items:  # a push may only tell that the source still gives frames
                self._feeds.append(feed.items)
            if feed.last_frame_wall is not None:
                self.last_frame_wall = max(feed.last_frame_wall, self.last_frame_wall or 0.0)
            self._ended = self._ended or feed.ended
            self._error = self._error or feed.error
            self._changed.notify_all()
        return True

    def forget(self) -> None:
        """Drop what is waiting and refuse pushes until the feeder sends all it keeps again (the
        writer lost samples this reader no longer holds)."""
        with self._changed:
            self._feeds.clear()
            self._fresh = True
            self._changed.notify_all()

    def open(self) -> SourceInfo:
        with self._changed:
            while self.info is None and not self._ended and not self.stop.is_set():
                self._changed.wait(POLL_S)
        if self.info is None:
            raise SourceError(self.source.uri, self._error or "stopped before the source opened")
        return self.info

    def samples(self):
        while True:
            with self._changed:
                while not self._feeds and not self._ended and not self.stop.is_set():
                    self._changed.wait(POLL_S)
                if not self._feeds:
                    break
                items = self._feeds.popleft()
                self._changed.notify_all()
            for item in items:
                if item.index >= self.start_index:
                    yield item
        if self._error and not self.stop.is_set():
            raise SourceError(self.source.uri, self._error)

    def close(self) -> None:
        """The connection is the driver's: nothing to close here."""


class Feeder:
    """Pushes what `capture` samples to `reader` (a `ReaderActor` made with `fed=True`) in a
    thread, until the reader is gone (the driver kills it once its run returned). Keeps what it
    pushed until the reader reports it committed, and pushes it again when the reader refuses a
    push (it restarted), also after the source ended."""

    def __init__(self, capture: RemoteCapture, reader: ray.actor.ActorHandle):
        self.capture = capture
        self.reader = reader
        self.kept: deque[SampledFrame | Gap] = deque()   # pushed, not yet committed
        self._thread = threading.Thread(target=self._run, name=f"feed {capture.source.stream_id}", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        capture = self.capture
        first, told_wall, ended, error = True, None, False, None
        while True:
            if ended:  # told the reader; stay until it is gone (a restart before its last commit needs all again)
                items = []
                time.sleep(POLL_S)
            else:
                try:
                    items = capture.take(FEED_FRAMES, POLL_S)
                    ended = not items and capture.finished
                    error = capture.error.reason if ended and capture.error else None
                except (EOFError, OSError) as exc:  # the capture process died: the stream fails, named
                    items, ended, error = [], True, f"capture process failed: {exc!r}"
                if not (items or ended or first or capture.last_frame_wall != told_wall):  # liveness counts every frame
                    continue
            self.kept.extend(items)
            try:
                reply = self._push(Feed(capture.info, items, ended, error, capture.last_frame_wall, from_start=first))
            except ray.exceptions.RayError as exc:  # the reader finished (killed) or failed: its run says why
                logger.debug("%s: feeding stopped: %s", redact_uri(capture.source.uri), exc)
                return
            while self.kept and self.kept[0].index < reply.committed_index:
                self.kept.popleft()
            first, told_wall = False, capture.last_frame_wall

    def _push(self, feed: Feed) -> FeedReply:
        reply = ray.get(self.reader.feed.remote(feed))
        if reply.accepted:
            return reply
        logger.info("%s: the reader restarted; pushing the %d samples not yet committed again",
                    redact_uri(self.capture.source.uri), len(self.kept))
        return ray.get(self.reader.feed.remote(Feed(feed.info, list(self.kept), feed.ended, feed.error,
                                                    feed.last_frame_wall, from_start=True)))


__all__ = ["FedSource", "Feed", "FeedReply", "Feeder"]
