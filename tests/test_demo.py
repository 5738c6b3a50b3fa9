"""`vidx demo` with no arguments, as a newcomer runs it: the main job on the tiny models, and
cited moments that are right (the planted scene found at its time, thumbnails that show it)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.demo import SCENES, clip_frame


@pytest.mark.timeout(900)  # Ray, two model loads and a 20 s clip: minutes on a busy machine
def test_vidx_demo_finds_the_planted_scene_at_its_time_and_cites_real_moments(tmp_path):
    result = subprocess.run([sys.executable, "-m", "actors.cli", "demo"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "ingested on Ray: 20 frames" in out

    image_part = out.split("search by image", 1)[1].split("search by text", 1)[0]
    hits = re.findall(r"demo \d+:\d\d \(([\d.]+) s\) score ([-\d.]+) (\[planted scene\] )?thumbnail (\S+)", image_part)
    assert len(hits) == 3
    disc = SCENES[0]
    assert sorted(float(t) for t, *_ in hits) == [6.0, 7.0, 8.0]  # the frames sampled while the disc was planted
    assert all(planted for *_, planted, _ in hits)
    for time_s, _, _, path in hits:  # each thumbnail is the frame at its time: orange and blue, not grey
        thumb = np.asarray(Image.open(path).convert("RGB").resize((320, 180)), np.float32)
        expected = clip_frame(float(time_s)).astype(np.float32)
        assert np.abs(thumb - expected).mean() < 12, path
        assert disc.shows(float(time_s))

    ask_part = out.split("ask: ", 1)[1]
    cited = re.findall(r"demo (\d+):(\d\d)-(\d+):(\d\d) \(([\d.]+)-([\d.]+) s\), best frame ([\d.]+) s, "
                       r"thumbnail (\S+)", ask_part)
    assert cited
    for *_, start, end, best, path in cited:
        assert 0.0 <= float(start) <= float(best) <= float(end) <= 20.0
        thumb = np.asarray(Image.open(path).convert("RGB").resize((320, 180)), np.float32)
        assert np.abs(thumb - clip_frame(float(best)).astype(np.float32)).mean() < 12, path

    assert "random weights" in out and "citations are real" in out
    index = tmp_path / "out" / "demo" / "index"
    assert f"vidx serve {index} --media-root {tmp_path / 'out' / 'demo' / 'tiny'}" in out  # the page plays the clip
    assert "configs/default.yaml" in out
    assert Path(index, "manifest.json").is_file()
