"""`ReaderActor`: one source, read with `SourceReader`, sent through the encoders to the writer.

Flow control: at most `max_inflight_batches` appends outstanding, at most
`max_uncommitted_frames` encoded frames kept for resending. The reader keeps every encoded
batch until the writer says it is committed, so a restarted writer gets back what it lost;
when even that is gone (the reader itself restarted), reading resumes at the writer's cursor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import ray

from indexer.batches import FrameBatch
from indexer.media.reader import Gap, SampledFrame, SourceInfo, SourceReader
from indexer.media.ring import SegmentRing
from indexer.media.source import Source, SourceError, redact_uri
from indexer.monitor.monitor import ring_dir
from indexer.settings import Settings

logger = logging.getLogger(__name__)


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


@ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=2)
class ReaderActor:
    def __init__(self, source: Source, settings: dict, encoders: list, writer, root: str):
        self.source = source
        self.settings = Settings.model_validate(settings)
        self.root = root
        self.encoders = encoders
        self.writer = writer
        self._stop = threading.Event()
        self._turn = 0
        self._inflight: deque[_Sent] = deque()
        self._retained: deque[_Sent] = deque()

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
        if entry.complete and not info.live:
            reader.close()
            return summary
        resume_time = entry.watermark_s
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
                self._inflight.clear()
                self._retained.clear()
                start_index = rewind.index
                reader = self._reader()
                info = reader.open()
            except SourceError as exc:
                summary.error = str(exc)
                self._drain()
                ray.get(self.writer.stream_error.remote(self.source.stream_id, exc.reason))
                break
        summary.decode_errors = list(info.errors[:20])
        if summary.error is None and not self._stop.is_set():
            ray.get(self.writer.finish_stream.remote(self.source.stream_id))
        else:
            ray.get(self.writer.commit.remote())
        summary.stopped = self._stop.is_set()
        reader.close()
        return summary

    def _reader(self) -> SourceReader:
        """A live source keeps its recent segments on disk for alert clips (monitor.ring_s)."""
        ring = None
        if self.source.maybe_live and self.settings.monitor.ring_s > 0:
            ring = SegmentRing(ring_dir(self.root, self.source.stream_id), keep_s=self.settings.monitor.ring_s,
                               segment_s=self.settings.monitor.ring_segment_s)
        return SourceReader(self.source, self.settings.reader, stop=self._stop, ring=ring)

    # -- sending ---------------------------------------------------------------------------------
    def _pump(self, reader: SourceReader, info: SourceInfo, cursor: int, summary: StreamSummary) -> None:
        batch_frames = 1 if info.live else self.settings.ingest.batch_frames
        frames: list[SampledFrame] = []
        gaps: list[Gap] = []
        first = cursor
        for item in reader.samples():
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
                time.sleep(0.2)  # everything appended, waiting for a commit
                self._forget_committed(ray.get(self.writer.committed_index.remote(self.source.stream_id)))

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
        while self._retained and self._retained[0].next_index <= committed_index and \
                self._retained[0] not in self._inflight:
            self._retained.popleft()

    def _drain(self) -> None:
        """Everything sent is appended and committed."""
        while self._inflight:
            self._settle_oldest()
        ray.get(self.writer.commit.remote())
        while self._retained:
            committed = ray.get(self.writer.committed_index.remote(self.source.stream_id))
            before = len(self._retained)
            self._forget_committed(committed)
            if len(self._retained) == before:
                # the writer restarted after our appends: resend what it lost
                self._resend_from(committed)
                ray.get(self.writer.commit.remote())


__all__ = ["ReaderActor", "StreamSummary"]
