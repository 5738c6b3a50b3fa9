"""The question's prompt: the frames of each span in time order, each span opened by a header
naming its stream and time range, timestamp labels between the frames' placeholders and each
frame's subtitle right after it (as the official long-video prompt places subtitles), inside
the official movie framing and conversation template. Earlier turns of a conversation come
first as plain text, as in the official demo."""

from __future__ import annotations

from dataclasses import dataclass

from indexer.llamavid.conversation import (MOVIE_END, MOVIE_START, Conversation, first_user_message,
                                           get_template)
from indexer.llamavid.tokenization import IMAGE_PLACEHOLDER


@dataclass(frozen=True)
class PromptFrame:
    frame_id: int
    pts_s: float
    subtitle: str | None = None
    context: bool = True   # False: no patch features could be had, so no context token (content tokens only)


@dataclass(frozen=True)
class PromptSpan:
    stream_id: str
    start_s: float
    end_s: float
    frames: tuple[PromptFrame, ...]   # in time order


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


def clock(seconds: float) -> str:
    """72.4 -> "1:12", 4000 -> "1:06:40": what people write and models read."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def span_header(stream_id: str, start_s: float, end_s: float) -> str:
    return f"\n[{stream_id} {clock(start_s)}-{clock(end_s)}]\n"


def time_label(pts_s: float) -> str:
    return f"<{clock(pts_s)}>"


def video_text(spans: list[PromptSpan], tokens_per_frame: int, label_every: int = 1, subtitles: bool = True) -> str:
    parts = [MOVIE_START]
    for span in spans:
        parts.append(span_header(span.stream_id, span.start_s, span.end_s))
        for i, frame in enumerate(span.frames):
            if i % label_every == 0:
                parts.append(time_label(frame.pts_s))
            parts.append(IMAGE_PLACEHOLDER * (tokens_per_frame if frame.context else tokens_per_frame - 1))
            if subtitles and frame.subtitle:
                parts.append(frame.subtitle)
    parts.append(MOVIE_END)
    return "".join(parts)


def conversation_prompt(video: str, question: str, history: list[Turn], conv_mode: str = "vicuna_v1") -> str:
    """Earlier turns as text; the frames go with the newest question (the official demo drops
    the `<image>` from earlier turns and sends the frames with the current one)."""
    conversation = Conversation(get_template(conv_mode))
    for turn in history:
        conversation.add_user(turn.question)
        conversation.add_assistant(turn.answer)
    conversation.add_user(first_user_message(video, question))
    return conversation.prompt()


__all__ = ["PromptFrame", "PromptSpan", "Turn", "clock", "conversation_prompt", "span_header", "time_label",
           "video_text"]
