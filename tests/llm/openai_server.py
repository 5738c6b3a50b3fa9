"""A tiny OpenAI-compatible `/v1/completions` server that answers `prompt_embeds` the way
`vllm serve --enable-prompt-embeds` does, run by transformers on an exported LLaMA folder.

It decodes `prompt_embeds` with torch.load(weights_only=True) (as vLLM's server does), runs greedy
decoding token by token with its own KV-cache loop (not `generate`, so it is an independent check
of the backends), and streams server-sent events in the OpenAI completions format with vLLM's
extras (`token_ids` with `return_token_ids`, a usage chunk with `stream_options.include_usage`).
Switches make it misbehave the ways a real server can: no --enable-prompt-embeds, an api key,
an error status, a slow answer, an error in the middle of the stream.
"""

from __future__ import annotations

import inspect
import json
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import torch
from transformers import LlamaForCausalLM

from indexer.llamavid.tokenization import LlamaPromptTokenizer
from indexer.llm.wire import decode_prompt_embeds

# transformers 5.2x renamed the KV cache argument and output field `past_key_values` to `cache`
_CACHE = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


@dataclass
class ServerOptions:
    enable_prompt_embeds: bool = True
    api_key: str | None = None
    fail_status: int | None = None  # answer every completion with this status
    delay_s: float = 0.0  # wait before answering
    error_after_tokens: int | None = None  # send an error chunk after this many tokens
    send_token_ids: bool = True  # False: an older vLLM without return_token_ids


class CompletionsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, llm_dir: Path, name: str = "tiny-llm", options: ServerOptions | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.llm = LlamaForCausalLM.from_pretrained(str(llm_dir), dtype=torch.float32).eval()
        self.tokenizer = LlamaPromptTokenizer.from_model_dir(llm_dir)
        self.name = name
        self.options = options or ServerOptions()
        self.requests: list[dict] = []  # bodies received, prompt_embeds decoded
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (the timeout test does) is no error; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()
        self.server_close()

    @torch.inference_mode()
    def greedy(self, embeds: torch.Tensor, max_tokens: int):
        """Yield greedy token ids for `embeds` [L, D], one at a time, up to eos or max_tokens."""
        out = self.llm(inputs_embeds=embeds[None].float(), use_cache=True)  # (1, L, vocab)
        for _ in range(max_tokens):
            next_id = int(out.logits[0, -1].argmax())
            yield next_id
            if next_id == self.tokenizer.eos_id:
                return
            out = self.llm(input_ids=torch.tensor([[next_id]]), use_cache=True, **{_CACHE: getattr(out, _CACHE)})


class _Handler(BaseHTTPRequestHandler):
    server: CompletionsServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}})

    def _authorized(self) -> bool:
        key = self.server.options.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "Unauthorized")
            return False
        return True

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            self._json(404, {"detail": "Not Found"})
        elif self._authorized():
            self._json(200, {"object": "list", "data": [{"id": self.server.name, "object": "model"}]})

    def do_POST(self) -> None:
        if self.path != "/v1/completions":
            self._json(404, {"detail": "Not Found"})
            return
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        options = self.server.options
        time.sleep(options.delay_s)
        if options.fail_status:
            self._error(options.fail_status, "the engine is dead")
            return
        if body.get("model") != self.server.name:
            self._error(404, f"The model `{body.get('model')}` does not exist.")
            return
        if "prompt_embeds" in body and not options.enable_prompt_embeds:
            self._error(400, "You must set `--enable-prompt-embeds` to input `prompt_embeds`.")
            return
        try:
            embeds = decode_prompt_embeds(body["prompt_embeds"], self.server.llm.config.hidden_size)
        except ValueError as exc:
            self._error(400, str(exc))
            return
        self.server.requests.append({**body, "prompt_embeds": embeds})
        self._stream(body, embeds)

    def _stream(self, body: dict, embeds: torch.Tensor) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        stop = body.get("stop") or []
        options = self.server.options
        ids: list[int] = []
        sent = ""
        finish_reason = "length"
        for token in self.server.greedy(embeds, int(body["max_tokens"])):
            ids.append(token)
            if options.error_after_tokens is not None and len(ids) > options.error_after_tokens:
                self._event({"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}})
                self._event("[DONE]")
                return
            text = self.server.tokenizer.decode(ids)
            hits = [text.find(s) for s in stop if s in text]
            if hits:
                text = text[:min(hits)]
            delta, sent = text[len(sent):], text
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": None, "stop_reason": None}
            if options.send_token_ids and body.get("return_token_ids"):
                choice["token_ids"] = [token]
            if hits or token == self.server.tokenizer.eos_id:
                finish_reason = "stop"
                choice["finish_reason"] = "stop"
            self._event(self._chunk([choice]))
            if hits or token == self.server.tokenizer.eos_id:
                break
        if finish_reason == "length":
            self._event(self._chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": "length",
                                      "stop_reason": None, **({"token_ids": []} if options.send_token_ids else {})}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": embeds.shape[0], "completion_tokens": len(ids),
                     "total_tokens": embeds.shape[0] + len(ids)}
            self._event({**self._chunk([]), "usage": usage})
        self._event("[DONE]")

    def _chunk(self, choices: list[dict]) -> dict:
        return {"id": "cmpl-test", "object": "text_completion", "created": int(time.time()),
                "model": self.server.name, "choices": choices}

    def _event(self, payload: dict | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()
