"""Tests of the test-media helpers themselves (tests/mediagen.py, tests/streams.py).

They need ffmpeg, GStreamer (gst-rtsp-server, python3-gi) and PyAV: CI installs them, so a
missing one fails these tests rather than skipping them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.mediagen import (
    MAX_FRAME_NUMBER,
    frame_pattern,
    make_audio_only,
    make_corrupt,
    make_non_video,
    make_truncated,
    make_unsupported_codec,
    make_vfr_video,
    make_video,
    make_video_with_subtitles,
    make_zero_byte,
    probe_frame_times,
    read_frame_number,
)
from tests.streams import RTSP_OPTIONS, UDP_QUERY, hls_live, rtsp_server, udp_mpegts

FPS = 25
OPEN_TIMEOUT = (30.0, 10.0)  # PyAV (open, read) seconds: generous for a loaded 2-core machine


def _jpeg_thumbnail(rgb: np.ndarray, width: int = 160, quality: int = 40) -> np.ndarray:
    img = Image.fromarray(rgb)
    img = img.resize((width, round(img.height * width / img.width)), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _decode(path: Path | str, **open_kwargs) -> Iterator[tuple[int, float | None, bool]]:
    """(frame number shown, pts in seconds, key frame) of every decoded frame."""
    with av.open(str(path), **open_kwargs) as container:
        for frame in container.decode(video=0):
            yield read_frame_number(frame.to_ndarray(format="rgb24")), frame.time, frame.key_frame


# ---------------------------------------------------------------------------------------------
# The pattern
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 255, 256, 1000, 4095, 12345, MAX_FRAME_NUMBER])
def test_pattern_round_trip(n: int) -> None:
    rgb = frame_pattern(n, 320, 240)
    assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
    assert read_frame_number(rgb) == n
    assert read_frame_number(_jpeg_thumbnail(rgb)) == n
    assert read_frame_number(np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC))) == n
    assert read_frame_number(rgb[:, :, 0]) == n  # grey
    assert read_frame_number(_jpeg_thumbnail(frame_pattern(n, 1280, 720))) == n


def test_pattern_rejects_garbage() -> None:
    rng = np.random.default_rng(0)
    bad = [
        np.zeros((120, 160, 3), np.uint8),
        np.full((120, 160, 3), 255, np.uint8),
        np.full((120, 160, 3), 128, np.uint8),
        rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
        (frame_pattern(5, 160, 120) // 2 + frame_pattern(6, 160, 120) // 2),  # cross-fade
    ]
    # a frame whose top rows come from one frame and bottom rows from another (concealment)
    for a, b in [(24, 25), (25, 21), (100, 131), (7, 1000)]:
        for rows in (30, 60, 90):
            bad.append(np.concatenate([frame_pattern(a, 160, 120)[:rows], frame_pattern(b, 160, 120)[rows:]]))
    for img in bad:
        with pytest.raises(ValueError):
            read_frame_number(img)
    with pytest.raises(ValueError):
        frame_pattern(MAX_FRAME_NUMBER + 1, 320, 240)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("h264.mp4", "libx264"),
        ("h265.mkv", "libx265"),
        ("vp9.webm", "libvpx-vp9"),
        ("mpeg2.ts", "mpeg2video"),
        ("h264.ts", "libx264"),
    ],
)
def test_make_video(tmp_path: Path, name: str, codec: str) -> None:
    path = make_video(tmp_path / name, duration_s=2.0, fps=FPS, codec=codec, gop=10)
    assert probe_frame_times(path)[:2] == [0.0, 1 / FPS]
    frames = list(_decode(path))
    assert [n for n, _, _ in frames] == list(range(50))
    for n, t, _ in frames:
        assert t == pytest.approx(n / FPS, abs=1e-6)
    assert [n for n, _, key in frames if key] == [0, 10, 20, 30, 40]


def test_make_video_size_and_rate(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", duration_s=1.0, fps=10, size=(176, 144))
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (176, 144)
        assert stream.average_rate == 10
    assert [(n, t) for n, t, _ in _decode(path)] == [(n, pytest.approx(n / 10)) for n in range(10)]


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_make_vfr_video(tmp_path: Path, suffix: str) -> None:
    times = [0.0, 0.04, 0.1, 0.5, 0.52, 1.333, 2.0, 2.001, 3.7]
    path = tmp_path / f"vfr{suffix}"
    assert make_vfr_video(path, times) == times
    assert probe_frame_times(path) == times
    assert [(n, t) for n, t, _ in _decode(path)] == [(i, pytest.approx(t)) for i, t in enumerate(times)]


def test_make_video_with_subtitles(tmp_path: Path) -> None:
    cues = [(0.5, 1.5, "hello world"), (2.0, 3.25, "second cue\nline two")]
    path = make_video_with_subtitles(tmp_path / "subs.mkv", 4.0, cues)
    got = []
    with av.open(str(path)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.subtitles) == 1
        sub_stream = c.streams.subtitles[0]
        for packet in c.demux(sub_stream):
            for sub in packet.decode():
                start = float(packet.pts * packet.time_base)
                got.append((start, start + float(packet.duration * packet.time_base), sub.dialogue.decode()))
    assert got == cues
    assert [n for n, _, _ in _decode(path)] == list(range(100))


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def test_unreadable_inputs(tmp_path: Path) -> None:
    src = make_video(tmp_path / "src.mp4", duration_s=2.0)
    for bad in (
        make_zero_byte(tmp_path / "empty.mp4"),
        make_truncated(src, tmp_path / "trunc.mp4"),  # moov at the end: lost
        make_non_video(tmp_path / "text.mp4"),
    ):
        with pytest.raises(av.error.InvalidDataError):
            av.open(str(bad))


def test_audio_only_and_unknown_codec(tmp_path: Path) -> None:
    with av.open(str(make_audio_only(tmp_path / "sine.wav"))) as c:
        assert not c.streams.video and len(c.streams.audio) == 1
    with av.open(str(make_unsupported_codec(tmp_path / "qqqq.avi"))) as c:
        stream = c.streams.video[0]
        assert stream.codec_context is None  # PyAV 18: no decoder for the codec
        with pytest.raises(av.error.DecoderNotFoundError):
            next(c.decode(stream))


def test_truncated_ts_decodes_its_start(tmp_path: Path) -> None:
    src = make_video(tmp_path / "src.ts", duration_s=4.0, gop=25)
    numbers = [n for n, _, _ in _decode(make_truncated(src, tmp_path / "trunc.ts", keep_fraction=0.5))]
    assert numbers == list(range(len(numbers))) and 20 <= len(numbers) < 100


def test_corrupt_ts_survives(tmp_path: Path) -> None:
    src = make_video(tmp_path / "src.ts", duration_s=4.0, gop=25)
    readable, garbled = [], 0
    with av.open(str(make_corrupt(src, tmp_path / "corrupt.ts"))) as c:
        for frame in c.decode(video=0):
            try:
                n = read_frame_number(frame.to_ndarray(format="rgb24"))
            except ValueError:
                garbled += 1
                continue
            readable.append(n)
            assert frame.time == pytest.approx(n / FPS)
    assert readable[:20] == list(range(20)) and readable[-10:] == list(range(90, 100))  # recovered
    assert len(readable) < 100


# ---------------------------------------------------------------------------------------------
# Live streams
# ---------------------------------------------------------------------------------------------


def _check_live(url: str, count: int = 50, **open_kwargs) -> list[int]:
    """Read ``count`` frames: consecutive numbers with pts exactly n / fps."""
    frames = []
    for frame in _decode(url, timeout=OPEN_TIMEOUT, **open_kwargs):
        frames.append(frame)
        if len(frames) == count:
            break
    numbers = [n for n, _, _ in frames]
    assert numbers == list(range(numbers[0], numbers[0] + count))
    for i, (n, t, _) in enumerate(frames):
        if t is None and i == 0:  # RTSP: FFmpeg gives a session's first packet no pts
            continue
        assert t == pytest.approx(n / FPS, abs=1e-6)
    return numbers


def test_hls_live() -> None:
    with hls_live(duration_s=20, fps=FPS) as (url, info):
        assert url.startswith("http://127.0.0.1:") and url.endswith("/live.m3u8")
        assert info.pts_s(50) == 2.0 and info.frame_at(2.0) == 50
        numbers = _check_live(url)
        assert numbers[0] % FPS == 0  # the reader joins at a segment start
        assert numbers[0] <= info.live_frame() + 2


def test_udp_mpegts() -> None:
    with udp_mpegts(duration_s=20, fps=FPS, start_delay_s=1.5) as url:
        assert url.startswith("udp://127.0.0.1:") and url.info.pts_offset_s == 0
        _check_live(f"{url}?{UDP_QUERY}")


def test_rtsp_server() -> None:
    with rtsp_server(duration_s=20, fps=FPS) as url:
        assert url.startswith("rtsp://127.0.0.1:") and url.endswith("/stream")
        for _ in range(2):  # every client gets the stream from frame 0
            assert _check_live(url, options=RTSP_OPTIONS)[0] == 0
