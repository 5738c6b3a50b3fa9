"""One prepared GPU check: real-dimension throughput of the encoder, the encoder inside the
pipeline's `FrameEncoder`, and the transformers backend's first-token time over a whole film.

    bench/gpu_check.sh                          # on a CUDA machine, from the repository root (< 8 min)
    python bench/gpu_check.py --device cpu --tiny   # the same code on tiny models (tests/test_gpu_check.py)

It needs what a bare GPU machine has (Python 3.12, torch, transformers, safetensors, numpy, pillow)
and, because `indexer` imports them, PyAV, pydantic and sentencepiece: bench/gpu_check.sh puts the
wheels of bench/wheelhouse/ (written by bench/gpu_wheelhouse.sh, about 40 MB) on the path first.
No Ray, FAISS or vLLM: vLLM's path is tested by the OpenAI-compatible stand-in server
(tests/llm/openai_server.py) and compared on a GPU by bench/llm_gpu_check.py.

What it builds (random weights; throughput does not depend on them):
- a LLaMA-VID release of LLaMA-VID-7B's dimensions in the official layout (`real_dims_spec`: EVA
  ViT-g 1408 x 39 blocks at 224 px, BERT-base Q-Former with 32 queries, 4096-wide projectors) with
  a 1-layer LLM, loaded with `parts="encoder"` as the encoder actors load it;
- a random CLIP ViT-L/14 image tower for the retrieval embedding (the default embedding model);
- a LLaMA-7B-sized LLM (4096 wide, 32 layers, MLP 11008, 4096 positions, linear rope x8 so that
  21,600 frame tokens fit) made in GPU memory, run by `TransformersBackend`.

One figure per line, `<figure> <model> <device> <dtype> <setting>: <value> <unit>`:
encode_frames / frame_tokens / frame_encoder frames/s and peak GPU memory per frame at batch
1/8/32/64, frame_encoder_ratio (FrameEncoder against encode_frames at the same batch; target
>= 0.8), llm_first_token_s and llm_prefill_tokens_per_s at 4,096 and 21,600 frame tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# run from a checkout without `pip install -e .`: the repository root goes first on the path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from indexer.batches import FrameBatch  # noqa: E402
from indexer.embedding import CLIP_VIT_L14_VISION, make_tiny_clip  # noqa: E402
from indexer.encoding import FrameEncoder  # noqa: E402
from indexer.llamavid import LlamaVid  # noqa: E402
from indexer.llamavid.modeling_llamavid import LlamaVidModel  # noqa: E402
from indexer.llamavid.tiny import TinySpec, make_tiny_checkpoint, real_dims_spec  # noqa: E402
from indexer.llm.transformers_backend import TransformersBackend  # noqa: E402
from indexer.settings import Settings  # noqa: E402

QUESTION = "When does the courier leave the parcel at the door, and what does he do next?"
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "max_position_embeddings": 4096,
            "rope_scaling": {"type": "linear", "factor": 8.0}}
FRAME_SIZE = (224, 398)  # (H, W): what the reader gives a 16:9 source at its default short_side 224


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="tiny models (the test suite's CPU run)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--frame-tokens", type=int, nargs="+", default=None,
                        help="frame tokens in the LLM prompts (default 4096 21600; --tiny: 64 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure, after one warm-up")
    parser.add_argument("--workdir", help="write the random checkpoints here (default: a temporary folder)")
    return parser.parse_args(argv)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median seconds of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- models ---------------------------------------------------------------------------------------
def frame_encoder(workdir: Path, args: argparse.Namespace) -> FrameEncoder:
    """The encoder as an encoder actor loads it: `FrameEncoder.from_settings` (encoder parts only)."""
    spec = TinySpec(image_size=224) if args.tiny else real_dims_spec(llm_layers=1)
    model_dir = make_tiny_checkpoint(workdir / "llamavid", spec)
    clip = make_tiny_clip(workdir / "clip", projection_dim=32 if args.tiny else 768,
                          vision_config=None if args.tiny else CLIP_VIT_L14_VISION)
    settings = Settings.model_validate({"model": {"model_dir": str(model_dir), "device": args.device,
                                                  "dtype": args.dtype},
                                        "embedding": {"model": str(clip)}})
    return FrameEncoder.from_settings(settings)


def llm_model(encoder: LlamaVid, args: argparse.Namespace) -> LlamaVid:
    """LLaMA-VID with a LLaMA-7B-sized random LLM made on the device (no checkpoint: 13 GB of
    random weights would take longer to write and read than the check itself)."""
    llm = dict(encoder.config.llm)
    if not args.tiny:
        llm |= LLAMA_7B
    config = dataclasses.replace(encoder.config, llm=llm)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, args.dtype))
    try:
        with torch.device(args.device):
            model = LlamaVidModel(config, parts="all")
    finally:
        torch.set_default_dtype(default_dtype)
    return LlamaVid(model, encoder.image_processor, encoder.tokenizer, encoder.qformer_tokenizer, {}, encoder.model_dir)


# -- figures --------------------------------------------------------------------------------------
def bench_encoder(encoder: FrameEncoder, tag: str, args: argparse.Namespace) -> None:
    model = encoder.model
    rng = np.random.default_rng(0)
    for batch in args.batch_sizes:
        frames = [rng.integers(0, 255, (*FRAME_SIZE, 3), dtype=np.uint8) for _ in range(batch)]
        pixels = model.preprocess(frames)  # (B, 3, S, S) on the device
        synchronize(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        features = model.encode_frames(pixels)  # (B, 1+N, C)
        if args.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() - base
            print(f"peak_gpu_memory_per_frame {tag} batch={batch}: {peak / batch / 2**20:.1f} MiB", flush=True)
        encode_s = timed(lambda p=pixels: model.encode_frames(p), args.repeats, args.device)
        print(f"encode_frames {tag} batch={batch}: {batch / encode_s:.2f} frames/s", flush=True)
        tokens_s = timed(lambda f=features: model.frame_tokens(f, QUESTION), args.repeats, args.device)
        print(f"frame_tokens {tag} batch={batch}: {batch / tokens_s:.2f} frames/s", flush=True)
        # the pipeline's whole encoder step: uint8 frames in, features, content tokens, retrieval
        # embeddings and thumbnails out, on the CPU as numpy
        frame_batch = FrameBatch("cam", 0, batch, np.arange(batch, dtype=np.int64), np.arange(batch, dtype=np.float64),
                                 np.full(batch, np.nan), frames, [None] * batch)
        pipeline_s = timed(lambda b=frame_batch: encoder([b]), args.repeats, args.device)
        print(f"frame_encoder {tag} batch={batch}: {batch / pipeline_s:.2f} frames/s", flush=True)
        print(f"frame_encoder_ratio {tag} batch={batch}: {encode_s / pipeline_s:.2f} (target >= 0.8)", flush=True)


def bench_llm(model: LlamaVid, tag: str, args: argparse.Namespace) -> None:
    backend = TransformersBackend(model)
    per_frame = model.tokens_per_frame
    hidden = model.config.hidden_size
    generator = torch.Generator(args.device).manual_seed(0)

    def prompt(frame_tokens: int) -> torch.Tensor:
        frames = frame_tokens // per_frame
        ids = model.prompt_ids(QUESTION, frames, mode="movie")
        tokens = torch.randn(frames, per_frame, hidden, generator=generator, device=args.device)  # (T, 1+P, D)
        return model.inputs_embeds(ids, tokens.to(model.dtype))  # (L, D)

    backend.generate(prompt(per_frame * 8), max_new_tokens=2)  # warm-up: kernels, allocator
    for frame_tokens in args.frame_tokens or ([64, 256] if args.tiny else [4096, 21600]):
        embeds = prompt(frame_tokens)
        runs = [backend.generate(embeds, max_new_tokens=2) for _ in range(args.repeats)]
        first_token_s = statistics.median(r.first_token_s for r in runs)
        setting = f"frame_tokens={frame_tokens} prompt_tokens={embeds.shape[0]}"
        print(f"llm_first_token_s {tag} {setting}: {first_token_s:.6f} s", flush=True)
        print(f"llm_prefill_tokens_per_s {tag} {setting}: {embeds.shape[0] / first_token_s:.0f} tokens/s", flush=True)
        del embeds, runs
        if args.device.startswith("cuda"):
            print(f"llm_peak_gpu_memory {tag} {setting}: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for the CPU version")
    started = time.perf_counter()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"gpu_check device: {device_name}, torch {torch.__version__}, transformers {transformers.__version__}",
          flush=True)
    size = "tiny" if args.tiny else "real-dims"
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        encoder = frame_encoder(Path(tmp), args)
        print(f"gpu_check encoder checkpoint written and loaded (parts=encoder): {time.perf_counter() - start:.1f} s",
              flush=True)
        bench_encoder(encoder, f"{size} {args.device} {args.dtype}", args)
        model = llm_model(encoder.model, args)
        del encoder
        llm = model.config.llm
        bench_llm(model, f"{size}(llm {llm['hidden_size']}x{llm['num_hidden_layers']}) {args.device} {args.dtype}",
                  args)
    print(f"gpu_check total_s: {time.perf_counter() - started:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
