"""SegmentRing on a live HLS stream (two readers, as after a process restart) and cut_clip from the
ring and from files. Every frame shows its number, so a clip's frames are checked against the
requested media-time range."""

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from indexer.batches import SampledFrame
from indexer.media import SourceReader, parse_source
from indexer.media.clips import cut_clip
from indexer.media.ring import RingSegment, SegmentRing, ring_segments
from indexer.settings import ReaderOptions
from tests.mediagen import make_video, read_frame_number
from tests.streams import hls_live

FPS = 25
KEEP_S, SEGMENT_S = 8.0, 1.0
OPTIONS = {"fps": 2.0, "read_timeout_s": 2.0, "open_timeout_s": 10.0, "give_up_after_s": 2.0,
           "reconnect_initial_s": 0.2}


def read_until(url: str, ring_dir: Path, until_s: float, resume_time_s: float | None = None) -> list[SampledFrame]:
    reader = SourceReader(parse_source(url), ReaderOptions(**OPTIONS), resume_time_s=resume_time_s,
                          ring=SegmentRing(ring_dir, keep_s=KEEP_S, segment_s=SEGMENT_S))
    reader.open()
    frames = []
    for item in reader.samples():
        if isinstance(item, SampledFrame):
            frames.append(item)
            if item.pts_s >= until_s:
                break
    reader.close()
    return frames


@dataclass
class LiveRing:
    directory: Path
    first: list[SampledFrame]            # sampled by the first reader
    after_first: list[RingSegment]       # the ring when it stopped
    second: list[SampledFrame]           # sampled by the restarted reader


@pytest.fixture(scope="module")
def live_ring(tmp_path_factory) -> LiveRing:
    """A ring written by one reader up to 10.5 s of media, then by a second one (a restart that
    resumes after the first's last sample) up to 14 s; a crash's unfinished segment in between."""
    ring_dir = tmp_path_factory.mktemp("ring")
    with hls_live(duration_s=20, fps=FPS, hls_time=1) as (url, _):
        first = read_until(url, ring_dir, 10.5)
        after_first = ring_segments(ring_dir)
        (ring_dir / "00000090.ts").write_bytes(b"\x47" * 188)  # a segment a crash left without a sidecar
        second = read_until(url, ring_dir, 14.0, resume_time_s=first[-1].pts_s)
    return LiveRing(ring_dir, first, after_first, second)


