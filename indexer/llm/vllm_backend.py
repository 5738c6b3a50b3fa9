"""vLLM backends: in this process (`VllmBackend`) and over HTTP (`VllmServerBackend`).

Both run the plain LLaMA folder that `vidx export-llm` writes, fed the prompt as embeddings
(vLLM's `enable_prompt_embeds`). vLLM is imported only when `VllmBackend` is built: it needs a
CUDA machine and pins its own torch and transformers versions. The server backend needs only
httpx:

    vidx export-llm work/model work/llm
    vllm serve work/llm --enable-prompt-embeds --max-model-len 32768
    # settings: llm: {backend: vllm-server, url: http://127.0.0.1:8000/v1}

Both decode the generated ids with the checkpoint's tokenizer (as the transformers backend does),
so the same ids give the same text whichever backend made them.

Known difference: for `rope_scaling` type "dynamic", vLLM computes the NTK base once for the
whole scaled length (max_position_embeddings x factor), while transformers (and the official
LLaMA-VID) keep the trained base up to max_position_embeddings and grow it with the sequence.
Greedy answers of a dynamic-rope checkpoint can therefore differ between vLLM and transformers.
Likewise, on a prompt longer than max_position_embeddings the official model (and `LlamaVid`)
rotates with the half-precision `inv_freq` stored in the shards, vLLM with exact frequencies.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import torch

from indexer.llm.base import (
    Generation,
    LLMBackend,
    LLMBackendError,
    check_request,
    cut_at_stop,
    finish,
)
from indexer.llm.wire import encode_prompt_embeds
from indexer.settings import LLMSettings

if TYPE_CHECKING:  # not a loop: keeps `import indexer.llm` light (the caller has loaded the model)
    from indexer.llamavid import LlamaVid

logger = logging.getLogger(__name__)

_VLLM_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def check_exported_folder(folder: str | None, model: LlamaVid, backend: str) -> Path:
    """The folder `vidx export-llm` wrote, checked against the loaded LLaMA-VID's LLM sizes."""
    if not folder:
        raise ValueError(f"llm.model must name the folder `vidx export-llm MODEL OUT` wrote (backend {backend!r})")
    path = Path(folder).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: write it with `vidx export-llm {model.model_dir} {path}`")
    config = json.loads(config_file.read_text())
    ours = model.config.llm
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if key in ours and config.get(key) != ours[key]:
            raise ValueError(f"{path} is not the LLM of {model.model_dir}: {key} {config.get(key)} vs {ours[key]}; "
                             f"export it again with `vidx export-llm {model.model_dir} {path} --force`")
    return path


def first_token_latency(metrics: Any) -> float:
    """Seconds from arrival to the first token, from a vLLM `RequestOutput.metrics`; NaN if absent.
    V1 engine: `RequestStateStats.first_token_latency` (newer) or `first_token_ts - queued_ts`
    (both engine-core monotonic); V0 engine: `RequestMetrics.first_token_time - arrival_time`."""
    if metrics is None:
        return math.nan
    latency = getattr(metrics, "first_token_latency", None)
    if latency:
        return float(latency)
    first, arrival = getattr(metrics, "first_token_time", None), getattr(metrics, "arrival_time", None)
    if first and arrival:
        return float(first - arrival)
    first, queued = getattr(metrics, "first_token_ts", None), getattr(metrics, "queued_ts", None)
    if first and queued:
        return float(first - queued)
    return math.nan


