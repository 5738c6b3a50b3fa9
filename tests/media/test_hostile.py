"""The reader on hostile input made by ffmpeg: splices and clock resets in MPEG-TS and HLS,
damage at several offsets, files cut short, a codec and a resolution change, a stretch of audio
only. Each case asserts the exact rows: (sample index, pts, the frame number the picture shows)
for frames, (start, end, reason) for gaps, and the warnings that name what could not be read."""

import re

import pytest

from indexer.batches import Gap, SampledFrame
from indexer.media import SourceError, SourceReader, parse_source
from indexer.settings import ReaderOptions
from tests.mediagen import (
    damaged_span,
    ffprobe,
    make_audio_gap_video,
    make_codec_change_ts,
    make_damaged,
    make_hls_vod,
    make_resolution_change_ts,
    make_spliced_ts,
    make_ts_with_lost_packets,
    make_truncated,
    make_video,
    read_frame_number,
)
from tests.streams import http_files

FPS = 25  # the videos' rate; sampled at 1 per second, so sample k shows frame 25 k when intact


def read_rows(uri, **options):
    reader = SourceReader(parse_source(str(uri)), ReaderOptions(**({"fps": 1.0, "keyframes_only": "never"} | options)))
    reader.open()
    rows = []
    for item in reader.samples():
        if isinstance(item, SampledFrame):
            rows.append((item.index, round(item.pts_s, 3), read_frame_number(item.image)))
        else:
            assert isinstance(item, Gap)
            rows.append((round(item.start_s, 3), None if item.end_s is None else round(item.end_s, 3), item.reason))
    return reader, rows


def frames(indices, pts_of=float, number_of=lambda k: FPS * k):
    return [(k, round(pts_of(k), 3), number_of(k)) for k in indices]


@pytest.mark.parametrize("keyframes_only", ["never", "always"])
def test_a_forward_splice_in_mpeg_ts_is_a_gap_not_copies_of_a_frame(tmp_path, keyframes_only):
    # the broadcast case: pts jump 984 s ahead at 6 s; before, the jump was filled with ~1,000 rows
    path = make_spliced_ts(tmp_path / "spliced.ts", resume_pts_s=990.0)
    reader, rows = read_rows(path, keyframes_only=keyframes_only)
    gap = (5.96, 990.0, "timestamp discontinuity of +984.040 s (forward: a new segment of the timeline)")
    if keyframes_only == "always":  # the last frame decoded before the splice is its last keyframe
        gap = (5.0, 990.0, "timestamp discontinuity of +985.000 s (forward: a new segment of the timeline)")
    assert rows == [*frames(range(6)), gap,
                    *frames(range(990, 996), number_of=lambda k: FPS * (k - 984))]
    assert reader.info.warnings == []


def test_a_clock_reset_in_mpeg_ts_continues_the_timeline_after_a_gap(tmp_path):
    path = make_spliced_ts(tmp_path / "reset.ts", resume_pts_s=0.0)
    # every frame decoded: the new segment starts one frame after the last one shown (decoding
    # keyframes only, it starts one frame after the last keyframe)
    reader, rows = read_rows(path, keyframes_only="never")
    assert rows == [*frames(range(6)),
                    (5.96, 6.0, "timestamp discontinuity of -5.960 s (backward: a new segment of the timeline)"),
                    *frames(range(6, 12))]
    assert reader.info.warnings == []


@pytest.mark.parametrize("resume_pts_s,gap,after", [
    (990.0, (5.96, 990.0, "timestamp discontinuity of +984.040 s (forward: a new segment of the timeline)"),
     frames(range(990, 996), number_of=lambda k: FPS * (k - 984))),
    (0.0, (5.96, 6.0, "timestamp discontinuity of -5.960 s (backward: a new segment of the timeline)"),
     frames(range(6, 12))),
])
def test_hls_ext_x_discontinuity_both_ways(tmp_path, resume_pts_s, gap, after):
    make_hls_vod(tmp_path / "www", resume_pts_s=resume_pts_s)
    with http_files(tmp_path / "www") as base:
        reader, rows = read_rows(f"{base}/vod.m3u8", keyframes_only="never")
    assert not reader.info.live
    assert rows == [*frames(range(6)), gap, *after]


def test_a_finished_hls_playlist_that_starts_late_keeps_the_streams_own_clock(tmp_path):
    """As a live playlist is read (it ends with #EXT-X-ENDLIST, and a rerun then reads it finished):
    the first frame at 10 s is sample 10 at pts 10.0, not sample 0 (before: counted from 0)."""
    make_hls_vod(tmp_path / "www", splice_s=None, first_pts_s=10.0)
    with http_files(tmp_path / "www") as base:
        reader, rows = read_rows(f"{base}/vod.m3u8")
    assert not reader.info.live
    assert rows == frames(range(10, 22), number_of=lambda k: FPS * (k - 10))
    assert reader.info.warnings == []   # its declared end is on the same clock: not "ends early"


