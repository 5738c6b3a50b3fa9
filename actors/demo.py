"""`vidx demo`: the main job end to end on the CPU in under a minute, with no arguments: tiny
random models and a 20 s clip with planted scenes (indexer.demo), ingested on Ray, searched by
image and by text, and asked a question whose answer cites its moments."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from indexer.demo import SCENES, write_tiny
from indexer.query.prompt import clock

QUESTION = "When is the blue disc on screen?"


def run_demo(out: str | Path, say=print) -> int:
    """Everything under `out` (made again if there): models, settings, clip, index, thumbnails."""
    import ray

    from actors.ingest import run_ingest
    from indexer.query.engine import QueryEngine
    from indexer.settings import load_settings
    from indexer.store.root import IndexRoot

    started = time.monotonic()
    out = Path(out).expanduser().resolve()
    index, moments = out / "index", out / "moments"
    for stale in (index, moments):
        shutil.rmtree(stale, ignore_errors=True)
    moments.mkdir(parents=True)
    root = IndexRoot.at(index)
    tiny = write_tiny(out / "tiny")
    say(f"demo in {out} (tiny random models, generated clip; made in {time.monotonic() - started:.0f} s)")
    for line in tiny.lines():
        say(f"  {line}")

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        summary = run_ingest([f"demo={tiny.sample}"], root, load_settings(tiny.settings), progress=False)
    finally:
        ray.shutdown()
    if summary.failed:
        say("\n".join(summary.lines()))
        return 1
    frames = sum(s.frames_sent for s in summary.streams)
    say(f"\ningested on Ray: {frames} frames (1 a second) in {summary.wall_s:.1f} s -> {index}")

    engine = QueryEngine.open(root)
    try:
        def thumbnail(frame_id: int, pts_s: float) -> Path:
            path = moments / f"demo-{pts_s:05.1f}s.jpg"
            path.write_bytes(engine.thumbnail(frame_id))
            return path

        scene = SCENES[0]
        say(f"\nsearch by image (a picture of {scene.description}, planted at {clock(scene.start_s)}-"
            f"{clock(scene.end_s)}):")
        for hit in engine.search(image=scene.picture(), k=3):
            say(f"  {hit.stream_id} {clock(hit.pts_s)} ({hit.pts_s:.1f} s) score {hit.score:.3f} "
                f"{'[planted scene] ' if scene.shows(hit.pts_s) else ''}thumbnail {thumbnail(hit.frame_id, hit.pts_s)}")
        say(f'\nsearch by text "{SCENES[1].description}":')
        for hit in engine.search(text=SCENES[1].description, k=3):
            say(f"  {hit.stream_id} {clock(hit.pts_s)} ({hit.pts_s:.1f} s) score {hit.score:.3f} "
                f"thumbnail {thumbnail(hit.frame_id, hit.pts_s)}")
        answer = engine.ask(QUESTION)
        say(f"\nask: {QUESTION}\n  answer: {answer.text!r}\n  cited moments ({answer.mode} mode, {answer.frames} "
            f"frames x {answer.tokens_per_frame} tokens):")
        for c in answer.citations:
            best_s = float(engine.frames.pts_s[c.best_frame_id])
            say(f"  {c.stream_id} {clock(c.start_s)}-{clock(c.end_s)} ({c.start_s:.1f}-{c.end_s:.1f} s), best frame "
                f"{best_s:.1f} s, thumbnail {thumbnail(c.best_frame_id, best_s)}")
    finally:
        engine.close()

    say(f"\nThe tiny models have random weights: their words (the answer above) and what the text search ranks "
        "first are noise. The retrieval, the times and the citations are real: the image search finds the planted "
        f"scene at its time, and each cited moment is a frame of the clip (its thumbnail is in {moments}).")
    say(f"\nnext:\n  vidx ask {index} \"{QUESTION}\"\n  vidx serve {index} --media-root {tiny.sample.parent}   "
        "# the web page and HTTP API on http://127.0.0.1:8000\n"
        f"  vidx ingest VIDEO --index runs/idx --config configs/default.yaml   # real checkpoints: README, "
        "'Using a real checkpoint'")
    say(f"(demo took {time.monotonic() - started:.0f} s)")
    return 0


__all__ = ["QUESTION", "run_demo"]
