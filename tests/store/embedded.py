"""Index roots with chosen retrieval embeddings and nothing else (no model, no features), written
through the real IndexWriter, for the vector-index and search tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.batches import EncodedBatch, SourceInfo
from indexer.settings import SearchSettings
from indexer.store import IndexWriter, Layout
from indexer.store.root import IndexRoot


def layout(dim: int) -> Layout:
    return Layout(model_fingerprint="abc", model_name="tiny", feature_shape=(1, 2), feature_format="none",
                  content_shape=(1, 2), embedding_model="clip", embedding_dim=dim)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int, clusters: int = 40, spread: float = 0.8) -> np.ndarray:
    """Unit vectors [n, dim] around `clusters` random centres (retrieval embeddings are clustered)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(clusters, dim)))
    noise = rng.normal(size=(n, dim)) * spread / np.sqrt(dim)
    return unit(centres[rng.integers(0, clusters, n)] + noise)


def frames(stream_id: str, first: int, embedding: np.ndarray, fps: float = 1.0) -> EncodedBatch:
    """Samples first.. of a stream with the given embeddings [T, E]; pts = index / fps."""
    n = len(embedding)
    idx = np.arange(first, first + n, dtype=np.int64)
    return EncodedBatch(stream_id, first, first + n, idx, idx / fps, np.full(n, np.nan), [None] * n, [],
                        np.zeros((n, 1, 2), np.float16), np.zeros((n, 1, 2), np.float16),
                        np.ascontiguousarray(embedding, dtype=np.float32), [b""] * n)


class EmbeddingWriter:
    """An IndexWriter fed embeddings per stream; `add` appends to a stream, `commit` commits."""

    def __init__(self, root: Path, dim: int, search: SearchSettings | None = None):
        self.writer = IndexWriter(IndexRoot.at(root), layout(dim), commit_interval_s=1e9, search=search)
        self.next: dict[str, int] = {}

    def add(self, stream_id: str, embedding: np.ndarray) -> None:
        if stream_id not in self.next:
            info = SourceInfo(f"/v/{stream_id}.mp4", stream_id, False, None, "h264", 320, 240, 25.0, False)
            self.next[stream_id] = self.writer.open_stream(info, 1.0, "file").next_index
        assert self.writer.append(frames(stream_id, self.next[stream_id], embedding)).accepted
        self.next[stream_id] += len(embedding)

    def commit(self) -> int:
        return self.writer.commit()

    def close(self) -> None:
        self.writer.close()
