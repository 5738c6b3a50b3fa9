"""The reader on hostile live sources on 127.0.0.1: an RTSP server killed and started again
mid-stream, and an HLS publisher whose clock runs faster than the wall clock. Each frame
shows its own number, so the rows are checked against the truth."""

import re
import socket
import threading
import time

from indexer.batches import Gap, SampledFrame
from indexer.media import SourceReader, parse_source
from indexer.settings import ReaderOptions
from tests.mediagen import ffmpeg_bin, make_video, read_frame_number
from tests.streams import (
    RTSP_SCRIPT,
    SYSTEM_PYTHON,
    _free_port,
    _Processes,
    _serve_http,
    _workspace,
)

FPS = 25
OPTIONS = {"fps": 2.0, "read_timeout_s": 2.0, "open_timeout_s": 10.0, "reconnect_initial_s": 0.2,
           "reconnect_max_s": 0.5}


def _start_rtsp(procs: _Processes, name: str, video, port: int) -> None:
    procs.start(name, [SYSTEM_PYTHON, str(RTSP_SCRIPT), str(video), "--port", str(port)])
    procs.wait_for(name, lambda: f"READY {port}" in procs.output(name), 30.0)


def test_an_rtsp_server_restarted_mid_stream_is_one_gap_and_time_goes_on(tmp_path):
    # the camera's server crashes (SIGKILL) after about 4 s of picture and is back 3 s later;
    # its new session plays from frame 0 with its clock at 0 again
    video = make_video(tmp_path / "cam.ts", duration_s=30, fps=FPS, gop=FPS)
    with _workspace("rtsp-restart-") as (_, procs):
        port = _free_port(socket.SOCK_STREAM)
        _start_rtsp(procs, "first", video, port)
        reader = SourceReader(parse_source(f"rtsp://127.0.0.1:{port}/stream"),
                              ReaderOptions(**(OPTIONS | {"give_up_after_s": 30.0})))
        reader.open()
        items, killed_at, back_at = [], [], []

        def restart() -> None:
            back_at.append(time.time())
            _start_rtsp(procs, "second", video, port)

        for item in reader.samples():
            items.append(item)
            frames = [i for i in items if isinstance(i, SampledFrame)]
            if len(frames) == 8 and not killed_at:
                _, server = procs.procs.pop(0)
                server.kill()
                server.wait()
                killed_at.append(time.time())
                threading.Timer(3.0, restart).start()
            if any(isinstance(i, Gap) for i in items) and len([i for i in items[items.index(
                    next(g for g in items if isinstance(g, Gap))):] if isinstance(i, SampledFrame)]) >= 6:
                break
        reader.close()
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    # what took it down, then what the reconnects met while it was gone
    assert re.fullmatch(r"(stream ended|connection lost: .+); reconnects: cannot open: .*Connection refused.*",
                        gap.reason), gap.reason
    before = [i for i in items[:items.index(gap)] if isinstance(i, SampledFrame)]
    after = [i for i in items[items.index(gap) + 1:] if isinstance(i, SampledFrame)]
    # before: the first session's clock is the stream's own (frame n at n / 25 s)
    assert all(read_frame_number(f.image) == round(f.pts_s * FPS) for f in before)
    # the outage lasted at least the 3 s the server was down, by the wall clock, and media time
    # went on by that much: the second session's frame n at gap end + (n - n0) / 25 s
    assert gap.end_s - gap.start_s >= 3.0 - 0.5 and gap.wall_end - gap.wall_start >= 3.0 - 0.5
    first = read_frame_number(after[0].image)
    assert first < 3 * FPS  # the new session plays from its start
    assert all(abs(f.pts_s - (after[0].pts_s + (read_frame_number(f.image) - first) / FPS)) < 1e-3 for f in after)
    indices = [f.index for f in before + after]
    assert indices == sorted(set(indices))  # each sample time once, in order, across the restart
    assert indices == [*range(before[0].index, before[-1].index + 1), *range(after[0].index, after[-1].index + 1)]


