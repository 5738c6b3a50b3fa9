"""`make_backend`: the LLM backend a config names. Its own module, not in base.py: each backend
subclasses `LLMBackend` from base.py, so a factory there would import its own importers (a loop);
here the backends are imported when chosen, to keep `import indexer.llm` free of torch and vLLM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from indexer.llm.base import LLMBackend
from indexer.settings import LLMSettings

if TYPE_CHECKING:  # not a loop: keeps `import indexer.llm` light (the pipeline pulls in the whole model stack)
    from indexer.llamavid import LlamaVid


def make_backend(settings: LLMSettings, model: LlamaVid) -> LLMBackend:
    """The backend `settings.backend` names. `model` is the loaded LLaMA-VID: the transformers
    backend runs its language model; every backend decodes with its tokenizer and checks shapes
    against its config."""
    if settings.backend == "transformers":
        from indexer.llm.transformers_backend import TransformersBackend

        return TransformersBackend(model)
    if settings.backend == "vllm":
        from indexer.llm.vllm_backend import VllmBackend

        return VllmBackend(settings, model)
    if settings.backend == "vllm-server":
        from indexer.llm.vllm_backend import VllmServerBackend

        return VllmServerBackend(settings, model)
    raise ValueError(f"unknown llm.backend {settings.backend!r}; use 'transformers', 'vllm' or 'vllm-server'")


__all__ = ["make_backend"]
