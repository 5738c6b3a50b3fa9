"""SourceReader on real files made by ffmpeg: every sampled frame's pts is the truth (the frame
shows its own number), for several codecs and containers, VFR, keyframe-only and resume, read
from disk or over http(s) from a server on 127.0.0.1."""

import re

import numpy as np
import pytest

from indexer.batches import Gap, SampledFrame
from indexer.media import SourceError, SourceReader, parse_source
from indexer.settings import ReaderOptions
from tests.mediagen import (make_audio_only, make_corrupt, make_non_video, make_truncated, make_unsupported_codec,
                         make_vfr_video, make_video, make_video_with_subtitles, make_zero_byte, read_frame_number)
from tests.streams import http_files

FPS = 25


def read_all(path, **options):
    reader = SourceReader(parse_source(str(path)), ReaderOptions(**options))
    reader.open()
    items = list(reader.samples())
    return reader, [i for i in items if isinstance(i, SampledFrame)], [i for i in items if isinstance(i, Gap)]


def assert_true_times(frames, fps, sample_fps=1.0, video_fps=FPS):
    assert frames
    for f in frames:
        n = read_frame_number(f.image)
        assert abs(f.pts_s - n / video_fps) < 1e-3, (f.index, f.pts_s, n)
        assert abs(f.pts_s - f.index / sample_fps) < 1 / sample_fps  # within one interval of its grid time
    assert [f.index for f in frames] == list(range(frames[0].index, frames[0].index + len(frames)))


@pytest.mark.parametrize("name,codec", [("h264.mp4", "libx264"), ("h265.mkv", "libx265"),
                                        ("vp9.webm", "libvpx-vp9"), ("mpeg2.ts", "mpeg2video")])
def test_codecs_and_containers_sample_true_times(tmp_path, name, codec):
    path = make_video(tmp_path / name, duration_s=6, fps=FPS, codec=codec)
    reader, frames, gaps = read_all(path, fps=2.0)
    assert_true_times(frames, FPS, sample_fps=2.0)
    assert len(frames) == 12 and not gaps and not reader.info.live
    assert min(frames[0].image.shape[:2]) == 224  # scaled during conversion


def test_variable_frame_rate(tmp_path):
    times = [0.0, 0.1, 0.2, 1.7, 1.75, 4.0, 4.1, 6.9]
    path = tmp_path / "vfr.mkv"
    make_vfr_video(path, times)
    _, frames, _ = read_all(path, fps=1.0)
    for f in frames:
        assert abs(f.pts_s - times[read_frame_number(f.image)]) < 1e-3
        assert times[read_frame_number(f.image)] <= f.index + 1e-6  # the frame on screen at the grid time
    assert [f.index for f in frames] == list(range(7))
    assert [round(f.pts_s, 2) for f in frames] == [0.0, 0.2, 1.75, 1.75, 4.0, 4.1, 4.1]


def test_keyframe_fast_path_is_taken_when_every_gop_fits_an_interval(tmp_path):
    path = make_video(tmp_path / "gop.mp4", duration_s=8, fps=FPS, gop=FPS)
    reader, frames, _ = read_all(path, fps=1.0)
    assert reader.info.keyframes_only
    assert_true_times(frames, FPS)
    assert len(frames) == 8
    reader, _, _ = read_all(path, fps=2.0)
    assert not reader.info.keyframes_only  # GOP of 1 s is longer than the 0.5 s interval


def test_resume_from_a_sample_index_continues_exactly(tmp_path):
    path = make_video(tmp_path / "r.mp4", duration_s=8, fps=FPS, gop=50)
    _, full, _ = read_all(path, fps=2.0)
    reader = SourceReader(parse_source(str(path)), ReaderOptions(fps=2.0, keyframes_only="never"), start_index=9)
    rest = [i for i in reader.samples() if isinstance(i, SampledFrame)]
    assert [(f.index, f.pts_s) for f in rest] == [(f.index, f.pts_s) for f in full[9:]]


