"""Ingestion figures for one input file: reader decode throughput against the ffmpeg CLI, the
keyframe fast path, reader memory against video length, the whole Ray pipeline with the tiny
model, index bytes per hour of video, and context-token fidelity of int4 features.

    python bench/ingest_bench.py                      # generates a 120 s 720p H.264 input (GOP 1 s)
    python bench/ingest_bench.py --input talk.mp4 --threads 4
    python bench/ingest_bench.py --real-dims          # also int4 fidelity at official dimensions (slow)

One figure per line: `<figure> <details>: <value> <unit>`. The machine may be shared, so the decode
figures are the best of --repeats runs. Video seconds per wall second is "x real time".
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
import torch

# bench/ is on sys.path when this file runs as a script
from model_bench import real_dims_model

from actors.ingest import run_ingest
from indexer.batches import SampledFrame
from indexer.embedding import make_tiny_clip
from indexer.llamavid import LlamaVid
from indexer.llamavid.tiny import make_tiny_checkpoint
from indexer.media import SourceReader, parse_source
from indexer.settings import ReaderOptions, Settings, load_settings
from indexer.store import IndexReader
from indexer.store.features import Float16Features, Int4Features
from indexer.store.root import IndexRoot

QUESTION = "When does the courier leave the parcel at the door, and what does he do next?"
REAL_FEATURES = (257, 1408)  # EVA ViT-g at 224 px: 1 + 16 x 16 patches, 1408 channels
# A fresh process reads FILE in full decode at 1 fps; prints its RSS after the imports and its
# peak RSS at the end, in KiB. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
# across fork and exec, so a child of this (torch-sized) process would report the parent's peak.
RSS_CHILD = """
import sys
from indexer.media import SourceReader, parse_source
from indexer.settings import ReaderOptions
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
rss = status("VmRSS")
reader = SourceReader(parse_source(sys.argv[1]), ReaderOptions(fps=1.0, keyframes_only="never", decoder_threads=1))
reader.open()
for _ in reader.samples():
    pass
print(rss, status("VmHWM"))
"""


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


def make_input(path: Path, duration: float, size: str = "1280x720", preset: str = "veryfast") -> Path:
    """testsrc2 at 30 fps, H.264, a keyframe every second (GOP 1 s)."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-t", str(duration), "-c:v", "libx264",
           "-preset", preset, "-g", "30", "-pix_fmt", "yuv420p", str(path))
    return path


def video_seconds(path: Path) -> float:
    reader = SourceReader(parse_source(str(path)), ReaderOptions(keyframes_only="never"))
    duration = reader.open().duration_s
    reader.close()
    if not duration:
        raise ValueError(f"{path}: no duration (a live or damaged file?)")
    return duration


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def read_all(path: Path, keyframes_only: str, threads: int) -> int:
    reader = SourceReader(parse_source(str(path)), ReaderOptions(fps=1.0, keyframes_only=keyframes_only,
                                                                 decoder_threads=threads))
    reader.open()
    return sum(isinstance(item, SampledFrame) for item in reader.samples())


def bench_full_decode(path: Path, duration: float, threads: int, repeats: int) -> None:
    """Reader at 1 fps, full decode, against `ffmpeg -vf fps=1,scale=-2:224` with the same threads."""
    reader_s = ffmpeg_s = float("inf")
    for _ in range(repeats):  # interleaved, so both see the same machine load
        reader_s = min(reader_s, timed(lambda: read_all(path, "never", threads))[0])
        ffmpeg_s = min(ffmpeg_s, timed(lambda: ffmpeg("-threads", str(threads), "-i", str(path),
                                                      "-vf", "fps=1,scale=-2:224", "-f", "null", "-"))[0])
    tag = f"1 fps full decode threads={threads} best-of-{repeats}"
    print(f"decode reader {tag}: {duration / reader_s:.1f} x real time", flush=True)
    print(f"decode ffmpeg-cli {tag}: {duration / ffmpeg_s:.1f} x real time", flush=True)
    print(f"decode reader/ffmpeg-cli {tag}: {ffmpeg_s / reader_s:.2f} x", flush=True)


def bench_keyframes(path: Path, duration: float, repeats: int) -> None:
    """The keyframe-only fast path on one decoder thread."""
    wall, cpu = min(timed(lambda: read_all(path, "always", 1)) for _ in range(repeats))
    tag = f"1 fps keyframes_only=always threads=1 best-of-{repeats}"
    print(f"decode reader {tag}: {duration / wall:.0f} x real time", flush=True)
    print(f"decode reader {tag} per CPU-second: {duration / cpu:.0f} x real time", flush=True)


