"""LLaMA-VID: every frame becomes a context token (what in it matters for the question) and
content tokens (what it shows), spliced into a LLaMA prompt in place of `<image>` placeholders.

Order of the data flow: vision tower -> Q-Former text queries -> context attention -> content
pooling -> content projector -> the LLM.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import LlamaForCausalLM

from indexer.llamavid.configuration_llamavid import LlamaVidConfig
from indexer.llamavid.modeling_content import ContentPooling, ContentProjector
from indexer.llamavid.modeling_context import ContextAttention
from indexer.llamavid.modeling_qformer import QFormerTextQueries
from indexer.llamavid.modeling_rope import LlamaVidRotaryEmbedding
from indexer.llamavid.modeling_vision import EvaVisionTower
from indexer.llamavid.tokenization import IMAGE_TOKEN_INDEX

# What a role builds, each part holding the one before it:
#   "encoder": frames to frame tokens (vision tower, Q-Former, context attention, content projector);
#   "prompt":  and the LLM's token embedding table, for prompt embeddings an LLM served elsewhere
#              (vLLM) answers;
#   "all":     and the LLM itself.
Parts = Literal["encoder", "prompt", "all"]
PARTS: tuple[Parts, ...] = ("encoder", "prompt", "all")


def part_of(key: str) -> Parts:
    """The smallest part whose model holds the state-dict key `key`."""
    if key.startswith("language_model.model.embed_tokens."):
        return "prompt"
    return "all" if key.startswith("language_model.") else "encoder"


def holds(parts: Parts, key: str) -> bool:
    """Whether a model built with `parts` has the state-dict key `key`."""
    return PARTS.index(part_of(key)) <= PARTS.index(parts)


class LlamaTokenEmbeddings(nn.Module):
    """Only the LLM's input embedding table, under the names `LlamaForCausalLM` gives it
    (`model.embed_tokens`), so that a "prompt" model's keys are those of the full one."""

    def __init__(self, config: LlamaVidConfig):
        super().__init__()
        llm_config = config.llm_config()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(llm_config.vocab_size, llm_config.hidden_size, llm_config.pad_token_id)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens


class LlamaVidModel(nn.Module):
    def __init__(self, config: LlamaVidConfig, parts: Parts = "all"):
        super().__init__()
        if parts not in PARTS:
            raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
        self.config = config
        self.parts = parts
        self.vision_tower = EvaVisionTower(config.vision)
        self.text_queries = QFormerTextQueries(config)
        self.context_attention = ContextAttention(config)
        self.content_pooling = ContentPooling(config)
        self.content_projector = ContentProjector(config)
        self.language_model: LlamaForCausalLM | LlamaTokenEmbeddings | None = None
        if parts == "all":
            llm_config = config.llm_config()
            llm_config._attn_implementation = "sdpa"
            self.language_model = LlamaForCausalLM(llm_config)
            # as the official code, also beyond max_position_embeddings
            self.language_model.model.rotary_emb = LlamaVidRotaryEmbedding(llm_config)
        elif parts == "prompt":
            self.language_model = LlamaTokenEmbeddings(config)

    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: (T, 3, S, S) -> (T, 1 + N, C)
        return self.vision_tower(pixel_values)

    def patches_of(self, features: torch.Tensor) -> torch.Tensor:
        """The patch features that keys and content tokens use. The official rule: with
        `mm_vision_select_feature` "patch", an odd token count means a CLS token leads, and it goes."""
        if self.config.mm_vision_select_feature == "patch" and features.shape[1] % 2 == 1:
            return features[:, 1:]  # (T, N, C)
        return features

    def frame_tokens(self, features: torch.Tensor, qformer_ids: torch.Tensor,
                     qformer_mask: torch.Tensor) -> torch.Tensor:
        # features: (T, n, C), with CLS (short-video path) or without (long-video path)
        context = self.context_tokens(features, qformer_ids, qformer_mask)  # (T, 1, D)
        return torch.cat([context, self.content_tokens(features)], dim=1)  # (T, 1 + P, D)

    def context_tokens(self, features: torch.Tensor, qformer_ids: torch.Tensor,
                       qformer_mask: torch.Tensor) -> torch.Tensor:
        """The question-dependent part of a frame's tokens: (T, n, C) -> (T, 1, D)."""
        text_queries = self.text_queries(features, qformer_ids, qformer_mask)  # (T, Q, C)
        return self.context_attention(text_queries, self.patches_of(features))  # (T, 1, D)

    def content_tokens(self, features: torch.Tensor, to_one: bool = False) -> torch.Tensor:
        """The question-independent part of a frame's tokens: (T, n, C) -> (T, P, D), or (T, 1, D)
        pooled to one token."""
        return self.content_projector(self.content_pooling(self.patches_of(features), to_one))

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def inputs_embeds(self, ids: torch.Tensor, frame_tokens: torch.Tensor) -> torch.Tensor:
        """Splice frame tokens into the prompt embedding. ids: (L,) with IMAGE_TOKEN_INDEX at the
        placeholders; frame_tokens: (T, 1 + P, D). One placeholder takes the whole clip (short-video
        prompt); otherwise there must be one placeholder per frame token (movie prompt)."""
        flat = frame_tokens.reshape(-1, frame_tokens.shape[-1])  # (T * (1 + P), D)
        is_image = ids == IMAGE_TOKEN_INDEX
        num_placeholders = int(is_image.sum())
        text_embeds = self.embed_ids(ids.clamp(min=0))  # (L, D)
        if num_placeholders == 1:
            at = int(is_image.nonzero()[0])
            # (L - 1 + T(1+P), D)
            return torch.cat([text_embeds[:at], flat.to(text_embeds.dtype), text_embeds[at + 1:]])
        if num_placeholders != flat.shape[0]:
            raise ValueError(f"the prompt has {num_placeholders} <image> placeholders but there are "
                             f"{flat.shape[0]} frame tokens ({frame_tokens.shape[0]} frames x "
                             f"{frame_tokens.shape[1]} tokens); use 1 placeholder (video) or one per token (movie)")
        embeds = text_embeds.clone()
        embeds[is_image] = flat.to(embeds.dtype)
        return embeds  # (L, D)

    def reset_rope_state(self) -> None:
        """Dynamic-NTK rope grows its base with the longest sequence seen and keeps it; start every
        prompt from the trained base, so a result depends on its own prompt only (as on a freshly
        loaded official model), not on what ran before."""
        rotary = self.language_model.model.rotary_emb
        rotary.inv_freq = rotary.original_inv_freq.clone()
        rotary.max_seq_len_cached = rotary.original_max_seq_len

    def logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        # inputs_embeds: (L, D) -> (L, vocab)
        self.reset_rope_state()
        return self.language_model(inputs_embeds=inputs_embeds[None], use_cache=False).logits[0]


__all__ = ["LlamaVidModel", "LlamaTokenEmbeddings", "Parts", "PARTS", "part_of", "holds"]
