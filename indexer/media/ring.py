"""`SegmentRing`: a live source's recording, on disk, kept for a time and/or a size.

    ring = SegmentRing(root.recording_dir("cam1"), keep_s=120.0, keep_bytes=None, segment_s=2.0)
    reader = SourceReader(source, options, ring=ring)   # the reader feeds it packets and frame times
    ring_segments(root.recording_dir("cam1"))           # finished segments, oldest first

A live source cannot be read again, so its packets are copied (no re-encoding) into MPEG-TS
segment files `<seq>.ts`: the recording that alert clips (clips.py), playback in the page and
recomputed features (recording.py) all read. When a segment is finished a JSON sidecar
`<seq>.json` says which media time it covers; a segment without one is unfinished (a crash) and
is ignored, then deleted by the next ring on that folder. A restarted reader appends after the
highest seq. As each segment is finished the oldest ones go: those that ended more than keep_s
(media time) before the newest's end, then the oldest while all together exceed keep_bytes; the
newest segment always stays.

Packets arrive before their frames are decoded, so the ring learns a segment's media time from
`frame_time` afterwards: a frame belongs to the segment that held the packet with its pts, and a
segment is finished once a frame of a later segment is reported (decoders output in pts order).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import av

from indexer.media.sampling import MPEG_TS_WRAP_S
from indexer.store.files import TMP_SUFFIX, fsync_dir, write_atomic_json

logger = logging.getLogger(__name__)

DEFAULT_FRAME_S = 0.04         # frame spacing until two frames are seen (and the stream gives no rate)
MAX_FRAME_STEP_S = 10.0        # a larger step between frames is a pause, not a frame spacing
OFFSET_TOLERANCE_S = 1e-3      # media - file time changing by more is a clock jump inside a segment
MUX_ERRORS = (av.error.FFmpegError, ValueError)  # a packet the TS muxer refuses: skipped, counted


@dataclass
class RingSegment:
    path: Path                # the .ts file
    media_start_s: float      # media time of its first recorded frame
    media_end_s: float        # media time of its last recorded frame plus one frame
    wall_start: float | None  # unix time its first recorded frame was decoded
    wall_end: float | None    # ... and its last
    # (file seconds from which it applies, media time - file seconds), ascending: file pts -> media time
    offsets: tuple[tuple[float, float], ...] = ()
    bytes: int = 0            # the .ts file's size

    def media_time(self, file_s: float) -> float:
        """Media time of a timestamp read from the segment file (pts * time_base)."""
        offset = self.offsets[0][1] if self.offsets else 0.0
        for from_s, value in self.offsets:
            if from_s > file_s:
                break
            offset = value
        return file_s + offset


@dataclass
class _Segment:
    """A segment being written, or written and waiting for its last frames to be reported."""

    path: Path
    output: av.container.OutputContainer | None
    stream: av.video.stream.VideoStream | None
    first_dts_s: float
    last_dts_s: float
    pts: set[int] = field(default_factory=set)   # pts (stream ticks) of its packets: which frames are its own
    offsets: list[tuple[float, float]] = field(default_factory=list)
    media_start_s: float | None = None
    media_last_s: float | None = None
    wall_start: float | None = None
    wall_end: float | None = None
    dropped: int = 0


class SegmentRing:
    """One live source's video stream recorded as MPEG-TS segment files (stream copy) in
    `directory`, each with a JSON sidecar giving its media-time range; segments that ended more
    than keep_s (media time) before the newest's end, and the oldest beyond keep_bytes in all, are
    deleted (None: no such limit)."""

    def __init__(self, directory: Path, keep_s: float | None = 120.0, segment_s: float = 2.0,
                 keep_bytes: int | None = None):
        if (keep_s is not None and not keep_s > 0) or not segment_s > 0 or (keep_bytes is not None and keep_bytes < 1):
            raise ValueError(f"keep_s and segment_s must be > 0 and keep_bytes >= 1, got keep_s={keep_s}, "
                             f"segment_s={segment_s}, keep_bytes={keep_bytes}")
        self.directory = Path(directory)
        self.keep_s = keep_s
        self.keep_bytes = keep_bytes
        self.segment_s = segment_s
        self.directory.mkdir(parents=True, exist_ok=True)
        self._next_seq = _remove_unfinished(self.directory) + 1
        self._finished: deque[RingSegment] = deque(ring_segments(self.directory))
        self._template: av.video.stream.VideoStream | None = None
        self._tick_s = 0.0
        self._frame_s = DEFAULT_FRAME_S
        self._last_media_s: float | None = None
        self._current: _Segment | None = None
        self._waiting: list[_Segment] = []  # closed for packets, older first

    def start(self, stream: av.video.stream.VideoStream) -> None:
        """A (re)connection: what the old one left is finished; the next segment copies `stream`."""
        self.close()
        self._template = stream
        self._tick_s = float(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            self._frame_s = 1.0 / float(rate)
        self._last_media_s = None

    def packet(self, packet: av.Packet) -> None:
        """A demuxed video packet, in demux order (before it is decoded)."""
        if self._template is None or not packet.size or packet.pts is None:
            return  # the flush packet at the end; a packet without a time cannot be placed
        dts = packet.dts if packet.dts is not None else packet.pts
        dts_s = dts * self._tick_s % MPEG_TS_WRAP_S  # as the TS file will hold it
        current = self._current
        if current is None:
            if not packet.is_keyframe:
                return  # joined mid-GOP: nothing decodes before the first keyframe
            current = self._open(dts_s)
        elif dts_s <= current.last_dts_s or (packet.is_keyframe and dts_s - current.first_dts_s >= self.segment_s):
            # full, or a jump back (a wrap, a publisher restart): a file's time may only go forward
            self._rotate()
            current = self._open(dts_s)
        if current.output is None:
            return  # its file could not be opened; the next keyframe tries a new one
        copy = av.Packet(packet)  # shares the data; the reader's packet must stay as it is for decoding
        copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
        copy.is_keyframe = packet.is_keyframe
        copy.stream = current.stream
        try:
            current.output.mux(copy)
        except MUX_ERRORS:
            current.dropped += 1
            return
        current.pts.add(packet.pts)
        current.last_dts_s = dts_s

    def frame_time(self, raw_s: float, media_s: float | None, wall_time: float | None) -> None:
        """A decoded frame: its raw seconds (pts * time_base) and the media time the clock gave it."""
        if media_s is None or self._template is None:
            return  # dropped by the clock as a replay: already recorded in an earlier segment
        pts = round(raw_s / self._tick_s)
        owner = next((s for s in self._waiting if pts in s.pts), None)
        if owner is None:
            if self._current is None or pts not in self._current.pts:
                return  # its packet was not recorded (before the first keyframe)
            owner = self._current
        while self._waiting and self._waiting[0] is not owner:
            self._finish(self._waiting.pop(0))  # frames come in pts order: the older ones are complete
        if self._last_media_s is not None and 0 < media_s - self._last_media_s <= MAX_FRAME_STEP_S:
            self._frame_s = media_s - self._last_media_s
        self._last_media_s = media_s
        file_s = raw_s % MPEG_TS_WRAP_S
        offset = media_s - file_s
        if not owner.offsets or abs(owner.offsets[-1][1] - offset) > OFFSET_TOLERANCE_S:
            owner.offsets.append((file_s, offset))
        if owner.media_start_s is None:
            owner.media_start_s, owner.wall_start = media_s, wall_time
        owner.media_last_s = media_s if owner.media_last_s is None else max(owner.media_last_s, media_s)
        owner.wall_end = wall_time

    def close(self) -> None:
        """Finish every segment: no more frames of them will be reported."""
        self._rotate()
        while self._waiting:
            self._finish(self._waiting.pop(0))

    # -- segments --------------------------------------------------------------------------------
    def _open(self, dts_s: float) -> _Segment:
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        path = self.directory / f"{seq:08d}.ts"
        try:
            # mpegts_copyts: keep the source's timestamps, so file time maps back to media time
            output = av.open(str(path), "w", format="mpegts", options={"mpegts_copyts": "1"})
            stream = output.add_stream_from_template(self._template, opaque=True)
        except (OSError, *MUX_ERRORS) as exc:
            logger.warning("ring %s: cannot start segment %s: %s", self.directory, path.name, exc)
            output = stream = None
        self._current = _Segment(path, output, stream, dts_s, dts_s)
        return self._current

    def _rotate(self) -> None:
        """Close the current segment's file; it waits for the frames still in the decoder."""
        current, self._current = self._current, None
        if current is None:
            return
        if current.output is not None:
            try:
                current.output.close()
            except MUX_ERRORS as exc:
                logger.warning("ring %s: cannot close %s: %s", self.directory, current.path.name, exc)
                current.media_start_s = None  # unfinished: deleted below
        self._waiting.append(current)

    def _finish(self, segment: _Segment) -> None:
        """Write the sidecar of a segment with frames (delete one without), then drop the old ones.
        Disk errors are logged, not raised: the reader would take them for a lost connection."""
        if segment.dropped:
            logger.warning("ring %s: %d packets not written to %s", self.directory, segment.dropped, segment.path.name)
        try:
            if segment.media_start_s is None or segment.output is None:
                segment.path.unlink(missing_ok=True)  # no frame of its own (a replay, or nothing decodable)
                return
            fsync_dir(segment.path)  # (opens and fsyncs any path): a sidecar promises a complete file
            done = RingSegment(segment.path, segment.media_start_s, segment.media_last_s + self._frame_s,
                               segment.wall_start, segment.wall_end, tuple(segment.offsets),
                               segment.path.stat().st_size)
            write_atomic_json(segment.path.with_suffix(".json"), _sidecar(done))
            self._finished.append(done)
            self._apply_retention(done)
        except OSError as exc:
            logger.warning("ring %s: cannot finish %s: %s", self.directory, segment.path.name, exc)

    def _apply_retention(self, newest: RingSegment) -> None:
        """Delete the oldest finished segments that keep_s or keep_bytes no longer keep (never the newest)."""
        total = sum(s.bytes for s in self._finished)
        while len(self._finished) > 1:
            oldest = self._finished[0]
            too_old = self.keep_s is not None and oldest.media_end_s <= newest.media_end_s - self.keep_s
            too_big = self.keep_bytes is not None and total > self.keep_bytes
            if not (too_old or too_big):
                break
            self._finished.popleft()
            oldest.path.with_suffix(".json").unlink(missing_ok=True)  # first: a crash leaves an unfinished .ts
            oldest.path.unlink(missing_ok=True)
            total -= oldest.bytes