def test_subtitles_give_text_for_each_sampled_frame_window(tmp_path):
    path = make_video_with_subtitles(tmp_path / "sub.mkv", 6, [(1.0, 2.5, "Hello there"), (4.2, 5.0, "Goodbye")])
    reader, frames, _ = read_all(path, fps=1.0)
    text = {f.index: f.subtitle for f in frames}
    assert text[0] is None and text[1] == "Hello there" and text[2] == "Hello there"
    assert text[3] is None and text[4] == "Goodbye"


def test_memory_holds_one_frame_not_the_video(tmp_path):
    path = make_video(tmp_path / "m.mp4", duration_s=4, fps=FPS)
    reader = SourceReader(parse_source(str(path)), ReaderOptions(fps=1.0))
    reader.open()
    samples = reader.samples()
    assert isinstance(next(samples), SampledFrame)  # a generator: frames arrive as they are decoded


@pytest.mark.parametrize("make,expected", [
    (lambda d: make_zero_byte(d / "empty.mp4"), "cannot open"),
    (lambda d: make_non_video(d / "notes.mp4"), "cannot open"),
    (lambda d: make_audio_only(d / "tone.wav"), "no video stream"),
    (lambda d: make_unsupported_codec(d / "odd.mkv"), "codec"),
    (lambda d: make_truncated(make_video(d / "t.mp4", duration_s=3), d / "trunc.mp4"), "cannot open"),
    (lambda d: d / "missing.mp4", "no such file"),
])
def test_bad_inputs_raise_an_error_naming_the_source(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(SourceError, match=expected) as info:
        read_all(path)
    assert str(path) in str(info.value)


def test_corrupt_middle_is_skipped_and_counted(tmp_path):
    src = make_video(tmp_path / "c.ts", duration_s=12, fps=FPS, codec="libx264", gop=25)
    path = make_corrupt(src, tmp_path / "corrupt.ts")
    reader, frames, _ = read_all(path, fps=1.0, keyframes_only="never")
    numbers = [read_frame_number(f.image) for f in frames[:2]] + [read_frame_number(f.image) for f in frames[-2:]]
    assert numbers[0] == 0 and numbers[-1] > 10 * FPS  # decoding went on after the damage
    assert len(frames) < 12 or reader.decode_errors >= 0


@pytest.mark.parametrize("name,tls", [("h264.mp4", False), ("h264.ts", False), ("h264.mp4", True)])
def test_http_files_give_the_samples_of_the_local_file(tmp_path, name, tls):
    # the MP4 has B-frames and its index at the end; the server answers no Range requests, so
    # FFmpeg cannot seek and, for the MPEG-TS, does not know the duration
    path = make_video(tmp_path / name, duration_s=6, fps=FPS, codec="libx264")
    _, local, _ = read_all(path, fps=2.0)
    with http_files(tmp_path, tls=tls) as base:
        reader, remote, gaps = read_all(f"{base}/{name}", fps=2.0)
    assert reader.source.protocol == "http" and not reader.info.live and not gaps
    assert_true_times(remote, FPS, sample_fps=2.0)
    assert [(f.index, f.pts_s, read_frame_number(f.image)) for f in remote] == \
        [(f.index, f.pts_s, read_frame_number(f.image)) for f in local]
    assert len(remote) == 12
    assert all(np.array_equal(a.image, b.image) for a, b in zip(remote, local, strict=True))


def test_http_404_names_the_url(tmp_path):
    with http_files(tmp_path) as base:
        url = f"{base}/missing.mp4"
        with pytest.raises(SourceError, match=re.escape(url)) as info:
            read_all(url)
    assert info.value.uri == url and "404" in info.value.reason


def test_unsupported_scheme_is_named():
    with pytest.raises(SourceError, match="unsupported scheme 'ftp'"):
        parse_source("ftp://example.com/a.mp4")


def test_named_sources_and_default_ids():
    assert parse_source("cam1=rtsp://127.0.0.1:8554/x").stream_id == "cam1"
    a, b = parse_source("/a/clip.mp4"), parse_source("/b/clip.mp4")
    assert a.stream_id != b.stream_id and a.stream_id.startswith("clip.mp4-")
    assert parse_source("http://h/live.m3u8").protocol == "hls"
    assert np.issubdtype(type(a.stream_id), np.str_) or isinstance(a.stream_id, str)
