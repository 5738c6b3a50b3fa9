"""What `vidx tiny` and `vidx demo` write with Python alone (no ffmpeg CLI): tiny random models
with settings that name them, and a short clip with planted scenes at known times.

    paths = write_tiny("out/tiny")      # out/tiny/{model,clip,settings.yaml,sample.mp4}
    paths.settings                      # load_settings(paths.settings) loads the tiny models
    SCENES[0].picture(320, 180)         # the picture shown from SCENES[0].start_s to end_s"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from indexer.settings import Settings

if TYPE_CHECKING:  # not a loop: torch is imported only when the tiny models are made
    from indexer.llamavid.tiny import TinySpec

CLIP_SIZE = (320, 180)      # width, height
CLIP_FPS = 10               # source frames a second
CLIP_SECONDS = 20.0


def _disc_on_orange(width: int, height: int, t: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    cx = width * (0.4 + 0.05 * t % 0.2)  # drifts a little: a moving picture, not a frozen one
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (240, 140, 20)
    image[(xs - cx) ** 2 + (ys - height / 2) ** 2 < (0.3 * height) ** 2] = (20, 60, 230)
    return image


def _square_on_green(width: int, height: int, t: float) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (30, 160, 60)
    side = height // 2
    x0 = width // 3 + int(4 * t) % 16
    image[height // 4: height // 4 + side, x0: x0 + side] = (220, 30, 30)
    return image


def _background(width: int, height: int, t: float) -> np.ndarray:
    """Grey stripes that scroll: every second looks different, none like a planted scene."""
    xs = np.arange(width)[None, :]
    ys = np.arange(height)[:, None]
    level = 96 + 64 * np.sin((xs + ys) / 9.0 + t * 2.0)
    return np.repeat(level.astype(np.uint8)[:, :, None], 3, axis=2)


@dataclass(frozen=True)
class PlantedScene:
    """A picture shown for start_s <= t < end_s of the sample clip."""

    description: str
    start_s: float
    end_s: float
    draw: Callable[[int, int, float], np.ndarray]

    def picture(self, width: int = CLIP_SIZE[0], height: int = CLIP_SIZE[1]) -> np.ndarray:
        """uint8 RGB [height, width, 3]: the scene as it looks at its start (a query image)."""
        return self.draw(width, height, 0.0)

    def shows(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


SCENES = (PlantedScene("a blue disc on an orange field", 6.0, 9.0, _disc_on_orange),
          PlantedScene("a red square on a green field", 14.0, 17.0, _square_on_green))


def clip_frame(t: float, width: int = CLIP_SIZE[0], height: int = CLIP_SIZE[1]) -> np.ndarray:
    """The sample clip's picture at media time t."""
    for scene in SCENES:
        if scene.shows(t):
            return scene.draw(width, height, t - scene.start_s)
    return _background(width, height, t)


def write_clip(path: str | Path, seconds: float = CLIP_SECONDS, fps: int = CLIP_FPS) -> Path:
    """H.264 in MP4, index at the front (a browser can seek in it); frame n has pts n / fps."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = CLIP_SIZE
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "bf": "0", "g": str(fps)}
        for n in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(clip_frame(n / fps), format="rgb24")
            frame.pts = n
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def tiny_settings(model_dir: str | Path, clip_dir: str | Path) -> Settings:
    """Settings for the tiny random models: one sample a second, short answers, quick commits."""
    return Settings.model_validate({
        "model": {"model_dir": str(Path(model_dir).resolve()), "device": "cpu", "dtype": "float32"},
        "embedding": {"model": str(Path(clip_dir).resolve())},
        "reader": {"fps": 1.0},
        "encoder": {"actors": 1, "num_cpus": 1, "max_batch_frames": 16},
        "index": {"commit_interval_s": 2.0},
        "query": {"k": 16, "max_new_tokens": 16}})


@dataclass(frozen=True)
class TinyPaths:
    model: Path         # LLaMA-VID in the official layout
    clip: Path          # the retrieval embedding (a CLIP)
    settings: Path      # YAML naming both by absolute path
    sample: Path        # the sample clip (SCENES)

    def lines(self) -> list[str]:
        return [f"model: {self.model}", f"retrieval embedding: {self.clip}", f"settings: {self.settings}",
                f"sample clip: {self.sample} ({CLIP_SECONDS:g} s: "
                + ", ".join(f"{s.description} at {s.start_s:g}-{s.end_s:g} s" for s in SCENES) + ")"]


def write_tiny(out: str | Path, spec: TinySpec | None = None) -> TinyPaths:
    """Tiny random models (LLaMA-VID as `spec` says), their settings and the sample clip under
    `out` (replaced if there)."""
    from indexer.embedding import make_tiny_clip
    from indexer.llamavid.tiny import TinySpec, make_tiny_checkpoint

    out = Path(out).expanduser().resolve()
    model = make_tiny_checkpoint(out, spec or TinySpec())
    clip = make_tiny_clip(out / "clip")
    settings = out / "settings.yaml"
    settings.write_text(yaml.safe_dump(tiny_settings(model, clip).model_dump(mode="json", exclude_unset=True),
                                       sort_keys=False))
    return TinyPaths(model, clip, settings, write_clip(out / "sample.mp4"))


__all__ = ["CLIP_FPS", "CLIP_SECONDS", "CLIP_SIZE", "SCENES", "PlantedScene", "TinyPaths", "clip_frame",
           "tiny_settings", "write_clip", "write_tiny"]