class VllmBackend(LLMBackend):
    """vLLM in this process, on the exported folder `settings.model`, with prompt embeddings on.
    It computes in the LLaMA-VID's dtype, so it sees the precision the transformers backend sees."""

    name = "vllm"

    def __init__(self, settings: LLMSettings, model: LlamaVid):
        self.model = model
        folder = check_exported_folder(settings.model, model, self.name)
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise LLMBackendError(
                "llm.backend 'vllm' needs vLLM, which runs on a CUDA machine (`pip install vllm`); elsewhere "
                "use 'transformers', or 'vllm-server' against a `vllm serve ... --enable-prompt-embeds` on a GPU box"
            ) from exc
        self._sampling_params = SamplingParams
        options: dict[str, Any] = {
            "model": str(folder), "enable_prompt_embeds": True,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "dtype": _VLLM_DTYPES.get(model.dtype, "auto"),
            "disable_log_stats": False,  # keeps RequestOutput.metrics filled: it holds the first-token time
        }
        if settings.max_model_len is not None:
            options["max_model_len"] = settings.max_model_len
        logger.info("starting vLLM on %s (%s)", folder, options["dtype"])
        self.llm = LLM(**options)

    def generate(self, embeds: torch.Tensor, max_new_tokens: int = 256, stop: list[str] | None = None) -> Generation:
        check_request(self.model, embeds, max_new_tokens, stop)
        # repetition_penalty 1: a generation_config.json default must not change greedy answers
        params = self._sampling_params(temperature=0.0, max_tokens=max_new_tokens, stop=stop or None,
                                       repetition_penalty=1.0)
        start = time.perf_counter()
        # (L, D) on the CPU: the V1 engine core runs in another process and gets the prompt serialized
        prompt = {"prompt_embeds": embeds.detach().to("cpu", self.model.dtype)}
        (output,) = self.llm.generate(prompt, params, use_tqdm=False)
        total_s = time.perf_counter() - start
        return finish(self.model, list(output.outputs[0].token_ids), stop, embeds.shape[0],
                      first_token_latency(getattr(output, "metrics", None)), total_s)

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        if hasattr(engine, "shutdown"):
            engine.shutdown()  # V1: stops the engine-core process and frees its GPU memory
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VllmServerBackend(LLMBackend):
    """`POST {url}/completions` with `prompt_embeds` to `vllm serve OUT --enable-prompt-embeds`,
    streamed: the first chunk that carries a token gives the time to first token.
    `settings.timeout_s` bounds each wait for the server (connecting, and between chunks)."""

    name = "vllm-server"

    def __init__(self, settings: LLMSettings, model: LlamaVid):
        if not settings.url:
            raise ValueError("llm.url is required for llm.backend 'vllm-server': the server's OpenAI base URL, "
                             "e.g. http://127.0.0.1:8000/v1")
        if not settings.url.startswith(("http://", "https://")):
            raise ValueError(f"llm.url must start with http:// or https://, got {settings.url!r}")
        self.model = model
        self.url = settings.url.rstrip("/")
        self.served_model = settings.model  # None: the first model the server lists
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(settings.timeout_s))
        self._warned_no_ids = False

    # -- requests -----------------------------------------------------------------------------------
    def model_id(self) -> str:
        """The served model's name: `llm.model` if set, else the first that `GET {url}/models` lists."""
        if self.served_model is None:
            response = self._request("GET", "/models")
            listed = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
            if not listed or not listed[0]:
                raise LLMBackendError(f"the server at {self.url} lists no models at {self.url}/models")
            self.served_model = listed[0]
        return self.served_model

    def generate(self, embeds: torch.Tensor, max_new_tokens: int = 256, stop: list[str] | None = None) -> Generation:
        check_request(self.model, embeds, max_new_tokens, stop)
        served_model = self.model_id()
        start = time.perf_counter()  # the clock runs from here: encoding and upload are part of the wait
        body = {"model": served_model, "prompt_embeds": encode_prompt_embeds(embeds), "max_tokens": max_new_tokens,
                "temperature": 0.0, "repetition_penalty": 1.0, "stream": True,
                "stream_options": {"include_usage": True}, "return_token_ids": True}
        if stop:
            body["stop"] = stop
        token_ids: list[int] = []
        texts: list[str] = []
        prompt_tokens = embeds.shape[0]
        first_token_at: float | None = None
        saw_ids = False
        with self._stream("POST", "/completions", body) as response:
            for chunk in _sse_json(response, self.url):
                if chunk.get("error"):
                    raise LLMBackendError(f"the server at {self.url} failed while answering: {_error_text(chunk)}")
                for choice in chunk.get("choices") or []:
                    ids, text = choice.get("token_ids"), choice.get("text") or ""
                    if ids is not None:
                        saw_ids = True
                        token_ids.extend(int(i) for i in ids)
                    texts.append(text)
                    if first_token_at is None and (ids or text):
                        first_token_at = time.perf_counter()
                usage = chunk.get("usage")
                if usage and usage.get("prompt_tokens") is not None:
                    prompt_tokens = int(usage["prompt_tokens"])
        total_s = time.perf_counter() - start
        first_token_s = first_token_at - start if first_token_at is not None else math.nan
        if saw_ids:
            return finish(self.model, token_ids, stop, prompt_tokens, first_token_s, total_s)
        if not self._warned_no_ids:  # an older vLLM, or another OpenAI-compatible server
            logger.warning("the server at %s returns no token ids (return_token_ids); using its text", self.url)
            self._warned_no_ids = True
        text, _ = cut_at_stop("".join(texts), stop)
        return Generation(text.strip(), [], prompt_tokens, first_token_s, total_s)

    def close(self) -> None:
        self.client.close()

    # -- HTTP and its errors ------------------------------------------------------------------------
    def _request(self, method: str, path: str) -> httpx.Response:
        try:
            response = self.client.request(method, self.url + path)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, path) from exc
        if response.status_code >= 400:
            raise self._status_error(response, path)
        return response

    @contextmanager
    def _stream(self, method: str, path: str, body: dict) -> Iterator[httpx.Response]:
        """`client.stream(...)` with this backend's errors: a status >= 400 raises before any chunk,
        and a stream that breaks half way raises as a failed request."""
        try:
            with self.client.stream(method, self.url + path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(response, path)
                yield response
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, path) from exc

    def _transport_error(self, exc: httpx.HTTPError, path: str) -> LLMBackendError:
        where = self.url + path
        if isinstance(exc, httpx.ConnectError):
            return LLMBackendError(f"cannot connect to the vLLM server at {self.url} ({exc}); start it with `vllm "
                                   "serve OUT --enable-prompt-embeds` (OUT from `vidx export-llm`) or fix llm.url")
        if isinstance(exc, httpx.TimeoutException):
            return LLMBackendError(f"no answer from {where} within llm.timeout_s ({type(exc).__name__}); "
                                   "the server may be overloaded, or raise llm.timeout_s")
        return LLMBackendError(f"request to {where} failed: {type(exc).__name__}: {exc}")

    def _status_error(self, response: httpx.Response, path: str) -> LLMBackendError:
        where = self.url + path
        message = _error_text(_json_or_text(response))
        if "enable-prompt-embeds" in message or "enable_prompt_embeds" in message:
            return LLMBackendError(f"the vLLM server at {self.url} was started without --enable-prompt-embeds "
                                   f"({message}); restart it as `vllm serve OUT --enable-prompt-embeds`")
        if response.status_code == 401:
            return LLMBackendError(f"{where} answered 401 Unauthorized: set llm.api_key to the server's --api-key")
        if response.status_code == 404 and "model" not in message.lower():
            return LLMBackendError(f"{where} answered 404 Not Found: llm.url must be the server's OpenAI base "
                                   f"URL, e.g. http://127.0.0.1:8000/v1 ({message})")
        if response.status_code == 404:
            return LLMBackendError(f"{where} answered 404: {message}; set llm.model to a name the server lists "
                                   f"at {self.url}/models, or leave it empty")
        return LLMBackendError(f"{where} answered {response.status_code}: {message}")


def _sse_json(response: httpx.Response, url: str) -> Iterator[dict]:
    """The JSON payloads of an OpenAI-style server-sent event stream, up to `data: [DONE]`."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError as exc:
            raise LLMBackendError(f"the server at {url} sent a chunk that is not JSON: {data[:200]!r}") from exc


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _error_text(payload: Any) -> str:
    """The message of an error body in the shapes vLLM and FastAPI use:
    {"error": {"message": ...}}, {"object": "error", "message": ...}, {"detail": ...}, or text."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if payload.get(key):
                return str(payload[key])
    return str(payload)[:500].strip() or "(empty body)"


__all__ = ["VllmBackend", "VllmServerBackend", "check_exported_folder", "first_token_latency"]
