"""The question side of the context token: a Q-Former reads the question and the frame features
and returns text queries in vision-feature space (LLaMA-VID's `vlm_att_*` modules).

Built on transformers' InstructBLIP Q-Former, which computes the LAVIS Q-Former's function
(queries and text share self-attention; only the queries cross-attend to the frame, every 2nd
layer; queries and text have separate feed-forward layers).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.instructblip.modeling_instructblip import InstructBlipQFormerModel

from indexer.llamavid.configuration_llamavid import LlamaVidConfig


class QFormerTextQueries(nn.Module):
    def __init__(self, config: LlamaVidConfig):
        super().__init__()
        qcfg = config.qformer
        hf_config = qcfg.to_hf()
        hf_config._attn_implementation = "eager"
        self.query_tokens = nn.Parameter(torch.zeros(1, qcfg.num_query, qcfg.hidden_size))
        # "*pretrain*" types reuse InstructBLIP's Q-Former: features are mapped to its 1408 width
        # (when the tower is narrower or wider) and normalised by its `ln_vision`.
        self.bert_proj = nn.Linear(config.vision.width, qcfg.visual_width) if config.has_bert_proj else None
        self.visual_norm = nn.LayerNorm(qcfg.visual_width) if config.pretrained_qformer else None
        self.qformer = InstructBlipQFormerModel(hf_config)
        self.projector = nn.Linear(qcfg.hidden_size, config.vision.width)

    def query_states(self, features: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
        """The Q-Former's output at the learned queries, (T, Q, H)."""
        # features: (T, n, C) exactly as given (CLS included on the short-video path)
        # input_ids, attention_mask: (1, L) for the question, shared by every frame
        num_frames = features.shape[0]
        visual = features
        if self.bert_proj is not None:
            visual = self.bert_proj(visual)  # (T, n, 1408)
        if self.visual_norm is not None:
            visual = self.visual_norm(visual)
        queries = self.query_tokens.expand(num_frames, -1, -1)  # (T, Q, H)
        num_query = queries.shape[1]
        input_ids = input_ids.expand(num_frames, -1)  # (T, L)
        mask = torch.cat([torch.ones(num_frames, num_query, dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask.expand(num_frames, -1)], dim=1)  # (T, Q + L)
        hidden = self.qformer(
            input_ids=input_ids,
            attention_mask=mask,
            query_embeds=queries,
            encoder_hidden_states=visual,
            encoder_attention_mask=torch.ones(visual.shape[:2], dtype=torch.long, device=visual.device),
        ).last_hidden_state  # (T, Q + L, H)
        return hidden[:, :num_query]  # (T, Q, H)

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projector(self.query_states(features, input_ids, attention_mask))  # (T, Q, C)


__all__ = ["QFormerTextQueries"]
