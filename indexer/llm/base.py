"""What every LLM backend does: greedy answers from an assembled prompt embedding.

A backend gets the prompt as one tensor [L, D] (text embeddings with the frame tokens spliced in,
as `LlamaVid.inputs_embeds` returns) and gives back a `Generation`. Three backends run the same
language model:

| `llm.backend`  | where the LLM runs                                  | needs                        |
|----------------|-----------------------------------------------------|------------------------------|
| `transformers` | the already-loaded `LlamaVid` (this process)        | nothing more                 |
| `vllm`         | vLLM in this process, on the exported LLaMA folder  | a GPU, `pip install vllm`    |
| `vllm-server`  | a `vllm serve` process, over HTTP                   | the server's URL             |

With the vLLM backends the query side loads `LlamaVid` with `parts="prompt"` (`llm_parts`): no
LLM layers beside vLLM's, only the token embedding table the prompt embedding is made from.

Serving the LLM with vLLM (the exported folder is a plain LLaMA that vLLM loads as is):

    vidx export-llm work/model work/llm
    vllm serve work/llm --enable-prompt-embeds --max-model-len 32768

`--max-model-len` may not exceed the context the checkpoint allows (`vidx export-llm` prints it;
vLLM refuses a longer one). Then, in the settings YAML:

    llm: {backend: vllm-server, url: http://127.0.0.1:8000/v1}

Answers are greedy (temperature 0), so they are reproducible and the backends can be compared
token for token. Every backend decodes the generated ids with the checkpoint's own tokenizer
(`LlamaVid.tokenizer`), so the same ids give the same text whichever backend made them.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import torch

from indexer.settings import LLMSettings

if TYPE_CHECKING:  # not a loop: keeps `import indexer.llm` light (the pipeline pulls in the whole model stack)
    from indexer.llamavid import LlamaVid
    from indexer.llamavid.modeling_llamavid import Parts

logger = logging.getLogger(__name__)


class LLMBackendError(RuntimeError):
    """A backend that cannot answer: the message names the model folder or URL and the remedy."""


@dataclass
class Generation:
    """One answer. `token_ids` are the generated ids, up to and including eos (or the token that
    completed a stop string); `text` is their decoded text cut before the stop string and stripped."""

    text: str
    token_ids: list[int]
    prompt_tokens: int  # rows of the prompt embedding
    first_token_s: float  # from the call to the first generated token (NaN where the engine does not say)
    total_s: float  # the whole call


class LLMBackend(abc.ABC):
    """Runs the language model on a prompt embedding. Use as a context manager or call `close()`."""

    name: str

    @abc.abstractmethod
    def generate(self, embeds: torch.Tensor, max_new_tokens: int = 256, stop: list[str] | None = None) -> Generation:
        """Greedy answer to `embeds` [L, D]; generation ends at eos, at a stop string, or after
        `max_new_tokens` tokens."""

    def close(self) -> None:  # noqa: B027 (optional: most backends hold nothing)
        """Free what the backend holds (GPU memory, connections). The base holds nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """`text` before the earliest stop string, and whether one was found."""
    cut = min((at for s in stop or [] if s and (at := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish(model: LlamaVid, token_ids: list[int], stop: list[str] | None, prompt_tokens: int,
           first_token_s: float, total_s: float) -> Generation:
    """A `Generation` from generated ids: decoded with the checkpoint's tokenizer (special tokens
    skipped), cut before the first stop string, stripped."""
    text, _ = cut_at_stop(model.tokenizer.decode(token_ids), stop)
    return Generation(text.strip(), list(token_ids), prompt_tokens, first_token_s, total_s)


def check_request(model: LlamaVid, embeds: torch.Tensor, max_new_tokens: int, stop: list[str] | None) -> None:
    """The same input errors from every backend, before any work starts."""
    hidden = model.config.hidden_size
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[1] != hidden or embeds.shape[0] == 0:
        shape = list(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(f"embeds must be the prompt embedding [L, {hidden}] from LlamaVid.inputs_embeds(), "
                         f"got {shape}")
    if not embeds.is_floating_point():
        raise TypeError(f"embeds must be floating point, got {embeds.dtype}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop)):
        raise ValueError(f"stop must be a list of non-empty strings (or None), got {stop!r}")


def llm_parts(settings: LLMSettings) -> Parts:
    """The parts of LLaMA-VID a backend needs loaded: the transformers backend runs its LLM; the
    vLLM ones run their own copy and need only the token embedding table for the prompt."""
    return "all" if settings.backend == "transformers" else "prompt"


__all__ = ["Generation", "LLMBackend", "LLMBackendError", "cut_at_stop", "llm_parts"]
