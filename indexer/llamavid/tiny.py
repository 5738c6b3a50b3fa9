"""Tiny random LLaMA-VID checkpoints in the official on-disk layout, for tests, demos and
benchmarks. Nothing here bypasses loading: everything is written to disk exactly as a release
is laid out, and read back through `LlamaVid.from_pretrained`.

    root/
      model/                     config.json, pytorch_model-*.bin + index (or safetensors),
                                 tokenizer.model, tokenizer_config.json, generation_config.json
      model_zoo/LAVIS/eva_vit_g.pth   EVA ViT state dict, LAVIS keys, one block more than used
      llamavid/processor/clip-patch14-S/   CLIP processor config
      bert-base-uncased/         Q-Former BERT config.json + vocab.txt
"""

from __future__ import annotations

import io
import json
import math
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from indexer.llamavid.configuration_llamavid import EVA_HEAD_WIDTH, EVA_MLP_RATIO, PRETRAINED_QFORMER_WIDTH

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class TinySpec:
    """Sizes and options of a tiny checkpoint; defaults mirror the shape of a real release."""

    vision_width: int = 176
    vision_depth: int = 2
    image_size: int = 112
    patch_size: int = 14
    qformer_hidden: int = 64
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_intermediate: int | None = None  # None: 2 x qformer_hidden
    num_query: int = 16
    bert_type: str = "qformer_pretrain"
    compress_type: str | None = "mean"
    mm_projector_type: str = "mlp2x_gelu"
    llm_hidden: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    llm_kv_heads: int = 4
    llm_vocab: int = 600
    llm_intermediate: int | None = None  # None: 2 x llm_hidden
    max_position_embeddings: int = 2048
    rope_scaling: dict | None = None
    weights_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    weights_format: Literal["bin", "safetensors"] = "bin"
    processor_format: Literal["int", "dict"] = "int"
    shard_bytes: int = 2_000_000
    seed: int = 0


def real_dims_spec(llm_layers: int = 1, **overrides) -> TinySpec:
    """LLaMA-VID-7B's dimensions (EVA ViT-g 1408 wide, 39 blocks used, 224 px; BERT-base Q-Former,
    32 queries; LLaMA-7B's width and MLP) in bfloat16, with `llm_layers` LLM layers (32 in the
    release; the LLM's size is what a benchmark chooses). The vocabularies stay the tiny
    tokenizers' (about 600 LLM pieces instead of 32,000)."""
    return TinySpec(**{**dict(
        vision_width=1408, vision_depth=39, image_size=224, qformer_hidden=768, qformer_layers=12, qformer_heads=12,
        qformer_intermediate=3072, num_query=32, llm_hidden=4096, llm_layers=llm_layers, llm_heads=32,
        llm_kv_heads=32, llm_intermediate=11008, max_position_embeddings=4096, weights_dtype="bfloat16",
        shard_bytes=2_000_000_000), **overrides})


def _llm_intermediate(spec: TinySpec) -> int:
    return spec.llm_intermediate or 2 * spec.llm_hidden


def _qformer_intermediate(spec: TinySpec) -> int:
    return spec.qformer_intermediate or 2 * spec.qformer_hidden


# -- tokenizers -----------------------------------------------------------------------------------
def _corpus() -> list[str]:
    words = ("the a an and or of to in on at is was are what when where who why how this that video movie "
             "frame person car red blue green gate door stops leaves holds left right happening describe "
             "chat between curious user artificial intelligence assistant gives helpful detailed polite "
             "answers questions below memorize content answer my question after watching now end hello "
             "there we should go parcel courier camera street night day goal scoreboard studio feed").split()
    lines = [" ".join(words[i:i + 9]) for i in range(0, len(words), 3)]
    lines += ["USER: hi ASSISTANT: hello.", "A chat between a curious user and an artificial intelligence "
              "assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
              "Below is a movie. Memorize the content and answer my question after watching this movie.",
              "Numbers 0 1 2 3 4 5 6 7 8 9 at 12:05 on 2024-11-24.", string.ascii_letters + string.punctuation]
    return lines * 4


