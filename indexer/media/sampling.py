"""Sampling by presentation time: which decoded frame stands for each point of a 1/fps grid.

Pure logic, no decoding, so it is tested on plain numbers. Times are seconds of media time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")

MPEG_TS_WRAP_S = 2**33 / 90_000  # 33-bit 90 kHz timestamps wrap after ~26.5 hours


def grid_time(index: int, fps: float) -> float:
    """The media time of sample `index` on the 1/fps grid."""
    return index / fps


def first_grid_index(t: float, fps: float) -> int:
    """The first grid point a frame starting at `t` may stand for: a frame up to half an interval
    late still stands for the grid point before it, so a stream starting at 0.04 s samples t=0."""
    return max(0, math.ceil((t - 0.5 / fps) * fps - 1e-9))


@dataclass
class Sample(Generic[Item]):
    index: int      # position on the 1/fps grid
    time_s: float   # the chosen frame's own media time (not the grid time)
    item: Item


class PtsSampler(Generic[Item]):
    """For each grid point g_k = k / fps, choose the frame on screen at g_k: the last frame with
    time <= g_k. Works for variable frame rates (a still held 10 s covers 10 grid points) and
    needs only the frame it currently holds, so memory stays flat.

    Frames must arrive in presentation order (decoders give them so, B-frames included)."""

    def __init__(self, fps: float, start_index: int = 0):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self.next_index = start_index
        self._held: tuple[float, Item] | None = None
        self._started = False

    def push(self, time_s: float, item: Item) -> list[Sample[Item]]:
        """Take the next frame; return the samples that are now decided."""
        if not self._started:
            self.next_index = max(self.next_index, first_grid_index(time_s, self.fps))
            self._started = True
        out = self._emit_before(time_s)
        if self._held is None or time_s >= self._held[0]:
            self._held = (time_s, item)
        return out

    def flush(self, end_s: float | None = None) -> list[Sample[Item]]:
        """End of stream: the held frame stands for the grid points before `end_s` (the end of its
        display), or for the next grid point only when the end is unknown."""
        if self._held is None:
            return []
        t_held = self._held[0]
        if end_s is None or end_s <= t_held:
            end_s = max(t_held, grid_time(self.next_index, self.fps)) + 1e-9
        out = self._emit_before(end_s)
        self._held = None
        return out

    def cut(self, end_s: float) -> list[Sample[Item]]:
        """The held frame stops showing at `end_s` (damage, a jump, a stall past the hold bound):
        it stands for the grid points before `end_s` only, and is then forgotten."""
        out = []
        if self._held is not None:
            while grid_time(self.next_index, self.fps) < end_s - 1e-9:
                out.append(Sample(self.next_index, self._held[0], self._held[1]))
                self.next_index += 1
        self._held = None
        return out

    def drop_held(self) -> None:
        """Forget the held frame without sampling it again (the picture stopped: a gap)."""
        self._held = None

    def restart_at(self, time_s: float) -> None:
        """After a gap, sampling restarts at the first grid point the next frame may stand for."""
        self._held = None
        self.next_index = max(self.next_index, first_grid_index(time_s, self.fps))

    @property
    def held_time(self) -> float | None:
        return None if self._held is None else self._held[0]

    def _emit_before(self, time_s: float) -> list[Sample[Item]]:
        out = []
        while self._held is not None and grid_time(self.next_index, self.fps) < time_s - 1e-9:
            out.append(Sample(self.next_index, self._held[0], self._held[1]))
            self.next_index += 1
        return out


class MediaClock:
    """Raw presentation times -> one monotonic media time, as the stream means them.

    In formats whose timestamps may jump (`discontinuous`: MPEG-TS, HLS, every live source) a
    jump is a new segment of the stream's timeline, reported so the reader records a gap:
    forward beyond `max_jump_s`, time keeps the stream's own values (the grid points inside the
    jump get no frame); backward beyond a second, time continues one frame after the last one,
    since the timeline never goes back. A 33-bit MPEG-TS wrap is not a jump. In the other
    formats (MP4, Matroska, ...) the timestamps are the file's index: a frame earlier than the
    last one is a decoder glitch after damage and is dropped, a forward step is a held picture.

    After a reconnect (or when resuming at `last_s`) a live source replays what it already sent
    (an HLS playlist starts a few segments back): those frames are overlap and are dropped."""

    def __init__(self, live: bool, max_jump_s: float = 60.0, last_s: float | None = None,
                 overlap_window_s: float = 60.0, discontinuous: bool | None = None):
        self.live = live
        self.discontinuous = live if discontinuous is None else discontinuous or live
        self.max_jump_s = max_jump_s
        self.overlap_window_s = overlap_window_s
        self.offset_s = 0.0
        self.last_s = last_s          # last media time given out
        self.jumps = 0                # discontinuities so far
        self._last_raw = last_s       # seeded resume: raw and media time agree until a jump
        self._frame_s = 0.04
        self._expect_overlap = last_s is not None
        self._restart_after_s: float | None = None

    @property
    def frame_s(self) -> float:
        """The last step between frames under a second (0.04 s until one is seen): how long the
        last frame stays on screen when the stream's length is unknown."""
        return self._frame_s

    def reconnected(self, continuous: bool, elapsed_s: float = 0.0) -> None:
        """A new connection. `continuous`: its clock is the source's own (HLS, MPEG-TS), so what
        it replays is overlap; otherwise (RTSP, RTMP sessions restart near 0) its time continues
        from the last time plus the time spent reconnecting."""
        if continuous:
            self._expect_overlap = True
        else:
            self._restart_after_s = (self.last_s or 0.0) + max(elapsed_s, self._frame_s)

    def in_overlap(self, raw_s: float) -> bool:
        """Whether a frame at `raw_s` falls where a reconnected source's replay would (and would
        be dropped as one)."""
        return self._expect_overlap and self._last_raw is not None and \
            -self.overlap_window_s <= raw_s - self._last_raw <= 0

    def restarted(self, elapsed_s: float) -> None:
        """The source's clock started again (a restarted publisher) though its times fall where a
        replay would: time continues from the last time plus `elapsed_s`, as after a new session."""
        self._expect_overlap = False
        self._restart_after_s = (self.last_s or 0.0) + max(elapsed_s, self._frame_s)

    def __call__(self, raw_s: float) -> tuple[float | None, float | None]:
        """(media time, or None for a frame to drop; discontinuity size or None)."""
        jump = None
        if self._restart_after_s is not None:
            self.offset_s = self._restart_after_s - raw_s
            self._restart_after_s = None
        elif self._last_raw is not None:
            step = raw_s - self._last_raw
            if step < 0 and self._last_raw > MPEG_TS_WRAP_S - 3600 and raw_s < 3600:
                self.offset_s += MPEG_TS_WRAP_S  # timestamp wrap: not a discontinuity
            elif self._expect_overlap and -self.overlap_window_s <= step <= 0:
                return None, None
            elif step < 0 and not self.discontinuous:
                return None, None  # out of index order: a glitch, not picture
            elif self.discontinuous and step < -1.0:
                self.offset_s = (self.last_s or 0.0) + self._frame_s - raw_s
                jump = step
            elif self.discontinuous and step > self.max_jump_s:
                jump = step
            elif 0 < step < 1.0:
                self._frame_s = step
        self._expect_overlap = False
        self._last_raw = raw_s
        self.jumps += jump is not None
        t = raw_s + self.offset_s
        self.last_s = t if self.last_s is None else max(self.last_s, t)
        return t, jump


__all__ = ["MPEG_TS_WRAP_S", "MediaClock", "PtsSampler", "Sample", "first_grid_index", "grid_time"]
