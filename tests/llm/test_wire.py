"""The prompt_embeds wire format (base64 of torch.save) and small helpers of the backends."""

import base64
import io
import math
import pickle
from types import SimpleNamespace

import pytest
import torch

from indexer.llm.base import cut_at_stop
from indexer.llm.vllm_backend import first_token_latency
from indexer.llm.wire import decode_prompt_embeds, encode_prompt_embeds


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_through_torch_load_weights_only(dtype):
    embeds = torch.randn(7, 16).to(dtype)
    text = encode_prompt_embeds(embeds)
    assert isinstance(text, str) and text.isascii()
    # exactly what vLLM's server does with it
    loaded = torch.load(io.BytesIO(base64.b64decode(text, validate=True)), weights_only=True, map_location="cpu")
    assert loaded.dtype == dtype and torch.equal(loaded, embeds)
    assert torch.equal(decode_prompt_embeds(text, hidden_size=16), embeds)


def test_a_view_sends_only_its_own_rows():
    long = torch.randn(10_000, 16)
    view = long[100:104]
    text = encode_prompt_embeds(view)
    assert len(base64.b64decode(text)) < 4 * 16 * 4 + 2_000  # not the 640 kB storage behind the view
    assert torch.equal(decode_prompt_embeds(text), view)


def test_non_contiguous_and_grad_tensors_encode():
    embeds = torch.randn(16, 5, requires_grad=True).t()  # (5, 16), transposed view with grad
    assert torch.equal(decode_prompt_embeds(encode_prompt_embeds(embeds)), embeds.detach())


def test_batch_of_one_is_squeezed_on_decode():
    embeds = torch.randn(1, 3, 8)
    buffer = io.BytesIO()
    torch.save(embeds, buffer)
    assert decode_prompt_embeds(base64.b64encode(buffer.getvalue())).shape == (3, 8)


@pytest.mark.parametrize("bad", [torch.zeros(3, 4, dtype=torch.long), torch.zeros(4), torch.zeros(2, 3, 4), [1.0]])
def test_encode_rejects_what_the_server_would(bad):
    with pytest.raises(ValueError, match=r"floating tensor \[L, D\]"):
        encode_prompt_embeds(bad)


def test_decode_errors():
    with pytest.raises(ValueError, match="not valid base64"):
        decode_prompt_embeds("not base64!!")
    with pytest.raises(ValueError, match="hidden size 8"):
        decode_prompt_embeds(encode_prompt_embeds(torch.zeros(2, 4)), hidden_size=8)
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(2)}, buffer)
    with pytest.raises(ValueError, match="must hold a tensor, got dict"):
        decode_prompt_embeds(base64.b64encode(buffer.getvalue()))


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_decode_never_runs_pickled_code(capsys):
    payload = base64.b64encode(pickle.dumps(_RunsCode()))
    with pytest.raises(ValueError, match="not a torch.save'd tensor"):
        decode_prompt_embeds(payload)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_first_token_latency_from_each_vllm_metrics_shape():
    assert first_token_latency(SimpleNamespace(first_token_latency=0.25)) == 0.25  # V1, newer
    assert first_token_latency(SimpleNamespace(first_token_latency=0.0, queued_ts=10.0, first_token_ts=10.5)) == 0.5
    assert first_token_latency(SimpleNamespace(arrival_time=100.0, first_token_time=100.125)) == 0.125  # V0
    assert math.isnan(first_token_latency(None))
    assert math.isnan(first_token_latency(SimpleNamespace(arrival_time=1.0, first_token_ts=0.0)))


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("a cat. sat</s>", ["</s>", "."]) == ("a cat", True)
    assert cut_at_stop("a cat", ["x"]) == ("a cat", False)
    assert cut_at_stop("a cat", None) == ("a cat", False)
