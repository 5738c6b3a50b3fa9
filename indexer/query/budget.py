"""The token budget: how many frames, and how many content tokens per frame, an answer gets.

The whole video goes in when it fits (every frame as its context token plus its content
tokens, the paper's long-video mode); otherwise the retrieved spans, as densely as fits.
Timestamp labels cost tokens too: over a whole film they go in every few frames, not on each."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# frames between timestamp labels, tried from densest to sparsest
LABEL_STRIDES = (1, 5, 10, 30, 60, 300, 1800)


@dataclass(frozen=True)
class TokenCosts:
    """Prompt tokens, as the tokenizer counts them."""

    available: int              # context length - fixed prompt text - tokens reserved for the answer
    label: int                  # one timestamp label
    span_header: int            # the line that opens a span
    subtitle_per_frame: float = 0.0   # subtitle text, on average over the frames in question


@dataclass(frozen=True)
class TokenPlan:
    mode: Literal["whole", "spans"]
    content_tokens: int         # per frame, after the context token
    label_every: int            # a timestamp label every this many frames
    frame_stride: int           # 1: every frame of each span; s: every s-th
    spans: int                  # spans mode: how many of the best spans are sent
    frames: int                 # frames sent
    tokens: int                 # estimated prompt tokens for frames, labels, headers and subtitles


def plan_tokens(whole_frames: int, span_frames: list[int], content_levels: list[int], costs: TokenCosts,
                whole_allowed: bool = True) -> TokenPlan:
    """`whole_frames`: frames in the question's scope; `span_frames`: frames of each retrieved
    span, best span first; `content_levels`: content tokens per frame the model can give, most
    first (e.g. [16, 1] for a grid:4 checkpoint, [1] for mean)."""
    levels = sorted(set(content_levels), reverse=True)
    if not levels or levels[-1] < 1:
        raise ValueError(f"content_levels must be positive, got {content_levels}")
    if whole_allowed and whole_frames:
        for content in levels:
            for every in LABEL_STRIDES:
                tokens = (whole_frames * (1 + content) + math.ceil(whole_frames / every) * costs.label
                          + costs.span_header + math.ceil(whole_frames * costs.subtitle_per_frame))
                if tokens <= costs.available:
                    return TokenPlan("whole", content, every, 1, 0, whole_frames, tokens)
    span_frames = [n for n in span_frames if n]
    if not span_frames:
        raise ValueError("nothing to send: no frame matched the question and its filters")
    for kept in range(len(span_frames), 0, -1):  # the weakest spans go last, when nothing else helps
        spans = span_frames[:kept]
        for content in levels:
            tokens = _spans_tokens(spans, 1, content, costs)
            if tokens <= costs.available:
                return TokenPlan("spans", content, 1, 1, kept, sum(spans), tokens)
        content = levels[-1]
        for stride in range(2, max(spans) + 1):
            tokens = _spans_tokens(spans, stride, content, costs)
            if tokens <= costs.available:
                return TokenPlan("spans", content, 1, stride, kept, sum(math.ceil(n / stride) for n in spans), tokens)
    one = costs.span_header + 1 + levels[-1] + costs.label
    raise ValueError(f"the LLM context is too small: {costs.available} tokens are left for video and one frame "
                     f"needs {one}; lower query.max_new_tokens or raise query.context_length")


def _spans_tokens(span_frames: list[int], stride: int, content: int, costs: TokenCosts) -> int:
    frames = sum(math.ceil(n / stride) for n in span_frames)
    return (frames * (1 + content + costs.label) + math.ceil(frames * costs.subtitle_per_frame)
            + len(span_frames) * costs.span_header)


__all__ = ["LABEL_STRIDES", "TokenCosts", "TokenPlan", "plan_tokens"]
