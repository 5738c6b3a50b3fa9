"""What crosses the pipeline's boundaries: a sampled frame, a gap, what a source turned out to be, a
batch of sampled frames, and the same batch encoded. On the ground floor: the readers make these,
the encoders, the writer, the store and the actors take them, and none of those is imported here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SampledFrame:
    index: int                # sample index on the 1/fps grid
    pts_s: float              # media time of the frame shown (seconds from the start; live: source clock)
    wall_time: float | None   # unix time the frame was decoded (live sources only)
    image: np.ndarray         # uint8 RGB [H, W, 3], shorter side = ReaderOptions.short_side
    subtitle: str | None = None


@dataclass
class Gap:
    start_s: float            # media time of the last frame before the gap
    end_s: float | None       # media time of the first frame after it (None: the source ended)
    reason: str
    wall_start: float | None = None
    wall_end: float | None = None
    index: int = 0            # the sample index at which sampling resumed after the gap


@dataclass
class SourceInfo:
    uri: str
    stream_id: str
    live: bool
    duration_s: float | None
    codec: str
    width: int
    height: int
    average_fps: float | None
    keyframes_only: bool
    subtitles: bool = False
    errors: list[str] = field(default_factory=list)      # damaged packets (the first ones)
    warnings: list[str] = field(default_factory=list)    # what of the source could not be read, with ranges


@dataclass
class FrameBatch:
    """Consecutive samples of one stream. `first_index`/`next_index` are the reader's cursor on
    the 1/fps grid before and after the batch, so the writer can tell a resend from a hole."""

    stream_id: str
    first_index: int
    next_index: int
    indices: np.ndarray          # int64 [T]
    pts_s: np.ndarray            # float64 [T]
    wall_time: np.ndarray        # float64 [T] unix seconds, NaN for archived sources
    images: list[np.ndarray]     # T x uint8 RGB [H, W, 3]
    subtitles: list[str | None]
    gaps: list[Gap] = field(default_factory=list)

    @classmethod
    def of(cls, stream_id: str, first_index: int, frames: list[SampledFrame], gaps: list[Gap],
           next_index: int) -> FrameBatch:
        return cls(stream_id, first_index, next_index,
                   np.array([f.index for f in frames], dtype=np.int64),
                   np.array([f.pts_s for f in frames], dtype=np.float64),
                   np.array([np.nan if f.wall_time is None else f.wall_time for f in frames], dtype=np.float64),
                   [f.image for f in frames], [f.subtitle for f in frames], gaps)

    def __len__(self) -> int:
        return len(self.indices)

    def encoded(self, features: np.ndarray, content: np.ndarray, embedding: np.ndarray,
                thumbnails: list[bytes]) -> EncodedBatch:
        return EncodedBatch(self.stream_id, self.first_index, self.next_index, self.indices, self.pts_s,
                            self.wall_time, self.subtitles, self.gaps, features, content, embedding, thumbnails)


@dataclass
class EncodedBatch:
    stream_id: str
    first_index: int
    next_index: int
    indices: np.ndarray          # int64 [T]
    pts_s: np.ndarray            # float64 [T]
    wall_time: np.ndarray        # float64 [T]
    subtitles: list[str | None]
    gaps: list[Gap]
    features: np.ndarray         # float16 [T, 1+N, C]: vision tower output, CLS first
    content: np.ndarray          # float16 [T, P, D]: content tokens in LLM space
    embedding: np.ndarray        # float32 [T, E]: L2-normalised retrieval embedding
    thumbnails: list[bytes]      # T x JPEG

    def __len__(self) -> int:
        return len(self.indices)

    def select(self, keep: np.ndarray) -> EncodedBatch:
        """The rows where `keep` (bool [T]) is true; gaps stay."""
        return EncodedBatch(self.stream_id, self.first_index, self.next_index, self.indices[keep], self.pts_s[keep],
                            self.wall_time[keep], [s for s, k in zip(self.subtitles, keep) if k], self.gaps,
                            self.features[keep], self.content[keep], self.embedding[keep],
                            [t for t, k in zip(self.thumbnails, keep) if k])


__all__ = ["EncodedBatch", "FrameBatch", "Gap", "SampledFrame", "SourceInfo"]
