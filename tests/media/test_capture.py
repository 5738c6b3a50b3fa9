"""Live captures: samples kept in order (spilled to disk beyond the memory limit), taken from a
child process exactly as a `SourceReader` yields them."""

import numpy as np

from indexer.batches import Gap, SampledFrame
from indexer.media.capture import SpillQueue
from indexer.media.capture_process import CaptureProcess, CaptureRequest, RingSettings
from indexer.media.ring import ring_segments
from indexer.media.source import parse_source
from indexer.settings import ReaderOptions
from tests.mediagen import make_video, read_frame_number
from tests.streams import hls_live

FPS = 25


def _frame(index: int) -> SampledFrame:
    return SampledFrame(index, float(index), None, np.full((4, 6, 3), index, np.uint8))


def test_spill_queue_keeps_order_and_puts_what_is_beyond_memory_on_disk(tmp_path):
    queue = SpillQueue(memory_frames=3, spill_parent=tmp_path)
    for i in range(5):
        queue.put(_frame(i))
    queue.put(Gap(4.0, 6.0, "connection lost", index=6))
    queue.put(_frame(6))
    queue.close()
    assert queue.spilled_frames == 3 and len(list(tmp_path.rglob("*.npy"))) == 3
    taken = queue.take(4, 0.0) + queue.take(10, 0.0)
    assert [type(x).__name__ for x in taken] == ["SampledFrame"] * 5 + ["Gap", "SampledFrame"]
    assert [x.index for x in taken] == [0, 1, 2, 3, 4, 6, 6]
    for x in taken:
        if isinstance(x, SampledFrame):
            assert x.image.shape == (4, 6, 3) and (x.image == x.index).all()
    assert queue.drained and not list(tmp_path.rglob("*.npy"))
    queue.discard()
    assert not any(tmp_path.iterdir())


def test_capture_process_samples_a_live_stream_and_lets_a_file_be(tmp_path):
    options = ReaderOptions(fps=2.0, read_timeout_s=2.0, give_up_after_s=1.0, reconnect_initial_s=0.2)
    clip = make_video(tmp_path / "clip.mp4", duration_s=3, fps=FPS, codec="libx264")
    with hls_live(duration_s=8, fps=FPS) as (url, _):
        live, archived = parse_source(str(url), "live"), parse_source(str(clip), "clip")
        ring = RingSettings(str(tmp_path / "ring"), keep_s=30.0, segment_s=1.0)
        process = CaptureProcess([CaptureRequest(live, options, start_index=3, ring=ring),
                                  CaptureRequest(archived, options)])
        try:
            capture = process.captures["live"]
            assert capture.wait_opened().live
            assert not process.captures["clip"].wait_opened().live   # closed once opened: its reader reads it
            items = []
            while not capture.finished:
                items += capture.take(16, 0.1)
            assert process.captures["clip"].take(16, 0.0) == [] and process.captures["clip"].finished
        finally:
            process.close()
    frames = [x for x in items if isinstance(x, SampledFrame)]
    indices = [f.index for f in frames]
    assert indices[0] >= 3 and indices == list(range(indices[0], indices[0] + len(indices)))  # once per sample time
    assert len(frames) >= 6
    for f in frames:  # the stream's own clock: the frame on screen at each sample time
        assert 0 <= f.index / options.fps - f.pts_s < 1 / FPS + 1e-6
        assert read_frame_number(f.image) == round(f.pts_s * FPS)
        assert f.wall_time is not None
    assert isinstance(items[-1], Gap) and items[-1].end_s is None  # the stream ended: "gave up"
    assert ring_segments(tmp_path / "ring")  # the recent segments are kept for alert clips
