import pytest

from indexer.media.sampling import MPEG_TS_WRAP_S, MediaClock, PtsSampler


def run(sampler, times, end=None):
    out = []
    for t in times:
        out += sampler.push(t, t)
    out += sampler.flush(end)
    return [(s.index, s.time_s) for s in out]


def test_constant_rate_picks_the_frame_on_screen_at_each_grid_point():
    times = [i / 25 for i in range(250)]
    samples = run(PtsSampler(1.0), times, end=10.0)
    assert [i for i, _ in samples] == list(range(10))
    assert all(abs(t - i) < 1e-9 for i, t in samples)


def test_variable_frame_rate_holds_a_still_frame_for_every_grid_point_it_covers():
    samples = run(PtsSampler(1.0), [0.0, 0.5, 3.2, 3.3, 7.9], end=9.0)
    assert samples == [(0, 0.0), (1, 0.5), (2, 0.5), (3, 0.5), (4, 3.3), (5, 3.3), (6, 3.3), (7, 3.3), (8, 7.9)]


def test_a_stream_starting_slightly_late_still_samples_time_zero_and_a_late_one_does_not():
    assert run(PtsSampler(1.0), [0.04, 0.08, 1.2], end=1.5)[0] == (0, 0.04)
    assert run(PtsSampler(1.0), [5.7, 6.1], end=6.5) == [(6, 5.7)]


def test_resume_starts_at_the_given_index_and_skips_earlier_frames():
    samples = run(PtsSampler(2.0, start_index=6), [i / 10 for i in range(20, 50)], end=5.0)
    assert samples[0] == (6, 3.0) and [i for i, _ in samples] == list(range(6, 10))


def test_restart_after_a_gap_does_not_repeat_the_stale_frame():
    sampler = PtsSampler(1.0)
    out = sampler.push(0.0, "a") + sampler.push(1.0, "b")
    sampler.restart_at(30.0)
    out += sampler.push(30.0, "c") + sampler.flush(31.0)
    assert [(s.index, s.item) for s in out] == [(0, "a"), (30, "c")]


def test_fps_must_be_positive():
    with pytest.raises(ValueError, match="fps"):
        PtsSampler(0)


def test_clock_unwraps_mpeg_ts_timestamps():
    clock = MediaClock(live=True)
    t1, _ = clock(MPEG_TS_WRAP_S - 0.02)
    t2, jump = clock(0.02)
    assert jump is None and t2 - t1 == pytest.approx(0.04)


def test_clock_turns_a_backward_jump_into_a_reported_discontinuity():
    clock = MediaClock(live=False, discontinuous=True)  # an MPEG-TS file
    for i in range(10):
        clock(100 + i * 0.04)
    t, jump = clock(5.0)
    assert jump == pytest.approx(5.0 - 100.36) and t == pytest.approx(100.36 + 0.04)
    assert clock(5.04)[0] == pytest.approx(100.44) and clock.jumps == 1


def test_a_forward_jump_in_mpeg_ts_keeps_the_streams_time_and_is_reported():
    clock = MediaClock(live=False, max_jump_s=60, discontinuous=True)
    clock(5.96)
    assert clock(990.0) == (990.0, pytest.approx(984.04))
    assert clock(990.04) == (990.04, None)


def test_in_an_indexed_file_time_is_the_index_and_a_frame_out_of_order_is_dropped():
    clock = MediaClock(live=False)  # MP4, Matroska: no discontinuities
    clock(2.76)
    assert clock(4.76) == (4.76, None)   # a forward step is held picture, not a jump
    assert clock(2.80) == (None, None)   # decoded out of order after damage: dropped
    assert clock(990.0) == (990.0, None) and clock.jumps == 0


def test_cut_ends_the_held_frame_at_its_own_end():
    sampler = PtsSampler(1.0)
    out = sampler.push(0.0, "a") + sampler.push(2.76, "b")
    out += sampler.cut(2.80)            # damage after b: b stands only until its end
    sampler.restart_at(5.0)
    out += sampler.push(5.0, "c") + sampler.flush(6.0)
    assert [(s.index, s.item) for s in out] == [(0, "a"), (1, "a"), (2, "a"), (5, "c")]


def test_clock_drops_replayed_frames_after_a_reconnect_and_continues_after_them():
    clock = MediaClock(live=True)
    for i in range(50):
        clock(i * 0.1)
    clock.reconnected(continuous=True)
    assert clock(2.0) == (None, None)  # the HLS playlist starts a few segments back
    assert clock(4.9) == (None, None)
    assert clock(5.0) == (5.0, None)


def test_live_forward_jump_beyond_the_limit_is_a_discontinuity():
    clock = MediaClock(live=True, max_jump_s=60)
    clock(10.0)
    t, jump = clock(500.0)
    assert jump == pytest.approx(490.0) and t == pytest.approx(500.0)  # the grid points in the jump get no frame


def test_a_session_clock_restarting_at_zero_continues_after_the_outage():
    clock = MediaClock(live=True)
    for i in range(50):
        clock(i * 0.1)
    clock.reconnected(continuous=False, elapsed_s=3.0)
    t, _ = clock(0.0)
    assert t == pytest.approx(4.9 + 3.0)
    assert clock(0.5)[0] == pytest.approx(8.4)