def ring_segments(directory: Path) -> list[RingSegment]:
    """Finished segments in `directory`, oldest first (a segment without a sidecar is unfinished)."""
    segments = []
    for sidecar in sorted((p for p in Path(directory).glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem)):
        path = sidecar.with_suffix(".ts")
        try:
            data = json.loads(sidecar.read_text())
            segment = RingSegment(path, float(data["media_start_s"]), float(data["media_end_s"]), data["wall_start"],
                                  data["wall_end"], tuple((float(a), float(b)) for a, b in data["offsets"]))
        except FileNotFoundError:
            continue  # deleted by the ring since the listing
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{sidecar}: unreadable ring sidecar ({exc}); delete it and its .ts") from exc
        try:
            segment.bytes = path.stat().st_size
        except FileNotFoundError:
            continue  # deleted by the ring since the listing (its sidecar goes first, but not atomically with it)
        segments.append(segment)
    return segments


def _sidecar(segment: RingSegment) -> dict:
    return {"media_start_s": segment.media_start_s, "media_end_s": segment.media_end_s,
            "wall_start": segment.wall_start, "wall_end": segment.wall_end,
            "offsets": [list(pair) for pair in segment.offsets]}


def _remove_unfinished(directory: Path) -> int:
    """Delete segments a crash left without a sidecar (and temporary files); return the highest seq."""
    highest = 0
    for path in directory.iterdir():
        if path.name.endswith(TMP_SUFFIX):
            path.unlink(missing_ok=True)
            continue
        if path.suffix not in (".ts", ".json") or not path.stem.isdigit():
            continue
        highest = max(highest, int(path.stem))
        if path.suffix == ".ts" and not path.with_suffix(".json").exists():
            path.unlink(missing_ok=True)
    return highest


__all__ = ["RingSegment", "SegmentRing", "ring_segments"]
