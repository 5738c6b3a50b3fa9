"""A real index made once per test session: two ffmpeg-made videos ingested on Ray with the tiny
random models, for the query and server tests.

    def test_something(tiny_index):
        root, settings, videos = tiny_index          # or tiny_index.root, .settings, .videos
        engine = QueryEngine.open(IndexRoot.at(root))              # the index's own ingest-config.yaml

The videos (both H.264 in MP4 with the index at the front, so a browser can seek in them):

| stream | file  | length | frames                                                           |
|--------|-------|--------|------------------------------------------------------------------|
| `a`    | a.mp4 | 8 s    | frame n shows its number n (`tests.mediagen.read_frame_number`)   |
| `b`    | b.mp4 | 8 s    | the same, except 3.0 s <= pts < 5.0 s shows `planted_image()`     |

Sampling is 1 frame a second, so each stream has 8 frames at pts 0, 1, ..., 7; stream `b`'s
frames at 3 s and 4 s are the planted shot (a thumbnail there has no frame number to read).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from indexer.settings import Settings
from indexer.store.root import IndexRoot
from tests.mediagen import ffmpeg_bin, frame_pattern

FPS = 25                  # source frame rate
SAMPLE_FPS = 1.0          # reader.fps: one sampled frame a second
SIZE = (160, 120)         # width, height
PLANTED_WINDOW_S = (3.0, 5.0)


@dataclass(frozen=True)
class TinyVideo:
    stream_id: str
    path: Path
    duration_s: float
    fps: int                                         # source frame rate
    planted_s: tuple[float, float] | None = None     # [start, end) showing planted_image()

    def shows_planted(self, pts_s: float) -> bool:
        return self.planted_s is not None and self.planted_s[0] <= pts_s < self.planted_s[1]


class TinyIndex(NamedTuple):
    root: Path
    settings: Settings
    videos: dict[str, TinyVideo]

    @property
    def sample_interval_s(self) -> float:
        return 1.0 / self.settings.reader.fps


def planted_image(width: int = SIZE[0], height: int = SIZE[1]) -> np.ndarray:
    """uint8 RGB [height, width, 3]: an orange field with a big blue disc, unlike any frame-number
    pattern (those are black and white blocks)."""
    ys, xs = np.mgrid[0:height, 0:width]
    disc = (xs - width / 2) ** 2 + (ys - height / 2) ** 2 < (0.35 * height) ** 2
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (240, 140, 20)
    image[disc] = (20, 60, 230)
    return image


def make_planted_video(path: Path, duration_s: float, planted_s: tuple[float, float] | None,
                       fps: int = FPS, size: tuple[int, int] = SIZE) -> Path:
    """H.264/MP4 (+faststart) whose frame n (pts n / fps) shows pattern n, or the planted image
    while planted_s[0] <= n / fps < planted_s[1]."""
    width, height = size
    planted = planted_image(width, height)
    cmd = [ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps), "-i", "pipe:0",
           "-an", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
           str(path)]  # fmt: skip
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        for n in range(round(duration_s * fps)):
            shown = planted if planted_s and planted_s[0] <= n / fps < planted_s[1] else frame_pattern(n, width, height)
            proc.stdin.write(shown.tobytes())
        proc.stdin.close()
        if proc.wait(timeout=120) != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed writing {path}: {err.read().decode(errors='replace')[-2000:]}")
    return path


def tiny_settings(work: Path) -> Settings:
    """Tiny random LLaMA-VID and CLIP written under `work`; short answers so tests stay fast."""
    from indexer.embedding import make_tiny_clip
    from indexer.llamavid.tiny import make_tiny_checkpoint

    model_dir = make_tiny_checkpoint(work / "models")
    clip = make_tiny_clip(work / "models" / "clip")
    return Settings.model_validate({
        "model": {"model_dir": str(model_dir)}, "embedding": {"model": str(clip)},
        "reader": {"fps": SAMPLE_FPS}, "encoder": {"max_batch_frames": 16},
        "index": {"commit_interval_s": 0.5}, "ingest": {"reader_num_cpus": 0.25},
        "query": {"k": 8, "max_new_tokens": 8}})


def build_tiny_index(work: Path) -> TinyIndex:
    import ray

    from actors.ingest import run_ingest

    settings = tiny_settings(work)
    videos = {
        "a": TinyVideo("a", make_planted_video(work / "a.mp4", 8.0, None), 8.0, FPS),
        "b": TinyVideo("b", make_planted_video(work / "b.mp4", 8.0, PLANTED_WINDOW_S), 8.0, FPS, PLANTED_WINDOW_S),
    }
    root = work / "index"
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        summary = run_ingest([f"{v.stream_id}={v.path}" for v in videos.values()], IndexRoot.at(root), settings,
                             progress=False)
    finally:
        if started_ray:  # other tests start their own Ray runtime
            ray.shutdown()
    if summary.failed:
        raise RuntimeError("tiny index ingest failed:\n" + "\n".join(summary.lines()))
    return TinyIndex(root, settings, videos)


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory) -> TinyIndex:
    """(root, settings, videos): see the module docstring. Read-only: do not ingest into it."""
    return build_tiny_index(tmp_path_factory.mktemp("tiny-index"))


__all__ = ["FPS", "PLANTED_WINDOW_S", "SAMPLE_FPS", "SIZE", "TinyIndex", "TinyVideo", "build_tiny_index",
           "make_planted_video", "planted_image", "tiny_index", "tiny_settings"]
