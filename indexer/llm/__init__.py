"""The language-model side of a query: backends that answer from an assembled prompt embedding
(transformers in process, vLLM in process, a `vllm serve` over HTTP) and `export_llm`, which writes
a release's LLM as a plain LLaMA folder for vLLM. See `indexer.llm.base` for how to serve it."""

from indexer.llm.backends import make_backend
from indexer.llm.base import Generation, LLMBackend, LLMBackendError
from indexer.llm.export import ExportError, ExportReport, export_llm

__all__ = ["ExportError", "ExportReport", "Generation", "LLMBackend", "LLMBackendError", "export_llm", "make_backend"]
