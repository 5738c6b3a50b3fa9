"""Loading by role (`parts`): the encoder and prompt parts give the golden numbers of the full
model, hold no LLM layers, and read no LLM tensors (an encoder's memory does not grow with the LLM)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from indexer.llamavid import LlamaVid
from indexer.llamavid.tiny import TinySpec, make_tiny_checkpoint
from tests.conftest import REPO, golden_roots
from tests.llamavid.test_golden import Golden, close

GOLDEN = golden_roots()


@pytest.fixture(scope="module", params=GOLDEN, ids=[p.name for p in GOLDEN])
def golden(request):
    return Golden(request.param)


@pytest.mark.parametrize("parts", ["encoder", "prompt"])
def test_a_role_gives_the_golden_numbers_of_its_parts(golden, parts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # config.json's "./model_zoo/..." paths resolve from the model folder
    model = LlamaVid.from_pretrained(golden.root / "model", parts=parts)
    t = golden.tensors
    close(model.encode_frames(model.preprocess(t["frames_short"].numpy())), t["vision_features_short"])
    close(model.encode_frames(model.preprocess(t["frames_long"].numpy())), t["vision_features_long"])
    for path in ("short", "long"):
        features = t["vision_features_short"] if path == "short" else t["features_long_input"]
        for qi, question in enumerate(golden.questions[:2]):
            tokens = model.frame_tokens(features, question)
            close(tokens.reshape(-1, tokens.shape[-1]), t[f"frame_tokens_{path}_q{qi}"])
            close(model.context_tokens(features, question), t[f"context_tokens_{path}_q{qi}"])
            close(model.content_tokens(features), t[f"content_tokens_{path}_q{qi}"])
            ids = model.prompt_ids(question, features.shape[0], mode="video" if path == "short" else "movie",
                                   subtitles=golden.subtitles() if path == "long" else None,
                                   conv_mode=golden.outputs[path]["conv_mode"])
            assert ids.tolist() == t[f"input_ids_{path}_q{qi}"].tolist()
            if parts == "prompt":
                close(model.inputs_embeds(ids, tokens), t[f"inputs_embeds_{path}_q{qi}"])
            else:
                with pytest.raises(RuntimeError, match="inputs_embeds\\(\\) needs the parts 'prompt'.*parts='encoder'"):
                    model.inputs_embeds(ids, tokens)
    with pytest.raises(RuntimeError, match=f"logits\\(\\) needs the parts 'all'.*parts='{parts}'"):
        model.logits(t["inputs_embeds_short_q0"])
    with pytest.raises(RuntimeError, match="answer\\(\\) needs the parts 'all'"):
        model.answer(golden.questions[0], t["vision_features_long"])
    llm_keys = [k for k in model.model.state_dict() if k.startswith("language_model.")]
    assert llm_keys == (["language_model.model.embed_tokens.weight"] if parts == "prompt" else [])


def test_unknown_parts_is_one_clear_error(tiny_model_dir):
    with pytest.raises(ValueError, match=r"parts must be one of \('encoder', 'prompt', 'all'\), got 'llm'"):
        LlamaVid.from_pretrained(tiny_model_dir, parts="llm")


# -- memory ---------------------------------------------------------------------------------------
# A fresh process loads the model and reports the bytes of the tensors it holds and how much its
# resident memory grew from before the load: now, and at its peak (VmHWM), so a loader that read
# every tensor and dropped the unused ones would show too.
_MEASURE = textwrap.dedent("""
    import json, sys
    import torch
    from indexer.llamavid import LlamaVid

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    before = status("VmRSS")
    model = LlamaVid.from_pretrained(sys.argv[1], parts=sys.argv[2])
    tensors = sum(t.numel() * t.element_size() for t in model.model.state_dict().values())
    print(json.dumps({"tensor_bytes": tensors, "rss_growth": status("VmRSS") - before,
                      "peak_growth": status("VmHWM") - before}))
""")

# Both LLMs are 1024 wide (the encoder's projectors end in the LLM's width, so that stays); they
# differ only in depth: 1 layer against 16 (about 170M parameters, 340 MB of bfloat16).
_LLM = dict(llm_hidden=1024, llm_heads=16, llm_kv_heads=16, weights_dtype="bfloat16", shard_bytes=100_000_000)
MIB = 2**20


def measure(model_dir, parts: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(model_dir), parts], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def weights_bytes(model_dir) -> int:
    return sum(f.stat().st_size for f in model_dir.iterdir() if f.suffix in (".bin", ".safetensors"))


@pytest.mark.parametrize("weights_format", ["bin", "safetensors"])
def test_an_encoders_memory_does_not_grow_with_the_llm(tmp_path, weights_format):
    small = make_tiny_checkpoint(tmp_path / "small", TinySpec(**_LLM, llm_layers=1, weights_format=weights_format))
    big = make_tiny_checkpoint(tmp_path / "big", TinySpec(**_LLM, llm_layers=16, weights_format=weights_format))
    assert weights_bytes(big) - weights_bytes(small) > 300 * MIB  # what a full load would add (twice, in float32)
    on_small, on_big = measure(small, "encoder"), measure(big, "encoder")
    assert on_big["tensor_bytes"] == on_small["tensor_bytes"]
    assert abs(on_big["rss_growth"] - on_small["rss_growth"]) < 16 * MIB, (on_small, on_big)
    assert abs(on_big["peak_growth"] - on_small["peak_growth"]) < 16 * MIB, (on_small, on_big)
    # the prompt role adds the token embedding table, and no more than that
    prompt = measure(big, "prompt")
    embed_bytes = 1024 * json.loads((big / "config.json").read_text())["vocab_size"] * torch.float32.itemsize
    assert prompt["tensor_bytes"] == on_big["tensor_bytes"] + embed_bytes
