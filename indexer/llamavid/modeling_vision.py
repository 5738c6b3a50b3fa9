"""The EVA ViT vision tower of LLaMA-VID (LAVIS `eva_vit_g.pth`, used up to its second-last block).

Built from transformers' InstructBLIP vision embeddings and encoder, which compute the same
function as LAVIS' EVA ViT (q/v bias with a zero k bias, exact GELU, LayerNorm eps 1e-6).
InstructBLIP's final `post_layernorm` is left out: LLaMA-VID uses the raw output of the last
used block, CLS token included.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.instructblip.modeling_instructblip import InstructBlipEncoder, InstructBlipVisionEmbeddings

from indexer.llamavid.configuration_llamavid import VisionTowerConfig


class EvaVisionTower(nn.Module):
    def __init__(self, config: VisionTowerConfig):
        super().__init__()
        self.config = config
        hf_config = config.to_hf()
        hf_config._attn_implementation = "sdpa"
        self.embeddings = InstructBlipVisionEmbeddings(hf_config)
        self.encoder = InstructBlipEncoder(hf_config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: (T, 3, S, S)
        hidden = self.embeddings(pixel_values)  # (T, 1 + N, C): CLS, then the grid row by row
        return self.encoder(inputs_embeds=hidden).last_hidden_state  # (T, 1 + N, C)


__all__ = ["EvaVisionTower"]
