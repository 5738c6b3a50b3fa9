"""What a user needs to know about a LLaMA-VID checkpoint before running it, found without
building the model: tokens per frame, sizes, parameter counts per part, context length, dtype,
and which of its files could not be found."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from indexer.llamavid import checkpoint as ckpt
from indexer.llamavid.pipeline import (ResolvedAssets, read_llamavid_config, read_model_config,
                                       resolve_image_processor, resolve_vision_tower)

# Parts of an official checkpoint, by key prefix (first match wins).
_PARTS = [
    ("vision tower copy (ignored)", r"^model\.vision_tower\."),
    ("Q-Former", r"^model\.vlm_att_(encoder|query)"),
    ("context attention", r"^model\.vlm_att_"),
    ("content projector", r"^model\.mm_projector\."),
    ("language model", r"^(model\.|lm_head\.)"),
]


@dataclass
class ModelInfo:
    model_dir: Path
    fields: dict[str, object] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"model: {self.model_dir}"]
        out += [f"  {k}: {v}" for k, v in self.fields.items()]
        if self.parameters:
            out.append("parameters:")
            out += [f"  {k}: {v:,}" for k, v in self.parameters.items()]
        out.append("not found:" if self.missing else "not found: nothing, every file is there")
        out += [f"  - {m}" for m in self.missing]
        return out


def _count(state: dict[str, torch.Tensor]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for key, tensor in state.items():
        if re.search(r"(inv_freq|position_ids)$", key):
            continue
        part = next((name for name, pattern in _PARTS if re.match(pattern, key)), "other")
        counts[part] += tensor.numel()
    return dict(counts)


def describe(model_dir: str | Path, vision_tower=None, image_processor=None, qformer=None) -> ModelInfo:
    model_dir = ckpt.resolve_model_dir(model_dir)
    info = ModelInfo(model_dir)
    config = read_model_config(model_dir)
    state: dict[str, torch.Tensor] = {}
    try:
        state = ckpt.load_model_weights(model_dir)
    except ckpt.CheckpointError as exc:
        info.missing.append(str(exc))
    found = {}
    for what, resolve in (("vision_tower", lambda: resolve_vision_tower(model_dir, config, vision_tower)),
                          ("image_processor", lambda: resolve_image_processor(model_dir, config, image_processor)),
                          ("qformer",
                           lambda: ckpt.resolve_qformer_dir(str(qformer or ckpt.DEFAULT_QFORMER), model_dir))):
        try:
            found[what] = resolve()
        except (FileNotFoundError, ckpt.CheckpointError) as exc:
            info.missing.append(str(exc))
    assets = ResolvedAssets(**found) if len(found) == 3 else None
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()})
    info.fields |= {"architecture": (config.get("architectures") or ["?"])[0],
                    "weights dtype": ", ".join(dtypes) or "?", "bert_type": config.get("bert_type"),
                    "compress_type": config.get("compress_type"),
                    "mm_projector_type": config.get("mm_projector_type")}
    if state and assets is not None:
        eva = ckpt.load_eva_weights(assets.vision_tower)
        cfg = read_llamavid_config(model_dir, assets, state, eva)
        vision_params = sum(t.numel() for k, t in eva.items()
                            if not (m := re.match(r"blocks\.(\d+)\.", k)) or int(m.group(1)) < cfg.vision.depth)
        info.fields |= {
            "tokens per frame": f"{cfg.tokens_per_frame} (1 context + {cfg.content_tokens_per_frame} content)",
            "vision tower": f"EVA ViT width {cfg.vision.width}, depth {cfg.vision.depth}, "
                            f"{cfg.vision.num_heads} heads, patch {cfg.vision.patch_size}, "
                            f"{cfg.vision.image_size} px -> {cfg.vision.num_patches} patches",
            "Q-Former": f"width {cfg.qformer.hidden_size}, {cfg.qformer.num_layers} layers, {cfg.qformer.num_query} "
                        f"queries, visual width {cfg.qformer.visual_width}",
            "LLM": f"width {cfg.hidden_size}, {cfg.llm.get('num_hidden_layers')} layers, "
                   f"vocab {cfg.llm.get('vocab_size')}",
            "context length": f"{cfg.context_length} tokens"
                              + (f" (rope_scaling {cfg.llm['rope_scaling']})" if cfg.llm.get("rope_scaling") else ""),
            "frames that fit the context (movie mode)": cfg.context_length // cfg.tokens_per_frame,
            "vision tower file": str(assets.vision_tower), "image processor": str(assets.image_processor),
            "Q-Former tokenizer": str(assets.qformer)}
        info.parameters["vision tower"] = vision_params
    info.parameters |= _count(state)
    return info


__all__ = ["ModelInfo", "describe"]