def test_a_finished_hls_playlist_that_starts_late_resumes_on_its_own_clock(tmp_path):
    make_hls_vod(tmp_path / "www", splice_s=None, first_pts_s=10.0)
    with http_files(tmp_path / "www") as base:
        reader = SourceReader(parse_source(f"{base}/vod.m3u8"), ReaderOptions(fps=1.0, keyframes_only="never"),
                              start_index=15)
        rows = [(item.index, round(item.pts_s, 3), read_frame_number(item.image)) for item in reader.samples()]
    assert rows == frames(range(15, 22), number_of=lambda k: FPS * (k - 10))


@pytest.mark.parametrize("frame,lost,gap", [
    # a keyframe's first transport packet: before, sample 6 silently showed frame 149 (5.96 s)
    (150, 1, (5.88, 7.0, "undecodable: 1 damaged packet skipped")),
    # a P-frame's first two: before, no word at all (the sample times around it came out right)
    (160, 2, (6.28, 7.0, "undecodable: 1 damaged packet skipped")),
], ids=["keyframe", "p-frame"])
def test_mpeg_ts_packets_lost_in_transport_are_a_gap_and_a_warning(tmp_path, frame, lost, gap):
    """FFmpeg flags the packet the loss damaged (continuity counter error, PES size mismatch) and
    decodes on without an error: the pictures from there to the next keyframe are skipped and
    told, as for any damaged stretch."""
    path = make_ts_with_lost_packets(tmp_path / "lossy.ts", frame=frame, lost=lost, from_start=True)
    reader, rows = read_rows(path)
    assert rows == [*frames(k for k in range(12) if k < gap[0]), gap, *frames(range(7, 12))]
    assert reader.info.warnings == [f"undecodable {gap[0]:.3f}-{gap[1]:.3f} s skipped (1 damaged packet)"]
    assert any("damaged in transport" in e for e in reader.info.errors), reader.info.errors


def _damage_rows(src, start, end):
    """What a damaged H.264 file without B-frames must give: the frames before the first damaged
    packet, a gap from the last of them to the next keyframe after the damage, the frames from it
    on (the damaged packet's own frame, decoded with concealment, is flagged corrupt: dropped)."""
    first_bad, keyframe = damaged_span(src, start, end)
    last_good = round(first_bad - 1 / FPS, 3)
    return last_good, keyframe, [*frames(k for k in range(12) if k < first_bad),
                                 (last_good, keyframe, "undecodable: {n} damaged packets skipped"),
                                 *frames(k for k in range(12) if k >= keyframe)]


@pytest.mark.parametrize("at", [0.3, 0.5, 0.8])
def test_damage_at_several_offsets_is_one_gap_and_a_warning_never_a_held_or_shifted_frame(tmp_path, at):
    src = make_video(tmp_path / "src.mp4", duration_s=12, fps=FPS, gop=FPS, extra_args=["-bf", "0", "-movflags",
                                                                                        "+faststart"])
    start, end = make_damaged(src, tmp_path / "damaged.mp4", at)
    last_good, keyframe, expected = _damage_rows(src, start, end)
    reader, rows = read_rows(tmp_path / "damaged.mp4")
    gap = next((r for r in rows if isinstance(r[0], float)), None)
    count = re.fullmatch(r"undecodable: (\d+) damaged packets skipped", gap[2])
    assert count, gap
    n = int(count.group(1))
    assert rows == [r if r[2] != "undecodable: {n} damaged packets skipped" else (last_good, keyframe, gap[2])
                    for r in expected]
    assert reader.info.warnings == [f"undecodable {last_good:.3f}-{keyframe:.3f} s skipped ({n} damaged packets)"]


def test_decoding_keyframes_only_a_lost_keyframe_is_a_gap_not_a_held_frame(tmp_path):
    src = make_video(tmp_path / "src.mp4", duration_s=12, fps=FPS, gop=FPS, extra_args=["-bf", "0", "-movflags",
                                                                                        "+faststart"])
    start, end = make_damaged(src, tmp_path / "damaged.mp4", 0.8)
    first_bad, keyframe = damaged_span(src, start, end)  # the keyframe at 10 s is damaged
    lost = 10.0
    assert first_bad < lost < keyframe == 11.0
    reader, rows = read_rows(tmp_path / "damaged.mp4", keyframes_only="auto")
    assert reader.info.keyframes_only
    assert rows == [*frames(range(10)), (9.0, 11.0, "no keyframe for 2.000 s (decoding keyframes only)"),
                    *frames([11])]
    assert reader.info.warnings == ["no keyframe 9.000-11.000 s (decoding keyframes only)"]


@pytest.mark.parametrize("at", [0.3, 0.5, 0.8])
def test_damaged_mpeg_ts_gives_each_sample_time_once_and_only_true_pictures(tmp_path, at):
    # the MPEG-TS demuxer drops what it cannot parse without a word; what must hold is that no
    # sample time comes twice, no picture stands at a time it was not shown, nothing past the end
    src = make_video(tmp_path / "src.ts", duration_s=12, fps=FPS, gop=FPS)
    make_damaged(src, tmp_path / "damaged.ts", at)
    reader, rows = read_rows(tmp_path / "damaged.ts")
    sampled = [r for r in rows if r[1] is not None and isinstance(r[0], int)]
    indices = [r[0] for r in sampled]
    assert indices == sorted(set(indices)) and indices[-1] == 11
    assert all(number == round(pts * FPS) and k - 1 < pts <= k for k, pts, number in sampled)
    gaps = [r for r in rows if r not in sampled]
    assert len(gaps) == len(reader.info.warnings) <= 1


