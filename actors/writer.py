"""`WriterActor`: the index root's one `IndexWriter`, in a Ray actor. Restarted by Ray after a
crash, it reopens the root at its last commit; readers resend what it had not committed.

Commits come on time whether or not appends arrive: a timer thread commits every
`commit_interval_s` while something is uncommitted (a live source that went down, a reader
waiting for its frames to be committed), under the lock every call takes."""

from __future__ import annotations

import logging
import threading

import ray

from indexer.batches import EncodedBatch, SourceInfo
from indexer.settings import RetentionSettings, SearchSettings
from indexer.store import AppendResult, IndexWriter, Layout, StreamEntry
from indexer.store.manifest import Liveness
from indexer.store.root import IndexRoot

logger = logging.getLogger(__name__)
MIN_TIMER_WAIT_S = 0.05   # the timer never spins, even when a commit takes longer than the interval


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class WriterActor:
    def __init__(self, root: IndexRoot, encoder: str, commit_interval_s: float, max_vector_shards: int,
                 search: SearchSettings, retention: RetentionSettings | None = None):
        """`encoder`: the name of an encoder actor, whose model's layout the index gets (asked here,
        not passed as an object reference: Ray warns that a restart may lose such arguments).
        `retention`: the index's policy, applied in the writer's commits (store/retention.py)."""
        layout: Layout = ray.get(ray.get_actor(encoder).layout.remote())
        self.writer = IndexWriter(root, layout, commit_interval_s, max_vector_shards, search, retention)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._commit_on_time, name="commit-timer", daemon=True).start()

    def open_stream(self, info: SourceInfo, fps: float, protocol: str) -> tuple[StreamEntry, int]:
        """The stream's committed entry and the sample index to resume at (what this writer holds)."""
        with self._lock:
            entry = self.writer.open_stream(info, fps, protocol)
            return entry, self.writer.expected_index(info.stream_id)

    def source_failed(self, info: SourceInfo, fps: float, protocol: str, error: str) -> None:
        with self._lock:
            self.writer.open_stream(info, fps, protocol)
            self.writer.stream_error(info.stream_id, error)
            self.writer.commit()

    def append(self, batch: EncodedBatch) -> AppendResult:
        with self._lock:
            return self.writer.append(batch)

    def report_liveness(self, stream_id: str, liveness: Liveness) -> None:
        with self._lock:
            self.writer.report_liveness(stream_id, liveness)

    def stream_error(self, stream_id: str, error: str) -> None:
        with self._lock:
            self.writer.stream_error(stream_id, error)

    def stream_warning(self, stream_id: str, warnings: list[str]) -> None:
        with self._lock:
            self.writer.stream_warning(stream_id, warnings)

    def finish_stream(self, stream_id: str) -> int:
        with self._lock:
            self.writer.finish_stream(stream_id)
            return self.writer.commit()

    def commit(self) -> int:
        with self._lock:
            return self.writer.commit()

    def commit_stream(self, stream_id: str) -> int:
        """Commit now (a reader waits for its frames to be committed); return the stream's
        committed index. Below what the reader appended: this writer restarted and lost the rest."""
        with self._lock:
            self.writer.commit()
            return self.writer.manifest.streams[stream_id].next_index

    def progress(self) -> dict[str, dict]:
        """Per stream: what is appended (`expected_index`) and what is committed."""
        out = {}
        with self._lock:
            for sid, entry in self.writer.manifest.streams.items():
                out[sid] = {"uri": entry.uri, "live": entry.live, "fps": entry.fps, "duration_s": entry.duration_s,
                            "expected_index": self.writer.expected_index(sid), "committed_index": entry.next_index,
                            "frames": entry.frames, "gaps": entry.gaps, "error": entry.error, "warning": entry.warning,
                            "complete": entry.complete, "watermark_s": entry.watermark_s}
        return out

    def close(self) -> int:
        with self._lock:
            self._closed.set()
            generation = self.writer.commit()
            self.writer.close()
            return generation

    def _commit_on_time(self) -> None:
        wait = self.writer.commit_interval_s
        while not self._closed.wait(max(wait, MIN_TIMER_WAIT_S)):
            with self._lock:
                if self._closed.is_set():
                    return
                try:
                    wait = self.writer.commit_if_due()
                except Exception:  # e.g. a full disk: the timer goes on, the next commit retries
                    logger.exception("commit failed; retrying in %.1f s", self.writer.commit_interval_s)
                    wait = self.writer.commit_interval_s


__all__ = ["WriterActor"]
