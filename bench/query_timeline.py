"""The query-latency half of bench/query_bench.py: question to answer over a long timeline with
the tiny models on CPU, split by stage (embedding, search, rerank, feature loading, context
tokens, LLM prefill). `python bench/query_bench.py --timeline-hours 3` runs it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

def build_timeline_index(root: Path, hours: float, fps: float = 1.0, seed: int = 0):
    """A `hours`-long stream at `fps` in the tiny models' layout: random features and
    embeddings (the timings do not depend on their values), written by the real IndexWriter."""
    from indexer.batches import EncodedBatch
    from indexer.embedding import ImageTextEmbedder, make_tiny_clip
    from indexer.encoding import FrameEncoder
    from indexer.llamavid import LlamaVid
    from indexer.llamavid.tiny import make_tiny_checkpoint
    from indexer.media.reader import SourceInfo
    from indexer.store import IndexWriter

    model = LlamaVid.from_pretrained(make_tiny_checkpoint(root / "models"))
    embedder = ImageTextEmbedder(make_tiny_clip(root / "models" / "clip"))
    layout = FrameEncoder(model, embedder).layout()
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 * fps)
    writer = IndexWriter(root / "index", layout, commit_interval_s=1e9)
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


def bench_timeline(hours: float = 3.0, questions: int = 20) -> None:
    """Question-to-answer latency split over a `hours`-long timeline with the tiny models on CPU."""
    from indexer.llm.transformers_backend import TransformersBackend
    from indexer.query.engine import QueryEngine
    from indexer.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        root, model, embedder = build_timeline_index(Path(tmp), hours)
        settings = Settings.model_validate({"model": {"model_dir": str(model.model_dir)},
                                            "query": {"max_new_tokens": 1}})
        engine = QueryEngine(root, model, embedder, TransformersBackend(model), settings)
        words = ["courier", "parcel", "door", "van", "dog", "goal", "fence", "studio", "crowd", "car"]
        rows = []
        for i in range(questions + 2):
            answer = engine.ask(f"when does the {words[i % len(words)]} appear, question {i}?")
            if i >= 2:  # the first calls warm caches
                rows.append(answer.timings)
        print(f"timeline: {hours:g} h at 1 fps = {engine.frames.size} frames, tiny model, CPU, "
              f"{answer.mode} mode, {answer.frames} frames sent, {answer.prompt_tokens} prompt tokens")
        stages = ["embed", "search", "rerank", "plan", "features", "context_tokens", "prompt"]
        for stage in stages + ["llm_first_token"]:
            values = np.array([r.get(stage, 0.0) for r in rows]) * 1000
            print(f"timeline {stage} p50 ms: {np.percentile(values, 50):.2f}")
        ready = np.array([sum(r.get(s, 0.0) for s in stages) for r in rows]) * 1000
        print(f"timeline question to context tokens ready p50 ms: {np.percentile(ready, 50):.1f} (target < 100)")
        print(f"timeline question to context tokens ready p99 ms: {np.percentile(ready, 99):.1f}")
