"""One typed configuration for a LLaMA-VID checkpoint, validated when built.

Structure comes from two places, as in the official code: the checkpoint's `config.json`
(LLM sizes, `bert_type`, `num_query`, `compress_type`, `mm_projector_type`, ...) and the weights
themselves (the EVA vision tower's width, patch size, grid and depth; the Q-Former's depth and
vocabulary). `checkpoint.py` reads both and builds a `LlamaVidConfig`; modules take it (or one of
its parts) as their only structural argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transformers import InstructBlipQFormerConfig, InstructBlipVisionConfig, LlamaConfig

EVA_HEAD_WIDTH = 88  # EVA ViT-g: heads = width // 88 (1408 -> 16)
EVA_MLP_RATIO = 4.3637
PRETRAINED_QFORMER_WIDTH = 1408  # "*pretrain*" bert types reuse InstructBLIP's Q-Former, built for EVA ViT-g


@dataclass(frozen=True)
class VisionTowerConfig:
    """EVA ViT (LAVIS layout) as LLaMA-VID builds it: qkv bias, LayerNorm eps 1e-6, no final norm."""

    width: int
    depth: int
    patch_size: int
    image_size: int

    def __post_init__(self) -> None:
        if self.width < EVA_HEAD_WIDTH or self.width % EVA_HEAD_WIDTH:
            raise ValueError(f"EVA vision tower width must be a multiple of {EVA_HEAD_WIDTH} "
                             f"(heads = width // {EVA_HEAD_WIDTH}), got {self.width}")
        if self.depth < 1:
            raise ValueError(f"vision tower depth must be >= 1, got {self.depth}")
        if self.image_size < self.patch_size:
            raise ValueError(f"image size {self.image_size} is smaller than the patch size {self.patch_size}")

    @property
    def num_heads(self) -> int:
        return self.width // EVA_HEAD_WIDTH

    @property
    def mlp_width(self) -> int:
        return int(self.width * EVA_MLP_RATIO)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    def to_hf(self) -> InstructBlipVisionConfig:
        return InstructBlipVisionConfig(
            hidden_size=self.width, intermediate_size=self.mlp_width, num_hidden_layers=self.depth,
            num_attention_heads=self.num_heads, image_size=self.image_size, patch_size=self.patch_size,
            hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, attention_dropout=0.0)


@dataclass(frozen=True)
class QFormerConfig:
    """The BERT text decoder that turns the question into text queries (`vlm_att_*`)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    visual_width: int  # width of the features its cross-attention reads
    num_query: int

    def to_hf(self) -> InstructBlipQFormerConfig:
        return InstructBlipQFormerConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, intermediate_size=self.intermediate_size,
            hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            max_position_embeddings=self.max_position_embeddings, layer_norm_eps=self.layer_norm_eps,
            cross_attention_frequency=2, encoder_hidden_size=self.visual_width, pad_token_id=0)


_PROJECTOR = re.compile(r"^(linear|mlp(\d+)x_gelu)$")
_COMPRESS = re.compile(r"^(mean|grid:(\d+))$")


@dataclass(frozen=True)
class LlamaVidConfig:
    vision: VisionTowerConfig
    qformer: QFormerConfig
    llm: dict[str, Any]  # LlamaConfig fields from config.json
    bert_type: str
    compress_type: str | None
    mm_projector_type: str
    mm_vision_select_feature: str

    def __post_init__(self) -> None:
        if "qformer" not in self.bert_type:
            raise ValueError(f"bert_type {self.bert_type!r} is not supported: LLaMA-VID releases use the "
                             "Q-Former types ('qformer', 'qformer_pretrain', 'qformer_pretrain_freeze', "
                             "'qformer_pretrain_freeze_all', optionally with 'layer:N')")
        if self.compress_type is not None and not _COMPRESS.match(self.compress_type):
            raise ValueError(f"unknown compress_type {self.compress_type!r}; use 'mean', 'grid:N' (N >= 2) "
                             "or null (every patch)")
        if self.grid_size is not None and self.grid_size < 2:
            raise ValueError(f"compress_type {self.compress_type!r}: grid size must be >= 2")
        if self.grid_size is not None and self.grid_size > self.vision.grid:
            raise ValueError(f"compress_type {self.compress_type!r} asks for a {self.grid_size}x{self.grid_size} "
                             f"grid but the vision tower has only {self.vision.grid}x{self.vision.grid} patches")
        if not _PROJECTOR.match(self.mm_projector_type):
            raise ValueError(f"unknown mm_projector_type {self.mm_projector_type!r}; use 'linear' or "
                             "'mlpNx_gelu' (e.g. 'mlp2x_gelu')")
        if self.mm_vision_select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unknown mm_vision_select_feature {self.mm_vision_select_feature!r}; "
                             "use 'patch' or 'cls_patch'")
        if self.pretrained_qformer and self.qformer.visual_width != PRETRAINED_QFORMER_WIDTH:
            raise ValueError(f"bert_type {self.bert_type!r} fixes the Q-Former's visual width at "
                             f"{PRETRAINED_QFORMER_WIDTH}, but its cross-attention reads {self.qformer.visual_width}")
        if not self.pretrained_qformer and self.qformer.visual_width != self.vision.width:
            raise ValueError(f"bert_type {self.bert_type!r}: the Q-Former reads the vision features directly, "
                             f"so its visual width ({self.qformer.visual_width}) must equal the vision tower "
                             f"width ({self.vision.width})")

    # -- derived sizes, computed once from the fields above ---------------------------------------
    @property
    def pretrained_qformer(self) -> bool:
        return "pretrain" in self.bert_type

    @property
    def has_bert_proj(self) -> bool:
        """`vlm_att_bert_proj` maps vision features to the pretrained Q-Former's 1408 when they differ."""
        return self.pretrained_qformer and self.vision.width != PRETRAINED_QFORMER_WIDTH

    @property
    def grid_size(self) -> int | None:
        match = _COMPRESS.match(self.compress_type or "")
        return int(match.group(2)) if match and match.group(2) else None

    @property
    def content_tokens_per_frame(self) -> int:
        if self.compress_type == "mean":
            return 1
        if self.grid_size is not None:
            stride = self.vision.grid // self.grid_size
            return ((self.vision.grid - stride) // stride + 1) ** 2  # avg_pool2d output, floor mode
        return self.vision.num_patches

    @property
    def tokens_per_frame(self) -> int:
        """One context token plus the content tokens."""
        return 1 + self.content_tokens_per_frame

    @property
    def projector_depth(self) -> int:
        match = _PROJECTOR.match(self.mm_projector_type)
        return int(match.group(2)) if match.group(2) else 1

    @property
    def hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def context_length(self) -> int:
        """Tokens the LLM takes, with linear/dynamic rope scaling stretching the trained length."""
        base = int(self.llm.get("max_sequence_length") or self.llm.get("max_position_embeddings") or 2048)
        scaling = self.llm.get("rope_scaling") or {}
        return int(base * float(scaling.get("factor", 1.0)))

    def llm_config(self) -> LlamaConfig:
        return LlamaConfig(**self.llm)


__all__ = ["VisionTowerConfig", "QFormerConfig", "LlamaVidConfig"]
