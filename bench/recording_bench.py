"""Reading a live source's recording back (what recomputing dropped patch features needs):
`Recording.frames_at` for the frames the reader sampled, per 100 frames, and the recording's size.

    python bench/recording_bench.py                 # 640x360, 25 fps, sampled at 2 fps
    python bench/recording_bench.py --size 1280x720

A live HLS stream from ffmpeg (`-re`, H.264, a keyframe every second) on 127.0.0.1 is read by
the real reader, which records it (stream copy, 2 s segments: `index.retention` defaults) while
sampling at --fps; then the sampled frames' media times are asked for: first in time order (one
decoder pass per segment), then shuffled. Every picture is checked equal to the one the reader
sampled. The recording's size is the source's bitrate (nothing is re-encoded), shown as bytes per
stream-hour of this synthetic picture at ffmpeg's default x264 quality.

One figure per line: `<figure> <details>: <value> <unit>`.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.batches import SampledFrame
from indexer.media import SourceReader, parse_source
from indexer.media.recording import Recording
from indexer.media.ring import SegmentRing
from indexer.settings import ReaderOptions, RetentionSettings
from indexer.store.root import IndexRoot
from tests.streams import hls_live

FRAMES = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the live stream")
    parser.add_argument("--fps", type=float, default=2.0, help="sampling rate of the reader")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    retention = RetentionSettings()
    options = ReaderOptions(fps=args.fps, read_timeout_s=5.0, open_timeout_s=20.0, give_up_after_s=5.0)
    until_s = FRAMES / args.fps + 4.0
    with tempfile.TemporaryDirectory(prefix="recording-bench-") as tmp:
        root = IndexRoot.at(tmp)
        ring = SegmentRing(root.recording_dir("cam"), keep_s=None, segment_s=retention.recording_segment_s)
        sampled: list[SampledFrame] = []
        with hls_live(duration_s=until_s + 15, fps=25, size=(width, height), hls_time=1) as (url, _):
            reader = SourceReader(parse_source(url), options, ring=ring)
            reader.open()
            for item in reader.samples():
                if isinstance(item, SampledFrame):
                    sampled.append(item)
                    if item.pts_s >= until_s:
                        break
            reader.close()
        recording = Recording(root, "cam", short_side=options.short_side)
        start = recording.segments()[0].media_start_s
        frames = [f for f in sampled if f.pts_s >= start][-FRAMES:]
        if len(frames) < FRAMES:
            raise SystemExit(f"only {len(frames)} sampled frames are in the recording; want {FRAMES}")
        details = f"{width}x{height} H.264 25 fps, 2 s segments, sampled at {args.fps:g} fps"
        for order in ("in time order", "shuffled"):
            times = [f.pts_s for f in frames]
            if order == "shuffled":
                random.Random(0).shuffle(times)
            by_time = {f.pts_s: f.image for f in frames}
            spent = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                images = recording.frames_at(times)
                spent.append(time.perf_counter() - began)
                if not all(np.array_equal(image, by_time[t]) for image, t in zip(images, times, strict=True)):
                    raise SystemExit("a picture read back differs from the one the reader sampled")
            print(f"recording frames_at per {FRAMES} frames {order} ({details}, median of {args.repeats}): "
                  f"{1000 * float(np.median(spent)):.0f} ms")
        segments = recording.segments()
        held_s = segments[-1].media_end_s - segments[0].media_start_s
        size = sum(s.bytes for s in segments)
        print(f"recording bytes per stream-hour ({width}x{height} synthetic picture, ffmpeg x264 defaults, "
              f"stream copy): {size / held_s * 3600 / 1e9:.3f} GB ({8 * size / held_s / 1000:.0f} kbit/s)")


if __name__ == "__main__":
    main()
