"""Context attention: the question's text queries attend over a frame's patches, and the mean of
what they gather becomes the frame's context token (LLaMA-VID eq. 1-2)."""

from __future__ import annotations

import torch
from torch import nn

from indexer.llamavid.configuration_llamavid import LlamaVidConfig


class ContextAttention(nn.Module):
    def __init__(self, config: LlamaVidConfig):
        super().__init__()
        width = config.vision.width
        self.key_projector = nn.Linear(width, width)
        self.value_projector = nn.Linear(width, config.hidden_size)

    def scores(self, text_queries: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Attention of each text query over the patches: (T, Q, N), rows sum to 1."""
        keys = self.key_projector(patches)  # (T, N, C)
        logits = text_queries @ keys.transpose(-1, -2) / patches.shape[-1] ** 0.5  # (T, Q, N)
        return logits.softmax(-1)

    def forward(self, text_queries: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        # text_queries: (T, Q, C); patches: (T, N, C)
        gathered = (self.scores(text_queries, patches) @ patches).mean(1)  # (T, C)
        return self.value_projector(gathered[:, None])  # (T, 1, D)


__all__ = ["ContextAttention"]
