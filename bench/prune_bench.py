"""Storage tiers (issue 18): bytes per stream-hour of each tier at the official dimensions, and how
long `vidx prune` takes per 1,000 files.

    python bench/prune_bench.py                    # tiers, then prune timings on a 500-segment index
    python bench/prune_bench.py --segments 1000 --real-segments 40

The tier sizes are the exact bytes the formats write (store/features.py `stored_bytes`: .npy
headers and all), one file per commit of one stream (`index.commit_interval_s` 5 s at 1 fps: 720
files a stream-hour). The prune timings run `prune_index` (what `vidx prune` runs) on an index
written by the real IndexWriter: first in the tiny models' layout, so the figure is the per-file
work (planning, the manifest, renames, deletions, the crash clean-up's walk) more than the bytes;
then float16 -> int4 at the official dimensions, where reading, quantising and writing dominate.
One figure per line."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REAL_FEATURES = (257, 1408)   # EVA ViT-g at 224 px: 1 + 16 x 16 patches, 1408 channels
REAL_CONTENT = (1, 4096)      # LLaMA-VID 7B long-video mode: one content token a frame (compress "mean")
REAL_EMBEDDING = 768          # CLIP ViT-L/14's projection (embedding.model default)
TINY_FEATURES = (5, 16)


def bench_tiers(fps: float = 1.0, commit_s: float = 5.0) -> None:
    from indexer.store.features import Float16Features, Int4Features, stored_bytes

    frames_per_file = round(fps * commit_s)
    files = math.ceil(3600 * fps / frames_per_file)
    for fmt in (Float16Features(), Int4Features()):
        per_hour = files * stored_bytes(fmt, frames_per_file, REAL_FEATURES)
        print(f"tier_bytes_per_stream_hour real-dims {list(REAL_FEATURES)} {fmt.name} features {fps:g} fps: "
              f"{per_hour / 1e9:.3f} GB/h", flush=True)
    print(f"tier_bytes_per_stream_hour real-dims none features {fps:g} fps: 0 GB/h", flush=True)
    kept = 3600 * fps * (math.prod(REAL_CONTENT) * 2 + REAL_EMBEDDING * 4)
    print(f"tier_bytes_per_stream_hour real-dims always kept: content tokens {list(REAL_CONTENT)} float16 + "
          f"embedding {REAL_EMBEDDING} float32 {fps:g} fps, before Parquet compression: {kept / 1e9:.3f} GB/h",
          flush=True)


def build_index(root: Path, segments: int, frames_per_segment: int, feature_shape: tuple[int, int],
                seed: int = 0) -> None:
    """One file stream of `segments` commits of `frames_per_segment` frames (pts 1 s apart), random
    features and embeddings (prune timings do not depend on their values), tiny JPEG-sized thumbnails."""
    from indexer.batches import EncodedBatch, SourceInfo
    from indexer.settings import SearchSettings
    from indexer.store import IndexWriter, Layout
    from indexer.store.root import IndexRoot

    layout = Layout(model_fingerprint="bench", model_name="bench", feature_shape=feature_shape,
                    feature_format="float16", content_shape=(1, 8), embedding_model="bench", embedding_dim=8)
    rng = np.random.default_rng(seed)
    n = segments * frames_per_segment
    writer = IndexWriter(IndexRoot.at(root), layout, commit_interval_s=1e9, max_vector_shards=1_000_000,
                         search=SearchSettings(exact_max_vectors=max(1000, n + 1)))
    writer.open_stream(SourceInfo("/videos/cam.mp4", "cam", False, float(n), "h264", 640, 360, 25.0, False),
                       1.0, "file")
    for first in range(0, n, frames_per_segment):
        idx = np.arange(first, first + frames_per_segment, dtype=np.int64)
        t = len(idx)
        embedding = rng.normal(size=(t, 8)).astype(np.float32)
        embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
        writer.append(EncodedBatch(
            "cam", first, first + t, idx, idx.astype(float), np.full(t, np.nan), [None] * t, [],
            rng.normal(size=(t, *feature_shape)).astype(np.float16),
            rng.normal(size=(t, 1, 8)).astype(np.float16), embedding, [rng.bytes(4000) for _ in range(t)]))
        writer.commit()
    writer.finish_stream("cam")
    writer.close()


def time_prune(built: Path, work: Path, policy: dict, what: str, tag: str, repeats: int) -> None:
    from indexer.settings import RetentionSettings
    from indexer.store.retention import prune_index
    from indexer.store.root import IndexRoot

    best, files = math.inf, 0
    for i in range(repeats):
        root = Path(shutil.copytree(built, work / f"{what}-{i}"))
        report = prune_index(IndexRoot.at(root), RetentionSettings.model_validate(policy))
        files = sum(step.files for step in report.steps)
        best = min(best, report.seconds)
        shutil.rmtree(root)
    print(f"prune {tag} {what}: {best / files * 1000:.2f} s per 1000 files ({files} files in {best:.2f} s)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=500, help="files of the tiny-layout index")
    parser.add_argument("--real-segments", type=int, default=20, help="files of the real-dims index (5 frames each)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bench_tiers()
    with tempfile.TemporaryDirectory(prefix="prune-bench-") as tmp:
        work = Path(tmp)
        tiny = work / "tiny"
        build_index(tiny, args.segments, 5, TINY_FEATURES)
        tag = f"tiny-layout {list(TINY_FEATURES)} {args.segments} segments"
        # ages run to segments * 5 s: 1 s converts or drops every segment but the newest
        time_prune(tiny, work, {"float16_s": 1, "int4_s": 0}, "drop features", tag, args.repeats)
        time_prune(tiny, work, {"float16_s": 1}, "float16 -> int4", tag, args.repeats)
        time_prune(tiny, work, {"thumbnails_s": 1}, "drop thumbnails", tag, args.repeats)
        real = work / "real"
        build_index(real, args.real_segments, 5, REAL_FEATURES)
        tag = f"real-dims {list(REAL_FEATURES)} {args.real_segments} segments of 5 frames"
        time_prune(real, work, {"float16_s": 1}, "float16 -> int4", tag, args.repeats)
        time_prune(real, work, {"float16_s": 1, "int4_s": 0}, "drop features", tag, args.repeats)


if __name__ == "__main__":
    main()
