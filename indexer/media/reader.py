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

import av
import numpy as np

from indexer.batches import Gap, SampledFrame, SourceInfo
from indexer.media.ring import SegmentRing
from indexer.media.sampling import MediaClock, PtsSampler, Sample, grid_time
from indexer.media.source import Source, SourceError, open_arguments
from indexer.media.subtitles import SubtitleTrack
from indexer.redaction import redact_text, redact_uri
from indexer.settings import ReaderOptions

logger = logging.getLogger(__name__)

# PyAV errors that mean "this packet or this connection is bad", not "the program is wrong".
MEDIA_ERRORS = (av.error.FFmpegError, OSError)
# errors confined to one packet: skip it and go on
PACKET_ERRORS = (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.UndefinedError, av.error.UnknownError,
                 av.error.BugError)
KEYFRAME_PROBE_S = 10.0
AVFMT_TS_DISCONT = 0x0200  # libavformat: the format allows timestamp discontinuities (MPEG-TS, HLS)
RESYNC_S = 2.0             # after damage, frames wait this long at most for a keyframe (intra refresh has none)
FOLLOW_AFTER_S = 1.0       # another video stream ahead of ours by this much has taken over (a program change)
MAX_WARNINGS = 20
REPLAY_WINDOW_S = 60.0     # live: how far back a reconnected source may replay (MediaClock's overlap window)
REPLAY_DIFFERENCE = 12.0   # mean grey-level difference of 8x8 fingerprints beyond which a frame is another picture


