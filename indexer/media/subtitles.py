"""Text subtitle cues collected while demuxing, looked up by a sampled frame's time window."""

from __future__ import annotations

import re

import av

_ASS_OVERRIDE = re.compile(r"\{[^}]*\}")


class SubtitleTrack:
    def __init__(self) -> None:
        self._cues: list[tuple[float, float, str]] = []  # (start_s, end_s, text)

    def add_packet(self, packet: av.Packet, start_offset_s: float) -> None:
        """Decode one subtitle packet; text and ASS cues are kept, bitmap ones (DVB, PGS) skipped."""
        if packet.pts is None:
            return
        try:
            subtitle_sets = packet.decode()
        except av.error.FFmpegError:
            return
        base = float(packet.pts * packet.time_base) - start_offset_s
        duration = float(packet.duration * packet.time_base) if packet.duration else None
        for item in subtitle_sets:
            # PyAV < 18 gives SubtitleSets (own display times, holding rects); 18 gives the rects
            if hasattr(item, "start_display_time"):
                start = base + item.start_display_time / 1000
                end = base + item.end_display_time / 1000 if item.end_display_time else None
                rects = list(item)
            else:
                start, end, rects = base, None, [item]
            end = end if end and end > start else (base + duration if duration else start + 2.0)
            text = " ".join(t for t in map(_text_of, rects) if t)
            if text:
                self._cues.append((start, end, text))

    def text_between(self, start_s: float, end_s: float) -> str | None:
        texts = [text for s, e, text in self._cues if s < end_s and e > start_s]
        return " ".join(dict.fromkeys(texts)) or None  # dedupe, keep order

    def forget_before(self, time_s: float) -> None:
        self._cues = [cue for cue in self._cues if cue[1] > time_s]


def _text_of(rect) -> str:
    if getattr(rect, "type", None) == b"text" and getattr(rect, "text", None):
        return rect.text.decode("utf-8", "replace").strip()
    dialogue = getattr(rect, "dialogue", None)
    if dialogue:
        text = dialogue.decode("utf-8", "replace") if isinstance(dialogue, bytes) else str(dialogue)
        return _ASS_OVERRIDE.sub("", text).replace("\\N", " ").strip()
    return ""


__all__ = ["SubtitleTrack"]