def test_a_live_clock_that_runs_faster_than_the_wall_clock_is_followed_not_the_wall(tmp_path):
    # the publisher sends 1.25 s of media per second: sample times follow the stream's clock (one
    # per 0.5 s of its time, each frame at its own pts), wall times run 1 / 1.25 as fast, no gaps
    video = make_video(tmp_path / "fast.ts", duration_s=16, fps=FPS, gop=FPS)
    with _workspace("hls-drift-") as (tmp, procs):
        www = tmp / "www"
        www.mkdir()
        url = f"{_serve_http(procs, www, 30.0)}/live.m3u8"
        procs.start("ffmpeg", [
            ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-readrate", "1.25", "-copyts",
            "-i", str(video), "-map", "0:v", "-c", "copy", "-muxdelay", "0", "-muxpreload", "0",
            "-f", "hls", "-hls_time", "1", "-hls_list_size", "30", "-hls_flags", "temp_file",
            "-hls_segment_filename", str(www / "seg%05d.ts"), str(www / "live.m3u8")])  # fmt: skip
        procs.wait_for("playlist", lambda: (www / "live.m3u8").exists() and
                       (www / "live.m3u8").read_text().count("#EXTINF") >= 2, 30.0)
        reader = SourceReader(parse_source(url), ReaderOptions(**(OPTIONS | {"give_up_after_s": 2.0})))
        assert reader.open().live
        items = list(reader.samples())
    frames = [i for i in items if isinstance(i, SampledFrame)]
    gaps = [i for i in items if isinstance(i, Gap)]
    assert [g.end_s for g in gaps] == [None] and gaps[0].reason.startswith("gave up")  # only the end
    assert all(read_frame_number(f.image) == round(f.pts_s * FPS) for f in frames)
    assert [f.index for f in frames] == list(range(frames[0].index, frames[0].index + len(frames)))
    assert frames[-1].pts_s >= 15.0
    media = frames[-1].pts_s - frames[0].pts_s
    wall = frames[-1].wall_time - frames[0].wall_time
    assert 0.7 < wall / media < 0.9, (wall, media)  # about 1 / 1.25: the wall clock is not the timeline


def test_an_hls_publisher_restarted_with_its_playlist_and_clock_from_zero(tmp_path):
    # the encoder restarts: a new playlist whose media sequence starts at 0 again, and a clock
    # back at 0 showing other pictures (the source 20 s on). Its first seconds are not taken for
    # a replay of what was read before the restart (that dropped its first ~10 s of picture)
    video = make_video(tmp_path / "cam.ts", duration_s=40, fps=FPS, gop=FPS)

    def publish(procs, name, www, *seek):
        procs.start(name, [
            ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-re", *seek, "-i", str(video),
            "-map", "0:v", "-c", "copy", "-muxdelay", "0", "-muxpreload", "0", "-f", "hls", "-hls_time", "1",
            "-hls_list_size", "6", "-hls_flags", "delete_segments+temp_file",
            "-hls_segment_filename", str(www / f"{name}%05d.ts"), str(www / "live.m3u8")])  # fmt: skip

    with _workspace("hls-restart-") as (tmp, procs):
        www = tmp / "www"
        www.mkdir()
        url = f"{_serve_http(procs, www, 30.0)}/live.m3u8"
        publish(procs, "first", www)
        procs.wait_for("playlist", lambda: (www / "live.m3u8").exists() and
                       (www / "live.m3u8").read_text().count("#EXTINF") >= 2, 30.0)
        reader = SourceReader(parse_source(url), ReaderOptions(**(OPTIONS | {"give_up_after_s": 10.0})))
        reader.open()
        items, restarted = [], []

        def restart() -> None:
            publish(procs, "second", www, "-ss", "20")  # pts from 0 again, frame 500 on

        for item in reader.samples():
            items.append(item)
            frames = [i for i in items if isinstance(i, SampledFrame)]
            if len(frames) == 12 and not restarted:
                _, first = procs.procs.pop(1)
                first.kill()
                first.wait()
                (www / "live.m3u8").unlink()
                restarted.append(threading.Timer(1.0, restart))
                restarted[0].start()
            gap_at = next((n for n, i in enumerate(items) if isinstance(i, Gap)), None)
            if gap_at is not None and sum(isinstance(i, SampledFrame) for i in items[gap_at:]) >= 8:
                break
        reader.close()
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1 and gaps[0].end_s is not None, gaps
    gap = gaps[0]
    assert gap.reason.endswith(" s") and "came back with its clock restarted at" in gap.reason, gap.reason
    before = [i for i in items[:items.index(gap)] if isinstance(i, SampledFrame)]
    after = [i for i in items[items.index(gap) + 1:] if isinstance(i, SampledFrame)]
    assert all(read_frame_number(f.image) == round(f.pts_s * FPS) for f in before)
    numbers = [read_frame_number(f.image) for f in after]
    assert all(n >= 500 for n in numbers)  # the restarted source's pictures ...
    assert numbers[0] - 500 < 4 * FPS      # ... from its first segments on, not from where the old clock was
    assert all(abs(f.pts_s - (after[0].pts_s + (n - numbers[0]) / FPS)) < 1e-3 for f, n in zip(after, numbers))
    assert gap.end_s - gap.start_s >= gap.wall_end - gap.wall_start - 0.5  # time went on by the outage
    indices = [f.index for f in before + after]
    assert indices == [*range(before[0].index, before[-1].index + 1), *range(after[0].index, after[-1].index + 1)]
