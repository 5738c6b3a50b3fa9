"""What identifies a model's weights wherever they lie: its configuration and a sample of every
tensor's values, never its path (an index made from `out/tiny/clip` is the same index when the
folder is named by its absolute path, or moved)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def weights_fingerprint(config_text: str, state: Mapping[str, torch.Tensor], samples: int = 64) -> str:
    """16 hex digits of SHA-1 over `config_text`, then each tensor's name and `samples` of its
    values evenly spread (reading every weight of a 7B model would take longer than loading it)."""
    digest = hashlib.sha1(config_text.encode())
    for name, tensor in state.items():
        flat = tensor.detach().reshape(-1)
        digest.update(name.encode())
        digest.update(flat[:: max(1, flat.numel() // samples)][:samples].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


__all__ = ["weights_fingerprint"]