def test_damaged_matroska_drops_the_concealed_frame_and_says_so(tmp_path):
    # the Matroska demuxer skips what it cannot parse without an error; the decoder conceals the
    # damaged frame from an earlier picture (flagged corrupt): it must not be sampled, let alone
    # held over the sample times of the skipped stretch
    src = make_video(tmp_path / "src.mkv", duration_s=12, fps=FPS, gop=FPS, extra_args=["-bf", "0"])
    start, end = make_damaged(src, tmp_path / "damaged.mkv", 0.5)
    first_bad, keyframe = damaged_span(src, start, end)
    last_good = round(first_bad - 1 / FPS, 3)
    reader, rows = read_rows(tmp_path / "damaged.mkv")
    assert rows == [*frames(k for k in range(12) if k < first_bad),
                    (last_good, keyframe, "undecodable: 1 damaged packet skipped"),
                    *frames(k for k in range(12) if k >= keyframe)]
    assert reader.info.warnings == [f"undecodable {last_good:.3f}-{keyframe:.3f} s skipped (1 damaged packet)"]


def _last_whole_frame_s(src, keep_bytes):
    """The pts of the last frame whose packet lies wholly in the first `keep_bytes` of `src`."""
    packets = ffprobe(src, "-select_streams", "v:0", "-show_entries", "packet=pts_time,pos,size")["packets"]
    return max(float(p["pts_time"]) for p in packets if int(p["pos"]) + int(p["size"]) <= keep_bytes)


@pytest.mark.parametrize("name,extra,keyframes_only", [
    ("faststart.mp4", ["-bf", "0", "-movflags", "+faststart"], "never"),
    ("cut.mkv", ["-bf", "0"], "never"),
    ("cut.mkv", ["-bf", "0"], "auto"),  # (the MP4 demuxer also gives the cut packet: read to its time)
])
def test_a_file_cut_short_keeps_what_decodes_and_says_what_it_read(tmp_path, name, extra, keyframes_only):
    src = make_video(tmp_path / f"src-{name}", duration_s=12, fps=FPS, gop=FPS, extra_args=extra)
    path = make_truncated(src, tmp_path / name, keep_fraction=0.5)
    read_end = _last_whole_frame_s(src, path.stat().st_size) + 1 / FPS
    reader, rows = read_rows(path, keyframes_only=keyframes_only)
    assert reader.info.keyframes_only == (keyframes_only == "auto")  # 1 s GOPs: keyframes are enough
    assert rows == frames(k for k in range(12) if k < read_end)  # nothing held to the declared 12 s
    assert reader.info.warnings == [f"ends early: read 0.000-{read_end:.3f} s of 12.000 s"]


def test_an_mp4_cut_short_with_its_index_at_the_end_cannot_be_opened_and_says_so(tmp_path):
    path = make_truncated(make_video(tmp_path / "src.mp4", duration_s=12, fps=FPS), tmp_path / "cut.mp4", 0.5)
    with pytest.raises(SourceError, match="cannot open") as info:
        read_rows(path)
    assert str(path) in str(info.value)


def test_a_resolution_change_mid_stream(tmp_path):
    path = make_resolution_change_ts(tmp_path / "res.ts", sizes=((320, 240), (640, 360)))
    reader = SourceReader(parse_source(str(path)), ReaderOptions(fps=1.0))
    reader.open()
    items = list(reader.samples())
    assert [(f.index, round(f.pts_s, 3), read_frame_number(f.image)) for f in items] == frames(range(12))
    assert [f.image.shape for f in items] == [(224, 298, 3)] * 6 + [(224, 398, 3)] * 6
    assert reader.info.warnings == []


@pytest.mark.parametrize("keyframes_only", ["never", "always"])
def test_a_codec_change_mid_stream_is_followed(tmp_path, keyframes_only):
    path = make_codec_change_ts(tmp_path / "codec.ts")  # H.264, then MPEG-2 video on another PID
    reader, rows = read_rows(path, keyframes_only=keyframes_only)
    assert rows == frames(range(12))
    assert reader.info.codec == "mpeg2video" and reader.info.warnings == []


def test_a_stretch_of_audio_only_holds_the_last_picture_up_to_max_hold_s(tmp_path):
    path = make_audio_gap_video(tmp_path / "hole.mp4", hole=(4.0, 8.0))  # no video 4-8 s, sound throughout
    _, rows = read_rows(path)  # the default bound (10 s) covers the stall: the picture on screen
    assert rows == [*frames(range(4)), *[(k, 3.96, 99) for k in range(4, 8)], *frames(range(8, 12))]
    _, rows = read_rows(path, max_hold_s=1.0)
    assert rows == [*frames(range(4)), (4, 3.96, 99),
                    (3.96, 8.0, "no picture for 4.040 s (held 1 s: reader.max_hold_s)"), *frames(range(8, 12))]
