"""`ReaderActor`: one source, read with `SourceReader` (or, for a live source the driver captured
from the start, taken from `feed`: see actors/feed.py), sent through the encoders to the writer.

Flow control: at most `max_inflight_batches` appends outstanding, at most
`max_uncommitted_frames` encoded frames kept for resending. The reader keeps every encoded
batch until the writer says it is committed, so a restarted writer gets back what it lost;
when even that is gone (the reader itself restarted), reading resumes at the writer's cursor.
A reader at its limit of uncommitted frames asks the writer to commit them rather than wait for
the writer's timer, so no pair of settings stalls ingestion.

A live source's reader reports every `LIVENESS_REPORT_S` since when it has waited for a frame in
vain (`Liveness`, recorded in the manifest): the monitor's signal-lost rule reads it, so an
outage is noticed while the source is still down and the reader retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import ray

from actors.feed import FedSource, Feed, FeedReply
from indexer.batches import FrameBatch, Gap, SampledFrame, SourceInfo
from indexer.media.reader import SourceReader
from indexer.media.ring import SegmentRing
from indexer.media.source import Source, SourceError
from indexer.redaction import redact_uri
from indexer.settings import Settings
from indexer.store.manifest import Liveness
from indexer.store.root import IndexRoot

logger = logging.getLogger(__name__)
LIVENESS_REPORT_S = 1.0   # well under monitor.signal_lost_after_s, whose alert waits for the next report


@dataclass
class StreamSummary:
    stream_id: str
    uri: str
    live: bool = False
    duration_s: float | None = None
    frames_sent: int = 0
    gaps: int = 0
    error: str | None = None
    decode_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # what could not be read, with ranges
    stopped: bool = False


class Rewind(Exception):
    """The writer lost frames this reader no longer holds: read again from `index`."""

    def __init__(self, index: int):
        super().__init__(f"rewind to sample {index}")
        self.index = index


@dataclass(eq=False)  # compared by identity
class _Sent:
    first_index: int
    next_index: int
    frames: int
    encoded: ray.ObjectRef
    appended: ray.ObjectRef | None = None


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=3)  # run, stop, feed
class ReaderActor:
    def __init__(self, source: Source, settings: dict, encoders: list[str], writer: str, root: IndexRoot,
                 fed: bool = False):
        """`encoders`, `writer`: actor names (handles would travel through the object store). `fed`:
        the driver reads the source and pushes its samples to `feed`."""
        self.source = source
        self.settings = Settings.model_validate(settings)
        self.root = root
        self.encoders = [ray.get_actor(name) for name in encoders]
        self.writer = ray.get_actor(writer)
        self._stop = threading.Event()
        self._turn = 0
        self._inflight: deque[_Sent] = deque()
        self._retained: deque[_Sent] = deque()
        self._fed = FedSource(source, self._stop) if fed else None
        self._source_reader: SourceReader | FedSource | None = None
        self._asked_at: float | None = None   # unix time the pump asked the source reader for more; None: busy
        self._committed_index = 0   # samples of this stream below it are committed (what a feeder may forget)

    def feed(self, feed: Feed) -> FeedReply:
        """The next samples of a source the driver reads (waits while the reader is behind)."""
        return FeedReply(self._fed.put(feed), self._committed_index)

    def stop(self) -> None:
        """Finish the current batch, commit, and return from `run` (Ctrl-C, `ray job stop`): the
        source reader notices at its next packet or reconnect attempt, even while a live source
        is down and retrying."""
        self._stop.set()

    def run(self) -> StreamSummary:
        options = self.settings.reader
        summary = StreamSummary(self.source.stream_id, self.source.uri)
        reader = self._reader()
        try:
            info = reader.open()
        except SourceError as exc:
            failed = SourceInfo(self.source.uri, self.source.stream_id, self.source.maybe_live, None, "", 0, 0, None,
                                False)
            ray.get(self.writer.source_failed.remote(failed, options.fps, self.source.protocol, exc.reason))
            summary.error = str(exc)
            return summary
        summary.live, summary.duration_s = info.live, info.duration_s
        entry, start_index = ray.get(self.writer.open_stream.remote(info, options.fps, self.source.protocol))
        self._committed_index = entry.next_index
        if entry.complete and not info.live:
            reader.close()
            return summary
        resume_time = entry.watermark_s
        reported = threading.Event()   # set: the liveness reports end
        if info.live:
            threading.Thread(target=self._report_liveness, args=(reported,), name="liveness", daemon=True).start()
        try:
            self._read(reader, info, start_index, resume_time, summary)
        finally:
            reported.set()
        summary.stopped = self._stop.is_set()
        return summary

    def _read(self, reader: SourceReader, info: SourceInfo, start_index: int, resume_time: float | None,
              summary: StreamSummary) -> None:
        while True:
            reader.start_index, reader.resume_time_s = start_index, resume_time
            try:
                self._pump(reader, info, start_index, summary)
                self._drain()
                break
            except Rewind as rewind:
                logger.warning("%s: writer lost frames; reading again from sample %d", redact_uri(self.source.uri),
                               rewind.index)
                reader.close()
                summary.warnings.extend(info.warnings)  # what the first read found stays said
                self._inflight.clear()
                self._retained.clear()
                start_index = rewind.index
                if self._fed is not None:  # the driver's feeder still keeps what is not committed
                    self._fed.forget()
                reader = self._reader()
                info = reader.open()
            except SourceError as exc:
                summary.error = str(exc)
                self._drain()
                ray.get(self.writer.stream_error.remote(self.source.stream_id, exc.reason))
                break
        summary.decode_errors = list(info.errors[:20])
        summary.warnings = list(dict.fromkeys([*summary.warnings, *info.warnings]))
        if summary.warnings:
            ray.get(self.writer.stream_warning.remote(self.source.stream_id, summary.warnings))
        if summary.error is None and not self._stop.is_set():
            ray.get(self.writer.finish_stream.remote(self.source.stream_id))
        else:
            ray.get(self.writer.commit.remote())
        reader.close()

    def _reader(self) -> SourceReader | FedSource:
        """A live source is recorded (index.retention) for clips, playback and recomputation."""
        if self._fed is not None:
            self._source_reader = self._fed  # its one connection, ring included, is the driver's
            return self._fed
        retention, ring = self.settings.index.retention.for_stream(self.source.stream_id), None
        if self.source.maybe_live and retention.records:
            ring = SegmentRing(self.root.recording_dir(self.source.stream_id), keep_s=retention.recording_s,
                               segment_s=retention.recording_segment_s, keep_bytes=retention.recording_bytes)
        self._source_reader = SourceReader(self.source, self.settings.reader, stop=self._stop, ring=ring)
        return self._source_reader

    # -- liveness --------------------------------------------------------------------------------
    def _report_liveness(self, done: threading.Event) -> None:
        while not done.wait(LIVENESS_REPORT_S):
            self.writer.report_liveness.remote(self.source.stream_id, Liveness(
                reported_at=time.time(), waiting_since=self._waiting_since()))

    def _waiting_since(self) -> float | None:
        """Since when the source has given no frame while the pump asked for one: the later of its
        last frame and the moment the pump asked (a pump held up by the encoders or the writer is
        not waiting for the source); None while the pump is busy with an item."""
        asked = self._asked_at
        if asked is None:
            return None
        last = self._source_reader.last_frame_wall
        return max(asked, last) if last is not None else asked

    # -- sending ---------------------------------------------------------------------------------
    def _pump(self, reader: SourceReader, info: SourceInfo, cursor: int, summary: StreamSummary) -> None:
        batch_frames = 1 if info.live else self.settings.ingest.batch_frames
        frames: list[SampledFrame] = []
        gaps: list[Gap] = []
        first = cursor
        items = reader.samples()
        while True:
            self._asked_at = time.time()
            item = next(items, None)
            self._asked_at = None
            if item is None:
                break
            if isinstance(item, Gap):
                gaps.append(item)
                summary.gaps += 1
                cursor = max(cursor, item.index)
            else:
                frames.append(item)
                cursor = item.index + 1
            if len(frames) >= batch_frames or (gaps and info.live):
                self._send(FrameBatch.of(self.source.stream_id, first, frames, gaps, cursor))
                summary.frames_sent += len(frames)
                frames, gaps, first = [], [], cursor
            if self._stop.is_set():
                break
        if frames or gaps:
            self._send(FrameBatch.of(self.source.stream_id, first, frames, gaps, cursor))
            summary.frames_sent += len(frames)

    def _send(self, batch: FrameBatch) -> None:
        encoder = self.encoders[self._turn % len(self.encoders)]
        self._turn += 1
        sent = _Sent(batch.first_index, batch.next_index, len(batch), encoder.encode.remote(batch))
        sent.appended = self.writer.append.remote(sent.encoded)
        self._inflight.append(sent)
        self._retained.append(sent)
        limits = self.settings.ingest
        while len(self._inflight) >= limits.max_inflight_batches or \
                sum(s.frames for s in self._retained) > limits.max_uncommitted_frames:
            if self._inflight:
                self._settle_oldest()
            else:
                self._commit_retained()

    def _settle_oldest(self) -> None:
        sent = self._inflight.popleft()
        result = ray.get(sent.appended)
        if not result.accepted:
            self._resend_from(result.expected_index)
        else:
            self._forget_committed(result.committed_index)

    def _resend_from(self, index: int) -> None:
        """The writer restarted and wants `index` again: wait for what is in flight, then resend
        every retained batch from there, in order."""
        for sent in self._inflight:
            ray.wait([sent.appended])
        self._inflight.clear()
        if not self._retained or self._retained[0].first_index > index:
            raise Rewind(index)
        for sent in list(self._retained):
            if sent.next_index <= index and sent.frames:
                continue
            result = ray.get(self.writer.append.remote(sent.encoded))
            if not result.accepted:
                raise Rewind(result.expected_index)
            self._forget_committed(result.committed_index)

    def _forget_committed(self, committed_index: int) -> None:
        self._committed_index = max(self._committed_index, committed_index)
        while self._retained and self._retained[0].next_index <= committed_index and \
                self._retained[0] not in self._inflight:
            self._retained.popleft()

    def _drain(self) -> None:
        """Everything sent is appended and committed."""
        while self._inflight:
            self._settle_oldest()
        self._commit_retained()

    def _commit_retained(self) -> None:
        """Nothing in flight: have the writer commit what this reader appended, now, and resend what
        a restarted writer lost."""
        while self._retained:
            committed = ray.get(self.writer.commit_stream.remote(self.source.stream_id))
            before = len(self._retained)
            self._forget_committed(committed)
            if len(self._retained) == before:  # the writer restarted after our appends
                self._resend_from(committed)


__all__ = ["ReaderActor", "StreamSummary"]
