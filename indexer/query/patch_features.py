"""Patch features for a question's frames: read where the index keeps them, recomputed from the
source where it does not, reported as missing where neither can be had.

    supply = PatchFeatures(index, catalog, model, settings.reader)
    rows = supply.get([12, 13, 40])     # FeatureRows: features, which are available, why not

Patch features are a cache, not the record (../shared/DESIGN.md): a segment written with
`index.feature_format: none` (or whose features a retention policy dropped) keeps none, and
`IndexReader.features_kept` says so per frame. For those frames the stream's `PictureSource`
(indexer/media/pictures.py: the file itself for a file source) gives the pictures at the frames'
own times (`pts_s`), and the vision tower (the query model's encoder part, the one that wrote
the index: the engine checks its fingerprint) encodes them again. Only the frames asked for are
decoded: the retrieved hits and the spans sent to the LLM.

Recomputed features are not written back: the writer owns the index's files. A question keeps
them in memory (`Recomputed`) so its rerank and its context tokens decode each frame once, and
drops each chunk once its tokens are made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from indexer.llamavid import LlamaVid
from indexer.media.pictures import FilePictures, PictureSource, PicturesUnavailable
from indexer.media.recording import Recording
from indexer.query.answer import DegradedSpan
from indexer.query.search import FrameCatalog
from indexer.settings import ReaderOptions
from indexer.store.credentials import source_uri
from indexer.store.index import IndexReader
from indexer.store.manifest import StreamEntry
from indexer.store.root import IndexRoot


@dataclass
class Recomputed:
    """One question's recomputed features, shared by its rerank and its context tokens."""

    features: dict[int, np.ndarray] = field(default_factory=dict)  # frame id -> [1+N, C], until used
    frames: int = 0                                                # frames recomputed for the question


@dataclass
class FeatureRows:
    features: np.ndarray     # float16 [k, 1+N, C]; zeros where not available
    available: np.ndarray    # bool [k]
    missing: dict[int, str]  # frame id -> why it has no features
    recomputed: int          # rows decoded and encoded again by this call


def pictures_for(root: IndexRoot, entry: StreamEntry, reader: ReaderOptions) -> PictureSource | str:
    """The stream's pictures to decode again, or why there are none. A file source is its own
    recording; a live source's is the one its reader wrote (indexer/media/recording.py)."""
    if entry.live:
        return Recording(root, entry.stream_id, reader.short_side)
    if entry.protocol == "file":
        return FilePictures(Path(source_uri(root, entry)), reader.short_side, reader.decoder_threads)
    return (f"stream {entry.stream_id} is a {entry.protocol} source and the index keeps no recording of it "
            "to decode again")


class PatchFeatures:
    """One committed state of an index (the engine makes a new one at each refresh)."""

    def __init__(self, index: IndexReader, catalog: FrameCatalog, model: LlamaVid, reader: ReaderOptions,
                 batch_frames: int = 16,
                 pictures: Callable[[IndexRoot, StreamEntry, ReaderOptions], PictureSource | str] = pictures_for):
        self.index = index
        self.catalog = catalog
        self.model = model
        self.reader = reader
        self.batch_frames = batch_frames
        self._pictures = pictures
        self._sources: dict[str, PictureSource | str] = {}

    def get(self, frame_ids, recomputed: Recomputed | None = None,
            timings: dict[str, float] | None = None) -> FeatureRows:
        """Features of `frame_ids` (in that order). `recomputed`: what this question already
        recomputed (read and added to; its user drops what it no longer needs); `timings["recompute"]`
        adds the seconds spent, of which `timings["recompute_decode"]` decoding the pictures."""
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        recomputed = Recomputed() if recomputed is None else recomputed
        out = np.zeros((len(ids), *self.index.layout.feature_shape), dtype=np.float16)
        kept = self.index.features_kept(ids)
        if kept.any():
            out[kept] = self.index.features(ids[kept])
        missing: dict[int, str] = {}
        todo = [int(i) for i in ids[~kept] if int(i) not in recomputed.features]
        started = time.perf_counter()
        by_stream: dict[str, list[int]] = {}
        for frame_id in dict.fromkeys(todo):
            by_stream.setdefault(self.catalog.stream_of(frame_id), []).append(frame_id)
        done = 0
        for stream_id, stream_ids in by_stream.items():
            try:
                features = self._recompute(stream_id, stream_ids, timings)
            except PicturesUnavailable as exc:
                missing.update({i: f"no patch features kept, and {exc}" for i in stream_ids})
                continue
            recomputed.features.update(zip(stream_ids, features))
            done += len(stream_ids)
        recomputed.frames += done
        if timings is not None and todo:
            timings["recompute"] = timings.get("recompute", 0.0) + time.perf_counter() - started
        available = kept.copy()
        for row in np.flatnonzero(~kept):
            if int(ids[row]) in recomputed.features:
                out[row] = recomputed.features[int(ids[row])]
                available[row] = True
        return FeatureRows(out, available, missing, done)

    def _recompute(self, stream_id: str, frame_ids: list[int], timings: dict[str, float] | None) -> np.ndarray:
        """float16 [k, 1+N, C]: the pictures at these frames' times, through the vision tower."""
        source = self._source(stream_id)
        if isinstance(source, str):
            raise PicturesUnavailable(source)
        started = time.perf_counter()
        images = source.frames_at([float(self.catalog.pts_s[i]) for i in frame_ids])
        if timings is not None:
            timings["recompute_decode"] = timings.get("recompute_decode", 0.0) + time.perf_counter() - started
        chunks = []
        for start in range(0, len(images), self.batch_frames):
            batch = images[start:start + self.batch_frames]
            chunks.append(self.model.encode_frames(self.model.preprocess(batch)).to(torch.float16).cpu().numpy())
        return np.concatenate(chunks)

    def _source(self, stream_id: str) -> PictureSource | str:
        if stream_id not in self._sources:
            entry = self.index.manifest.streams[stream_id]
            self._sources[stream_id] = self._pictures(self.index.root, entry, self.reader)
        return self._sources[stream_id]


def degraded_spans(missing: dict[int, str], catalog: FrameCatalog) -> list[DegradedSpan]:
    """Frames without features, as one span per stream and reason (its first to its last frame), in time order."""
    runs: list[DegradedSpan] = []
    for frame_id in sorted(missing, key=lambda i: (catalog.stream_of(i), catalog.pts_s[i])):
        stream_id, pts, reason = catalog.stream_of(frame_id), float(catalog.pts_s[frame_id]), missing[frame_id]
        last = runs[-1] if runs else None
        if last is not None and last.stream_id == stream_id and last.reason == reason:
            runs[-1] = DegradedSpan(stream_id, last.start_s, pts, last.frames + 1, reason)
        else:
            runs.append(DegradedSpan(stream_id, pts, pts, 1, reason))
    return runs


__all__ = ["FeatureRows", "PatchFeatures", "Recomputed", "degraded_spans", "pictures_for"]
