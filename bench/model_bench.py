"""Frames per second of `encode_frames` and `frame_tokens`, and peak memory per frame.

    python bench/model_bench.py                       # tiny checkpoint through from_pretrained, CPU
    python bench/model_bench.py --real-dims --device cuda --dtype bfloat16
                                                      # official dimensions, random weights

One figure per line: `<stage> <model> <device> <dtype> batch=<B>: <value> <unit>`.
--real-dims builds the official sizes (EVA ViT-g 1408 x 39 blocks at 224 px, BERT-base Q-Former
with 32 queries, a 4096-wide LLM side) with random weights: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

import numpy as np
import torch

from indexer.llamavid import LlamaVid, LlamaVidConfig, QFormerConfig, VisionTowerConfig
from indexer.llamavid.checkpoint import BUNDLED_PROCESSORS
from indexer.llamavid.modeling_llamavid import LlamaVidModel
from indexer.llamavid.tiny import make_tiny_checkpoint

QUESTION = "When does the courier leave the parcel at the door, and what does he do next?"


def real_dims_model(tmp: str, device: str, dtype: torch.dtype) -> LlamaVid:
    from transformers.models.clip import CLIPImageProcessorPil

    tiny = LlamaVid.from_pretrained(make_tiny_checkpoint(tmp))  # tokenizers only
    config = LlamaVidConfig(
        vision=VisionTowerConfig(width=1408, depth=39, patch_size=14, image_size=224),
        qformer=QFormerConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, vocab_size=30523,
                              max_position_embeddings=512, layer_norm_eps=1e-12, visual_width=1408, num_query=32),
        llm=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=1, num_attention_heads=32,
                 vocab_size=32000, max_position_embeddings=2048),
        bert_type="qformer_pretrain", compress_type="mean", mm_projector_type="mlp2x_gelu",
        mm_vision_select_feature="patch")
    with torch.device(device):
        model = LlamaVidModel(config).to(dtype)
    processor = CLIPImageProcessorPil.from_pretrained(str(BUNDLED_PROCESSORS / "clip-patch14-224"))
    return LlamaVid(model, processor, tiny.tokenizer, tiny.qformer_tokenizer, {}, tiny.model_dir)


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
    args = parser.parse_args()
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