class SourceReader:
    """Decode one source and sample it on the 1/fps grid, from `start_index` on (resume).

    Live sources reconnect with exponential backoff and yield a `Gap` for the time they were
    gone; damaged stretches of archived files yield a `Gap` and decoding goes on after them.

    `stop`, set from another thread (Ctrl-C, `ray job stop`), ends `samples()` at the next
    packet or reconnect attempt: no padding to the end, no "gave up" gap; what a live source had
    sampled is yielded, a file is read again from the resume point.

    `ring` (live sources only) records the packets on disk (the recording: clips, playback, recomputation)."""

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
        self.last_frame_wall: float | None = None  # unix time the source last gave a frame (read by other threads)
        self._container: av.container.InputContainer | None = None
        self._declared_end_s: float | None = None  # where a file's video says it ends (media time)
        self._zero_s = 0.0   # the raw time that media time 0 stands for (see `media_zero_s`)
        self._keyframe_gop_s: float | None = None  # the longest GOP seen when choosing keyframes only
        self._last_packet_s: float | None = None   # raw time of the last video packet demuxed
        self._seen: dict[int, np.ndarray] = {}     # live: raw ms -> fingerprint of the frames sampled lately
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
        self._zero_s = media_zero_s(container, self.source.protocol, live)
        declared = None if live else _video_end_s(container, stream)
        self._declared_end_s = None if declared is None else declared + media_start_s(container) - self._zero_s
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
            raise SourceError(self.source.uri, f"cannot open: {describe_media_error(exc)}") from exc
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise SourceError(self.source.uri, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.codec_context.codec.is_decoder:
            container.close()
            raise SourceError(self.source.uri,
                              f"unsupported video codec {stream.codec_context and stream.codec_context.name!r}")
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
        if len(gops) >= 2 and float(gops.max()) <= interval + 1e-3:
            self._keyframe_gop_s = float(gops.max())
            return True
        return False

    # -- sampling --------------------------------------------------------------------------------
    def samples(self) -> Iterator[SampledFrame | Gap]:
        """Sampled frames and gaps in media-time order, until the source ends (or gives up).

        Each sample index comes once, and only from a frame that decoded: a frame stands for
        the grid points until the next frame, but at most `max_hold_s` after its own time, and
        only until its own end before a discontinuity or a damaged stretch (each is a `Gap`).
        What a file lacks (it ends before its declared length, a stretch does not decode) is
        told in `info.warnings` with the range that was read."""
        if self.info is None:
            self.open()
        info = self.info
        options = self.options
        sampler: PtsSampler = PtsSampler(options.fps, self.start_index)
        clock = MediaClock(info.live, options.max_discontinuity_s,
                           last_s=self.resume_time_s if info.live else None,
                           discontinuous=bool(self._container.format.flags & AVFMT_TS_DISCONT))
        subtitles = SubtitleTrack()
        pending: deque[SampledFrame] = deque()  # sampled, waiting for subtitle cues of their window
        interval = 1.0 / options.fps
        if not info.live and self.start_index > 0:
            self._seek(grid_time(self.start_index, options.fps))

        first_t: float | None = None
        last_t: float | None = None
        last_wall: float | None = None
        ended_early = ""   # why a file stopped before its end
        down_since: float | None = None
        down_reason = down_cause = ""  # the last reason the source is down, and the first
        restart_note = ""
        backoff = options.reconnect_initial_s
        while not self.stop.is_set():
            if self._container is not None:  # None: the last reconnect failed; its reason stands
                try:
                    for t_raw, frame, damaged in self._frames(self._container, subtitles):
                        self.last_frame_wall = time.time()
                        if clock.in_overlap(t_raw) and not self._replayed(t_raw, frame):
                            clock.restarted(elapsed_s=time.time() - last_wall if last_wall else 0.0)
                            restart_note = f"; came back with its clock restarted at {t_raw:.3f} s"
                        t, jump = clock(t_raw)
                        if t is None:
                            continue  # replayed after a reconnect, or out of order after damage
                        wall = self.last_frame_wall if info.live else None
                        if self._ring is not None:
                            self._ring.frame_time(t_raw, t, wall)
                        if last_t is not None and down_since is None:
                            reason, held_until = self._interruption(t, last_t, jump, damaged, clock)
                            if reason:
                                pending.extend(self._to_sampled(x, last_wall) for x in sampler.cut(held_until))
                                sampler.restart_at(t)
                                yield from self._release(pending, subtitles, None)
                                yield Gap(last_t, t, reason, last_wall, wall, sampler.next_index)
                        if down_since is not None:
                            sampler.restart_at(t)
                            yield from self._release(pending, subtitles, None)
                            yield Gap(last_t if last_t is not None else t, t,
                                      _outage(down_cause, down_reason) + restart_note, last_wall, wall,
                                      sampler.next_index)
                            restart_note = ""
                            down_since, backoff = None, options.reconnect_initial_s
                        for sample in sampler.push(t, frame):
                            pending.append(self._to_sampled(sample, wall))
                        yield from self._release(pending, subtitles, t - interval)
                        first_t = t if first_t is None else first_t
                        last_t, last_wall = t, wall
                        self.decode_errors = 0
                    if not info.live or self.stop.is_set():
                        break
                    down_reason = "stream ended"
                except (SourceError, *MEDIA_ERRORS) as exc:
                    reason = exc.reason if isinstance(exc, SourceError) else f"read failed: {describe_media_error(exc)}"
                    if not info.live and last_t is None:
                        raise exc if isinstance(exc, SourceError) else SourceError(self.source.uri, reason) from exc
                    if not info.live:
                        ended_early = reason  # keep what decoded before it
                        break
                    if isinstance(exc, SourceError):
                        raise
                    down_reason = f"connection lost: {describe_media_error(exc)}"
            # live source is down: close, then reconnect with backoff until it answers or we give up
            self._close()
            now = time.monotonic()
            if down_since is None:
                down_since, down_cause = now, down_reason
            if options.give_up_after_s is not None and now - down_since > options.give_up_after_s:
                break
            logger.warning("%s: %s; reconnecting in %.1f s", redact_uri(self.source.uri), redact_text(down_reason),
                           backoff)
            if self.stop.wait(backoff):
                break
            backoff = min(backoff * 2, options.reconnect_max_s)
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
        end = None
        if not info.live and last_t is not None:
            end = self._file_end(first_t, last_t, clock, ended_early)
        elif last_t is not None:
            end = last_t + clock.frame_s  # length unknown: the last frame's end
        for sample in sampler.flush(end):
            pending.append(self._to_sampled(sample, last_wall))
        yield from self._release(pending, subtitles, None)
        if info.live and down_since is not None and last_t is not None:
            yield Gap(last_t, None, f"gave up: {_outage(down_cause, down_reason)}", last_wall, None,
                      sampler.next_index)
        if self.decode_errors and not info.live:
            logger.warning("%s: %d undecodable packets skipped", self.source.uri, self.decode_errors)
        for warning in info.warnings:
            logger.warning("%s: %s", self.source.uri, warning)
        self.close()

    def _frame_s(self, clock: MediaClock) -> float:
        """How long one frame shows: the stream's declared rate, else the last step seen."""
        rate = self.info.average_fps
        return 1.0 / rate if rate and rate > 0 else clock.frame_s

    def _interruption(self, t: float, last_t: float, jump: float | None, damaged: int,
                      clock: MediaClock) -> tuple[str, float]:
        """Why the picture between the last frame and this one is a gap (or ""), and until when
        the last frame still stands for the grid points before this one."""
        frame_s = self._frame_s(clock)
        if jump is not None:
            kind = "forward" if jump > 0 else "backward"
            return f"timestamp discontinuity of {jump:+.3f} s ({kind}: a new segment of the timeline)", \
                last_t + frame_s
        if damaged:
            damage = f"{damaged} damaged packet{'s' if damaged > 1 else ''}"
            self._warn(f"undecodable {last_t:.3f}-{t:.3f} s skipped ({damage})")
            return f"undecodable: {damage} skipped", last_t + frame_s
        if t - last_t > self.options.max_hold_s:
            return f"no picture for {t - last_t:.3f} s (held {self.options.max_hold_s:g} s: reader.max_hold_s)", \
                last_t + self.options.max_hold_s
        if self.info.keyframes_only and self._keyframe_gop_s and t - last_t > self._keyframe_gop_s + 2 * frame_s:
            # decoding keyframes only, a keyframe that did not come is a lost GOP, not a still
            self._warn(f"no keyframe {last_t:.3f}-{t:.3f} s (decoding keyframes only)")
            return f"no keyframe for {t - last_t:.3f} s (decoding keyframes only)", last_t + self._keyframe_gop_s
        return "", t

    def _file_end(self, first_t: float, last_t: float, clock: MediaClock, ended_early: str) -> float:
        """Where the last frame of a file stops showing: the video's declared end, unless the
        file ends before it (cut short, or unreadable from some point): then its last frame's
        own end, and the range read is a warning. Never more than `max_hold_s` after it."""
        read_end = last_t + self._frame_s(clock)
        if self.info.keyframes_only and self._last_packet_s is not None:  # frames between keyframes were read too
            read_end = max(read_end, self._last_packet_s + clock.offset_s + self._frame_s(clock))
        declared = self._declared_end_s
        if declared is not None and clock.jumps == 0:
            declared += clock.offset_s
        else:
            declared = None  # a timeline with jumps has no one declared length to compare
        tolerance = max(1.0, 1.0 / self.options.fps) + self._frame_s(clock)
        if ended_early or (declared is not None and declared - read_end > tolerance):
            of = f" of {declared:.3f} s" if declared is not None else ""
            why = f" ({ended_early})" if ended_early else ""
            self._warn(f"ends early: read {first_t:.3f}-{read_end:.3f} s{of}{why}")
            return read_end
        end = declared if declared is not None and declared > last_t else read_end
        return min(end, last_t + self.options.max_hold_s)

    def _warn(self, warning: str) -> None:
        if len(self.info.warnings) < MAX_WARNINGS:
            self.info.warnings.append(warning)
        elif len(self.info.warnings) == MAX_WARNINGS:
            self.info.warnings.append("more warnings not kept")

    def _frames(self, container, subtitles: SubtitleTrack) -> Iterator[tuple[float, av.VideoFrame, int]]:
        """(raw seconds, frame, damaged packets skipped just before it) of the video; subtitle
        packets go to `subtitles`. After a packet that does not decode or a frame the decoder
        flags corrupt (concealed), or a packet the demuxer flags corrupt (MPEG-TS packets lost in
        transport), frames wait for the next keyframe (or `RESYNC_S` of media): until then they are
        built on lost pictures. Too many damaged packets in a row fail the
        source. In formats whose programs may change (MPEG-TS, HLS)
        a video stream that takes over from the one being decoded (another codec, another
        PID) is followed. Ends early when `stop` is set."""
        start = self._zero_s
        videos = [s for s in container.streams.video
                  if s.codec_context is not None and not s.disposition & av.stream.Disposition.attached_pic]
        video = container.streams.video[0]
        follow = bool(container.format.flags & AVFMT_TS_DISCONT) and len(videos) > 1
        text_streams = [s for s in container.streams.subtitles if s.codec_context is not None]
        keyframes_only = self.info.keyframes_only
        if keyframes_only:
            video.codec_context.skip_frame = "NONKEY"
        streams = [*(videos if follow else [video]), *text_streams]
        demux = container.demux(*streams)
        damaged = 0
        resync_until: float | None = None  # frames wait for a keyframe until this raw time ...
        damage_s = 0.0                     # ... from the first damaged packet's time on
        last_packet_s: float | None = None
        suspect: set[int] = set()          # pts of packets damaged in transport: their pictures are dropped
        # HLS segments come whole over HTTP, and packagers restart the continuity counters at a
        # discontinuity (some at every segment), which FFmpeg flags as corrupt: no transport loss
        transport_checked = self.source.protocol != "hls"
        waiting: dict[av.video.stream.VideoStream, list[av.Packet]] = {}  # other video streams' recent packets
        while not self.stop.is_set():
            try:
                packet = next(demux)
            except StopIteration:
                break
            except PACKET_ERRORS as exc:
                self._decode_error(exc)
                damaged += 1
                damage_s = damage_s if resync_until is not None else last_packet_s or 0.0
                resync_until = (last_packet_s or 0.0) + RESYNC_S
                demux = container.demux(*streams)  # demuxing resumes after the damage
                continue
            if packet.stream.type == "subtitle":
                subtitles.add_packet(packet, start)
                continue
            packet_s = float(packet.pts * packet.time_base) - start if packet.pts is not None else None
            if packet.stream is not video:
                # another video stream: kept from its keyframes on while it runs after ours ...
                after = waiting.setdefault(packet.stream, [])
                if packet_s is None or last_packet_s is None or packet_s <= last_packet_s:
                    after.clear()  # ... it runs beside ours: another program's picture
                    continue
                if after or packet.is_keyframe:
                    after.append(packet)
                if packet_s < last_packet_s + FOLLOW_AFTER_S or not after:
                    continue
                # ... and takes over once it is well ahead: decode it from there
                logger.warning("%s: video continues in stream %d (%s, was %s) at %.3f s", self.source.uri,
                               packet.stream.index, packet.stream.codec_context.name, video.codec_context.name,
                               float(after[0].pts * after[0].time_base) - start)
                for frame in self._flush(video):  # what the old decoder still holds
                    yield float(frame.pts * frame.time_base) - start, frame, damaged
                    damaged = 0
                video = packet.stream
                video.codec_context.thread_type = "AUTO"
                video.codec_context.thread_count = self.options.decoder_threads
                if keyframes_only:
                    video.codec_context.skip_frame = "NONKEY"
                self.info.codec = video.codec_context.name
                backlog = waiting.pop(video)[:-1]
                waiting.clear()
                for frame in (f for p in backlog for f in self._decode(p)):
                    yield float(frame.pts * frame.time_base) - start, frame, damaged
                    damaged = 0
            if packet_s is not None:
                last_packet_s = packet_s if last_packet_s is None else max(last_packet_s, packet_s)
                self._last_packet_s = last_packet_s
            if self._ring is not None:
                self._ring.packet(packet)
            if packet.is_corrupt and transport_checked:
                # transport damage FFmpeg only flags (an MPEG-TS continuity counter error: packets
                # lost; a PES packet of the wrong size): the decoder gives the picture and those
                # built on it without an error, so they wait for the next keyframe like concealed ones
                # (FFmpeg may flag the packet before the loss: the stretch starts a frame early)
                at_s = packet_s if packet_s is not None else last_packet_s or 0.0
                self._note_error(f"video packet at {at_s:.3f} s damaged in transport (data lost before it)")
                damaged += 1
                damage_s = damage_s if resync_until is not None else at_s
                resync_until = at_s + RESYNC_S
                if packet.pts is not None:
                    suspect.add(packet.pts)
            if keyframes_only and not packet.is_keyframe and packet.size:
                continue  # the decoder would drop it anyway (skip_frame); spare the call
            try:
                frames = packet.decode()
            except PACKET_ERRORS as exc:
                self._decode_error(exc)
                damaged += 1
                at_s = packet_s if packet_s is not None else last_packet_s or 0.0
                damage_s = damage_s if resync_until is not None else at_s
                resync_until = at_s + RESYNC_S
                continue
            for frame in frames:
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base) - start
                if frame.pts in suspect:  # the picture of a packet damaged in transport (counted there)
                    suspect.discard(frame.pts)
                    continue
                if frame.is_corrupt:  # decoded with errors, concealed from other pictures: damage too
                    self._note_error(f"concealed damage in the frame at {t:.3f} s")
                    damaged += 1
                    damage_s = damage_s if resync_until is not None else t
                    resync_until = max(resync_until or t, t + RESYNC_S)
                    continue
                if resync_until is not None:
                    if t < damage_s:
                        yield t, frame, 0  # decoded before the damage (frame threads output late)
                        continue
                    if not (frame.key_frame or t > resync_until):
                        continue
                    resync_until = None
                    suspect.clear()
                yield t, frame, damaged
                damaged = 0

    def _decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        """The frames of a packet taken over from another stream; damage there is only counted."""
        try:
            return [f for f in packet.decode() if f.pts is not None]
        except PACKET_ERRORS as exc:
            self._decode_error(exc)
            return []

    def _flush(self, stream) -> list[av.VideoFrame]:
        """The frames a decoder still holds (it is being left for another stream)."""
        try:
            return [f for f in stream.codec_context.decode(None) if f.pts is not None]
        except PACKET_ERRORS as exc:
            self._decode_error(exc)
            return []

    def _note_error(self, error: str) -> None:
        if len(self.info.errors) < MAX_WARNINGS:  # the first ones: a long damaged stretch repeats itself
            self.info.errors.append(error)

    def _decode_error(self, exc: Exception) -> None:
        self.decode_errors += 1
        self._note_error(describe_media_error(exc))
        if self.decode_errors >= self.options.max_decode_errors:
            raise SourceError(self.source.uri, f"{self.decode_errors} undecodable packets in a row "
                                               f"(last: {describe_media_error(exc)})")

    def _replayed(self, raw_s: float, frame: av.VideoFrame) -> bool:
        """After a reconnect: is this frame one already seen (a replay), not a restarted source
        whose clock is back where it was? Told by the picture sampled at that time, when there is
        one; otherwise taken as a replay."""
        seen = self._seen.get(round(raw_s * 1000))
        return seen is None or float(np.abs(_fingerprint(frame) - seen).mean()) < REPLAY_DIFFERENCE

    def _to_sampled(self, sample: Sample, wall: float | None) -> SampledFrame:
        frame: av.VideoFrame = sample.item
        if self.info.live:  # kept to tell a replay after a reconnect from a restarted source
            key = round(float(frame.pts * frame.time_base) * 1000)
            self._seen[key] = _fingerprint(frame)
            while len(self._seen) > 1 and next(iter(self._seen)) < key - REPLAY_WINDOW_S * 1000:
                self._seen.pop(next(iter(self._seen)))
        return SampledFrame(sample.index, sample.time_s, wall, frame_image(frame, self.options.short_side))

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
        target = int((time_s + self._zero_s) * 1_000_000)
        try:
            container.seek(max(0, target - 1_000_000), backward=True)  # a second early: keyframe <= target
        except MEDIA_ERRORS as exc:
            raise SourceError(self.source.uri,
                              f"cannot seek to {time_s:.3f} s to resume: {describe_media_error(exc)}") from exc

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


