"""SourceReader on live streams published on 127.0.0.1: HLS over HTTP, MPEG-TS over UDP, RTSP
from gst-rtsp-server, RTMP from ffmpeg. Every sampled frame's pts is the truth (the frame shows
its number)."""

import re
import threading
import time

import pytest

from indexer.batches import Gap, SampledFrame
from indexer.media import SourceReader, parse_source
from indexer.settings import ReaderOptions
from tests.mediagen import read_frame_number
from tests.streams import hls_live, rtmp_server, rtsp_server, udp_mpegts

FPS = 25
OPTIONS = dict(fps=2.0, read_timeout_s=2.0, open_timeout_s=10.0, give_up_after_s=2.0, reconnect_initial_s=0.2)


def read_live(url, until_first_gap=False, **extra):
    reader = SourceReader(parse_source(url), ReaderOptions(**(OPTIONS | extra)))
    info = reader.open()
    items = []
    for item in reader.samples():
        items.append(item)
        if until_first_gap and isinstance(item, Gap):
            break
    reader.close()
    return info, [i for i in items if isinstance(i, SampledFrame)], [i for i in items if isinstance(i, Gap)]


def check_truth(frames, sample_fps=2.0):
    assert len(frames) >= 6
    for f in frames:
        assert abs(f.pts_s - read_frame_number(f.image) / FPS) < 1 / sample_fps
        assert f.wall_time is not None
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))  # each grid point once, in order
    assert all(abs(f.pts_s - f.index / sample_fps) < 1 / sample_fps for f in frames)


def test_hls_live_playlist():
    with hls_live(duration_s=8, fps=FPS) as (url, _):
        info, frames, gaps = read_live(url)
    assert info.live
    check_truth(frames)
    assert gaps and gaps[-1].end_s is None  # the publisher stopped: recorded, not an exception


def test_mpegts_over_udp():
    with udp_mpegts(duration_s=7, fps=FPS) as url:
        result = {}
        thread = threading.Thread(target=lambda: result.update(zip(("info", "frames", "gaps"), read_live(url))))
        thread.start()
        thread.join(60)
    assert result["info"].live
    check_truth(result["frames"])
    assert "gave up" in result["gaps"][-1].reason


@pytest.mark.parametrize("transport", ["tcp"])
def test_rtsp_server(transport):
    with rtsp_server(duration_s=7, fps=FPS) as url:
        # the server starts a new playback for every session, so a reconnecting reader never
        # runs out: one session is the test
        info, frames, gaps = read_live(url, until_first_gap=True, rtsp_transport=transport)
    assert info.live and info.codec == "h264"
    check_truth(frames)
    assert frames[0].pts_s < 1.0  # each RTSP session plays from the start


def test_rtmp_from_an_ffmpeg_server():
    with rtmp_server(duration_s=5, fps=FPS) as url:
        info, frames, gaps = read_live(url)
    assert info.live and info.codec == "h264"
    check_truth(frames)
    assert frames[0].pts_s < 1.0  # the server sends from frame 0 to its client
    # the server closed the connection and exited: the end is a gap naming the refused
    # reconnects, not an exception
    assert len(gaps) == 1 and gaps[0].end_s is None and gaps[0].start_s >= frames[-1].pts_s
    assert re.fullmatch(r"gave up: (stream ended|connection lost: .+); reconnects: cannot open: .*refused.*",
                        gaps[0].reason), gaps[0].reason


def test_stop_ends_a_live_source_that_is_down_and_retrying_forever():
    # Ctrl-C / `ray job stop` while the publisher is gone: the reader must not wait for a
    # reconnect that never comes (give_up_after_s=None) nor record a "gave up" gap
    stop = threading.Event()
    items = []
    with rtmp_server(duration_s=3, fps=FPS) as url:
        options = ReaderOptions(**(OPTIONS | {"give_up_after_s": None, "reconnect_max_s": 30.0}))
        reader = SourceReader(parse_source(url), options, stop=stop)
        reader.open()
        thread = threading.Thread(target=lambda: items.extend(reader.samples()), daemon=True)
        thread.start()
        thread.join(6)  # the stream ends after 3 s; reconnects are refused from then on
        assert thread.is_alive(), "a source that retries forever ended on its own"
        stopped = time.monotonic()
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and time.monotonic() - stopped < 2.0
    frames = [i for i in items if isinstance(i, SampledFrame)]
    assert len(frames) >= 4 and not [i for i in items if isinstance(i, Gap)]
    assert [f.index for f in frames] == list(range(len(frames)))


def test_reconnect_records_a_gap_when_the_publisher_comes_back():
    # the reader loses the RTSP session at the end of each playback and gets a new one, whose
    # clock restarts at 0: media time goes on from the outage instead
    with rtsp_server(duration_s=4, fps=FPS) as url:
        reader = SourceReader(parse_source(url), ReaderOptions(**(OPTIONS | {"give_up_after_s": 4.0})))
        reader.open()
        items = []
        for item in reader.samples():
            items.append(item)
            if sum(isinstance(i, SampledFrame) for i in items) >= 12:
                break
    gaps = [i for i in items if isinstance(i, Gap)]
    frames = [i for i in items if isinstance(i, SampledFrame)]
    assert gaps and gaps[0].end_s is not None and gaps[0].end_s >= gaps[0].start_s
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))  # media time keeps going forward across the reconnect
