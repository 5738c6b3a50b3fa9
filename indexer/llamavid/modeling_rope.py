"""The LLM's rotary position embedding, with the frequencies the official model uses beyond its
trained length.

transformers 4.31 (which the releases were made and run with) keeps `rotary_emb.inv_freq` as a
persistent buffer, so `from_pretrained` overwrites the exactly computed frequencies with the
checkpoint's copy, stored in the shard dtype (float16 or bfloat16, so rounded). The
cos/sin cache for the first `max_position_embeddings` positions was already built from the exact
frequencies when the model was constructed; a sequence longer than that makes the official model
rebuild the cache from the loaded copy, for every position. So: a prompt (or decoding step) whose
length stays within `max_position_embeddings` rotates with the exact frequencies, a longer one with
the checkpoint's (divided by the factor for linear scaling, as 4.31 divides the positions).
Dynamic NTK recomputes its frequencies from the base whenever it rebuilds, so the stored copy never
matters there.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding


class LlamaVidRotaryEmbedding(LlamaRotaryEmbedding):
    def __init__(self, config):
        super().__init__(config)
        # (head_dim / 2,) float32, already scaled like inv_freq; None: exact frequencies at every length
        self.register_buffer("beyond_trained_inv_freq", None, persistent=False)

    def use_checkpoint_frequencies(self, stored: torch.Tensor | None) -> None:
        """Rotate sequences longer than `max_position_embeddings` with the checkpoint's stored
        `inv_freq` (None: the checkpoint stores none, so the exact ones, as in 4.31)."""
        if stored is None or self.rope_type == "dynamic":
            self.beyond_trained_inv_freq = None
            return
        if self.rope_type not in ("default", "linear"):
            raise ValueError(f"rope type {self.rope_type!r} with stored inv_freq is not supported "
                             "(LLaMA-VID checkpoints use none, linear or dynamic)")
        if stored.shape != self.original_inv_freq.shape:
            raise ValueError(f"the checkpoint's rotary_emb.inv_freq has shape {tuple(stored.shape)}, but the "
                             f"config's head size gives {tuple(self.original_inv_freq.shape)}: config.json does "
                             "not match the weights")
        factor = float(self.config.rope_parameters.get("factor", 1.0)) if self.rope_type == "linear" else 1.0
        self.beyond_trained_inv_freq = stored.to(device=self.original_inv_freq.device, dtype=torch.float32) / factor

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids: (B, L) -> cos, sin: (B, L, head_dim)
        if self.beyond_trained_inv_freq is None or int(position_ids.max()) + 1 <= self.original_max_seq_len:
            return super().forward(x, position_ids)
        freqs = position_ids[..., None].float() * self.beyond_trained_inv_freq.to(x.device)  # (B, L, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, L, head_dim)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


__all__ = ["LlamaVidRotaryEmbedding"]
