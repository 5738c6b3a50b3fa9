"""Content tokens: a frame's patches pooled ("mean": 1 token, "grid:N": N*N tokens, none: every
patch) and projected into the LLM's embedding space by `mm_projector`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from indexer.llamavid.configuration_llamavid import LlamaVidConfig


class ContentPooling(nn.Module):
    def __init__(self, config: LlamaVidConfig):
        super().__init__()
        self.compress_type = config.compress_type
        self.grid_size = config.grid_size

    def forward(self, patches: torch.Tensor, to_one: bool = False) -> torch.Tensor:
        # patches: (T, N, C); to_one: one token per frame whatever the checkpoint's rule (a tighter budget)
        if self.compress_type == "mean" or to_one:
            return patches.mean(dim=1, keepdim=True)  # (T, 1, C)
        if self.grid_size is None:
            return patches
        num_frames, num_patches, width = patches.shape
        side = int(num_patches**0.5)
        if side * side != num_patches:
            raise ValueError(f"compress_type {self.compress_type!r} needs a square patch grid, "
                             f"got {num_patches} patches")
        stride = side // self.grid_size
        grid = patches.reshape(num_frames, side, side, width).permute(0, 3, 1, 2)  # (T, C, side, side)
        pooled = F.avg_pool2d(grid, kernel_size=stride, stride=stride)  # (T, C, g, g)
        return pooled.permute(0, 2, 3, 1).flatten(1, 2)  # (T, g*g, C)


class ContentProjector(nn.Sequential):
    """`linear` or `mlpNx_gelu`: N linear layers with GELU between them, vision width -> LLM width."""

    def __init__(self, config: LlamaVidConfig):
        layers: list[nn.Module] = [nn.Linear(config.vision.width, config.hidden_size)]
        for _ in range(1, config.projector_depth):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        super().__init__(*layers)


__all__ = ["ContentPooling", "ContentProjector"]
