"""Question-to-context-tokens latency per 100 frames when the index keeps float16 patch features,
when it keeps int4 ones, and when it keeps none and the query recomputes them from the source file
(seek, decode the frames at the sampled times, vision tower): tiny models on the CPU.

    python bench/recompute_bench.py                  # 100 s of 320x240 H.264 at 25 fps, 1 sample/s
    python bench/recompute_bench.py --size 640x360 --gop 50

One figure per line: `<figure> <details>: <value> <unit>`. The same ffmpeg-made file is ingested on
a local Ray (2 CPUs) once per feature format; each figure is the best of --repeats runs of the
engine's `_frame_tokens` over the stream's frames (a span of --frames consecutive frames, the
question's context and content tokens), with nothing recomputed carried from run to run, on
query.torch_threads threads. Recording sources (live streams) have no figure yet: the index keeps
no recording of them to decode again.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
import time
from pathlib import Path

from indexer.embedding import make_tiny_clip
from indexer.llamavid.tiny import make_tiny_checkpoint
from indexer.settings import Settings

QUESTION = "When does the courier leave the parcel at the door, and what does he do next?"


def make_video(path: Path, seconds: int, size: str, gop: int) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate=25", "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast",
                    "-g", str(gop), "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="sampled frames (1 a second)")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval in source frames (x264's default)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    from actors.ingest import run_ingest
    from indexer.query.engine import QueryEngine, torch_threads
    from indexer.query.patch_features import Recomputed
    from indexer.store.root import IndexRoot

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = make_video(work / "span.mp4", args.frames, args.size, args.gop)
        base = Settings.model_validate({
            "model": {"model_dir": str(make_tiny_checkpoint(work / "models"))},
            "embedding": {"model": str(make_tiny_clip(work / "models" / "clip"))},
            "reader": {"fps": 1.0}, "index": {"commit_interval_s": 0.5}})
        ray.init(address="local", num_cpus=2, logging_level=logging.WARNING, log_to_driver=False)
        try:
            roots = {}
            for fmt in ("float16", "int4", "none"):
                settings = base.model_copy(deep=True)
                settings.index.feature_format = fmt
                roots[fmt] = IndexRoot.at(work / fmt)
                summary = run_ingest([f"span={video}"], roots[fmt], settings, progress=False)
                if summary.failed:
                    raise SystemExit("\n".join(summary.lines()))
        finally:
            ray.shutdown()

        first = QueryEngine.open(roots["float16"])
        p = first.model.config.content_tokens_per_frame
        labels = {"float16": "stored float16", "int4": "stored int4", "none": "recomputed from a file"}
        for fmt, root in roots.items():
            engine = QueryEngine(root, first.model, first.embedder, first.llm, first.settings)
            ids = [int(i) for i in engine.frames.between("span", None, None)]
            best, recompute, decode = float("inf"), 0.0, 0.0
            with torch_threads(engine.settings.query.torch_threads):
                for _ in range(args.repeats):
                    timings: dict[str, float] = {}
                    start = time.perf_counter()
                    _, missing = engine._frame_tokens(ids, QUESTION, p, timings, {}, Recomputed())
                    seconds = time.perf_counter() - start
                    assert not missing, missing
                    if seconds < best:
                        best, recompute, decode = seconds, timings.get("recompute", 0.0), \
                            timings.get("recompute_decode", 0.0)
            per_100 = best * 1000 * 100 / len(ids)
            details = f"tiny cpu {args.size} gop={args.gop} {len(ids)} frames"
            print(f"context_tokens_latency {labels[fmt]} {details}: {per_100:.1f} ms/100 frames", flush=True)
            if fmt == "none":
                for part, value in (("seek+decode", decode), ("vision tower", recompute - decode)):
                    print(f"recompute_part {part} {details}: {value * 1000 * 100 / len(ids):.1f} ms/100 frames",
                          flush=True)
        first.close()


if __name__ == "__main__":
    main()