def write_llama_tokenizer(model_dir: Path, vocab_size: int) -> None:
    """A sentencepiece BPE model with LLaMA's conventions (byte fallback, split digits, no
    whitespace normalisation, ids unk 0 / bos 1 / eos 2)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    (model_dir / "tokenizer.model").write_bytes(model.getvalue())
    special = {"__type": "AddedToken", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": {**special, "content": "<s>"},
        "eos_token": {**special, "content": "</s>"}, "unk_token": {**special, "content": "<unk>"},
        "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 2048, "pad_token": None,
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer"}, indent=2))


def write_bert_files(bert_dir: Path, spec: TinySpec) -> int:
    """A lowercase WordPiece vocab standing in for bert-base-uncased, and its BERT config.
    Returns the vocab size (the Q-Former adds `[DEC]` after it)."""
    words = sorted({w for line in _corpus() for w in line.lower().replace(".", " ").replace(",", " ").split()
                    if w.isalpha()})
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = list(dict.fromkeys(specials + chars + ["##" + c for c in chars] + words))
    bert_dir.mkdir(parents=True, exist_ok=True)
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (bert_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    (bert_dir / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": spec.qformer_hidden, "num_hidden_layers": spec.qformer_layers,
        "num_attention_heads": spec.qformer_heads, "intermediate_size": _qformer_intermediate(spec),
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "vocab_size": len(vocab), "position_embedding_type": "absolute"}, indent=2))
    return len(vocab)


def write_processor(processor_dir: Path, spec: TinySpec) -> None:
    processor_dir.mkdir(parents=True, exist_ok=True)
    size = spec.image_size
    if spec.processor_format == "int":
        sizes = {"size": size, "crop_size": size}
    else:
        sizes = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    (processor_dir / "preprocessor_config.json").write_text(json.dumps({
        **sizes, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3}, indent=2))
    (processor_dir / "config.json").write_text(json.dumps({
        "model_type": "clip", "vision_config": {"image_size": size, "patch_size": spec.patch_size}}, indent=2))


# -- weights ---------------------------------------------------------------------------------------
class _Random:
    """Random tensors scaled so that every stage carries signal through a few layers, drawn in
    float32 and stored in `dtype` at once (a checkpoint of real dimensions never exists in float32)."""

    def __init__(self, seed: int, dtype: torch.dtype = torch.float32):
        self.gen = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def linear(self, out_f: int, in_f: int, bias: bool = True, gain: float = 1.0) -> dict[str, torch.Tensor]:
        w = (gain * (torch.randn(out_f, in_f, generator=self.gen) / math.sqrt(in_f))).to(self.dtype)
        if not bias:
            return {"weight": w}
        return {"weight": w, "bias": (gain * (0.02 * torch.randn(out_f, generator=self.gen))).to(self.dtype)}

    def norm(self, width: int, bias: bool = True) -> dict[str, torch.Tensor]:
        w = (1.0 + 0.1 * torch.randn(width, generator=self.gen)).to(self.dtype)
        if not bias:
            return {"weight": w}
        return {"weight": w, "bias": (0.02 * torch.randn(width, generator=self.gen)).to(self.dtype)}

    def normal(self, *shape: int, std: float = 1.0) -> torch.Tensor:
        return (std * torch.randn(*shape, generator=self.gen)).to(self.dtype)


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def eva_state_dict(spec: TinySpec, rnd: _Random, blocks: int) -> dict[str, torch.Tensor]:
    """The LAVIS EVA ViT keys (`eva_vit_g.pth`)."""
    width, mlp = spec.vision_width, int(spec.vision_width * EVA_MLP_RATIO)
    grid = spec.image_size // spec.patch_size
    state = {"cls_token": rnd.normal(1, 1, width, std=0.5), "pos_embed": rnd.normal(1, grid * grid + 1, width, std=0.5),
             **_prefixed("patch_embed.proj", {"weight": rnd.normal(width, 3, spec.patch_size, spec.patch_size,
                                                                   std=1 / spec.patch_size),
                                              "bias": rnd.normal(width, std=0.02)})}
    for i in range(blocks):
        state |= _prefixed(f"blocks.{i}.norm1", rnd.norm(width))
        state |= {f"blocks.{i}.attn.q_bias": rnd.normal(width, std=0.02),
                  f"blocks.{i}.attn.v_bias": rnd.normal(width, std=0.02)}
        state |= _prefixed(f"blocks.{i}.attn.qkv", rnd.linear(3 * width, width, bias=False))
        state |= _prefixed(f"blocks.{i}.attn.proj", rnd.linear(width, width))
        state |= _prefixed(f"blocks.{i}.norm2", rnd.norm(width))
        state |= _prefixed(f"blocks.{i}.mlp.fc1", rnd.linear(mlp, width))
        state |= _prefixed(f"blocks.{i}.mlp.fc2", rnd.linear(width, mlp))
    return state


def llamavid_state_dict(spec: TinySpec, rnd: _Random, qformer_vocab: int) -> dict[str, torch.Tensor]:
    """Every key of an official `LlavaLlamaAttForCausalLM` checkpoint."""
    hidden, width, qh = spec.llm_hidden, spec.vision_width, spec.qformer_hidden
    head_dim = hidden // spec.llm_heads
    state = {"model.embed_tokens.weight": rnd.normal(spec.llm_vocab, hidden),
             **_prefixed("model.norm", rnd.norm(hidden, bias=False)),
             **_prefixed("lm_head", rnd.linear(spec.llm_vocab, hidden, bias=False))}
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(spec.llm_layers):
        p = f"model.layers.{i}"
        for name, out_f in (("q_proj", hidden), ("k_proj", spec.llm_kv_heads * head_dim),
                            ("v_proj", spec.llm_kv_heads * head_dim), ("o_proj", hidden)):
            state |= _prefixed(f"{p}.self_attn.{name}", rnd.linear(out_f, hidden, bias=False))
        state[f"{p}.self_attn.rotary_emb.inv_freq"] = inv_freq
        inter = _llm_intermediate(spec)
        for name, (out_f, in_f) in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                                    ("down_proj", (hidden, inter))):
            state |= _prefixed(f"{p}.mlp.{name}", rnd.linear(out_f, in_f, bias=False))
        state |= _prefixed(f"{p}.input_layernorm", rnd.norm(hidden, bias=False))
        state |= _prefixed(f"{p}.post_attention_layernorm", rnd.norm(hidden, bias=False))

    if spec.mm_projector_type == "linear":
        state |= _prefixed("model.mm_projector", rnd.linear(hidden, width))
    else:
        depth = int(spec.mm_projector_type.removeprefix("mlp").removesuffix("x_gelu"))
        for j in range(depth):
            state |= _prefixed(f"model.mm_projector.{2 * j}", rnd.linear(hidden, width if j == 0 else hidden))

    pretrained = "pretrain" in spec.bert_type
    visual = PRETRAINED_QFORMER_WIDTH if pretrained else width
    bert = "model.vlm_att_encoder.bert"
    state[f"{bert}.embeddings.position_ids"] = torch.arange(512)[None]
    state[f"{bert}.embeddings.word_embeddings.weight"] = rnd.normal(qformer_vocab, qh, std=0.5)
    state[f"{bert}.embeddings.position_embeddings.weight"] = rnd.normal(512, qh, std=0.5)
    state |= _prefixed(f"{bert}.embeddings.LayerNorm", rnd.norm(qh))
    inter = _qformer_intermediate(spec)
    for i in range(spec.qformer_layers):
        p = f"{bert}.encoder.layer.{i}"
        for part, kv_width in [("attention", qh)] + ([("crossattention", visual)] if i % 2 == 0 else []):
            state |= _prefixed(f"{p}.{part}.self.query", rnd.linear(qh, qh))
            state |= _prefixed(f"{p}.{part}.self.key", rnd.linear(qh, kv_width))
            state |= _prefixed(f"{p}.{part}.self.value", rnd.linear(qh, kv_width))
            state |= _prefixed(f"{p}.{part}.output.dense", rnd.linear(qh, qh))
            state |= _prefixed(f"{p}.{part}.output.LayerNorm", rnd.norm(qh))
        for suffix in ("", "_query"):
            state |= _prefixed(f"{p}.intermediate{suffix}.dense", rnd.linear(inter, qh))
            state |= _prefixed(f"{p}.output{suffix}.dense", rnd.linear(qh, inter))
            state |= _prefixed(f"{p}.output{suffix}.LayerNorm", rnd.norm(qh))
    state["model.vlm_att_query"] = rnd.normal(1, spec.num_query, qh, std=0.5)
    # sharper context attention than 1/sqrt(fan_in) weights would give, so the scores are not uniform
    state |= _prefixed("model.vlm_att_projector", rnd.linear(width, qh, gain=4))
    state |= _prefixed("model.vlm_att_key_projector", rnd.linear(width, width, gain=4))
    state |= _prefixed("model.vlm_att_val_projector", rnd.linear(hidden, width))
    if pretrained:
        state |= _prefixed("model.vlm_att_ln", rnd.norm(visual))
        if width != visual:
            state |= _prefixed("model.vlm_att_bert_proj", rnd.linear(visual, width))
    return state


def _save_sharded(state: dict[str, torch.Tensor], model_dir: Path, spec: TinySpec) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > spec.shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.contiguous()
        size += nbytes
    ext, index_name = (("bin", "pytorch_model.bin.index.json") if spec.weights_format == "bin"
                       else ("safetensors", "model.safetensors.index.json"))
    stem = "pytorch_model" if spec.weights_format == "bin" else "model"
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}"
        if spec.weights_format == "bin":
            torch.save(shard, model_dir / name)
        else:
            save_file(shard, str(model_dir / name), metadata={"format": "pt"})
        weight_map |= {key: name for key in shard}
    total = sum(t.numel() * t.element_size() for t in state.values())
    (model_dir / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                   indent=2))


def make_tiny_checkpoint(root: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a random LLaMA-VID in the official layout under `root`; returns the model folder."""
    if spec.vision_width % EVA_HEAD_WIDTH:
        raise ValueError(f"vision_width must be a multiple of {EVA_HEAD_WIDTH}, got {spec.vision_width}")
    root = Path(root)
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, spec.weights_dtype)
    rnd = _Random(spec.seed, dtype)

    write_llama_tokenizer(model_dir, spec.llm_vocab)
    vocab = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model")).get_piece_size()
    spec = TinySpec(**{**asdict(spec), "llm_vocab": vocab})
    bert_vocab = write_bert_files(root / "bert-base-uncased", spec)
    processor_name = f"clip-patch14-{spec.image_size}"
    write_processor(root / "llamavid" / "processor" / processor_name, spec)

    eva = eva_state_dict(spec, rnd, blocks=spec.vision_depth + 1)
    (root / "model_zoo" / "LAVIS").mkdir(parents=True, exist_ok=True)
    torch.save({k: v.to(dtype) for k, v in eva.items()}, root / "model_zoo" / "LAVIS" / "eva_vit_g.pth")

    state = llamavid_state_dict(spec, rnd, qformer_vocab=bert_vocab + 1)  # + [DEC]
    # releases carry a copy of the vision tower that the official loader ignores
    state |= {f"model.vision_tower.vision_tower.{k}": v for k, v in eva.items() if not k.startswith(
        f"blocks.{spec.vision_depth}.")}
    _save_sharded({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, model_dir, spec)

    (model_dir / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaAttForCausalLM"], "model_type": "llava", "bert_type": spec.bert_type,
        "compress_type": spec.compress_type, "num_query": spec.num_query, "hidden_act": "silu",
        "hidden_size": spec.llm_hidden, "intermediate_size": _llm_intermediate(spec),
        "num_hidden_layers": spec.llm_layers, "num_attention_heads": spec.llm_heads,
        "num_key_value_heads": spec.llm_kv_heads, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "max_position_embeddings": spec.max_position_embeddings, "max_token": 2048, "rope_scaling": spec.rope_scaling,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "pretraining_tp": 1, "tie_word_embeddings": False,
        "image_aspect_ratio": "pad", "image_processor": f"./llamavid/processor/{processor_name}",
        "mm_hidden_size": spec.vision_width, "mm_projector_type": spec.mm_projector_type,
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": "./model_zoo/LAVIS/eva_vit_g.pth",
        "torch_dtype": spec.weights_dtype, "use_cache": True, "use_mm_proj": True}, indent=2))
    (model_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "temperature": 0.9, "top_p": 0.6}, indent=2))
    return model_dir


__all__ = ["TinySpec", "make_tiny_checkpoint", "real_dims_spec"]
