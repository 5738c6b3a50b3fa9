"""`IndexWriter`: the one owner of an index root's writes.

Appends arrive per stream in sample order; each is checked against the stream's cursor, so a
batch sent twice is written once and a batch after a hole is refused (the sender resends what
the writer lost). `commit()` writes the buffered rows as new files, then atomically replaces
manifest.json: a crash at any moment leaves the last commit readable and nothing half-written
visible. On open, files that no manifest lists (a crashed commit's) are removed. `append` commits
when `commit_interval_s` has passed; a caller that may go quiet (the writer actor) also calls
`commit_if_due` on a timer, so what was appended is committed on time whether or not more comes.

Each commit's retrieval embeddings go into a small exact FAISS shard. When the shards hold more
than `search.exact_max_vectors` vectors, the approximate index (indexer/store/ann.py: built the
first time, then grown, retrained after 4-fold growth) takes them in, in a build thread that never
holds up a commit: it reads the committed shards (and the current approximate index's memory-mapped
embeddings), writes its files under the generation of the commit it read, and the first commit
after it finishes names them in the manifest and drops the shards it covers. FAISS releases the
GIL while it trains and adds, so a thread suffices (bench/ann_bench.py measures the commits during
a build). Until the swap, searches use the previous approximate index and the exact shards, which
then hold more than `exact_max_vectors` vectors for the length of the build; shard folding
(`max_vector_shards`) leaves the shards a build reads alone. A crash mid-build leaves files no
manifest names, removed when the next writer opens the root.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np

from indexer.batches import EncodedBatch, Gap, SourceInfo
from indexer.redaction import redact_uri
from indexer.settings import RetentionSettings, SearchSettings
from indexer.store import ann
from indexer.store import vectors as vec
from indexer.store.credentials import save_source_uri
from indexer.store.features import feature_format, save_arrays
from indexer.store.integrity import checksum_file
from indexer.store.retention import apply_retention, plan_retention
from indexer.store.manifest import (
    ApproximateIndex,
    Layout,
    Liveness,
    Manifest,
    Segment,
    StreamEntry,
    VectorShard,
    read_manifest,
    write_manifest,
)
from indexer.store.root import IndexRoot
from indexer.store.timeline import timeline_schema, timeline_table, write_timeline

logger = logging.getLogger(__name__)

@dataclass
class AppendResult:
    accepted: bool          # False: the batch starts after a hole; resend from `expected_index`
    expected_index: int     # the next sample index the writer wants for this stream
    committed_index: int    # samples below this are durable


@dataclass
class ApproximateBuild:
    """An approximate index being built in the writer's build thread from commit `generation`."""

    generation: int
    base: ApproximateIndex | None     # the approximate index it grows or replaces (the manifest's then)
    covers: set[str]                  # the shard files it takes in; dropped at the swap
    result: Future[ApproximateIndex]


