"""VllmServerBackend end to end against a local OpenAI-compatible server (tests/llm/openai_server.py)
that decodes prompt_embeds as vLLM does and runs the exported LLaMA with transformers."""

import socket
import threading

import pytest

from indexer.llm import LLMBackendError
from indexer.llm.transformers_backend import TransformersBackend
from indexer.llm.vllm_backend import VllmServerBackend
from indexer.settings import LLMSettings
from tests.llm.openai_server import CompletionsServer, ServerOptions


@pytest.fixture(scope="module")
def server(exported_tiny):
    with CompletionsServer(exported_tiny.out_dir) as running:
        yield running


@pytest.fixture
def options(server):
    """The server's switches, reset after each test."""
    server.options = ServerOptions()
    yield server.options
    server.options = ServerOptions()


def backend_for(server, tiny_model, **settings) -> VllmServerBackend:
    return VllmServerBackend(LLMSettings(backend="vllm-server", url=server.url, **settings), tiny_model)


def test_server_answer_equals_transformers_answer(server, options, tiny_model, embeds):
    expected = TransformersBackend(tiny_model).generate(embeds, max_new_tokens=24)
    with backend_for(server, tiny_model) as backend:
        answer = backend.generate(embeds, max_new_tokens=24)
    assert answer.token_ids == expected.token_ids and answer.text == expected.text
    assert answer.prompt_tokens == embeds.shape[0]  # from the usage chunk
    assert 0 < answer.first_token_s < answer.total_s
    request = server.requests[-1]
    assert request["model"] == "tiny-llm"  # asked from /v1/models
    assert request["temperature"] == 0.0 and request["max_tokens"] == 24 and request["stream"] is True
    assert request["prompt_embeds"].dtype == embeds.dtype and (request["prompt_embeds"] == embeds).all()


def test_stop_strings_agree_with_transformers(server, options, tiny_model, embeds):
    reference = TransformersBackend(tiny_model)
    text = tiny_model.tokenizer.decode(reference.generate(embeds, max_new_tokens=32).token_ids)
    stop = [text[len(text) // 2: len(text) // 2 + 3]]
    expected = reference.generate(embeds, max_new_tokens=32, stop=stop)
    with backend_for(server, tiny_model) as backend:
        answer = backend.generate(embeds, max_new_tokens=32, stop=stop)
    assert (answer.token_ids, answer.text) == (expected.token_ids, expected.text)
    assert server.requests[-1]["stop"] == stop


def test_server_without_token_ids_gives_its_text(server, options, tiny_model, embeds):
    options.send_token_ids = False
    expected = TransformersBackend(tiny_model).generate(embeds, max_new_tokens=16)
    with backend_for(server, tiny_model) as backend:
        answer = backend.generate(embeds, max_new_tokens=16)
    assert answer.token_ids == [] and answer.text == expected.text


def test_api_key_is_sent_as_bearer_token(server, options, tiny_model, embeds):
    options.api_key = "s3cret"
    with backend_for(server, tiny_model, api_key="s3cret") as backend:
        assert backend.generate(embeds, max_new_tokens=2).token_ids
    with backend_for(server, tiny_model, model="tiny-llm") as backend, \
            pytest.raises(LLMBackendError, match=f"{server.url}/completions answered 401.*llm.api_key"):
        backend.generate(embeds, max_new_tokens=2)


def test_server_without_enable_prompt_embeds(server, options, tiny_model, embeds):
    options.enable_prompt_embeds = False
    with backend_for(server, tiny_model) as backend, pytest.raises(
            LLMBackendError, match=f"the vLLM server at {server.url} was started without --enable-prompt-embeds"):
        backend.generate(embeds, max_new_tokens=2)


def test_server_error_status(server, options, tiny_model, embeds):
    options.fail_status = 500
    with backend_for(server, tiny_model, model="tiny-llm") as backend, \
            pytest.raises(LLMBackendError, match=f"{server.url}/completions answered 500: the engine is dead"):
        backend.generate(embeds, max_new_tokens=2)


def test_unknown_served_model(server, options, tiny_model, embeds):
    with backend_for(server, tiny_model, model="work/llm") as backend, \
            pytest.raises(LLMBackendError, match="answered 404: The model `work/llm` does not exist.*llm.model"):
        backend.generate(embeds, max_new_tokens=2)


def test_url_without_v1(server, options, tiny_model, embeds):
    url = server.url.removesuffix("/v1")
    with VllmServerBackend(LLMSettings(backend="vllm-server", url=url), tiny_model) as backend, \
            pytest.raises(LLMBackendError, match=f"{url}/models answered 404 Not Found: llm.url must be the server's "
                                                 "OpenAI base URL"):
        backend.generate(embeds, max_new_tokens=2)


def test_error_in_the_middle_of_the_stream(server, options, tiny_model, embeds):
    options.error_after_tokens = 2
    with backend_for(server, tiny_model) as backend, pytest.raises(
            LLMBackendError, match=f"the server at {server.url} failed while answering: CUDA out of memory"):
        backend.generate(embeds, max_new_tokens=8)


def test_slow_server_times_out(server, options, tiny_model, embeds):
    options.delay_s = 1.5
    with backend_for(server, tiny_model, model="tiny-llm", timeout_s=0.3) as backend, pytest.raises(
            LLMBackendError, match=f"no answer from {server.url}/completions within llm.timeout_s"):
        backend.generate(embeds, max_new_tokens=2)


def test_server_down(tiny_model, embeds):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with VllmServerBackend(LLMSettings(backend="vllm-server", url=url), tiny_model) as backend, \
            pytest.raises(LLMBackendError, match=f"cannot connect to the vLLM server at {url}.*vllm serve"):
        backend.generate(embeds, max_new_tokens=2)


def test_concurrent_requests_share_one_backend(server, options, tiny_model, embeds):
    expected = TransformersBackend(tiny_model).generate(embeds, max_new_tokens=8).token_ids
    results = []
    with backend_for(server, tiny_model, model="tiny-llm") as backend:
        threads = [threading.Thread(target=lambda: results.append(backend.generate(embeds, max_new_tokens=8)))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r.token_ids for r in results] == [expected] * 3
