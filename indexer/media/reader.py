"""`SourceReader`: a source decoded with PyAV and sampled by presentation time, as a generator.

    reader = SourceReader(parse_source("talk.mp4"), ReaderOptions(fps=1.0))
    info = reader.open()               # SourceInfo: live?, duration, codec, keyframe fast path?
    for item in reader.samples():      # SampledFrame or Gap, in time order, lazily
        ...

Memory stays flat in the video's length: the reader holds one undecided frame at a time and
converts a frame to RGB (scaled in the same swscale call) only when it is sampled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import av
import numpy as np

from indexer.media.sampling import MediaClock, PtsSampler, Sample, grid_time
from indexer.media.source import ReaderOptions, Source, SourceError, open_arguments, redact_text, redact_uri
from indexer.media.subtitles import SubtitleTrack

if TYPE_CHECKING:  # ring.py needs indexer.store, whose package imports this module
    from indexer.media.ring import SegmentRing

logger = logging.getLogger(__name__)

# PyAV errors that mean "this packet or this connection is bad", not "the program is wrong".
MEDIA_ERRORS = (av.error.FFmpegError, OSError)
# errors confined to one packet: skip it and go on
PACKET_ERRORS = (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.UndefinedError, av.error.UnknownError,
                 av.error.BugError)
KEYFRAME_PROBE_S = 10.0


@dataclass
class SampledFrame:
    index: int                # sample index on the 1/fps grid
    pts_s: float              # media time of the frame shown (seconds from the start; live: source clock)
    wall_time: float | None   # unix time the frame was decoded (live sources only)
    image: np.ndarray         # uint8 RGB [H, W, 3], shorter side = options.short_side
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
    errors: list[str] = field(default_factory=list)


class SourceReader:
    """Decode one source and sample it on the 1/fps grid, from `start_index` on (resume).

    Live sources reconnect with exponential backoff and yield a `Gap` for the time they were
    gone; damaged stretches of archived files yield a `Gap` and decoding goes on after them.

    `stop`, set from another thread (Ctrl-C, `ray job stop`), ends `samples()` at the next
    packet or reconnect attempt: no padding to the end, no "gave up" gap; what a live source had
    sampled is yielded, a file is read again from the resume point.

    `ring` (live sources only) keeps the recent packets on disk for alert clips."""

    def __init__(self, source: Source, options: ReaderOptions, start_index: int = 0,
                 resume_time_s: float | None = None, stop: threading.Event | None = None,
                 ring: SegmentRing | None = None):
        self.source = source
        self.options = options
        self.start_index = start_index
        self.resume_time_s = resume_time_s
        self.stop = stop if stop is not None else threading.Event()
        self.ring = ring
        self.info: SourceInfo | None = None
        self.decode_errors = 0
        self._container: av.container.InputContainer | None = None
        self._ring: SegmentRing | None = None  # `ring` once the source turned out live

    # -- opening ---------------------------------------------------------------------------------
    def open(self) -> SourceInfo:
        container = self._open_container()
        stream = container.streams.video[0]
        live = self.source.protocol in ("rtsp", "rtmp", "udp", "srt") or (
            self.source.protocol == "hls" and not container.duration)
        duration = None if live else _duration_s(container, stream)
        keyframes_only = self._choose_keyframes_only(container, stream, live)
        if self.options.keyframes_only == "auto" and not live:
            container.close()  # the keyframe probe read ahead; reopening is the simplest exact rewind
            container = self._open_container()
            stream = container.streams.video[0]  # the old stream object died with its container
        self._container = container
        self._ring = self.ring if live else None  # an archived file can be cut from itself
        if self._ring is not None:
            self._ring.start(stream)
        rate = stream.average_rate or stream.guessed_rate
        self.info = SourceInfo(self.source.uri, self.source.stream_id, live, duration, stream.codec_context.name,
                               stream.codec_context.width, stream.codec_context.height,
                               float(rate) if rate else None, keyframes_only,
                               subtitles=any(s.codec_context is not None and s.type == "subtitle"
                                             for s in container.streams.subtitles))
        if rate and self.options.fps > float(rate) * 1.01:
            logger.warning("%s: sampling at %g fps, above the source's %.3g fps: samples repeat frames "
                           "(set --fps at most %.3g)", redact_uri(self.source.uri), self.options.fps, float(rate),
                           float(rate))
        return self.info

    def _open_container(self) -> av.container.InputContainer:
        uri, av_options = open_arguments(self.source, self.options)
        try:
            container = av.open(uri, options=av_options, timeout=(self.options.open_timeout_s,
                                                                 self.options.read_timeout_s))
        except FileNotFoundError as exc:
            raise SourceError(self.source.uri, "no such file") from exc
        except MEDIA_ERRORS as exc:
            raise SourceError(self.source.uri, f"cannot open: {_describe(exc)}") from exc
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise SourceError(self.source.uri, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.codec_context.codec.is_decoder:
            container.close()
            raise SourceError(self.source.uri, f"unsupported video codec {stream.codec_context and stream.codec_context.name!r}")
        stream.codec_context.thread_type = "AUTO"
        stream.codec_context.thread_count = self.options.decoder_threads
        return container

    def _choose_keyframes_only(self, container, stream, live: bool) -> bool:
        mode = self.options.keyframes_only
        if mode != "auto":
            return mode == "always"
        if live:
            return False
        interval = 1.0 / self.options.fps
        keyframe_times = []
        try:
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                t = float(packet.pts * packet.time_base)
                if packet.is_keyframe:
                    keyframe_times.append(t)
                if keyframe_times and t - keyframe_times[0] > KEYFRAME_PROBE_S:
                    break
        except MEDIA_ERRORS:
            return False
        gops = np.diff(keyframe_times)
        return len(gops) >= 2 and float(gops.max()) <= interval + 1e-3

    # -- sampling --------------------------------------------------------------------------------
    def samples(self) -> Iterator[SampledFrame | Gap]:
        """Sampled frames and gaps in media-time order, until the source ends (or gives up)."""
        if self.info is None:
            self.open()
        info = self.info
        sampler: PtsSampler = PtsSampler(self.options.fps, self.start_index)
        clock = MediaClock(info.live, self.options.max_discontinuity_s,
                           last_s=self.resume_time_s if info.live else None)
        subtitles = SubtitleTrack()
        pending: deque[SampledFrame] = deque()  # sampled, waiting for subtitle cues of their window
        interval = 1.0 / self.options.fps
        if not info.live and self.start_index > 0:
            self._seek(grid_time(self.start_index, self.options.fps))

        last_t: float | None = None
        last_wall: float | None = None
        down_since: float | None = None
        down_reason = ""
        backoff = self.options.reconnect_initial_s
        while not self.stop.is_set():
            if self._container is not None:  # None: the last reconnect failed; its reason stands
                try:
                    for t_raw, frame in self._frames(self._container, subtitles):
                        t, jump = clock(t_raw)
                        if t is None:
                            continue  # a live source replaying what was already sampled
                        wall = time.time() if info.live else None
                        if self._ring is not None:
                            self._ring.frame_time(t_raw, t, wall)
                        if jump is not None and last_t is not None:
                            sampler.restart_at(t)
                            yield from self._release(pending, subtitles, None)
                            yield Gap(last_t, t, f"timestamp discontinuity of {jump:+.3f} s", last_wall, wall,
                                      sampler.next_index)
                        if down_since is not None:
                            sampler.restart_at(t)
                            yield from self._release(pending, subtitles, None)
                            yield Gap(last_t if last_t is not None else t, t, down_reason, last_wall, wall,
                                      sampler.next_index)
                            down_since, backoff = None, self.options.reconnect_initial_s
                        for sample in sampler.push(t, frame):
                            pending.append(self._to_sampled(sample, wall))
                        yield from self._release(pending, subtitles, t - interval)
                        last_t, last_wall = t, wall
                        self.decode_errors = 0
                    if not info.live or self.stop.is_set():
                        break
                    down_reason = "stream ended"
                except MEDIA_ERRORS as exc:
                    if not info.live:
                        raise SourceError(self.source.uri, f"read failed: {_describe(exc)}") from exc
                    down_reason = f"connection lost: {_describe(exc)}"
            # live source is down: close, then reconnect with backoff until it answers or we give up
            self._close()
            now = time.monotonic()
            down_since = down_since or now
            if self.options.give_up_after_s is not None and now - down_since > self.options.give_up_after_s:
                break
            logger.warning("%s: %s; reconnecting in %.1f s", redact_uri(self.source.uri), redact_text(down_reason), backoff)
            if self.stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.options.reconnect_max_s)
            try:
                self._container = self._open_container()
                if self._ring is not None:
                    self._ring.start(self._container.streams.video[0])
                clock.reconnected(continuous=self.source.protocol in ("hls", "udp"),
                                  elapsed_s=time.time() - last_wall if last_wall else 0.0)
                sampler.drop_held()
            except SourceError as exc:
                down_reason = exc.reason
                self._container = None

        if self.stop.is_set():
            if info.live:  # a live source cannot be read again: keep what was sampled
                yield from self._release(pending, subtitles, None)
            self.close()
            return
        end = None if info.live else info.duration_s
        if not end and last_t is not None:
            end = last_t + clock.frame_s  # length unknown (live, or a stream that cannot seek): the last frame's end
        for sample in sampler.flush(end):
            pending.append(self._to_sampled(sample, last_wall))
        yield from self._release(pending, subtitles, None)
        if info.live and down_since is not None and last_t is not None:
            yield Gap(last_t, None, f"gave up: {down_reason}", last_wall, None, sampler.next_index)
        self.close()

    def _frames(self, container, subtitles: SubtitleTrack) -> Iterator[tuple[float, av.VideoFrame]]:
        """(raw seconds, frame) of the video stream; subtitle packets go to `subtitles`. A damaged
        packet is skipped and counted; too many in a row fail the source. Ends early when `stop`
        is set."""
        video = container.streams.video[0]
        start = 0.0 if self.info.live else _start_s(container)
        text_streams = [s for s in container.streams.subtitles if s.codec_context is not None]
        if self.info.keyframes_only:
            video.codec_context.skip_frame = "NONKEY"
        demux = container.demux(video, *text_streams)
        while not self.stop.is_set():
            try:
                packet = next(demux)
            except StopIteration:
                break
            except PACKET_ERRORS as exc:
                self._decode_error(exc)
                demux = container.demux(video, *text_streams)  # demuxing resumes after the damage
                continue
            if packet.stream.type == "subtitle":
                subtitles.add_packet(packet, start)
                continue
            if self._ring is not None:
                self._ring.packet(packet)
            if self.info.keyframes_only and not packet.is_keyframe and packet.size:
                continue  # the decoder would drop it anyway (skip_frame); spare the call
            try:
                frames = packet.decode()
            except PACKET_ERRORS as exc:
                self._decode_error(exc)
                continue
            for frame in frames:
                if frame.pts is None:
                    continue
                yield float(frame.pts * frame.time_base) - start, frame
        if self.decode_errors and not self.info.live:
            logger.warning("%s: %d undecodable packets skipped", redact_uri(self.source.uri), self.decode_errors)

    def _decode_error(self, exc: Exception) -> None:
        self.decode_errors += 1
        self.info.errors.append(_describe(exc))
        if self.decode_errors >= self.options.max_decode_errors:
            raise SourceError(self.source.uri, f"{self.decode_errors} undecodable packets in a row "
                                               f"(last: {_describe(exc)})")

    def _to_sampled(self, sample: Sample, wall: float | None) -> SampledFrame:
        frame: av.VideoFrame = sample.item
        width, height = scaled_size(frame.width, frame.height, self.options.short_side)
        image = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
        return SampledFrame(sample.index, sample.time_s, wall, image)

    def _release(self, pending: deque, subtitles: SubtitleTrack, before_s: float | None):
        """Yield sampled frames whose subtitle window [t, t + 1/fps) has been fully demuxed."""
        interval = 1.0 / self.options.fps
        while pending and (before_s is None or grid_time(pending[0].index, self.options.fps) <= before_s):
            item = pending.popleft()
            start = grid_time(item.index, self.options.fps)
            item.subtitle = subtitles.text_between(start, start + interval)
            subtitles.forget_before(start)
            yield item

    def _seek(self, time_s: float) -> None:
        container = self._container
        target = int((time_s + _start_s(container)) * 1_000_000)
        try:
            container.seek(max(0, target - 1_000_000), backward=True)  # a second early: keyframe <= target
        except MEDIA_ERRORS as exc:
            raise SourceError(self.source.uri, f"cannot seek to {time_s:.3f} s to resume: {_describe(exc)}") from exc

    def _close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except MEDIA_ERRORS:
                pass  # a dead connection may fail to close; it is gone either way
            self._container = None

    def close(self) -> None:
        self._close()
        if self._ring is not None:
            self._ring.close()


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side = short_side, aspect kept, even sizes."""
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _start_s(container) -> float:
    return container.start_time / 1_000_000 if container.start_time is not None else 0.0


def _duration_s(container, stream) -> float | None:
    if container.duration:
        return container.duration / 1_000_000
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


__all__ = ["MEDIA_ERRORS", "Gap", "SampledFrame", "SourceInfo", "SourceReader", "scaled_size"]
