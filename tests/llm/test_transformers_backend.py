"""The transformers backend on the loaded LlamaVid, and choosing a backend from settings."""

import math

import pytest

from indexer.llm import LLMBackendError, make_backend
from indexer.llm.transformers_backend import TransformersBackend
from indexer.settings import LLMSettings


def test_greedy_answer_is_llamavid_generate(tiny_model, embeds):
    with TransformersBackend(tiny_model) as backend:
        answer = backend.generate(embeds, max_new_tokens=24)
    expected = tiny_model.generate(embeds, max_new_tokens=24)
    assert answer.token_ids == expected
    assert answer.text == tiny_model.tokenizer.decode(expected).strip()
    assert answer.prompt_tokens == embeds.shape[0]
    assert 0 < answer.first_token_s < answer.total_s
    assert backend.generate(embeds, max_new_tokens=24).token_ids == expected  # reproducible


def test_stop_string_ends_generation_and_is_cut(tiny_model, embeds):
    backend = TransformersBackend(tiny_model)
    full = backend.generate(embeds, max_new_tokens=32)
    text = tiny_model.tokenizer.decode(full.token_ids)
    stop = text[len(text) // 2: len(text) // 2 + 3]  # something the answer says half way
    assert stop.strip()
    answer = backend.generate(embeds, max_new_tokens=32, stop=[stop, "never said"])
    assert answer.text == text[:text.find(stop)].strip()
    n = len(answer.token_ids)
    assert answer.token_ids == full.token_ids[:n] and n < len(full.token_ids)
    assert stop in tiny_model.tokenizer.decode(answer.token_ids)  # the last token completed the stop string
    assert stop not in tiny_model.tokenizer.decode(answer.token_ids[:-1])


def test_max_new_tokens_one(tiny_model, embeds):
    answer = TransformersBackend(tiny_model).generate(embeds, max_new_tokens=1)
    assert len(answer.token_ids) == 1 and not math.isnan(answer.first_token_s)


@pytest.mark.parametrize("call, message", [
    (lambda b, e: b.generate(e[:, :10]), r"embeds must be the prompt embedding \[L, 64\]"),
    (lambda b, e: b.generate(e[None]), r"embeds must be the prompt embedding"),
    (lambda b, e: b.generate(e, max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (lambda b, e: b.generate(e, stop="</s>"), "stop must be a list of non-empty strings"),
    (lambda b, e: b.generate(e, stop=[""]), "stop must be a list of non-empty strings"),
])
def test_bad_requests(tiny_model, embeds, call, message):
    with pytest.raises(ValueError, match=message):
        call(TransformersBackend(tiny_model), embeds)


def test_integer_embeds_are_refused(tiny_model, embeds):
    with pytest.raises(TypeError, match="floating point"):
        TransformersBackend(tiny_model).generate(embeds.long())


def test_make_backend_by_name(tiny_model, exported_tiny):
    assert make_backend(LLMSettings(), tiny_model).name == "transformers"
    server = make_backend(LLMSettings(backend="vllm-server", url="http://127.0.0.1:1/v1/"), tiny_model)
    assert server.name == "vllm-server" and server.url == "http://127.0.0.1:1/v1"
    server.close()
    with pytest.raises(ValueError, match="llm.url is required"):
        make_backend(LLMSettings(backend="vllm-server"), tiny_model)
    with pytest.raises(ValueError, match="must start with http"):
        make_backend(LLMSettings(backend="vllm-server", url="127.0.0.1:8000/v1"), tiny_model)
    with pytest.raises(ValueError, match="llm.model must name the folder `vidx export-llm"):
        make_backend(LLMSettings(backend="vllm"), tiny_model)
    with pytest.raises(FileNotFoundError, match="has no config.json: write it with `vidx export-llm"):
        make_backend(LLMSettings(backend="vllm", model=str(exported_tiny.out_dir / "nope")), tiny_model)


def test_vllm_backend_without_vllm_says_how_to_get_it(tiny_model, exported_tiny):
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here; bench/llm_gpu_check.py runs it on a GPU")
    except ImportError:
        pass
    with pytest.raises(LLMBackendError, match="pip install vllm"):
        make_backend(LLMSettings(backend="vllm", model=str(exported_tiny.out_dir)), tiny_model)


def test_vllm_backend_refuses_another_models_export(tiny_model, tmp_path):
    from indexer.llm.export import export_llm
    from tests.llm.test_export import GOLDEN_C

    other = export_llm(GOLDEN_C, tmp_path / "other")
    config = other.out_dir / "config.json"
    config.write_text(config.read_text().replace('"hidden_size": 64', '"hidden_size": 96'))
    with pytest.raises(ValueError, match="is not the LLM of .*hidden_size 96 vs 64"):
        make_backend(LLMSettings(backend="vllm", model=str(other.out_dir)), tiny_model)


def test_embeds_that_carry_grad_are_accepted(tiny_model, embeds):
    answer = TransformersBackend(tiny_model).generate(embeds.clone().requires_grad_(True), max_new_tokens=2)
    assert answer.token_ids == tiny_model.generate(embeds, max_new_tokens=2)
