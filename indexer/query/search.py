"""`FrameSearch`: top-k frames for a query embedding (a text's or an image's), with stream and
time filters applied inside FAISS.

    search = FrameSearch(IndexReader(IndexRoot.at("runs/archive")), settings.search)
    hits = search.search(embedding, 10, SearchFilter(streams=("cam1",), start_s=60.0, end_s=120.0))

Small indexes are searched exactly (the vectors of the commit shards, IDMap2 over FlatIP). Large
ones carry an approximate index built by the writer (indexer/store/ann.py): its best
`k * refine` PQ candidates are rescored exactly against the stored float16 embeddings, and frames
committed after it (the tail, at most `exact_max_vectors`) are searched exactly and merged in.

Filters become a bitmap over frame ids, used before ranking: as a `faiss.IDSelectorBitmap` in
the approximate index (which probes proportionally more lists for a selective filter, and every
list when that still finds too few), as a mask on the exact part's scores. A filter never shrinks
a top-k to fewer than k while k frames match.

The exact part is one matrix-vector product in NumPy, not a FAISS search: for a single query
FAISS splits a flat scan over its OpenMP threads, which at 10k x 512 took 1.5 ms on 2 threads
against 0.5 ms on 1 (0.66 ms for NumPy), and up to 10 ms when the threads compete for busy cores.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow.compute as pc

from indexer.settings import SearchSettings
from indexer.store import vectors as vec
from indexer.store.ann import ApproximateSearcher
from indexer.store.index import IndexReader

DEFAULT_SETTINGS = SearchSettings()


@dataclass(frozen=True)
class SearchFilter:
    streams: tuple[str, ...] | None = None   # None: every stream
    start_s: float | None = None             # media time (pts_s) range, inclusive
    end_s: float | None = None


@dataclass(frozen=True)
class Hit:
    frame_id: int
    stream_id: str
    pts_s: float
    score: float          # inner product of unit vectors = cosine


class FrameCatalog:
    """Which stream, media time and subtitle each frame id has, and the frame ids a filter or a
    time range selects. Streams come from the manifest (each segment is a run of consecutive frame
    ids), times and subtitles from the timeline, read once: 28 bytes a frame plus the subtitles."""

    def __init__(self, index: IndexReader):
        manifest = index.manifest
        self.streams = sorted(manifest.streams)
        self.size = manifest.next_frame_id                      # frame ids are 0..size-1
        self.stream_code = np.full(self.size, -1, dtype=np.int32)
        runs: dict[str, list[np.ndarray]] = {}
        for code, name in enumerate(self.streams):
            for seg in manifest.streams[name].segments:
                self.stream_code[seg.first_frame_id:seg.first_frame_id + seg.frames] = code
                runs.setdefault(name, []).append(np.arange(seg.first_frame_id, seg.first_frame_id + seg.frames))
        table = index.timeline(columns=["frame_id", "pts_s", "subtitle"])
        table = table.filter(pc.is_valid(table["frame_id"]))    # gap rows have no frame id
        self.pts_s = np.full(self.size, np.nan)
        self.pts_s[table["frame_id"].to_numpy()] = table["pts_s"].to_numpy()
        with_text = table.filter(pc.is_valid(table["subtitle"]))
        self.subtitles: dict[int, str] = dict(zip(with_text["frame_id"].to_pylist(), with_text["subtitle"].to_pylist()))
        del table, with_text
        # per stream: frame ids in time order, so a time range is one slice found by bisection
        self._by_stream: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in self.streams:
            ids = np.concatenate(runs[name]) if name in runs else np.zeros(0, np.int64)
            ids = ids[np.argsort(self.pts_s[ids], kind="stable")]
            self._by_stream[name] = (ids, self.pts_s[ids])

    def select(self, where: SearchFilter | None) -> np.ndarray | None:
        """Frame ids (int64, unordered) that pass `where`; None when it passes every frame."""
        if where is None:
            return None
        check_filter(where, self.streams)
        if where.streams is None and where.start_s is None and where.end_s is None:
            return None
        streams = self.streams if where.streams is None else where.streams  # () passes nothing
        parts = [self.between(s, where.start_s, where.end_s) for s in streams]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return None if len(ids) == self.size else ids

    def between(self, stream_id: str, start_s: float | None, end_s: float | None) -> np.ndarray:
        """A stream's frame ids with start_s <= pts <= end_s, in time order."""
        if stream_id not in self._by_stream:
            raise KeyError(f"unknown stream {stream_id!r}; streams: {self.streams}")
        ids, pts = self._by_stream[stream_id]
        lo = 0 if start_s is None else int(np.searchsorted(pts, start_s, "left"))
        hi = len(pts) if end_s is None else int(np.searchsorted(pts, end_s, "right"))
        return ids[lo:hi]

    def stream_of(self, frame_id: int) -> str:
        return self.streams[self.stream_code[frame_id]]


