"""`IndexReader`: a read-only view of an index root at its last commit.

    index = IndexReader(IndexRoot.at("runs/archive"))
    index.timeline(stream_id="cam1")        # pyarrow Table, frames and gaps
    index.features([12, 13])                # float16 [2, 1+N, C], memory-mapped reads
    index.features_kept([12, 13])           # bool [2]: segments written without features keep none
    index.vectors().search(query, 10)       # exact FAISS over every vector, ids = frame ids
    FrameSearch(index).search(query, 10)    # (indexer.query.search) exact or approximate, with filters
"""

from __future__ import annotations

import bisect

import faiss
import numpy as np
import pyarrow as pa

from indexer.store import ann
from indexer.store import vectors as vec
from indexer.store.features import feature_format, load_arrays
from indexer.store.integrity import IndexDamaged, check_file, read_verified, verify_once
from indexer.store.manifest import Manifest, Segment, read_manifest
from indexer.store.root import IndexRoot
from indexer.store.timeline import read_timeline, read_timelines, timeline_schema


class IndexReader:
    def __init__(self, root: IndexRoot):
        self.root = root
        manifest = read_manifest(root)
        if manifest is None:
            raise FileNotFoundError(f"{root}: no index here (no {root.manifest.name}); create one with vidx ingest")
        self.manifest: Manifest = manifest
        self.layout = manifest.layout
        self.schema = timeline_schema(self.layout.content_shape, self.layout.embedding_dim)
        self._segments = sorted((seg for s in manifest.streams.values() for seg in s.segments if seg.frames),
                                key=lambda seg: seg.first_frame_id)
        self._starts = [seg.first_frame_id for seg in self._segments]
        self._checked: set[str] = set()  # files that passed the cheap check (integrity.py) in this reader

    def timeline(self, stream_id: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The committed timeline rows (all streams, or one), in commit order."""
        if stream_id is not None and stream_id not in self.manifest.streams:
            raise KeyError(f"no stream {stream_id!r} in {self.root}; streams: {sorted(self.manifest.streams)}")
        streams = [self.manifest.streams[stream_id]] if stream_id else self.manifest.streams.values()
        files = [seg.timeline for s in streams for seg in s.segments]
        if not files:
            return self.schema.empty_table().select(columns) if columns else self.schema.empty_table()
        return read_timelines(self.root, [self._open(f) for f in files], self.schema, columns)

    def features_kept(self, frame_ids) -> np.ndarray:
        """bool [k]: whether the index keeps patch features for each frame id. A per-segment answer:
        a segment written with feature format none (or whose features a policy dropped) keeps none;
        its frames' features are recomputed from the source (indexer.query.patch_features)."""
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        kept = np.zeros(len(ids), dtype=bool)
        segment_index = np.searchsorted(self._starts, ids, side="right") - 1
        for i in np.unique(segment_index):
            at = np.flatnonzero(segment_index == i)
            kept[at] = bool(self._segment_of(int(ids[at].max())).features)
        return kept

    def features(self, frame_ids) -> np.ndarray:
        """Patch features [k, 1+N, C] (float16) of the given frame ids, read from memory-mapped files,
        each segment in its own format (retention converts old segments to int4). Every id must be in
        a segment that keeps features (`features_kept`)."""
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), *self.layout.feature_shape), dtype=np.float16)
        segment_index = np.searchsorted(self._starts, ids, side="right") - 1
        for i in np.unique(segment_index):  # each segment's files mapped once, its rows read in one go
            at = np.flatnonzero(segment_index == i)
            segment = self._segment_of(int(ids[at].max()))
            self._segment_of(int(ids[at].min()))  # both ends checked: every id in between is in the segment
            if not segment.features:
                raise ValueError(f"{self.root} keeps no patch features for frames {segment.first_frame_id}.."
                                 f"{segment.first_frame_id + segment.frames - 1} (commit {segment.generation}; "
                                 f"feature format {self.layout.feature_format!r}, or dropped by its retention "
                                 "policy); ask features_kept first and recompute the others")
            fmt = feature_format(segment.format_name(self.layout))
            rows = ids[at] - segment.first_frame_id
            try:
                arrays = load_arrays([self.root / self._open(f, full=True) for f in segment.features])
            except ValueError as exc:  # a header that is not the one written
                raise IndexDamaged(self.root, segment.features[0], f"unreadable .npy: {exc}") from None
            out[at] = fmt.decode([a[rows] for a in arrays])
            if not np.isfinite(out[at]).all():  # 0xFF bytes are NaN in float16: never an answer from them
                raise IndexDamaged(self.root, segment.features[-1], "non-finite patch features")  # int4: its scales
        return out

    def content_tokens(self, frame_ids) -> np.ndarray:
        """The stored content tokens [k, P, D] (float16) of the given frame ids, from their timeline files
        (what a frame still gives the LLM when no patch features can be had)."""
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), *self.layout.content_shape), dtype=np.float16)
        segment_index = np.searchsorted(self._starts, ids, side="right") - 1
        for i in np.unique(segment_index):
            at = np.flatnonzero(segment_index == i)
            segment = self._segment_of(int(ids[at].max()))
            self._segment_of(int(ids[at].min()))
            table = read_timeline(self.root, self._open(segment.timeline), ["frame_id", "content_tokens"],
                                  filters=[("frame_id", "in", [int(x) for x in ids[at]])])
            row_of = {int(f): r for r, f in enumerate(table["frame_id"].to_numpy())}
            values = table["content_tokens"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            values = values.reshape(len(table), *self.layout.content_shape)
            out[at] = values[[row_of[int(f)] for f in ids[at]]]
        return out

    def frame_row(self, frame_id: int, columns: list[str]) -> dict:
        """One frame's timeline row (the given columns), read from the one file that holds it."""
        segment = self._segment_of(int(frame_id))
        table = read_timeline(self.root, self._open(segment.timeline), ["frame_id", *columns],
                              filters=[("frame_id", "==", int(frame_id))])
        return table.to_pylist()[0]

    def vectors(self) -> faiss.Index:
        """An exact FAISS index over every committed vector, in memory (4*E bytes a frame; frames in the
        approximate index come back float16-rounded). For search, FrameSearch is the lean way."""
        index = self.shard_vectors()
        chunks = self.manifest.approximate.embeddings if self.manifest.approximate else []
        for chunk in chunks:
            rows = ann.map_npy(self.root / self._open(chunk.file))[1]  # [frames, E] float16
            for lo in range(0, len(rows), ann.BLOCK_ROWS):
                block = np.asarray(rows[lo:lo + ann.BLOCK_ROWS], dtype=np.float32)
                first = chunk.first_frame_id + lo
                index.add_with_ids(block, np.arange(first, first + len(block), dtype=np.int64))
        return index

    def shard_vectors(self) -> faiss.Index:
        """Exact FAISS index (IDMap2 over FlatIP) of the vectors in shards: all of them while there is no
        approximate index, else the tail committed after it."""
        shards = (vec.deserialize(read_verified(self.root, s.file, self.manifest.checksums.get(s.file)))
                  for s in self.manifest.vectors)  # read whole anyway, so checked in full
        return vec.merge_shards(shards, self.layout.embedding_dim)

    def approximate(self) -> ann.ApproximateSearcher | None:
        """The approximate index the writer built once the index grew large, or None."""
        entry = self.manifest.approximate
        if entry is None:
            return None
        read_verified(self.root, entry.file, self.manifest.checksums.get(entry.file))  # in memory whole: checked whole
        for chunk in entry.embeddings:
            self._open(chunk.file)
        return ann.ApproximateSearcher(self.root, entry)

    def sizes(self) -> dict[str, int]:
        """Bytes on disk per component."""
        approximate = self.manifest.approximate.total_bytes() if self.manifest.approximate else 0
        sizes = {"timeline": 0, "features": 0, "vectors": sum(s.bytes for s in self.manifest.vectors) + approximate}
        for stream in self.manifest.streams.values():
            for seg in stream.segments:
                for component, size in seg.bytes.items():
                    sizes[component] += size
        return sizes

    def _open(self, name: str, full: bool = False) -> str:
        """`name`, after the cheap check the first time this reader opens it (`full`: and every byte,
        the first time this process does: features files, integrity.verify_once)."""
        if name not in self._checked:
            (verify_once if full else check_file)(self.root, name, self.manifest.checksums.get(name))
            self._checked.add(name)
        return name

    def _segment_of(self, frame_id: int) -> Segment:
        i = bisect.bisect_right(self._starts, frame_id) - 1
        if i < 0 or frame_id >= self._segments[i].first_frame_id + self._segments[i].frames:
            raise KeyError(f"frame id {frame_id} is not in {self.root} (ids 0..{self.manifest.next_frame_id - 1})")
        return self._segments[i]


__all__ = ["IndexReader"]
