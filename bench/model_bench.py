"""Frames per second of `encode_frames` and `frame_tokens`, and peak memory per frame; or how
long loading takes and how much memory it holds, for the whole model and for each role.

    python bench/model_bench.py                       # tiny checkpoint through from_pretrained, CPU
    python bench/model_bench.py --real-dims --device cuda --dtype bfloat16
                                                      # official dimensions, random weights
    python bench/model_bench.py --load --llm-layers 8 --dtype bfloat16
                                                      # load time and memory: all / prompt / encoder

One figure per line: `<stage> <model> <device> <dtype> batch=<B>: <value> <unit>`, or
`load_<figure> <model> <device> <dtype> parts=<parts>: <value> <unit>`.
--real-dims writes a checkpoint of the official sizes in the official layout (EVA ViT-g 1408 x 39
blocks at 224 px, BERT-base Q-Former with 32 queries, LLaMA-7B's width; `indexer.llamavid.tiny.
real_dims_spec`) with random weights (throughput does not depend on them) and loads its encoder
parts. --load does the same with `--llm-layers` LLM layers of LLaMA-7B's size (32 in the release)
and loads it in a fresh process per `parts`: seconds, resident memory growth (now and at its peak)
and the bytes of the tensors held.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from indexer.llamavid import LlamaVid
from indexer.llamavid.tiny import make_tiny_checkpoint, real_dims_spec

QUESTION = "When does the courier leave the parcel at the door, and what does he do next?"


def real_dims_model(tmp: str, device: str, dtype: torch.dtype) -> LlamaVid:
    return LlamaVid.from_pretrained(make_tiny_checkpoint(tmp, real_dims_spec(llm_layers=1)), device=device,
                                    dtype=dtype, parts="encoder")


# A fresh process per load, so that each starts from the same memory: it prints one JSON line.
_MEASURE_LOAD = """
import json, sys, time
import torch
from indexer.llamavid import LlamaVid

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

before = status("VmRSS")
start = time.perf_counter()
model = LlamaVid.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[3]), parts=sys.argv[2])
seconds = time.perf_counter() - start
tensors = sum(t.numel() * t.element_size() for t in model.model.state_dict().values())
print(json.dumps({"seconds": seconds, "tensor_bytes": tensors, "rss_growth": status("VmRSS") - before,
                  "peak_growth": status("VmHWM") - before}))
"""


def bench_load(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model_dir = make_tiny_checkpoint(tmp, real_dims_spec(llm_layers=args.llm_layers,
                                                             weights_format=args.weights_format))
        size = sum(f.stat().st_size for f in model_dir.iterdir() if f.suffix in (".bin", ".safetensors"))
        name = f"real-dims(llm 4096x{args.llm_layers})"
        print(f"load_checkpoint {name}: {size / 2**30:.2f} GiB of {args.weights_format} shards (bfloat16), "
              f"written in {time.perf_counter() - start:.0f} s", flush=True)
        for parts in ("all", "prompt", "encoder"):
            out = subprocess.run([sys.executable, "-c", _MEASURE_LOAD, str(model_dir), parts, args.dtype],
                                 capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
            m = json.loads(out.stdout.strip().splitlines()[-1])
            tag = f"{name} cpu {args.dtype} parts={parts}"
            print(f"load_seconds {tag}: {m['seconds']:.1f} s", flush=True)
            print(f"load_tensor_bytes {tag}: {m['tensor_bytes'] / 2**20:.0f} MiB", flush=True)
            print(f"load_rss_growth {tag}: {m['rss_growth'] / 2**20:.0f} MiB (peak {m['peak_growth'] / 2**20:.0f} MiB)",
                  flush=True)


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-dims", action="store_true", help="official dimensions, random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", action="store_true", help="load time and memory of each role, real dimensions")
    parser.add_argument("--llm-layers", type=int, default=8, help="--load: LLaMA-7B-sized LLM layers")
    parser.add_argument("--weights-format", default="bin", choices=["bin", "safetensors"])
    args = parser.parse_args()
    if args.load:
        bench_load(args)
        return
    dtype = getattr(torch, args.dtype)
    batches = args.batch_sizes or ([1, 8, 32] if args.real_dims and args.device != "cpu" else
                                   [1, 4] if args.real_dims else [1, 8, 32])
    name = "real-dims" if args.real_dims else "tiny"

    with tempfile.TemporaryDirectory() as tmp:
        if args.real_dims:
            model = real_dims_model(tmp, args.device, dtype)
        else:
            model = LlamaVid.from_pretrained(make_tiny_checkpoint(tmp), device=args.device, dtype=dtype)
        size = model.config.vision.image_size
        rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for batch in batches:
            frames = (np.random.default_rng(batch).random((batch, size, size, 3)) * 255).astype(np.uint8)
            pixels = model.preprocess(frames)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            features = model.encode_frames(pixels)
            seconds = timed(lambda p=pixels: model.encode_frames(p), args.repeats, args.device)
            tag = f"{name} {args.device} {args.dtype} batch={batch}"
            print(f"encode_frames {tag}: {batch / seconds:.2f} frames/s", flush=True)
            seconds = timed(lambda f=features: model.frame_tokens(f, QUESTION), args.repeats, args.device)
            print(f"frame_tokens {tag}: {batch / seconds:.2f} frames/s", flush=True)
            if args.device.startswith("cuda"):
                peak = torch.cuda.max_memory_allocated() - base
                print(f"peak_gpu_memory_per_frame {tag}: {peak / batch / 2**20:.1f} MiB", flush=True)
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"peak_rss_growth_per_frame {name} {args.device} {args.dtype} batch={batches[-1]}: "
              f"{(rss_peak - rss_base) / 1024 / batches[-1]:.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
