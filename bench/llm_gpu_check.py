"""vLLM against transformers on the same prompt embedding, on a CUDA machine.

    pip install vllm                                  # on a fresh GPU box, in this checkout
    python bench/llm_gpu_check.py                     # tiny random LLaMA-VID, bfloat16
    python bench/llm_gpu_check.py --size 7b --frames 1000   # LLaMA-7B dimensions, random weights
    python bench/llm_gpu_check.py --server            # also `vllm serve ... --enable-prompt-embeds` over HTTP

It writes a random LLaMA-VID in the official layout (`indexer.llamavid.tiny`, what `vidx tiny`
writes), exports its LLM (`vidx export-llm`), builds one movie prompt embedding [L, D] from
random frames with `LlamaVid`, and answers it greedily with each backend: `TransformersBackend`
(the loaded LlamaVid), `VllmBackend` (vLLM in this process) and, with --server, `VllmServerBackend`
against a `vllm serve` it starts on 127.0.0.1 and stops at the end. One figure per line:

    transformers first_token_s: 0.0123        (median of --repeats runs after one warm-up)
    vllm total_s: 0.0456
    vllm greedy ids agree with transformers: yes (32 of 32)

Exit status 1 when the ids differ. In bfloat16 two engines may part at a near-tie late in the
answer (different kernels round differently); the line names the first differing position.

Sizes: `tiny` is the test model with a 256-wide, 2-layer LLM (head dim 64, which every vLLM
attention backend takes). `7b` has LLaMA-7B's LLM (hidden 4096, 32 layers, 32 heads, MLP 11008,
4096 positions) with random weights, on the tiny model's vision side and tokenizer; its vocabulary
is the tiny tokenizer's (about 600 pieces instead of 32000: vLLM must be able to detokenize every
id), which changes the LM head's cost by about 2%. It needs about 30 GB of disk and 20 GB of GPU
memory besides vLLM's share.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# run from a checkout without `pip install -e .`: the repository root goes first on the path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from indexer.llamavid import LlamaVid  # noqa: E402
from indexer.llamavid.tiny import TinySpec, make_tiny_checkpoint  # noqa: E402
from indexer.llm.base import Generation, LLMBackend  # noqa: E402
from indexer.llm.export import export_llm  # noqa: E402
from indexer.llm.transformers_backend import TransformersBackend  # noqa: E402
from indexer.settings import LLMSettings  # noqa: E402

QUESTION = "When does the courier leave the parcel at the door, and what does he do next?"
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "max_position_embeddings": 4096}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "7b"], default="tiny")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                        help="dtype of LlamaVid and of vLLM's computation")
    parser.add_argument("--frames", type=int, default=64, help="frames in the movie prompt (2 tokens each)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backend, after one warm-up")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.4)
    parser.add_argument("--server", action="store_true", help="also start `vllm serve` and ask it over HTTP")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--server-start-timeout-s", type=float, default=900)
    parser.add_argument("--workdir", help="keep the checkpoints here (default: a temporary folder, removed)")
    return parser.parse_args(argv)


# -- checkpoints ----------------------------------------------------------------------------------
def tiny_release(root: Path) -> Path:
    return make_tiny_checkpoint(root, TinySpec(llm_hidden=256, llm_layers=2, llm_heads=4, llm_kv_heads=4))


def llama7b_release(root: Path) -> Path:
    """The tiny release with its LLM replaced by LLaMA-7B-sized random weights (bfloat16 safetensors)."""
    from safetensors.torch import load_file, save_file

    hidden = LLAMA_7B["hidden_size"]
    spec = TinySpec(llm_hidden=hidden, llm_layers=1, llm_heads=32, llm_kv_heads=32, weights_dtype="bfloat16",
                    weights_format="safetensors", shard_bytes=4_000_000_000, num_query=32)
    model_dir = make_tiny_checkpoint(root, spec)
    config = json.loads((model_dir / "config.json").read_text())
    index_path = model_dir / "model.safetensors.index.json"
    old_shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    rest = {}
    for shard in old_shards:  # everything but the LLM: vision copy, Q-Former, projectors
        rest |= {k: v for k, v in load_file(str(model_dir / shard)).items()
                 if not k.startswith(("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head."))}
        (model_dir / shard).unlink()

    device = "cuda" if torch.cuda.is_available() else "cpu"  # random numbers are much faster on the GPU
    gen = torch.Generator(device).manual_seed(0)

    def rand(*shape: int, std: float) -> torch.Tensor:
        return (std * torch.randn(*shape, generator=gen, device=device)).to(torch.bfloat16).cpu()

    def norm() -> torch.Tensor:
        return (1 + rand(hidden, std=0.1).float()).to(torch.bfloat16)

    vocab, inter = config["vocab_size"], LLAMA_7B["intermediate_size"]
    shards = [rest | {"model.embed_tokens.weight": rand(vocab, hidden, std=1.0), "model.norm.weight": norm(),
                      "lm_head.weight": rand(vocab, hidden, std=hidden ** -0.5)}]
    for i in range(LLAMA_7B["num_hidden_layers"]):
        p = f"model.layers.{i}"
        layer = {f"{p}.self_attn.{n}.weight": rand(hidden, hidden, std=hidden ** -0.5)
                 for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
        layer |= {f"{p}.mlp.gate_proj.weight": rand(inter, hidden, std=hidden ** -0.5),
                  f"{p}.mlp.up_proj.weight": rand(inter, hidden, std=hidden ** -0.5),
                  f"{p}.mlp.down_proj.weight": rand(hidden, inter, std=inter ** -0.5),
                  f"{p}.input_layernorm.weight": norm(), f"{p}.post_attention_layernorm.weight": norm()}
        if i % 4 == 0:
            shards.append({})
        shards[-1] |= layer
    weight_map = {}
    for n, shard in enumerate(shards, start=1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(model_dir / name), metadata={"format": "pt"})
        weight_map |= {k: name for k in shard}
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    (model_dir / "config.json").write_text(json.dumps(config | LLAMA_7B, indent=2))
    return model_dir


def prompt_embeds(model: LlamaVid, num_frames: int) -> torch.Tensor:
    """A movie prompt over random frames: [L, D] on the model's device."""
    size = model.config.vision.image_size
    frames = np.random.default_rng(0).integers(0, 255, (num_frames, size, size, 3), dtype=np.uint8)
    features = model.encode_frames(model.preprocess(frames))[:, 1:]  # long-video path
    ids = model.prompt_ids(QUESTION, num_frames, mode="movie")
    return model.inputs_embeds(ids, model.frame_tokens(features, QUESTION))


