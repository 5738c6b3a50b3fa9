"""A live source's recording (index.retention): a reader records a live HLS stream made by ffmpeg
into INDEX/recordings/<stream>/ under a byte limit; the oldest segments go, the newest stay;
`Recording.frames_at` gives back the very pictures the reader sampled; clips and the HTTP media
route read the same recording. Every frame shows its number (tests/mediagen.py)."""

import itertools
import re
import shutil
from dataclasses import dataclass

import av
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from indexer.batches import SampledFrame
from indexer.media import SourceReader, parse_source
from indexer.media.clips import cut_clip
from indexer.media.recording import Recording, RecordingUnavailable
from indexer.media.ring import RingSegment, SegmentRing, ring_segments
from indexer.server import create_app
from indexer.settings import ReaderOptions
from indexer.store.root import IndexRoot
from tests.mediagen import read_frame_number
from tests.server.fakes import FakeEngine, entry
from tests.server.live import LOCAL
from tests.streams import hls_live, rtsp_server

FPS, SEGMENT_S = 25, 1.0
KEEP_BYTES = 120_000
OPTIONS = ReaderOptions(fps=2.0, read_timeout_s=2.0, open_timeout_s=10.0, give_up_after_s=2.0,
                        reconnect_initial_s=0.2, short_side=120)


@dataclass
class Recorded:
    root: IndexRoot
    frames: list[SampledFrame]        # what the reader sampled (the pictures ingestion encodes)
    segments: list[RingSegment]       # the recording when the reader stopped
    highest_seq: int                  # the newest segment ever written


def record(root: IndexRoot, url: str, ring: SegmentRing, until_s: float) -> Recorded:
    frames = []
    reader = SourceReader(parse_source(url), OPTIONS, ring=ring)
    reader.open()
    for item in reader.samples():
        if isinstance(item, SampledFrame):
            frames.append(item)
            if item.pts_s >= until_s:
                break
    reader.close()
    return Recorded(root, frames, ring_segments(ring.directory), ring._next_seq - 1)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Recorded:
    """An HLS stream recorded under a byte limit."""
    root = IndexRoot.at(tmp_path_factory.mktemp("index"))
    ring = SegmentRing(root.recording_dir("cam"), keep_s=None, segment_s=SEGMENT_S, keep_bytes=KEEP_BYTES)
    with hls_live(duration_s=20, fps=FPS, hls_time=1) as (url, _):
        return record(root, url, ring, 14.0)


def test_retention_by_bytes_deletes_the_oldest_segments_and_keeps_the_newest(recorded):
    segments = recorded.segments
    seqs = [int(s.path.stem) for s in segments]
    assert seqs[-1] == recorded.highest_seq and seqs == list(range(seqs[0], seqs[-1] + 1))  # the newest, contiguous
    assert seqs[0] > 1  # older segments were deleted...
    assert len(segments) >= 2 and sum(s.bytes for s in segments) <= KEEP_BYTES  # ...down to the byte limit
    assert all(s.bytes == s.path.stat().st_size for s in segments)
    on_disk = sorted(p.name for p in segments[0].path.parent.iterdir())
    assert on_disk == sorted(f"{seq:08d}{suffix}" for seq in seqs for suffix in (".json", ".ts"))  # no leftovers
    assert segments[-1].media_end_s >= recorded.frames[-1].pts_s


def test_frames_at_gives_back_the_pictures_the_reader_sampled(recorded):
    start = recorded.segments[0].media_start_s
    held = [f for f in recorded.frames if f.pts_s >= start]
    assert len(held) >= 3
    order = [*reversed(held[1:]), held[0], held[-1]]  # any order, repeats allowed
    images = Recording(recorded.root, "cam", short_side=OPTIONS.short_side).frames_at([f.pts_s for f in order])
    for frame, image in zip(order, images, strict=True):
        assert image.dtype == np.uint8 and image.shape == frame.image.shape
        assert np.array_equal(image, frame.image)  # the same packets decoded again: the same pixels
        assert read_frame_number(image) == round(frame.pts_s * FPS)


def test_an_rtsp_camera_recorded_for_keep_s_gives_back_its_sampled_pictures(tmp_path):
    root = IndexRoot.at(tmp_path / "index")
    ring = SegmentRing(root.recording_dir("cam"), keep_s=4.0, segment_s=SEGMENT_S)
    with rtsp_server(duration_s=20, fps=FPS) as url:
        recorded = record(root, url, ring, 10.0)
    segments = recorded.segments
    assert int(segments[0].path.stem) > 1 and segments[-1].media_end_s >= recorded.frames[-1].pts_s
    assert segments[-1].media_end_s - segments[0].media_start_s <= 4.0 + SEGMENT_S + 0.1  # keep_s and a segment
    held = [f for f in recorded.frames if f.pts_s >= segments[0].media_start_s]
    assert len(held) >= 4
    images = Recording(root, "cam", short_side=OPTIONS.short_side).frames_at([f.pts_s for f in held])
    assert all(np.array_equal(image, f.image) for image, f in zip(images, held, strict=True))
    with pytest.raises(RecordingUnavailable, match="stream cam: "):
        Recording(root, "cam").frames_at([recorded.frames[0].pts_s])


