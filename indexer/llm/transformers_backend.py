"""The language model of the already-loaded `LlamaVid`, through transformers' `generate`.

It runs `LlamaVid.generate` (which starts dynamic-NTK rope from the trained base on every call),
with a streamer that notes when the first generated token arrives and a stopping criterion that
ends generation at a stop string.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from indexer.llm.base import Generation, LLMBackend, check_request, cut_at_stop, finish

if TYPE_CHECKING:  # not a loop: keeps `import indexer.llm` light (the caller has loaded the model)
    from indexer.llamavid import LlamaVid


class FirstTokenTimer(BaseStreamer):
    """Notes the time of the first generated token. `generate` puts the prompt ids first (empty
    when the prompt is given as embeddings), then each new token."""

    def __init__(self) -> None:
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            value.cpu()  # on a GPU, wait until the token exists: generate's kernels run asynchronously
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


class StopStrings(StoppingCriteria):
    """Ends generation once the decoded new tokens contain a stop string. With a prompt given as
    embeddings, `input_ids` holds only the generated tokens [1, n]."""

    def __init__(self, model: LlamaVid, stop: list[str]):
        self.decode = model.tokenizer.decode
        self.stop = stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        # input_ids: (1, n) generated so far; one answer at a time, so batch size is 1
        found = cut_at_stop(self.decode(input_ids[0].tolist()), self.stop)[1]
        return torch.full((input_ids.shape[0],), found, dtype=torch.bool, device=input_ids.device)


class TransformersBackend(LLMBackend):
    name = "transformers"

    def __init__(self, model: LlamaVid):
        self.model = model

    def generate(self, embeds: torch.Tensor, max_new_tokens: int = 256, stop: list[str] | None = None) -> Generation:
        check_request(self.model, embeds, max_new_tokens, stop)
        timer = FirstTokenTimer()
        criteria = StoppingCriteriaList([StopStrings(self.model, stop)]) if stop else None
        start = time.perf_counter()
        new_ids = self.model.generate(embeds, max_new_tokens=max_new_tokens, do_sample=False, streamer=timer,
                                      stopping_criteria=criteria)
        total_s = time.perf_counter() - start
        first_token_s = timer.first_token_at - start if timer.first_token_at is not None else math.nan
        return finish(self.model, new_ids, stop, embeds.shape[0], first_token_s, total_s)


__all__ = ["FirstTokenTimer", "StopStrings", "TransformersBackend"]
