"""Rerank retrieved frames by how sharply the question's Q-Former text queries attend to some
part of the frame (LLaMA-VID's context attention): a frame holding what the question asks
about draws peaked attention, an unrelated one spreads it."""

from __future__ import annotations

import numpy as np
import torch

from indexer.llamavid import LlamaVid


def context_relevance(model: LlamaVid, features: torch.Tensor, question: str,
                      text_queries: torch.Tensor | None = None) -> np.ndarray:
    """features [T, 1+N, C] (as stored) -> [T]: the mean over text queries of the largest
    attention weight on one patch. `text_queries`: the Q-Former's [T, Q, C] for `features[:, 1:]`
    when already computed."""
    scores = model.context_scores(features[:, 1:], question, text_queries)  # (T, Q, N), long-video path: no CLS
    return scores.amax(-1).mean(-1).float().cpu().numpy()


def combine_scores(retrieval: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Standardise both (they live on different scales) and add them."""
    def z(x: np.ndarray) -> np.ndarray:
        spread = x.std()
        return (x - x.mean()) / spread if spread > 0 else np.zeros_like(x)
    return z(retrieval.astype(np.float64)) + z(relevance.astype(np.float64))


__all__ = ["combine_scores", "context_relevance"]