def test_a_time_the_recording_no_longer_holds_names_the_stream_and_what_it_holds(recorded):
    recording = Recording(recorded.root, "cam")
    (a, b), = recording.held()
    assert a == pytest.approx(recorded.segments[0].media_start_s)
    assert b == pytest.approx(recorded.segments[-1].media_end_s)
    gone = recorded.frames[0].pts_s
    assert gone < a
    with pytest.raises(RecordingUnavailable, match=rf"stream cam: .*holds {a:.3f}\.\.{b:.3f} s; {gone:.3f} s is not"):
        recording.frames_at([gone])
    with pytest.raises(RecordingUnavailable, match="stream other: .*holds nothing"):
        Recording(recorded.root, "other").frames_at([1.0])


def test_a_clip_is_cut_from_the_recording(recorded, tmp_path):
    a, b = recorded.segments[0].media_start_s, recorded.segments[-1].media_end_s
    clip = cut_clip(tmp_path / "clip.mp4", a + 0.5, b - 0.5, recording_dir=recorded.root.recording_dir("cam"))
    with av.open(str(clip.path)) as container:
        numbers = [read_frame_number(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # every frame once, in order
    assert (a + 0.5 - SEGMENT_S) * FPS - 1 <= numbers[0] <= (a + 0.5) * FPS + 1 and clip.covered and not clip.reencoded


def test_the_media_route_plays_a_live_streams_recording(recorded, tmp_path):
    root = IndexRoot.at(tmp_path / "index")
    shutil.copytree(recorded.root.recording_dir("cam"), root.recording_dir("cam"))
    engine = FakeEngine([entry("cam", "http://127.0.0.1:1/live.m3u8", "hls", live=True),
                         entry("dark", "rtsp://127.0.0.1:1/dark", "rtsp", live=True)], root=root.path)
    a, b = recorded.segments[0].media_start_s, recorded.segments[-1].media_end_s
    with TestClient(create_app(engine), base_url=LOCAL) as client:
        streams = {s["stream_id"]: s for s in client.get("/api/streams").json()["streams"]}
        assert streams["cam"]["media"] and not streams["dark"]["media"]  # "dark" has no recording
        start = a + 1.2
        response = client.get(f"/api/streams/cam/media?start_s={start}")
        assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
        first_s = float(response.headers["x-media-start-s"])
        assert start - SEGMENT_S - 0.05 <= first_s <= start + 1e-3  # from the keyframe at or before it
        (tmp_path / "played.mp4").write_bytes(response.content)
        with av.open(str(tmp_path / "played.mp4")) as container:
            frames = list(container.decode(video=0))
        numbers = [read_frame_number(f.to_ndarray(format="rgb24")) for f in frames]
        assert numbers[0] == round(first_s * FPS) and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert all(y > x for x, y in itertools.pairwise(f.time for f in frames))
        assert numbers[-1] == round(b * FPS) - 1  # to the newest frame held (less than LIVE_MEDIA_S of it)
        assert client.get("/api/streams/cam/media").status_code == 200  # default: the last seconds held
        past = client.get(f"/api/streams/cam/media?start_s={b + 5}")
        assert past.status_code == 400 and re.search(r"past its recording, which holds", past.json()["detail"])
        missing = client.get("/api/streams/dark/media")
        assert missing.status_code == 404 and "no recording" in missing.json()["detail"]


@pytest.mark.timeout(180)
def test_the_page_plays_a_live_streams_recording_in_a_browser(recorded, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.server.test_page import WAIT_S, chrome, serving

    root = IndexRoot.at(tmp_path / "index")
    shutil.copytree(recorded.root.recording_dir("cam"), root.recording_dir("cam"))
    engine = FakeEngine([entry("cam", "http://127.0.0.1:1/live.m3u8", "hls", live=True)], root=root.path)
    start = recorded.segments[0].media_start_s + 1.5
    driver = chrome()
    try:
        with serving(create_app(engine), driver) as url:
            driver.get(url + "/")
            wait = WebDriverWait(driver, WAIT_S)
            wait.until(lambda d: d.execute_script("return state.streams.get('cam')?.media === true"))
            driver.execute_script("play('cam', arguments[0])", start)  # what clicking a cited moment of cam does
            state = wait.until(lambda d: d.execute_script(
                "const v = document.getElementById('player');"
                "if (v.error) return {error: v.error.code};"
                "return v.readyState >= 2 && v.currentTime > 0 ? {time: v.currentTime, src: v.src} : null;"))
            assert "error" not in state, f"the browser could not play the recording (MediaError {state})"
            assert f"/api/streams/cam/media?start_s={start}" in state["src"]
    finally:
        driver.quit()


@pytest.mark.parametrize(("saved", "recording_s", "records"), [(30.0, 30.0, True), (0.0, 0.0, False)])
def test_settings_saved_with_the_old_clip_ring_keep_its_length_as_the_recordings(tmp_path, saved, recording_s, records):
    from indexer.settings import Settings, load_settings

    old = Settings.model_validate({"model": {"model_dir": "m"}}).model_dump(mode="json")
    del old["index"]["retention"]
    old["monitor"] |= {"ring_s": saved, "ring_segment_s": 1.0}  # as an index's ingest-config.yaml held them
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    retention = load_settings(tmp_path / "old.yaml").index.retention
    assert (retention.recording_s, retention.recording_segment_s, retention.records) == (recording_s, 1.0, records)
    old["index"]["retention"] = {"recording_s": 600.0}  # given: it wins over the old name
    assert Settings.model_validate(old).index.retention.recording_s == 600.0
    assert Settings.model_validate({"model": {"model_dir": "m"}}).index.retention.recording_s == 120.0  # as the ring
