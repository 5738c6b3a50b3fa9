"""Retrieval embeddings in FAISS, ids = frame ids. Each commit writes one small shard; opening
the index merges the shards; the writer folds shards together when they pile up."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from indexer.store.files import write_atomic


def new_index(dim: int) -> faiss.Index:
    # inner product on L2-normalised embeddings = cosine; IDMap2 keeps external ids and reconstructs
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def build_shard(embeddings: np.ndarray, frame_ids: np.ndarray) -> faiss.Index:
    index = new_index(embeddings.shape[1])
    index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), np.ascontiguousarray(frame_ids, np.int64))
    return index


def write_shard(path: Path, index: faiss.Index) -> int:
    data = faiss.serialize_index(index)
    return write_atomic(path, lambda f: f.write(data.tobytes()))


def read_shards(paths: list[Path], dim: int) -> faiss.Index:
    """One index over every shard."""
    return merge_shards((faiss.read_index(str(path)) for path in paths), dim)


def merge_shards(shards: Iterable[faiss.Index], dim: int) -> faiss.Index:
    merged = new_index(dim)
    for shard in shards:
        if shard.ntotal:
            merged.add_with_ids(*shard_contents(shard))
    return merged


def deserialize(data: bytes) -> faiss.Index:
    """A shard from the bytes write_shard wrote."""
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def shard_contents(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 [n, E], frame ids int64 [n]) of an IDMap2-over-Flat index."""
    idmap = faiss.downcast_index(index)  # a view: `index` must stay referenced, it owns the C++ object
    vectors = faiss.downcast_index(idmap.index).reconstruct_n(0, idmap.ntotal)
    return vectors, faiss.vector_to_array(idmap.id_map).astype(np.int64)


__all__ = ["build_shard", "deserialize", "merge_shards", "new_index", "read_shards", "shard_contents", "write_shard"]