# -- measuring ------------------------------------------------------------------------------------
def measure(name: str, backend: LLMBackend, embeds: torch.Tensor, args: argparse.Namespace) -> Generation:
    backend.generate(embeds, max_new_tokens=args.max_new_tokens)  # warm-up: compilation, CUDA graphs, caches
    runs = [backend.generate(embeds, max_new_tokens=args.max_new_tokens) for _ in range(args.repeats)]
    print(f"{name} first_token_s: {statistics.median(r.first_token_s for r in runs):.4f}")
    print(f"{name} total_s: {statistics.median(r.total_s for r in runs):.4f}")
    print(f"{name} new_tokens: {len(runs[-1].token_ids)}")
    if any(r.token_ids != runs[0].token_ids for r in runs):
        print(f"{name} repeat runs agree: no")
    return runs[-1]


def agreement(name: str, ids: list[int], reference: list[int]) -> bool:
    same = next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b), None)
    if same is None and len(ids) == len(reference):
        print(f"{name} greedy ids agree with transformers: yes ({len(ids)} of {len(reference)})")
        return True
    where = same if same is not None else min(len(ids), len(reference))
    print(f"{name} greedy ids agree with transformers: no (first difference at new token {where}; "
          f"{len(ids)} vs {len(reference)} tokens)")
    return False


def start_server(llm_dir: Path, args: argparse.Namespace, max_model_len: int) -> subprocess.Popen:
    vllm = shutil.which("vllm")
    if vllm is None:
        raise SystemExit("--server needs the `vllm` command (pip install vllm)")
    command = [vllm, "serve", str(llm_dir), "--enable-prompt-embeds", "--host", "127.0.0.1", "--port", str(args.port),
               "--dtype", args.dtype, "--max-model-len", str(max_model_len),
               "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    print("starting:", " ".join(command), flush=True)
    return subprocess.Popen(command)


def wait_for_server(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"`vllm serve` exited with status {process.returncode} before it answered")
        try:
            if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit(f"`vllm serve` did not answer at {url} within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA device (and `pip install vllm`)")
    from indexer.llm.vllm_backend import VllmBackend, VllmServerBackend

    dtype = getattr(torch, args.dtype)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="llm_gpu_check_"))
    try:
        start = time.perf_counter()
        model_dir = (llama7b_release if args.size == "7b" else tiny_release)(workdir / "release")
        report = export_llm(model_dir, workdir / "llm", force=True)
        print(f"release and export_s: {time.perf_counter() - start:.1f}")
        model = LlamaVid.from_pretrained(model_dir, device="cuda", dtype=dtype)
        embeds = prompt_embeds(model, args.frames)
        llm = model.config.llm
        print(f"device: {torch.cuda.get_device_name()}")
        print(f"model: {args.size} (hidden {llm['hidden_size']}, {llm['num_hidden_layers']} layers) {args.dtype}")
        print(f"prompt_tokens: {embeds.shape[0]}")
        if embeds.shape[0] + args.max_new_tokens > report.context_length:
            raise SystemExit(f"{embeds.shape[0]} prompt + {args.max_new_tokens} new tokens exceed the model's "
                             f"{report.context_length}: use fewer --frames")

        reference = measure("transformers", TransformersBackend(model), embeds, args)
        ok = True
        settings = LLMSettings(backend="vllm", model=str(report.out_dir), max_model_len=report.context_length,
                               gpu_memory_utilization=args.gpu_memory_utilization)
        with VllmBackend(settings, model) as backend:
            ok &= agreement("vllm", measure("vllm", backend, embeds, args).token_ids, reference.token_ids)
        if args.server:
            url = f"http://127.0.0.1:{args.port}/v1"
            process = start_server(report.out_dir, args, report.context_length)
            try:
                wait_for_server(url, process, args.server_start_timeout_s)
                server_settings = LLMSettings(backend="vllm-server", url=url, timeout_s=300)
                with VllmServerBackend(server_settings, model) as backend:
                    answer = measure("vllm-server", backend, embeds, args)
                ok &= agreement("vllm-server", answer.token_ids, reference.token_ids)
            finally:
                process.terminate()  # the server this script started, by its own handle
                process.wait(timeout=60)
        return 0 if ok else 1
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