def bench_reader_memory(workdir: Path, short_s: float, factor: int) -> None:
    """Peak RSS growth of the reader (full decode, fresh process) on a file and one `factor` x longer."""
    long = make_input(workdir / "rss-long.mp4", short_s * factor, size="640x360", preset="ultrafast")
    short = workdir / "rss-short.mp4"
    ffmpeg("-i", str(long), "-t", str(short_s), "-c", "copy", str(short))
    peaks, growths = [], []
    for path, seconds in ((short, short_s), (long, short_s * factor)):
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path)], check=True, capture_output=True, text=True)
        start_kib, peak_kib = map(int, out.stdout.split())
        peaks.append(peak_kib / 1024)
        growths.append((peak_kib - start_kib) / 1024)
        tag = f"reader_rss 640x360 full decode {seconds:.0f} s"
        print(f"{tag} peak: {peaks[-1]:.1f} MiB", flush=True)
        print(f"{tag} peak growth over imports: {growths[-1]:.1f} MiB", flush=True)
    tag = f"reader_rss {short_s * factor:.0f} s / {short_s:.0f} s"
    print(f"{tag} peak: {peaks[1] / peaks[0]:.2f} x", flush=True)
    print(f"{tag} peak growth: {growths[1] / max(growths[0], 0.1):.2f} x", flush=True)


def tiny_settings(root: Path, feature_format: str) -> Settings:
    settings = load_settings(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    settings.model.model_dir = str(root / "model")
    settings.embedding.model = str(root / "clip")
    settings.index.feature_format = feature_format
    return settings


def ingest(path: Path, index: Path, settings: Settings) -> tuple[int, float, float]:
    """(frames, video seconds, wall seconds) of one run_ingest."""
    start = time.perf_counter()
    summary = run_ingest([str(path)], IndexRoot.at(index), settings, progress=False)
    wall = time.perf_counter() - start
    stream = summary.streams[0]
    if stream.error:
        raise RuntimeError(f"ingest of {path} failed: {stream.error}")
    return stream.frames_sent, stream.duration_s, wall


def bench_pipeline(path: Path, workdir: Path, tiny: Path, loops: int) -> None:
    """run_ingest with the tiny model on a Ray of its own; index bytes per hour of video per format."""
    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, logging_level=logging.WARNING, log_to_driver=False)  # never a shared one
    print(f"ray_init num_cpus=2: {time.perf_counter() - start:.1f} s", flush=True)
    try:
        ingest_runs(path, workdir, tiny, loops)
    finally:
        ray.shutdown()


def ingest_runs(path: Path, workdir: Path, tiny: Path, loops: int) -> None:
    """The input with float16 and int4 features, then the input looped `loops` times: startup
    (actors, model loading) is a fixed cost, so the looped run and the difference of the two show
    the rate past it."""
    reader = SourceReader(parse_source(str(path)), tiny_settings(tiny, "float16").reader)
    mode = "keyframes" if reader.open().keyframes_only else "full decode"
    reader.close()
    tag = f"tiny 2 CPUs reader {mode}"
    runs = {}
    for feature_format in ("float16", "int4"):
        index = workdir / f"index-{feature_format}"
        frames, seconds, wall = runs[feature_format] = ingest(path, index, tiny_settings(tiny, feature_format))
        print(f"ingest {tag} {feature_format} {seconds:.0f} s video: {frames / wall:.1f} frames/s", flush=True)
        print(f"ingest {tag} {feature_format} {seconds:.0f} s video: {seconds / wall:.1f} x real time", flush=True)
        for component, size in IndexReader(IndexRoot.at(index)).sizes().items():
            print(f"index_bytes_per_hour tiny {feature_format} {component}: {size / (seconds / 3600) / 1e6:.2f} MB/h",
                  flush=True)
    looped = workdir / "looped.mp4"
    ffmpeg("-stream_loop", str(loops - 1), "-i", str(path), "-c", "copy", "-an", "-sn", str(looped))
    _, seconds, wall = ingest(looped, workdir / "index-looped", tiny_settings(tiny, "float16"))
    print(f"ingest {tag} float16 input looped {loops}x ({seconds:.0f} s): {seconds / wall:.1f} x real time",
          flush=True)
    _, seconds0, wall0 = runs["float16"]
    print(f"ingest {tag} float16 marginal (looped - single run): "
          f"{(seconds - seconds0) / max(wall - wall0, 1e-3):.0f} x real time", flush=True)


