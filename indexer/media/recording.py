"""`Recording`: a live source's recording read back, for recomputation and playback.

    recording = Recording(root, "cam1", short_side=224)
    recording.held()                         # [(start_s, end_s), ...]: the media time it still holds
    images = recording.frames_at([12.0, 13.0])   # uint8 RGB [H, W, 3] each, as ingestion sampled them

The recording is what the source's reader wrote (indexer/media/ring.py: stream-copied MPEG-TS
segments, each with a sidecar mapping its file timestamps to media time), so decoding a segment
again gives the very frames the reader decoded. A time is a frame's own media time as the timeline
stores it (`pts_s`); the frame with that time is found through the sidecars, decoded from its
segment's first keyframe, and converted as the reader converts frames (`frame_image`). A file
source is its own recording and is read from the file (indexer/media/pictures.py on the recompute
side); this class reads only live recordings, in the root's recordings folder.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import av
import numpy as np

from indexer.media.pictures import PicturesUnavailable
from indexer.media.reader import MEDIA_ERRORS, describe_media_error, frame_image
from indexer.media.ring import RingSegment, ring_segments
from indexer.settings import ReaderOptions
from indexer.store.root import IndexRoot

TIME_TOLERANCE_S = 2e-3   # the sidecars keep a segment's media-time offset to 1 ms: a frame's time within this is it


class RecordingUnavailable(PicturesUnavailable):
    """The recording cannot give a picture; the message names the stream and what it holds. A
    query then answers from the frame's content tokens alone (indexer/query/patch_features.py)."""


class Recording:
    """The recording of live stream `stream_id` under `root` (read only: its reader writes it)."""

    def __init__(self, root: IndexRoot, stream_id: str, short_side: int = ReaderOptions().short_side):
        self.stream_id = stream_id
        self.directory = root.recording_dir(stream_id)
        self.short_side = short_side

    def segments(self) -> list[RingSegment]:
        """Its finished segments, oldest first."""
        return ring_segments(self.directory) if self.directory.is_dir() else []

    def held(self) -> list[tuple[float, float]]:
        """The media-time ranges it still holds, oldest first (segments that follow one another
        are one range; a gap is where the source was down or a restart skipped)."""
        return _ranges(self.segments())

    def frames_at(self, times_s: Sequence[float]) -> list[np.ndarray]:
        """The picture ingestion sampled at each media time, in the order asked: uint8 RGB
        [H, W, 3], shorter side `short_side`. Raises RecordingUnavailable for a time the recording
        no longer (or never) holds, naming the stream and the ranges it holds."""
        segments = self.segments()
        wanted: dict[int, set[float]] = {}
        for t in {float(t) for t in times_s}:
            wanted.setdefault(self._segment_of(t, segments), set()).add(t)
        found: dict[float, np.ndarray] = {}
        for index, times in sorted(wanted.items()):
            found.update(self._decode(segments, index, times))
        return [found[float(t)] for t in times_s]

    # -- internals --------------------------------------------------------------------------------
    def _segment_of(self, t: float, segments: list[RingSegment]) -> int:
        for i, segment in enumerate(segments):
            if segment.media_start_s - TIME_TOLERANCE_S <= t < segment.media_end_s - TIME_TOLERANCE_S:
                return i
        raise RecordingUnavailable(f"stream {self.stream_id}: its recording ({self.directory}) "
                                   f"{self._holds(segments)}; {t:.3f} s is not in it (deleted by "
                                   "index.retention.recording_s / recording_bytes, or not recorded: the source was "
                                   "down or not yet read)")

    def _holds(self, segments: list[RingSegment]) -> str:
        ranges = _ranges(segments)
        if not ranges:
            return "holds nothing"
        return "holds " + ", ".join(f"{a:.3f}..{b:.3f} s" for a, b in ranges)

    def _decode(self, segments: list[RingSegment], index: int, times: set[float]) -> dict[float, np.ndarray]:
        """Decode segment `index` (after the one before it when it does not open with a keyframe:
        a segment cut at a jump back) and convert the frames with the wanted times."""
        segment = segments[index]
        packets, template = self._packets(segment)
        own = {p.pts: segment.media_time(p.pts * float(p.time_base)) for p in packets}
        if packets and not packets[0].is_keyframe and index > 0:
            packets = self._packets(segments[index - 1])[0] + packets
        decoder = av.CodecContext.create(template.codec_context.name, "r")
        if template.codec_context.extradata:
            decoder.extradata = template.codec_context.extradata
        found: dict[float, np.ndarray] = {}
        left = set(times)
        try:
            for packet in itertools.chain(packets, [None]):
                try:
                    frames = decoder.decode(packet)
                except (av.error.InvalidDataError, av.error.UndefinedError):
                    continue  # damage the reader skipped too; the frames wanted are checked by time below
                for frame in frames:
                    media_s = own.get(frame.pts)
                    if media_s is None:
                        continue  # a frame of the segment before, decoded only to start this one
                    for t in [t for t in left if abs(t - media_s) <= TIME_TOLERANCE_S]:
                        found[t] = frame_image(frame, self.short_side)
                        left.discard(t)
                if not left:
                    break
        except MEDIA_ERRORS as exc:
            raise RecordingUnavailable(f"stream {self.stream_id}: recording segment {segment.path} does not decode "
                                       f"({describe_media_error(exc)})") from exc
        if left:
            raise RecordingUnavailable(f"stream {self.stream_id}: recording segment {segment.path} "
                                       f"({segment.media_start_s:.3f}..{segment.media_end_s:.3f} s) has no frame at "
                                       + ", ".join(f"{t:.6f}" for t in sorted(left))
                                       + " s: not a time ingestion sampled from this recording")
        return found

    def _packets(self, segment: RingSegment) -> tuple[list[av.Packet], av.video.stream.VideoStream]:
        try:
            container = av.open(str(segment.path))
        except FileNotFoundError:
            raise RecordingUnavailable(f"stream {self.stream_id}: recording segment {segment.path.name} was deleted "
                                       f"by its retention meanwhile; the recording now "
                                       f"{self._holds(self.segments())}") from None
        except MEDIA_ERRORS as exc:
            raise RecordingUnavailable(f"stream {self.stream_id}: recording segment {segment.path} cannot be opened "
                                       f"({describe_media_error(exc)})") from exc
        with container:
            if not container.streams.video:
                raise RecordingUnavailable(f"stream {self.stream_id}: recording segment {segment.path} has no video")
            template = container.streams.video[0]
            try:
                packets = [p for p in container.demux(template) if p.size and p.pts is not None]
            except MEDIA_ERRORS as exc:
                raise RecordingUnavailable(f"stream {self.stream_id}: recording segment {segment.path} is unreadable "
                                           f"({describe_media_error(exc)})") from exc
        return packets, template


def _ranges(segments: list[RingSegment]) -> list[tuple[float, float]]:
    ranges: list[tuple[float, float]] = []
    for segment in segments:
        step = segment.media_end_s - segment.media_start_s
        if ranges and segment.media_start_s - ranges[-1][1] <= max(TIME_TOLERANCE_S, step / 2):
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], segment.media_end_s))
        else:
            ranges.append((segment.media_start_s, segment.media_end_s))
    return ranges


__all__ = ["Recording", "RecordingUnavailable"]
