"""The `prompt_embeds` wire format of vLLM's OpenAI-compatible server: base64 of `torch.save(tensor)`.

vLLM ships the same encoder (`vllm.utils.serial_utils.tensor2base64`); the server decodes with
`torch.load(BytesIO(b64decode(x, validate=True)), weights_only=True, map_location="cpu")`, squeezes
a leading batch dim of 1, needs a 2-D floating tensor whose width is the model's hidden size and
casts it to the model's dtype. `decode_prompt_embeds` does the same, for tests and test servers.
"""

from __future__ import annotations

import base64
import binascii
import io

import torch


def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """[L, D] floating tensor -> base64 text of its `torch.save` bytes (dtype kept: bfloat16 halves the bytes)."""
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or not embeds.is_floating_point():
        what = f"{embeds.dtype} {list(embeds.shape)}" if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(f"prompt embeds must be a floating tensor [L, D], got {what}")
    # A fresh contiguous CPU copy: torch.save writes a view's whole storage (a slice of a long
    # sequence would carry all of it), and a CUDA tensor would be saved with its device.
    tensor = embeds.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_prompt_embeds(data: str | bytes, hidden_size: int | None = None) -> torch.Tensor:
    """base64 `torch.save` bytes -> [L, D] tensor, checked as vLLM's server checks it. Never unpickles code."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"prompt_embeds is not valid base64: {exc}") from exc
    try:
        tensor = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:  # any unpickling failure means the same thing to the caller
        raise ValueError(f"prompt_embeds is not a torch.save'd tensor: {type(exc).__name__}: {exc}") from exc
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"prompt_embeds must hold a tensor, got {type(tensor).__name__}")
    tensor = tensor.to_dense()
    if tensor.ndim > 2:
        tensor = tensor.squeeze(0)  # (1, L, D) -> (L, D)
    if tensor.ndim != 2 or not tensor.is_floating_point():
        raise ValueError(f"prompt_embeds must be a 2-D floating tensor [L, D], got {tensor.dtype} {list(tensor.shape)}")
    if hidden_size is not None and tensor.shape[1] != hidden_size:
        raise ValueError(f"prompt_embeds width {tensor.shape[1]} does not match the model's hidden size {hidden_size}")
    return tensor


__all__ = ["decode_prompt_embeds", "encode_prompt_embeds"]
