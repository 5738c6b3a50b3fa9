"""The query-latency half of bench/query_bench.py: question to answer over a long timeline with
the tiny models on CPU, split by stage (embedding, search, rerank, feature loading, context
tokens, LLM prefill), first on the machine as it is, then beside a real `vidx ingest` of two
live HLS streams (a monitoring box always ingests while it answers).
`python bench/query_bench.py --timeline-hours 3` runs it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

from indexer.store.root import IndexRoot

REPO = Path(__file__).resolve().parents[1]
LIVE_S = 900  # the live streams outlast the timed questions
THREADS = (1, 0)  # query.torch_threads: the default, and torch's own (one per core)

def build_timeline_index(root: Path, hours: float, fps: float = 1.0, seed: int = 0):
    """A `hours`-long stream at `fps` in the tiny models' layout: random features and
    embeddings (the timings do not depend on their values), written by the real IndexWriter."""
    from indexer.batches import EncodedBatch, SourceInfo
    from indexer.embedding import ImageTextEmbedder, make_tiny_clip
    from indexer.encoding import FrameEncoder
    from indexer.llamavid import LlamaVid
    from indexer.llamavid.tiny import make_tiny_checkpoint
    from indexer.store import IndexWriter

    model = LlamaVid.from_pretrained(make_tiny_checkpoint(root / "models"))
    embedder = ImageTextEmbedder(make_tiny_clip(root / "models" / "clip"))
    layout = FrameEncoder(model, embedder).layout()
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 * fps)
    writer = IndexWriter(IndexRoot.at(root / "index"), layout, commit_interval_s=1e9)
    info = SourceInfo("/videos/film.mp4", "film", False, hours * 3600, "h264", 640, 360, 25.0, False)
    writer.open_stream(info, fps, "file")
    for start in range(0, n, 1800):
        idx = np.arange(start, min(n, start + 1800), dtype=np.int64)
        t = len(idx)
        embedding = rng.normal(size=(t, layout.embedding_dim)).astype(np.float32)
        embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
        writer.append(EncodedBatch(
            "film", int(idx[0]), int(idx[-1]) + 1, idx, idx / fps, np.full(t, np.nan), [None] * t, [],
            rng.normal(size=(t, *layout.feature_shape)).astype(np.float16),
            rng.normal(size=(t, *layout.content_shape)).astype(np.float16), embedding, [b""] * t))
        writer.commit()
    writer.finish_stream("film")
    writer.close()
    return root / "index", model, embedder


def bench_timeline(hours: float = 3.0, questions: int = 20, beside_ingest: bool = True) -> None:
    """Question-to-answer latency split over a `hours`-long timeline with the tiny models on CPU;
    then (`beside_ingest`) the same questions again while `vidx ingest` reads two live streams."""
    from indexer.llm.transformers_backend import TransformersBackend
    from indexer.query.engine import QueryEngine
    from indexer.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        root, model, embedder = build_timeline_index(Path(tmp), hours)
        settings = Settings.model_validate({"model": {"model_dir": str(model.model_dir)},
                                            "query": {"max_new_tokens": 1}})
        engine = QueryEngine(IndexRoot.at(root), model, embedder, TransformersBackend(model), settings)
        print(f"timeline: {hours:g} h at 1 fps = {engine.frames.size} frames, tiny model, CPU, "
              f"load average {os.getloadavg()[0]:.1f} at start")
        for threads in THREADS:  # the setting, and torch's default (one per core) to compare with
            engine.settings.query.torch_threads = threads
            _report(f" torch_threads={threads}", _ask_all(engine, questions), "(target < 100)")
        if beside_ingest:
            with _live_ingest(Path(tmp), settings, Path(tmp) / "models" / "clip") as frames:
                for threads in THREADS:
                    engine.settings.query.torch_threads = threads
                    before = frames()
                    rows = _ask_all(engine, questions)
                    _report(f" torch_threads={threads} beside ingest", rows, f"(target < 200; the ingest "
                            f"committed {frames() - before} frames of 2 live HLS streams meanwhile)")


def _ask_all(engine, questions: int) -> list[tuple]:
    words = ["courier", "parcel", "door", "van", "dog", "goal", "fence", "studio", "crowd", "car"]
    rows = []
    for i in range(questions + 2):
        answer = engine.ask(f"when does the {words[i % len(words)]} appear, question {i}?")
        if i >= 2:  # the first calls warm caches
            rows.append((answer.timings, answer))
    return rows


def _report(where: str, rows: list[tuple], target: str) -> None:
    answer = rows[-1][1]
    print(f"timeline{where}: {answer.mode} mode, {answer.frames} frames sent, {answer.prompt_tokens} prompt tokens")
    timings = [t for t, _ in rows]
    stages = ["embed", "search", "rerank", "plan", "features", "context_tokens", "prompt"]
    for stage in stages + ["llm_first_token"]:
        values = np.array([r.get(stage, 0.0) for r in timings]) * 1000
        print(f"timeline{where} {stage} p50 ms: {np.percentile(values, 50):.2f}")
    ready = np.array([sum(r.get(s, 0.0) for s in stages) for r in timings]) * 1000
    print(f"timeline{where} question to context tokens ready p50 ms: {np.percentile(ready, 50):.1f} {target}")
    print(f"timeline{where} question to context tokens ready p99 ms: {np.percentile(ready, 99):.1f}")


@contextlib.contextmanager
def _live_ingest(tmp: Path, settings, clip: Path) -> Iterator:
    """`vidx ingest` (its own local Ray) of two live HLS streams from ffmpeg on 127.0.0.1 with the
    tiny models, from when it has committed frames to the end of the block; yields a function
    that counts the frames it has committed."""
    sys.path.insert(0, str(REPO))
    from indexer.store import IndexReader
    from tests.mediagen import make_video
    from tests.streams import hls_live

    config = tmp / "ingest.yaml"
    data = settings.model_dump(mode="json")
    data["embedding"]["model"] = str(clip)
    data["index"]["commit_interval_s"] = 2.0
    config.write_text(yaml.safe_dump(data))
    root = tmp / "live-index"

    def frames() -> int:
        try:
            return IndexReader(IndexRoot.at(root)).manifest.next_frame_id
        except (FileNotFoundError, ValueError):
            return 0

    source = make_video(tmp / "live.ts", duration_s=LIVE_S, fps=25, size=(320, 240), codec="libx264", gop=25)
    with hls_live(LIVE_S, source=source) as (one, _), hls_live(LIVE_S, source=source) as (two, _), \
            open(tmp / "ingest.log", "wb") as log:
        job = subprocess.Popen([sys.executable, "-m", "actors.ingest", "--index", str(root), "--config", str(config),
                                "--no-progress", f"cam1={one}", f"cam2={two}"], cwd=REPO, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        try:
            while frames() == 0:
                if job.poll() is not None:
                    raise RuntimeError(f"vidx ingest exited with {job.returncode}: "
                                       f"{(tmp / 'ingest.log').read_text(errors='replace')[-2000:]}")
                time.sleep(0.5)
            yield frames
        finally:
            os.killpg(job.pid, signal.SIGINT)  # Ctrl-C: it commits what it read and stops
            try:
                job.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