class FrameSearch:
    """Search one committed state of an index (make a new one to see later commits). Searches may
    run concurrently from several threads."""

    def __init__(self, index: IndexReader, settings: SearchSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self.dim = index.layout.embedding_dim if index.layout is not None else 0
        self.catalog = FrameCatalog(index)
        self.approximate: ApproximateSearcher | None = index.approximate()
        # the exact part: every vector without an approximate index, else the tail after it
        vectors, ids = vec.shard_contents(index.shard_vectors()) if index.layout is not None else (None, None)
        order = np.argsort(ids) if ids is not None else None
        self.exact_ids = ids[order] if ids is not None else np.zeros(0, np.int64)                 # [t]
        self.exact_vectors = vectors[order] if vectors is not None else np.zeros((0, self.dim), np.float32)  # [t, E]
        self._gpu = _ExactOnGpu.maybe(self.exact_vectors, self.exact_ids, settings)

    @property
    def kind(self) -> str:
        """"exact", or the approximate index's description."""
        if self.approximate is None:
            return "exact"
        s = self.settings
        tail = len(self.exact_ids)
        return f"{self.approximate.describe()} nprobe={s.nprobe} refine={s.refine}, exact tail of {tail} frames"

    def search(self, query: np.ndarray, k: int, where: SearchFilter | None = None) -> list[Hit]:
        """The k frames most like `query` (float32 [E] or [1, E]; scaled to unit length, so scores are
        cosines) that pass `where`, best first; fewer only when fewer frames pass."""
        q = self._check_query(query)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        selected = self.catalog.select(where)                         # validates `where`
        if self.catalog.size == 0 or (selected is not None and len(selected) == 0):
            return []
        selector = _Bitmap(selected, self.catalog.size) if selected is not None else None
        found = [self._search_exact(q, k, selector), self._search_approximate(q, k, selected, selector)]
        scores = np.concatenate([s for s, _ in found])
        ids = np.concatenate([i for _, i in found])
        best = np.argsort(-scores, kind="stable")[:k]
        c = self.catalog
        return [Hit(int(i), c.streams[c.stream_code[i]], float(c.pts_s[i]), float(s))
                for i, s in zip(ids[best], scores[best])]

    # -- internals -------------------------------------------------------------------------------
    def _check_query(self, query: np.ndarray) -> np.ndarray:
        q = np.asarray(query, dtype=np.float32)
        shape = q.shape
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        if q.ndim != 1 or q.shape[0] != self.dim:
            raise ValueError(f"query must be float32 [{self.dim}] or [1, {self.dim}] (the index's embedding_dim), "
                             f"got shape {list(shape)}")
        if not np.isfinite(q).all():
            raise ValueError("query has NaN or infinite values")
        norm = float(np.linalg.norm(q))
        if norm == 0:
            raise ValueError("query is all zeros: it matches nothing")
        return np.ascontiguousarray(q / norm)

    def _search_exact(self, q: np.ndarray, k: int, selector: _Bitmap | None) -> tuple[np.ndarray, np.ndarray]:
        t = len(self.exact_ids)
        if selector is None and self._gpu is not None:
            return self._gpu.search(q, min(k, t))
        scores = self.exact_vectors @ q  # [t]
        if selector is not None:
            passes = selector.bits[self.exact_ids]  # [t]
            scores = np.where(passes, scores, -np.inf)
            k = min(k, int(passes.sum()))
        k = min(k, t)
        if k == 0:
            return _nothing()
        best = np.argpartition(-scores, k - 1)[:k]
        return scores[best], self.exact_ids[best]

    def _search_approximate(self, q: np.ndarray, k: int, selected: np.ndarray | None,
                            selector: _Bitmap | None) -> tuple[np.ndarray, np.ndarray]:
        a = self.approximate
        if a is None:
            return _nothing()
        wanted = k * self.settings.refine
        if selected is None:
            count = a.frames
        else:
            covered = selected[selected < a.frames]
            count = len(covered)
        if count == 0:
            return _nothing()
        if selected is not None and count <= wanted:
            ids = covered  # no more frames pass than would be rescored: rescore them all
        else:
            # a filter passing a fraction f of the frames leaves f of each list: probe 1/f times more
            nprobe = math.ceil(self.settings.nprobe * a.frames / count)
            ids = a.candidates(q, wanted, nprobe, selector.faiss if selector is not None else None)
            if len(ids) < min(k, count):  # the probed lists held too few that pass: score every list
                ids = a.candidates(q, wanted, a.nlist, selector.faiss if selector is not None else None)
        scores = a.rescore(q, ids)  # [len(ids)]
        best = np.argsort(-scores)[:k]
        return scores[best], ids[best]


class _Bitmap:
    """Selected frame ids as a FAISS bitmap selector: bit i of byte i // 8 (little-endian bit order)."""

    def __init__(self, frame_ids: np.ndarray, size: int):
        self.bits = np.zeros(size, dtype=bool)  # [size]
        self.bits[frame_ids] = True
        self.bitmap = np.packbits(self.bits, bitorder="little")  # uint8 [ceil(size / 8)], kept alive for FAISS
        self.faiss = faiss.IDSelectorBitmap(len(self.bitmap), faiss.swig_ptr(self.bitmap))


class _ExactOnGpu:
    """The exact part (FlatIP) on the first GPU, for unfiltered searches (GPU indexes take no
    selector). GPU indexes are not thread-safe even for reads: one search at a time."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray):
        self.ids = ids  # [n]
        self.resources = faiss.StandardGpuResources()
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        self.index = faiss.index_cpu_to_gpu(self.resources, 0, flat)
        self.lock = threading.Lock()

    @classmethod
    def maybe(cls, vectors: np.ndarray, ids: np.ndarray, settings: SearchSettings) -> _ExactOnGpu | None:
        if (not len(ids) or settings.use_gpu != "auto" or not hasattr(faiss, "StandardGpuResources")
                or faiss.get_num_gpus() == 0):
            return None
        return cls(vectors, ids)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            scores, rows = self.index.search(q[None], k)  # [1, k]
        keep = rows[0] >= 0
        return scores[0][keep], self.ids[rows[0][keep]]


def check_filter(where: SearchFilter, streams: list[str]) -> None:
    """Raise on a filter that names unknown streams or an empty or malformed time range."""
    if where.streams is not None:
        if isinstance(where.streams, str):
            raise ValueError(f"SearchFilter.streams must be a tuple of stream ids, not the string {where.streams!r}")
        unknown = [s for s in where.streams if s not in streams]
        if unknown:
            raise KeyError(f"unknown stream {', '.join(map(repr, unknown))}; streams: {streams}")
    for name in ("start_s", "end_s"):
        value = getattr(where, name)
        if value is not None and math.isnan(value):
            raise ValueError(f"SearchFilter.{name} is NaN")
    if where.start_s is not None and where.end_s is not None and where.start_s > where.end_s:
        raise ValueError(f"SearchFilter start_s {where.start_s} is after end_s {where.end_s}")


def _nothing() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.float32), np.zeros(0, np.int64)


__all__ = ["FrameCatalog", "FrameSearch", "Hit", "SearchFilter", "check_filter"]