class IndexWriter:
    def __init__(self, root: IndexRoot, layout: Layout, commit_interval_s: float = 5.0,
                 max_vector_shards: int = 32, search: SearchSettings | None = None,
                 retention: RetentionSettings | None = None):
        self.root = root
        root.create()
        self._lock = root.lock_writer()
        try:
            manifest = read_manifest(self.root)
            if manifest is None:
                manifest = Manifest(layout=layout)
                write_manifest(self.root, manifest)  # generation 0: empty
            else:
                check_layout(self.root, manifest.layout, layout)
                for damage in manifest.damaged_files(self.root):  # never append to a damaged index
                    raise damage
        except BaseException:
            self._lock.release()  # a refused writer leaves the root free
            raise
        self.manifest = manifest
        self.layout = manifest.layout
        self.format = feature_format(self.layout.feature_format)
        self.schema = timeline_schema(self.layout.content_shape, self.layout.embedding_dim)
        self.commit_interval_s = commit_interval_s
        self.max_vector_shards = max_vector_shards
        self.search = search or SearchSettings()
        self.retention = retention or RetentionSettings()
        self._frames: dict[str, list[EncodedBatch]] = {}
        self._gaps: dict[str, list[Gap]] = {}
        self._expected = {sid: entry.next_index for sid, entry in manifest.streams.items()}
        self._last_gap = {sid: entry.last_gap for sid, entry in manifest.streams.items()}
        self._dirty: set[str] = set()
        self._liveness: dict[str, Liveness] = {}
        self._latest_wall: dict[str, float] = {}   # per stream: the latest wall time an append proved a frame at
        self._last_commit = time.monotonic()
        self.root.remove_uncommitted_index(manifest.files())  # what a crashed commit or build left
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="approximate-build")
        self._build: ApproximateBuild | None = None

    # -- streams ---------------------------------------------------------------------------------
    def open_stream(self, info: SourceInfo, fps: float, protocol: str) -> StreamEntry:
        """Register (or find) a stream; the entry says where to resume."""
        entry = self.manifest.streams.get(info.stream_id)
        shown = redact_uri(info.uri)  # the manifest is shown; the secrets go to a 0600 file (credentials.py)
        if entry is None:
            entry = StreamEntry(stream_id=info.stream_id, uri=shown, protocol=protocol, live=info.live, fps=fps,
                                duration_s=info.duration_s)
            self.manifest.streams[info.stream_id] = entry
            self._expected[info.stream_id] = 0
            self._last_gap[info.stream_id] = None
        else:
            entry.check_resume(shown, fps)
            entry.duration_s = info.duration_s or entry.duration_s
            entry.error = None
        save_source_uri(self.root, info.stream_id, info.uri)
        self._dirty.add(info.stream_id)
        return entry.model_copy()

    def stream_error(self, stream_id: str, error: str) -> None:
        entry = self.manifest.streams[stream_id]
        entry.error = error
        self._dirty.add(stream_id)

    def stream_warning(self, stream_id: str, warnings: list[str]) -> None:
        """Record what of the source could not be read; a resumed read adds to what an earlier
        one found."""
        entry = self.manifest.streams[stream_id]
        known = entry.warning.split("; ") if entry.warning else []
        entry.warning = "; ".join(dict.fromkeys([*known, *warnings])) or None
        self._dirty.add(stream_id)

    def finish_stream(self, stream_id: str) -> None:
        """The source ended: mark it complete at the next commit (a later ingest does nothing)."""
        self.manifest.streams[stream_id].complete = True
        self._dirty.add(stream_id)

    # -- appends ---------------------------------------------------------------------------------
    def append(self, batch: EncodedBatch) -> AppendResult:
        sid = batch.stream_id
        if sid not in self.manifest.streams:
            raise KeyError(f"stream {sid!r} was not opened on this writer")
        expected = self._expected[sid]
        if batch.first_index > expected:
            return AppendResult(False, expected, self.manifest.streams[sid].next_index)
        keep = batch.indices >= expected
        if keep.any():
            self._frames.setdefault(sid, []).append(batch.select(keep) if not keep.all() else batch)
        for gap in batch.gaps:
            key = (gap.index, gap.start_s)
            if gap.index >= expected and (self._last_gap[sid] is None or key > tuple(self._last_gap[sid])):
                self._gaps.setdefault(sid, []).append(gap)
                self._last_gap[sid] = key
        self._expected[sid] = max(expected, batch.next_index)
        self._dirty.add(sid)
        walls = [float(np.nanmax(batch.wall_time))] if not np.isnan(batch.wall_time).all() else []
        walls += [g.wall_end for g in batch.gaps if g.wall_end is not None]
        if walls:
            self._latest_wall[sid] = max(self._latest_wall.get(sid, 0.0), *walls)
        self.commit_if_due()
        return AppendResult(True, self._expected[sid], self.manifest.streams[sid].next_index)

    def expected_index(self, stream_id: str) -> int:
        return self._expected[stream_id]

    def report_liveness(self, stream_id: str, liveness: Liveness) -> None:
        """A live source's reader reports whether it is waiting for a frame; recorded in the
        stream's manifest entry at the next commit."""
        self._liveness[stream_id] = liveness
        self._dirty.add(stream_id)

    # -- commits ---------------------------------------------------------------------------------
    def commit_if_due(self) -> float:
        """Commit if `commit_interval_s` has passed since the last commit; return the seconds until
        the next one is due."""
        if time.monotonic() - self._last_commit >= self.commit_interval_s:
            self.commit()
        return self._last_commit + self.commit_interval_s - time.monotonic()

    def commit(self) -> int:
        """Make everything appended so far durable and visible; return the generation."""
        self._last_commit = time.monotonic()
        built = self._build is not None and self._build.result.done()
        if not self._dirty and not built:
            self._start_build()
            return self.manifest.generation
        manifest = self.manifest.model_copy(deep=True)
        generation = manifest.generation + 1
        shard_vectors, shard_ids = [], []
        for sid in sorted(self._dirty):
            entry = manifest.streams[sid]
            frames = concat(self._frames.get(sid, []))
            gaps = self._gaps.get(sid, [])
            if frames is not None or gaps:
                segment = self._write_segment(generation, manifest, entry, frames, gaps)
                entry.segments.append(segment)
                entry.frames += segment.frames
                entry.gaps += segment.gaps
                if frames is not None:
                    shard_vectors.append(frames.embedding)
                    shard_ids.append(np.arange(segment.first_frame_id, segment.first_frame_id + segment.frames))
                    entry.watermark_s = float(max(entry.watermark_s or 0.0, frames.pts_s.max()))
            entry.next_index = self._expected[sid]
            entry.last_gap = self._last_gap[sid]
            if sid in self._liveness:
                entry.liveness = self._current_liveness(sid)
        obsolete = self._swap_in(manifest) if built else []
        if shard_vectors:
            path = IndexRoot.vector_shard_file(generation)
            index = vec.build_shard(np.concatenate(shard_vectors), np.concatenate(shard_ids))
            size = vec.write_shard(self.root / path, index)
            manifest.vectors.append(VectorShard(generation=generation, file=path, vectors=index.ntotal, bytes=size))
            if len(manifest.vectors) > self.max_vector_shards:
                obsolete += self._fold_shards(generation, manifest)
        if self.retention.acts():  # the policy's new files in this commit, the old ones deleted after it
            obsolete += apply_retention(self.root, manifest, plan_retention(self.root, manifest, self.retention))
        manifest.generation = generation
        manifest.checksums = {name: manifest.checksums.get(name) or checksum_file(self.root / name)
                              for name in sorted(manifest.files())}
        write_manifest(self.root, manifest)
        self.manifest = manifest
        for name in obsolete:
            (self.root / name).unlink(missing_ok=True)
        self._frames.clear()
        self._gaps.clear()
        self._dirty.clear()
        self._start_build()
        return generation

    def wait_for_build(self) -> int:
        """Wait for the approximate index build in flight, if any, and commit it; return the generation."""
        if self._build is not None:
            self._build.result.exception()  # waits; a failure is logged by the commit
            return self.commit()
        return self.manifest.generation

    def close(self) -> None:
        """Commit, finish the approximate index build (so a closed index is fully indexed) and free the root."""
        self.commit()
        for _ in range(3):  # the build in flight, one for what was committed meanwhile, one retry of a failure
            if self._build is None:
                break
            self.wait_for_build()
        if self._build is not None:  # builds keep failing: no thread may outlive the lock (the next open
            self._build.result.exception()  # removes the files it wrote)
        self._builder.shutdown()
        self._lock.release()

    # -- internals -------------------------------------------------------------------------------
    def _current_liveness(self, stream_id: str) -> Liveness:
        """The last report, unless a frame appended since proves the wait over: a report and the
        frames cross the actor boundary separately and may arrive in either order, and the
        manifest must not say "waiting" beside the frames that ended the wait."""
        liveness = self._liveness[stream_id]
        waiting = liveness.waiting_since
        if waiting is not None and self._latest_wall.get(stream_id, 0.0) > waiting:
            return liveness.model_copy(update={"waiting_since": None})
        return liveness

    def _write_segment(self, generation: int, manifest: Manifest, entry: StreamEntry,
                       frames: EncodedBatch | None, gaps: list[Gap]) -> Segment:
        n = len(frames) if frames is not None else 0
        first_id = manifest.next_frame_id
        manifest.next_frame_id += n
        if frames is None:
            frames = self._empty_batch(entry.stream_id)
        timeline = IndexRoot.timeline_file(entry.stream_id, generation)
        table = timeline_table(self.schema, entry.uri, frames, np.arange(first_id, first_id + n), gaps)
        sizes = {"timeline": write_timeline(self.root / timeline, table)}
        features = []
        if n and self.format.suffixes:
            folder = IndexRoot.features_dir(entry.stream_id)
            base = self.root / f"{folder}/{IndexRoot.features_stem(generation)}"
            features = [f"{folder}/{f}" for f in save_arrays(base, self.format, frames.features)]
            sizes["features"] = sum((self.root / f).stat().st_size for f in features)
        times = {}
        if n:
            walls = frames.wall_time[~np.isnan(frames.wall_time)]
            times = {"start_s": float(frames.pts_s.min()), "end_s": float(frames.pts_s.max()),
                     "wall_end": float(walls.max()) if len(walls) else None}
        return Segment(generation=generation, first_frame_id=first_id, frames=n, gaps=len(gaps), timeline=timeline,
                       features=features, bytes=sizes, feature_format=self.format.name, **times)

    def _fold_shards(self, generation: int, manifest: Manifest) -> list[str]:
        """Merge the shards into one, except those a build in flight reads (they stay until its swap);
        return the files it makes obsolete."""
        held = self._build.covers if self._build is not None else set()
        loose = [shard for shard in manifest.vectors if shard.file not in held]
        if len(loose) < 2:
            return []
        merged = vec.read_shards([self.root / s.file for s in loose], self.layout.embedding_dim)
        path = IndexRoot.vector_shard_file(generation, "merged")
        size = vec.write_shard(self.root / path, merged)
        manifest.vectors = [shard for shard in manifest.vectors if shard.file in held]
        manifest.vectors.append(VectorShard(generation=generation, file=path, vectors=merged.ntotal, bytes=size))
        return [shard.file for shard in loose]

    def _needs_approximate(self, manifest: Manifest) -> bool:
        """More vectors than exact search is allowed to cover are outside the approximate index."""
        covered = manifest.approximate.frames if manifest.approximate else 0
        return manifest.next_frame_id - covered > self.search.exact_max_vectors

    def _start_build(self) -> None:
        """Start building the approximate index from the last commit when its shards hold too many vectors
        and no build is in flight. Everything it reads stays on disk until its swap."""
        manifest = self.manifest
        if self._build is not None or not self._needs_approximate(manifest):
            return
        shards = list(manifest.vectors)
        result = self._builder.submit(self._build_approximate, manifest.generation, manifest.approximate,
                                      shards, manifest.next_frame_id)
        self._build = ApproximateBuild(manifest.generation, manifest.approximate, {s.file for s in shards}, result)

    def _build_approximate(self, generation: int, base: ApproximateIndex | None, shards: list[VectorShard],
                           next_frame_id: int) -> ApproximateIndex:
        """In the build thread: the shards' vectors in the approximate index (a new one, or `base` grown),
        its files written under `generation`. The index's float16 embeddings then replace the shards
        (the timeline keeps the float32 originals)."""
        tail = self._shard_blocks(shards)
        s = self.search
        if base is None or next_frame_id >= ann.RETRAIN_GROWTH * base.trained_frames:
            blocks = (_chunk_blocks(self.root, base) if base else []) + tail
            return ann.build(self.root, generation, blocks, s.nlist, s.pq_bytes, s.nprobe, s.refine, seed=generation)
        return ann.extend(self.root, generation, base, tail)

    def _swap_in(self, manifest: Manifest) -> list[str]:
        """Put the finished build into `manifest` in place of the shards it covers; return the files it
        makes obsolete. A failed build is logged and changes nothing (the next commit starts another)."""
        build, self._build = self._build, None
        try:
            new = build.result.result()
        except Exception:
            logger.exception("%s: building the approximate index from commit %d failed; searches stay exact "
                             "beyond the last approximate index, and the next commit retries", self.root,
                             build.generation)
            return []
        if manifest.approximate != build.base:
            raise RuntimeError(f"{self.root}: the approximate index changed during a build from commit "
                               f"{build.generation}")
        manifest.vectors = [shard for shard in manifest.vectors if shard.file not in build.covers]
        manifest.approximate = new
        old = build.base.files() - new.files() if build.base else set()
        return sorted(build.covers | old)

    def _shard_blocks(self, shards: list[VectorShard]) -> list[ann.VectorBlock]:
        """Each shard's embeddings as a block of consecutive frame ids (a commit's ids are consecutive)."""
        blocks = []
        for shard in shards:
            vectors, ids = vec.shard_contents(faiss.read_index(str(self.root / shard.file)))
            order = np.argsort(ids)
            vectors, ids = vectors[order], ids[order]  # [n, E], [n]
            if len(ids) and not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
                raise ValueError(f"{self.root / shard.file}: frame ids are not consecutive")
            if len(ids):
                blocks.append(ann.VectorBlock(int(ids[0]), vectors))
        return blocks

    def _empty_batch(self, stream_id: str) -> EncodedBatch:
        p, d = self.layout.content_shape
        t, c = self.layout.feature_shape
        return EncodedBatch(stream_id, 0, 0, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), [], [],
                            np.zeros((0, t, c), np.float16), np.zeros((0, p, d), np.float16),
                            np.zeros((0, self.layout.embedding_dim), np.float32), [])


