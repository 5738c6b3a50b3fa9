"""Videos with planted events at known times: the planted picture (an orange field with a blue
disc moving across it), a black stretch and a frozen picture, elsewhere the frame-number
pattern of tests.mediagen (every frame different)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tests.mediagen import ffmpeg_bin, frame_pattern

SCENES = ("planted", "black", "frozen")


def picture(n: int, fps: int, size: tuple[int, int], scenes: dict[str, tuple[float, float]]) -> np.ndarray:
    width, height = size
    t = n / fps
    for name, (start, end) in scenes.items():
        if start <= t < end:
            if name == "planted":
                return moving_disc(n, width, height)
            if name == "black":
                return np.zeros((height, width, 3), np.uint8)
            return frame_pattern(round(start * fps), width, height)   # frozen on the first frame
    return frame_pattern(n, width, height)


def moving_disc(n: int, width: int, height: int) -> np.ndarray:
    """An orange field with a blue disc that moves a few pixels a frame (moving: not a frozen picture)."""
    ys, xs = np.mgrid[0:height, 0:width]
    cx = width * (0.3 + 0.4 * ((n * 3) % width) / width)
    disc = (xs - cx) ** 2 + (ys - height / 2) ** 2 < (0.3 * height) ** 2
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (240, 140, 20)
    image[disc] = (20, 60, 230)
    return image


def make_scene_video(path: Path, duration_s: float, scenes: dict[str, tuple[float, float]], fps: int = 10,
                     size: tuple[int, int] = (160, 120), gop: int | None = None) -> Path:
    """H.264 (no B-frames, a keyframe every `gop` frames, default one a second) in MPEG-TS or MP4 by
    the suffix; frame n has pts n / fps."""
    assert set(scenes) <= set(SCENES), scenes
    width, height = size
    gop = gop or fps
    container = ["-f", "mpegts"] if path.suffix == ".ts" else ["-movflags", "+faststart"]
    cmd = [ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps), "-i", "pipe:0",
           "-an", "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", str(gop), "-keyint_min", str(gop),
           "-sc_threshold", "0", "-pix_fmt", "yuv420p", *container, str(path)]  # fmt: skip
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        for n in range(round(duration_s * fps)):
            proc.stdin.write(picture(n, fps, size, scenes).tobytes())
        proc.stdin.close()
        if proc.wait(timeout=120) != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed writing {path}: {err.read().decode(errors='replace')[-2000:]}")
    return path
