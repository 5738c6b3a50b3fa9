"""`WriterActor`: the index root's one `IndexWriter`, in a Ray actor. Restarted by Ray after a
crash, it reopens the root at its last commit; readers resend what it had not committed."""

from __future__ import annotations

import ray

from indexer.batches import EncodedBatch
from indexer.media.reader import SourceInfo
from indexer.settings import SearchSettings
from indexer.store import AppendResult, IndexWriter, Layout, StreamEntry


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)
class WriterActor:
    def __init__(self, root: str, layout: Layout, commit_interval_s: float, max_vector_shards: int,
                 search: SearchSettings):
        self.writer = IndexWriter(root, layout, commit_interval_s, max_vector_shards, search)

    def open_stream(self, info: SourceInfo, fps: float, protocol: str) -> tuple[StreamEntry, int]:
        """The stream's committed entry and the sample index to resume at (what this writer holds)."""
        entry = self.writer.open_stream(info, fps, protocol)
        return entry, self.writer.expected_index(info.stream_id)

    def source_failed(self, info: SourceInfo, fps: float, protocol: str, error: str) -> None:
        self.writer.open_stream(info, fps, protocol)
        self.writer.stream_error(info.stream_id, error)
        self.writer.commit()

    def append(self, batch: EncodedBatch) -> AppendResult:
        return self.writer.append(batch)

    def stream_error(self, stream_id: str, error: str) -> None:
        self.writer.stream_error(stream_id, error)

    def stream_warning(self, stream_id: str, warnings: list[str]) -> None:
        self.writer.stream_warning(stream_id, warnings)

    def finish_stream(self, stream_id: str) -> int:
        self.writer.finish_stream(stream_id)
        return self.writer.commit()

    def commit(self) -> int:
        return self.writer.commit()

    def committed_index(self, stream_id: str) -> int:
        return self.writer.manifest.streams[stream_id].next_index

    def progress(self) -> dict[str, dict]:
        """Per stream: what is appended (`expected_index`) and what is committed."""
        out = {}
        for sid, entry in self.writer.manifest.streams.items():
            out[sid] = {"uri": entry.uri, "live": entry.live, "fps": entry.fps, "duration_s": entry.duration_s,
                        "expected_index": self.writer.expected_index(sid), "committed_index": entry.next_index,
                        "frames": entry.frames, "gaps": entry.gaps, "error": entry.error, "warning": entry.warning,
                        "complete": entry.complete,
                        "watermark_s": entry.watermark_s}
        return out

    def close(self) -> int:
        generation = self.writer.commit()
        self.writer.close()
        return generation


__all__ = ["WriterActor"]