def frame_image(frame: av.VideoFrame, short_side: int) -> np.ndarray:
    """The picture a sampled frame gives the encoders: uint8 RGB [H, W, 3], shorter side `short_side`
    (one swscale call). Recomputation (indexer/media/pictures.py) uses it too, so a frame decoded
    again gives the same pixels."""
    width, height = scaled_size(frame.width, frame.height, short_side)
    return frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")


def media_start_s(container) -> float:
    """A file's media time 0 in its own clock: the container's start time (seconds)."""
    return container.start_time / 1_000_000 if container.start_time is not None else 0.0


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side = short_side, aspect kept, even sizes."""
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def media_zero_s(container, protocol: str, live: bool) -> float:
    """The raw time that media time 0 stands for. A file counts from its container's start (an
    MP4 edit list, an MPEG-TS mux delay: its first frame is at 0). A live source and an HLS
    playlist keep the stream's own clock: a live playlist that ends gets #EXT-X-ENDLIST and is
    then read as a finished one (a rerun resumes it), and both reads must give the same times."""
    return 0.0 if live or protocol == "hls" else media_start_s(container)


def _duration_s(container, stream) -> float | None:
    if container.duration:
        return container.duration / 1_000_000
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _video_end_s(container, stream) -> float | None:
    """The end of the video as the file declares it, in seconds from the container's start: the
    track's own length where the format keeps one (MP4; Matroska's DURATION tag), else the
    file's. An audio track that runs on does not make the video look cut short."""
    start = media_start_s(container)
    if stream.duration and stream.time_base:
        begin = float(stream.start_time * stream.time_base) if stream.start_time is not None else start
        return begin + float(stream.duration * stream.time_base) - start
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    return _duration_s(container, stream)


def _fingerprint(frame: av.VideoFrame) -> np.ndarray:
    """8x8 mean grey levels of the picture: enough to tell a replayed frame from another one."""
    grey = frame.to_ndarray(width=32, height=32, format="gray", interpolation="AREA").astype(np.float32)
    return grey.reshape(8, 4, 8, 4).mean(axis=(1, 3))


def _outage(cause: str, last: str) -> str:
    """Why a live source was gone: what took it down, and what the reconnects met if that differs."""
    return cause if last == cause or not last else f"{cause}; reconnects: {last}"


def describe_media_error(exc: BaseException) -> str:
    """An FFmpeg error by its name and FFmpeg's words ('InvalidDataError: Invalid data found when
    processing input'), not PyAV's str() ('[Errno 1094995529] ...: path'; the caller names the source)."""
    if isinstance(exc, av.error.FFmpegError):
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["MEDIA_ERRORS", "Gap", "SampledFrame", "SourceInfo", "SourceReader", "describe_media_error", "frame_image",
           "media_start_s", "media_zero_s", "scaled_size"]
