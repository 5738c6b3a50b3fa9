"""`cut_clip`: an MP4 of a media-time range, from a live source's recording or from an archived file.

    clip = cut_clip(Path("alert.mp4"), 10.0, 22.0, recording_dir=root.recording_dir("cam1"))  # a live source
    clip = cut_clip(Path("alert.mp4"), 10.0, 22.0, source="talk.mp4")             # a file or URL

Packets are copied, not re-encoded, so a clip starts at the keyframe at or before `start_s` and
holds every frame shown up to `end_s`; a codec MP4 cannot carry is re-encoded with libx264. The
clip is written under a temporary name and renamed, so `out` is never half a clip.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from indexer.media.reader import describe_media_error, media_zero_s
from indexer.media.ring import RingSegment, ring_segments
from indexer.media.source import parse_source
from indexer.store.files import TMP_SUFFIX, fsync_dir

logger = logging.getLogger(__name__)

EPS_S = 1e-3                     # timestamps closer than this are the same instant
SEEK_MARGIN_S = 1.0              # seek this much early: an index may list a keyframe by its dts, before its pts
OPEN_TIMEOUT_S = (15.0, 10.0)    # (open, read) seconds, for URLs
DEFAULT_FRAME_S = 0.04           # the last frame's length when the clip holds a single frame
REENCODE_TIME_BASE = Fraction(1, 90_000)
READ_ERRORS = (av.error.FFmpegError, OSError)


@dataclass
class Clip:
    path: Path
    start_s: float    # media time of the clip's first frame
    end_s: float      # media time of the end of its last frame
    covered: bool     # the clip spans the whole requested range
    reencoded: bool   # the codec could not be copied into MP4
    bytes: int


@dataclass
class _Timed:
    packet: av.Packet
    pts_s: float      # media time
    dts_s: float


def cut_clip(out: Path, start_s: float, end_s: float, *, recording_dir: Path | None = None,
             source: str | None = None) -> Clip:
    """Write the media-time range [start_s, end_s] of a recording (a live source) or of a source (an
    archived file or URL) to the MP4 `out`. Raises ValueError when nothing of the range is there
    or a file cannot be read, FileNotFoundError for a missing source."""
    if (recording_dir is None) == (source is None):
        raise ValueError("cut_clip needs exactly one of recording_dir (a live source) or source (a file or URL)")
    if not end_s > start_s:
        raise ValueError(f"clip range {start_s:.3f}..{end_s:.3f} s is empty: end_s must be > start_s")
    out = Path(out)
    clip_input = (_RingInput(Path(recording_dir), start_s, end_s) if recording_dir is not None
                  else _FileInput(source, start_s))
    tmp = out.with_name(out.name + TMP_SUFFIX)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            span, reencoded = _write(tmp, clip_input, start_s, end_s)
        except av.error.FFmpegError as exc:
            raise ValueError(f"{clip_input.name}: cannot write the clip {out}: {describe_media_error(exc)}") from exc
        fsync_dir(tmp)  # (opens and fsyncs any path): the clip's bytes before its name
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        clip_input.close()
        tmp.unlink(missing_ok=True)
    covered = span.first_s <= start_s + EPS_S and span.end_s >= end_s - EPS_S and not clip_input.gap
    return Clip(out, span.first_s, span.end_s, covered, reencoded, out.stat().st_size)


# -- inputs: packets in decode order with their media times ---------------------------------------
class _RingInput:
    """The finished recording segments around [start_s, end_s], read one after another."""

    def __init__(self, recording_dir: Path, start_s: float, end_s: float):
        self.name = f"recording {recording_dir}"
        segments = ring_segments(recording_dir) if recording_dir.is_dir() else []
        hits = [i for i, s in enumerate(segments)
                if s.media_end_s > start_s + EPS_S and s.media_start_s <= end_s + EPS_S]
        if not hits:
            held = f"{segments[0].media_start_s:.3f}..{segments[-1].media_end_s:.3f} s" if segments else "nothing"
            raise ValueError(f"{self.name}: no segment overlaps {start_s:.3f}..{end_s:.3f} s (it holds {held})")
        overlapping = segments[hits[0]:hits[-1] + 1]
        tolerance = min(s.media_end_s - s.media_start_s for s in overlapping) / 2
        self.gap = any(b.media_start_s - a.media_end_s > tolerance for a, b in itertools.pairwise(overlapping))
        # one segment more in front: the first may begin after a replay, without a keyframe of its own
        self._queue = segments[max(0, hits[0] - 1):hits[-1] + 1]
        self._required = {s.path for s in overlapping}
        self._container, self._segment = self._next_container()
        if self._container is None:
            raise ValueError(f"{self.name}: the segments of {start_s:.3f}..{end_s:.3f} s were deleted meanwhile")
        self._first = self._container  # open until the end: the output stream copies its stream
        self.template = self._first.streams.video[0]

    def _next_container(self) -> tuple[av.container.InputContainer | None, RingSegment | None]:
        while self._queue:
            segment = self._queue.pop(0)
            container = _open(segment.path, missing_ok=True)
            if container is not None:
                return container, segment
            self.gap |= segment.path in self._required  # deleted by its retention since the listing
        return None, None

    def packets(self) -> Iterator[_Timed]:
        while self._container is not None:
            yield from _segment_packets(self._container, self._segment)
            if self._container is not self._first:
                self._container.close()
            self._container, self._segment = self._next_container()

    def close(self) -> None:
        if self._container is not None and self._container is not self._first:
            self._container.close()
        self._first.close()


def _segment_packets(container: av.container.InputContainer, segment: RingSegment) -> Iterator[_Timed]:
    """The packets of the frames the segment recorded. What it holds before them (a replay after a
    reconnect) or after them (frames still in the decoder when the reader stopped) other segments
    hold too, or nothing does."""
    stream = container.streams.video[0]
    tick_s = float(stream.time_base)
    try:
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            pts_s = segment.media_time(packet.pts * tick_s)
            if segment.media_start_s - EPS_S <= pts_s < segment.media_end_s - EPS_S:
                dts_s = pts_s if packet.dts is None else segment.media_time(packet.dts * tick_s)
                yield _Timed(packet, pts_s, dts_s)
    except READ_ERRORS as exc:
        raise ValueError(f"recording segment {segment.path}: unreadable: {describe_media_error(exc)}") from exc


class _FileInput:
    """An archived file or URL, from a little before start_s on."""

    gap = False

    def __init__(self, source: str, start_s: float):
        self.name = f"source {source}"
        self._container = _open(source)
        self.template = self._container.streams.video[0]
        self._zero_s = media_zero_s(self._container, parse_source(source).protocol, live=False)  # as the reader counts
        try:
            target_s = max(0.0, start_s - SEEK_MARGIN_S) + self._zero_s
            self._container.seek(int(target_s / self.template.time_base), stream=self.template, backward=True)
        except READ_ERRORS:  # a stream that cannot seek is read from its start
            self._container.close()
            self._container = _open(source)
            self.template = self._container.streams.video[0]

    def packets(self) -> Iterator[_Timed]:
        tick_s = float(self.template.time_base)
        try:
            for packet in self._container.demux(self.template):
                if not packet.size or packet.pts is None:
                    continue
                pts_s = packet.pts * tick_s - self._zero_s
                dts_s = pts_s if packet.dts is None else packet.dts * tick_s - self._zero_s
                yield _Timed(packet, pts_s, dts_s)
        except READ_ERRORS as exc:
            raise ValueError(f"{self.name}: read failed: {describe_media_error(exc)}") from exc

    def close(self) -> None:
        self._container.close()


def _open(name: str | Path, missing_ok: bool = False) -> av.container.InputContainer | None:
    try:
        container = av.open(str(name), timeout=OPEN_TIMEOUT_S)
    except FileNotFoundError as exc:
        if missing_ok:
            return None
        raise FileNotFoundError(exc.errno, f"no such file: {name}", str(name)) from exc
    except READ_ERRORS as exc:
        raise ValueError(f"{name}: cannot open: {describe_media_error(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise ValueError(f"{name}: no video stream")
    return container


# -- selection ---------------------------------------------------------------------------------------
def _select(packets: Iterator[_Timed], start_s: float, end_s: float) -> Iterator[_Timed]:
    """Decode-order packets from the last keyframe at or before start_s (or the first keyframe
    after it) through every frame shown by end_s. A packet shown after end_s stays only where a
    frame shown by end_s follows it (a B-frame's reference)."""
    lead: list[_Timed] = []    # from the latest keyframe at or before start_s
    after: list[_Timed] = []   # shown after end_s: kept once something shown by end_s follows
    started = False
    for item in packets:
        if item.dts_s > end_s + EPS_S:
            break  # every frame shown by end_s has been decoded (dts <= pts)
        if not started:
            if item.packet.is_keyframe and (item.pts_s <= start_s + EPS_S or not lead):
                lead = [item]
            elif lead:
                lead.append(item)
            # past the start in decode order: no keyframe at or before start_s can come any more
            started = bool(lead) and item.dts_s > start_s + EPS_S
            if started:
                yield from lead
            continue
        if item.pts_s > end_s + EPS_S:
            after.append(item)
            continue
        yield from after
        after.clear()
        yield item
    if not started:
        yield from lead


# -- writing -----------------------------------------------------------------------------------------
class _Span:
    """The media times written: first frame, last frame, and the end of the last frame."""

    def __init__(self):
        self.first_s = self.last_s = self._before_last_s = None

    def add(self, t: float) -> None:
        self.first_s = t if self.first_s is None else min(self.first_s, t)
        if self.last_s is None or t > self.last_s:
            self._before_last_s, self.last_s = self.last_s, t
        elif self._before_last_s is None or t > self._before_last_s:
            self._before_last_s = t

    @property
    def end_s(self) -> float:
        step = self.last_s - self._before_last_s if self._before_last_s is not None else DEFAULT_FRAME_S
        return self.last_s + step


def _write(tmp: Path, clip_input: _RingInput | _FileInput, start_s: float, end_s: float) -> tuple[_Span, bool]:
    """Write the clip to `tmp`; (what it spans, whether it was re-encoded)."""
    selected = _select(clip_input.packets(), start_s, end_s)
    first = next(selected, None)
    if first is None:
        raise ValueError(f"{clip_input.name}: no frame of {start_s:.3f}..{end_s:.3f} s "
                         "(no keyframe there or before it)")
    items = itertools.chain([first], selected)
    template = clip_input.template
    with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as output:
        try:
            stream = output.add_stream_from_template(template, opaque=True)
        except ValueError:  # MP4 cannot carry this codec (avformat_query_codec said no)
            logger.info("%s: %s cannot be copied into MP4; re-encoding", clip_input.name, template.codec_context.name)
            return _reencode(output, template, items, first.pts_s, end_s), True
        return _remux(output, stream, template.time_base, items, first.pts_s), False


def _remux(output, stream, time_base: Fraction, items: Iterator[_Timed], zero_s: float) -> _Span:
    """Stream copy, timestamps rebased to the clip's first frame: segments from different
    connections have different raw clocks, media time places them."""
    tick_s = float(time_base)
    span = _Span()
    last_dts = None
    for item in items:
        packet = item.packet
        pts = round((item.pts_s - zero_s) / tick_s)
        dts = round((item.dts_s - zero_s) / tick_s)
        if last_dts is not None and dts <= last_dts:
            continue  # recorded twice (a restart resumed before the old reader's last frame)
        packet.pts, packet.dts, packet.time_base, packet.stream = pts, dts, time_base, stream
        output.mux(packet)
        last_dts = dts
        span.add(item.pts_s)
    return span


def _reencode(output, template, items: Iterator[_Timed], zero_s: float, end_s: float) -> _Span:
    """Decode the selected packets and encode the frames shown by end_s with libx264."""
    decoder = av.CodecContext.create(template.codec_context.name, "r")
    if template.codec_context.extradata:
        decoder.extradata = template.codec_context.extradata
    stream = output.add_stream("libx264", rate=template.average_rate or template.guessed_rate or 25,
                               options={"preset": "veryfast"})
    stream.time_base = stream.codec_context.time_base = REENCODE_TIME_BASE
    stream.pix_fmt = "yuv420p"
    span = _Span()
    for frame in _decoded(decoder, items, zero_s):
        t = zero_s + float(frame.pts * REENCODE_TIME_BASE)
        if t > end_s + EPS_S:
            continue
        if span.first_s is None:
            stream.width, stream.height = frame.width // 2 * 2, frame.height // 2 * 2  # yuv420p: even sizes
        image = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
        image.pts, image.time_base = frame.pts, REENCODE_TIME_BASE
        output.mux(stream.encode(image))
        span.add(t)
    output.mux(stream.encode(None))
    return span


def _decoded(decoder: av.CodecContext, items: Iterator[_Timed], zero_s: float) -> Iterator[av.VideoFrame]:
    """Frames with pts in REENCODE_TIME_BASE ticks from the clip's start."""
    for item in items:
        packet = item.packet
        packet.pts = round((item.pts_s - zero_s) / REENCODE_TIME_BASE)
        packet.dts = round((item.dts_s - zero_s) / REENCODE_TIME_BASE)
        packet.time_base = REENCODE_TIME_BASE
        yield from (f for f in decoder.decode(packet) if f.pts is not None)
    yield from (f for f in decoder.decode(None) if f.pts is not None)


__all__ = ["Clip", "cut_clip"]