def bench_real_feature_bytes(frames: int = 8) -> None:
    """Patch-feature bytes per stream-hour at 1 fps at the official dimensions, by a real encode."""
    features = np.random.default_rng(0).standard_normal((frames, *REAL_FEATURES), dtype=np.float32)
    for fmt in (Float16Features(), Int4Features()):
        per_frame = sum(a.nbytes for a in fmt.encode(features)) / frames
        print(f"feature_bytes_per_hour real-dims {list(REAL_FEATURES)} {fmt.name} 1 fps: "
              f"{per_frame * 3600 / 1e9:.3f} GB/h", flush=True)


def sample_frames(path: Path, count: int) -> np.ndarray:
    reader = SourceReader(parse_source(str(path)), ReaderOptions(fps=1.0, keyframes_only="never"))
    reader.open()
    images = []
    for item in reader.samples():
        if isinstance(item, SampledFrame):
            images.append(item.image)
            if len(images) == count:
                break
    reader.close()
    return np.stack(images)


def int4_cosines(model: LlamaVid, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity per frame, int4 against float16 stored features: of the patch features
    themselves, and of the context tokens computed from them."""
    features = model.encode_frames(model.preprocess(frames))[:, 1:].float().cpu().numpy()
    stored, tokens = {}, {}
    for fmt in (Float16Features(), Int4Features()):
        stored[fmt.name] = torch.from_numpy(fmt.decode(fmt.encode(features)).astype(np.float32))
        tokens[fmt.name] = model.frame_tokens(stored[fmt.name], QUESTION)[:, 0].float().cpu()
    cosine = torch.nn.functional.cosine_similarity
    return (cosine(stored["int4"].flatten(1), stored["float16"].flatten(1), dim=-1),
            cosine(tokens["int4"], tokens["float16"], dim=-1))


def bench_fidelity(path: Path, model: LlamaVid, name: str, count: int) -> None:
    """Context-token fidelity of int4 against float16 features, on decoded frames of the input."""
    features, context = int4_cosines(model, sample_frames(path, count))
    for what, cosine in (("patch_feature", features), ("context_token", context)):
        tag = f"{what}_cosine int4 vs float16 {name} {len(cosine)} frames"
        print(f"{tag} mean: {cosine.mean():.5f}", flush=True)
        print(f"{tag} min: {cosine.min():.5f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="video file (default: a generated 720p H.264, GOP 1 s)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of the generated input")
    parser.add_argument("--threads", type=int, default=2, help="decoder threads of the full-decode comparison")
    parser.add_argument("--repeats", type=int, default=3, help="decode runs per figure; the best is printed")
    parser.add_argument("--rss-seconds", type=float, default=60.0, help="length of the short memory-test file")
    parser.add_argument("--rss-factor", type=int, default=6, help="the long memory-test file is this many x longer")
    parser.add_argument("--loops", type=int, default=10, help="the pipeline also ingests the input looped this often")
    parser.add_argument("--frames", type=int, default=32, help="frames of the tiny fidelity figure")
    parser.add_argument("--real-dims", action="store_true", help="fidelity also at official dimensions (slow)")
    parser.add_argument("--real-dims-frames", type=int, default=4, help="frames of the real-dims fidelity figure")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = args.input or make_input(workdir / "input.mp4", args.duration)
        duration = video_seconds(path)
        print(f"input {path.name}: {duration:.1f} s", flush=True)
        bench_full_decode(path, duration, args.threads, args.repeats)
        bench_keyframes(path, duration, args.repeats)
        bench_reader_memory(workdir, args.rss_seconds, args.rss_factor)
        tiny = workdir / "tiny"
        make_tiny_checkpoint(tiny)
        make_tiny_clip(tiny / "clip")
        bench_pipeline(path, workdir, tiny, args.loops)
        bench_real_feature_bytes()
        bench_fidelity(path, LlamaVid.from_pretrained(tiny / "model"), "tiny", args.frames)
        if args.real_dims:
            model = real_dims_model(str(workdir / "real-dims"), "cpu", torch.float32)
            bench_fidelity(path, model, "real-dims", args.real_dims_frames)


if __name__ == "__main__":
    main()
