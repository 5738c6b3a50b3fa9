"""What a question gets back: the answer's text and the moments it rests on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from indexer.query.prompt import Turn


@dataclass(frozen=True)
class Citation:
    stream_id: str
    start_s: float
    end_s: float
    frame_ids: tuple[int, ...]   # the frames of this span the model saw (whole mode: the span's frames)
    best_frame_id: int           # its best-matching frame (the thumbnail to show)
    score: float


@dataclass(frozen=True)
class DegradedSpan:
    """Frames sent to the LLM with their content tokens only: the index keeps no patch features for
    them and they could not be recomputed (no source file, no recording), so they have no context token."""

    stream_id: str
    start_s: float
    end_s: float
    frames: int
    reason: str


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    mode: Literal["whole", "spans"]
    frames: int                  # frames sent to the LLM
    tokens_per_frame: int        # context token + content tokens
    prompt_tokens: int
    timings: dict[str, float] = field(default_factory=dict)   # seconds per stage
    history: list[Turn] = field(default_factory=list)          # this conversation, this turn included
    degraded: list[DegradedSpan] = field(default_factory=list)  # frames without a context token, and why
    recomputed_frames: int = 0   # frames whose patch features were decoded and encoded again for this answer

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["Answer", "Citation", "DegradedSpan", "Turn"]
