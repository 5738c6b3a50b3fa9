"""Every tensor and id the official code computed for each golden set, reproduced through
`LlamaVid.from_pretrained` and the public API (float32, rtol = atol = 1e-4)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from indexer.llamavid import LlamaVid
from tests.conftest import golden_roots

GOLDEN = golden_roots()


class Golden:
    def __init__(self, root):
        self.root = root
        self.tensors = load_file(str(root / "expected" / "tensors.safetensors"))
        self.outputs = json.loads((root / "expected" / "outputs.json").read_text())
        self.questions = self.outputs["questions"]

    def subtitles(self):
        return {int(k): v for k, v in self.outputs["long"].get("subtitles_after_frame", {}).items()}


@pytest.fixture(scope="module", params=GOLDEN, ids=[p.name for p in GOLDEN])
def golden(request, tmp_path_factory):
    return Golden(request.param)


@pytest.fixture(scope="module")
def model(golden, tmp_path_factory):
    # Run from an unrelated directory: config.json's "./model_zoo/..." paths must resolve from the model folder.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        return LlamaVid.from_pretrained(golden.root / "model")


def close(actual, expected):
    torch.testing.assert_close(actual.float().cpu(), expected.float(), rtol=1e-4, atol=1e-4)


def test_pixels_and_vision_features(golden, model):
    pixels = model.preprocess(golden.tensors["frames_short"].numpy())
    close(pixels, golden.tensors["pixel_values_short"])
    close(model.encode_frames(pixels), golden.tensors["vision_features_short"])
    close(model.encode_frames(model.preprocess(golden.tensors["frames_long"].numpy())),
          golden.tensors["vision_features_long"])
    close(golden.tensors["vision_features_long"][:, 1:], golden.tensors["features_long_input"])


@pytest.mark.parametrize("path", ["short", "long"])
@pytest.mark.parametrize("qi", [0, 1])
def test_frame_tokens_ids_embeds_logits_greedy(golden, model, path, qi):
    t, out = golden.tensors, golden.outputs[path]
    question = golden.questions[qi]
    features = t["vision_features_short"] if path == "short" else t["features_long_input"]
    tokens = model.frame_tokens(features, question)
    close(tokens.reshape(-1, tokens.shape[-1]), t[f"frame_tokens_{path}_q{qi}"])
    close(tokens[:, :1], t[f"context_tokens_{path}_q{qi}"])
    close(tokens[:, 1:], t[f"content_tokens_{path}_q{qi}"])

    features = features.to(model.dtype)
    ids_, mask = _qformer(model, question)
    if f"text_queries_{path}_q{qi}" in t:
        close(model.model.text_queries(features, ids_, mask), t[f"text_queries_{path}_q{qi}"])
    close(model.model.text_queries.query_states(features, ids_, mask), t[f"qformer_out_{path}_q{qi}"])

    mode = "video" if path == "short" else "movie"
    ids = model.prompt_ids(question, features.shape[0], mode=mode,
                           subtitles=golden.subtitles() if path == "long" else None, conv_mode=out["conv_mode"])
    assert model.prompt_text(question, features.shape[0], mode=mode,
                             subtitles=golden.subtitles() if path == "long" else None,
                             conv_mode=out["conv_mode"]) == out[f"q{qi}"]["prompt"]
    assert ids.tolist() == t[f"input_ids_{path}_q{qi}"].tolist() == out[f"q{qi}"]["input_ids"]
    embeds = model.inputs_embeds(ids, tokens)
    close(embeds, t[f"inputs_embeds_{path}_q{qi}"])
    close(model.logits(embeds), t[f"logits_{path}_q{qi}"])
    expected_new = out[f"q{qi}"]["greedy_new_ids"]
    steps = []  # next-token logits of every decoding step, as the LM head computes them
    hook = model.model.language_model.lm_head.register_forward_hook(lambda mod, args, out: steps.append(out[0, -1]))
    try:
        assert model.generate(embeds, max_new_tokens=len(expected_new)) == expected_new
    finally:
        hook.remove()
    if f"greedy_logits_{path}_q{qi}" in t:  # sets whose decoding crosses max_position_embeddings (D, E)
        close(torch.stack(steps), t[f"greedy_logits_{path}_q{qi}"])


@pytest.mark.parametrize("qi", [0, 1])
def test_answer_is_the_recorded_greedy_text(golden, model, qi):
    out = golden.outputs["long"][f"q{qi}"]
    text = model.answer(golden.questions[qi], golden.tensors["vision_features_long"], subtitles=golden.subtitles(),
                        max_new_tokens=len(out["greedy_new_ids"]), conv_mode=golden.outputs["long"]["conv_mode"])
    assert text == out["greedy_text"].strip()


def test_tokenizers_match_the_official_ones(golden, model):
    for text, ids in golden.outputs.get("llm_tokenizer", {}).items():
        assert model.tokenizer.encode(text) == ids, text
    for text, ids in golden.outputs.get("qformer_tokenizer", {}).items():
        assert _qformer(model, text)[0][0].tolist() == ids, text


def _qformer(model, question):
    from indexer.llamavid.tokenization import qformer_inputs

    return qformer_inputs(model.qformer_tokenizer, question)


def test_the_golden_sets_travel_with_the_repository():
    assert [p.name for p in GOLDEN] == [f"llamavid-tiny-{s}" for s in "abcde"]
