"""Conversation templates and the two prompts of LLaMA-VID.

The templates are the official ones (`llamavid/conversation.py`): the text a checkpoint was
trained on, to the character. `video_prompt` is the short-video prompt (one `<image>` stands for
the whole clip); `movie_prompt` is the long-video prompt of `run_llamavid_movie.py`: one
placeholder per frame token, subtitle text right after the frame it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from indexer.llamavid.tokenization import IMAGE_PLACEHOLDER

MOVIE_START = "Below is a movie. Memorize the content and answer my question after watching this movie."
MOVIE_END = "Now the movie end."
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class ConversationTemplate:
    """A LLaVA-style template. `style` "two" alternates `sep` and `sep2` after turns (vicuna);
    "single" puts `sep` after every turn; "plain" writes messages only."""

    name: str
    system: str
    roles: tuple[str, str]
    style: Literal["single", "two", "plain"]
    sep: str
    sep2: str | None = None

    def render(self, messages: list[tuple[str, str | None]]) -> str:
        """The prompt for `messages` ((role, text) pairs; text None = the turn the model writes)."""
        if self.style == "plain":
            seps = [self.sep, self.sep2]
            return self.system + "".join(text + seps[i % 2] for i, (_, text) in enumerate(messages) if text)
        seps = [self.sep, self.sep2] if self.style == "two" else [self.sep, self.sep]
        out = self.system + seps[0]
        for i, (role, text) in enumerate(messages):
            out += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
        return out

    @property
    def stop_str(self) -> str:
        return self.sep2 if self.style == "two" else self.sep


CONVERSATION_TEMPLATES: dict[str, ConversationTemplate] = {
    t.name: t for t in [
        ConversationTemplate("vicuna_v1", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), "two", " ", "</s>"),
        ConversationTemplate("imgsp_v1", _VICUNA_SYSTEM, ("USER", "ASSISTANT"), "two", " ", "</s>"),
        ConversationTemplate(
            "llava_v1",
            "A chat between a curious human and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the human's questions.",
            ("USER", "ASSISTANT"), "two", " ", "</s>"),
        ConversationTemplate(
            "llava_v0",
            "A chat between a curious human and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the human's questions.",
            ("Human", "Assistant"), "single", "###"),
        ConversationTemplate("plain_guided", "", ("", ""), "plain", "\n"),
    ]
}


def get_template(conv_mode: str) -> ConversationTemplate:
    try:
        return CONVERSATION_TEMPLATES[conv_mode]
    except KeyError:
        raise ValueError(f"unknown conv_mode {conv_mode!r}; known: {sorted(CONVERSATION_TEMPLATES)}") from None


@dataclass
class Conversation:
    """A multi-turn chat: the frames' placeholder text goes into the first user turn, as in the
    official demo, and later turns are plain text."""

    template: ConversationTemplate
    messages: list[tuple[str, str | None]] = field(default_factory=list)

    def add_user(self, text: str) -> None:
        self.messages.append((self.template.roles[0], text))

    def add_assistant(self, text: str | None) -> None:
        self.messages.append((self.template.roles[1], text))

    def prompt(self) -> str:
        """The prompt that asks for the next assistant turn."""
        return self.template.render(self.messages + [(self.template.roles[1], None)])


def video_frames_text(num_frames: int) -> str:
    """Short-video mode: one placeholder for the whole clip, whatever its length."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return IMAGE_PLACEHOLDER


def movie_frames_text(num_frames: int, tokens_per_frame: int, subtitles: dict[int, str] | None = None) -> str:
    """Long-video mode: "Below is a movie. ..." with `tokens_per_frame` placeholders per frame and
    each subtitle right after its frame, then "Now the movie end."."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    subtitles = subtitles or {}
    bad = [i for i in subtitles if not 0 <= int(i) < num_frames]
    if bad:
        raise ValueError(f"subtitles name frames {sorted(bad)} outside 0..{num_frames - 1}")
    subtitles = {int(i): text for i, text in subtitles.items()}
    frames = "".join(IMAGE_PLACEHOLDER * tokens_per_frame + subtitles.get(i, "") for i in range(num_frames))
    return MOVIE_START + frames + MOVIE_END


def first_user_message(frames_text: str, question: str) -> str:
    return frames_text + "\n" + question


__all__ = ["ConversationTemplate", "CONVERSATION_TEMPLATES", "Conversation", "get_template",
           "video_frames_text", "movie_frames_text", "first_user_message", "MOVIE_START", "MOVIE_END"]