def clip_frames(path: Path) -> tuple[list[int], list[float]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return [read_frame_number(f.to_ndarray(format="rgb24")) for f in frames], [f.time for f in frames]


def check_frames(numbers: list[int], times: list[float]) -> None:
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # every frame once, in order
    assert times[0] == pytest.approx(0.0, abs=1e-3)
    assert all(b > a for a, b in itertools.pairwise(times))


def test_ring_keeps_the_last_keep_s_of_media_in_contiguous_segments(live_ring):
    first, segments = live_ring.first, live_ring.after_first
    newest = segments[-1].media_end_s
    assert newest >= first[-1].pts_s
    assert segments[0].media_start_s > 0.0  # the oldest were deleted...
    assert newest - segments[0].media_start_s <= KEEP_S + SEGMENT_S + 0.1  # ...down to keep_s and a segment
    for a, b in itertools.pairwise(segments):
        assert b.media_start_s == pytest.approx(a.media_end_s, abs=1e-3)
        assert int(b.path.stem) > int(a.path.stem)
        assert a.wall_start <= a.wall_end <= b.wall_start
    # each sampled frame (showing its own number) falls in exactly one segment's media range
    for frame in first:
        assert abs(frame.pts_s - read_frame_number(frame.image) / FPS) < 1 / OPTIONS["fps"]
        owners = [s for s in segments if s.media_start_s - 1e-3 <= frame.pts_s < s.media_end_s - 1e-3]
        assert len(owners) == (frame.pts_s >= segments[0].media_start_s)
    # and a segment file's first frame is the one its sidecar starts at
    for segment in segments[-3:]:
        with av.open(str(segment.path)) as container:
            stream = container.streams.video[0]
            packet = next(p for p in container.demux(stream) if p.size)
            assert packet.is_keyframe
            assert segment.media_time(float(packet.pts * stream.time_base)) == pytest.approx(segment.media_start_s)


def test_clip_from_the_ring_is_a_stream_copy_of_the_range(live_ring, tmp_path):
    clip = cut_clip(tmp_path / "clip.mp4", 6.3, 9.5, recording_dir=live_ring.directory)
    numbers, times = clip_frames(clip.path)
    check_frames(numbers, times)
    assert 6.3 * FPS - FPS <= numbers[0] <= 6.3 * FPS  # from the keyframe at or before the start (GOP: 1 s)
    assert abs(numbers[-1] - 9.5 * FPS) <= 1  # to the frame shown at the end
    assert clip.start_s == pytest.approx(numbers[0] / FPS) and clip.end_s == pytest.approx((numbers[-1] + 1) / FPS)
    assert clip.covered and not clip.reencoded and clip.bytes == clip.path.stat().st_size
    assert not list(tmp_path.glob("*.tmp"))


def test_a_restarted_reader_appends_and_a_clip_spans_both(live_ring, tmp_path):
    ring_dir, first, second = live_ring.directory, live_ring.first, live_ring.second
    assert not (ring_dir / "00000090.ts").exists()  # the unfinished segment was deleted
    segments = ring_segments(ring_dir)
    new = [s for s in segments if int(s.path.stem) > 90]
    assert new and new[0].media_start_s > first[-1].pts_s  # the restart resumed after the first reader
    assert segments[-1].media_end_s >= second[-1].pts_s
    assert segments[-1].media_end_s - segments[0].media_start_s <= KEEP_S + SEGMENT_S + 0.1
    start, end = first[-1].pts_s - 2.0, first[-1].pts_s + 2.0
    clip = cut_clip(tmp_path / "both.mp4", start, end, recording_dir=ring_dir)
    numbers, times = clip_frames(clip.path)
    check_frames(numbers, times)  # no frame twice or missing across the restart
    assert start * FPS - FPS <= numbers[0] <= start * FPS and abs(numbers[-1] - end * FPS) <= 1
    assert clip.covered and not clip.reencoded
    # a range running past the ring's newest frame gives what there is, marked as not covered
    partial = cut_clip(tmp_path / "partial.mp4", end, end + 30.0, recording_dir=ring_dir)
    assert not partial.covered and partial.end_s == pytest.approx(segments[-1].media_end_s)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("videos")
    return {suffix: make_video(tmp / f"src{suffix}", duration_s=8, fps=FPS, codec=codec, gop=FPS)
            for suffix, codec in ((".mp4", "libx264"), (".webm", "libvpx"))}


@pytest.mark.parametrize(("suffix", "reencoded"), [(".mp4", False), (".webm", True)])  # MP4 cannot carry VP8
def test_clip_from_a_file(videos, tmp_path, suffix, reencoded):
    clip = cut_clip(tmp_path / "clip.mp4", 3.0, 6.0, source=str(videos[suffix]))
    numbers, times = clip_frames(clip.path)
    check_frames(numbers, times)
    assert numbers[0] == 3 * FPS  # a keyframe every second: frame 75 is one
    assert 6 * FPS <= numbers[-1] <= 6 * FPS + 3  # B-frame references shown after the end may stay
    assert clip.reencoded is reencoded and clip.covered
    assert clip.start_s == pytest.approx(3.0)


def test_errors_name_the_ring_or_the_file(live_ring, tmp_path):
    ring_dir = live_ring.directory
    with pytest.raises(ValueError, match=re.escape(str(ring_dir))):
        cut_clip(tmp_path / "late.mp4", 100.0, 110.0, recording_dir=ring_dir)
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        cut_clip(tmp_path / "clip.mp4", 1.0, 2.0, source=str(missing))
    assert not (tmp_path / "late.mp4").exists() and not (tmp_path / "clip.mp4").exists()