def _chunk_blocks(root: IndexRoot, entry: ApproximateIndex) -> list[ann.VectorBlock]:
    """The approximate index's float16 embeddings, memory-mapped, as blocks for a rebuild."""
    return [ann.VectorBlock(c.first_frame_id, ann.map_npy(root / c.file)[1]) for c in entry.embeddings]


def concat(batches: list[EncodedBatch]) -> EncodedBatch | None:
    if not batches:
        return None
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    return EncodedBatch(first.stream_id, first.first_index, batches[-1].next_index,
                        np.concatenate([b.indices for b in batches]), np.concatenate([b.pts_s for b in batches]),
                        np.concatenate([b.wall_time for b in batches]), [s for b in batches for s in b.subtitles], [],
                        np.concatenate([b.features for b in batches]), np.concatenate([b.content for b in batches]),
                        np.concatenate([b.embedding for b in batches]), [t for b in batches for t in b.thumbnails])


def check_layout(root: IndexRoot, existing: Layout, wanted: Layout) -> None:
    differences = existing.differences(wanted)
    if differences:
        raise ValueError(f"{root} was built with another model or format ({'; '.join(differences)}); "
                         "ingest into a new --index or use the same config")


__all__ = ["AppendResult", "IndexWriter", "check_layout", "concat"]
