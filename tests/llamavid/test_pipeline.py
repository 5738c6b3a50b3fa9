"""The public API on a tiny checkpoint: input checks, path semantics and generation."""

import numpy as np
import pytest
import torch

FRAMES = (np.random.default_rng(1).random((4, 120, 90, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def features(tiny_model):
    return tiny_model.encode_frames(tiny_model.preprocess(FRAMES))


@pytest.mark.parametrize("frames,error,message", [
    (FRAMES.astype(np.float32), TypeError, "dtype uint8"),
    (FRAMES[..., :2], ValueError, r"shape \[T, H, W, 3\]"),
    (FRAMES[0], ValueError, r"shape \[T, H, W, 3\]"),
    (FRAMES[:0], ValueError, r"T, H, W > 0"),
    (torch.from_numpy(FRAMES), TypeError, "numpy array"),
])
def test_bad_frames_are_named(tiny_model, frames, error, message):
    with pytest.raises(error, match=message):
        tiny_model.preprocess(frames)


def test_preprocess_crops_the_center_after_resizing_the_shortest_edge(tiny_model):
    pixels = tiny_model.preprocess(FRAMES)
    assert pixels.shape == (4, 3, 112, 112) and pixels.dtype == torch.float32
    tall = np.zeros((1, 300, 100, 3), np.uint8)
    tall[:, :90] = 255  # a white band at the top falls outside the center crop
    assert tiny_model.preprocess(tall).std(dim=(2, 3)).max() < 1e-6
    tall[:, 150] = 255  # a white line in the middle does not
    assert tiny_model.preprocess(tall).std(dim=(2, 3)).min() > 0.1


def test_bad_pixels_and_features_are_named(tiny_model, features):
    with pytest.raises(ValueError, match=r"\[T, 3, 112, 112\]"):
        tiny_model.encode_frames(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"features must be a tensor \[T, N or 1\+N, 176\]"):
        tiny_model.frame_tokens(features[..., :100], "q")


@pytest.mark.parametrize("question", ["", "   ", None])
def test_empty_question_is_refused(tiny_model, features, question):
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        tiny_model.frame_tokens(features, question)


def test_short_path_qformer_sees_cls_long_path_does_not(tiny_model, features):
    short = tiny_model.frame_tokens(features, "a red car")
    long = tiny_model.frame_tokens(features[:, 1:], "a red car")
    # content tokens pool the same patches (CLS dropped on both paths)...
    torch.testing.assert_close(short[:, 1:], long[:, 1:])
    # ...but the Q-Former reads the CLS token on the short path, so the context tokens differ
    assert not torch.allclose(short[:, 0], long[:, 0])
    # and each frame's tokens depend only on that frame
    torch.testing.assert_close(tiny_model.frame_tokens(features[2:3], "a red car"), short[2:3], rtol=1e-5, atol=1e-5)


def test_context_token_depends_on_the_question(tiny_model, features):
    a, b = tiny_model.frame_tokens(features, "a red car"), tiny_model.frame_tokens(features, "the blue door")
    assert not torch.allclose(a[:, 0], b[:, 0])
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    scores = tiny_model.context_scores(features, "a red car")
    assert scores.shape == (4, tiny_model.config.qformer.num_query, 64)
    torch.testing.assert_close(scores.sum(-1), torch.ones(4, tiny_model.config.qformer.num_query))


def test_text_queries_computed_once_give_the_same_context_tokens_and_scores(tiny_model, features):
    queries = tiny_model.text_queries(features, "a red car")
    assert queries.shape == (4, tiny_model.config.qformer.num_query, tiny_model.config.vision.width)
    torch.testing.assert_close(tiny_model.context_tokens(features, "a red car", queries),
                               tiny_model.context_tokens(features, "a red car"))
    torch.testing.assert_close(tiny_model.context_scores(features, "a red car", queries),
                               tiny_model.context_scores(features, "a red car"))
    # a frame's queries depend on that frame only, so a subset's may be reused
    torch.testing.assert_close(tiny_model.text_queries(features[1:3], "a red car"), queries[1:3],
                               rtol=1e-5, atol=1e-5)


def test_video_prompt_takes_the_whole_clip_at_one_placeholder(tiny_model, features):
    tokens = tiny_model.frame_tokens(features, "q?")
    ids = tiny_model.prompt_ids("q?", 4, mode="video")
    embeds = tiny_model.inputs_embeds(ids, tokens)
    at = int((ids == -200).nonzero()[0])
    assert embeds.shape[0] == len(ids) - 1 + 4 * 2
    torch.testing.assert_close(embeds[at:at + 8], tokens.reshape(8, -1))
    torch.testing.assert_close(tiny_model.inputs_embeds(ids, tokens.reshape(8, -1)), embeds)  # flattened tokens


def test_placeholder_count_mismatch_is_named(tiny_model, features):
    tokens = tiny_model.frame_tokens(features, "q?")
    ids = tiny_model.prompt_ids("q?", 3, mode="movie")  # 3 frames of placeholders, 4 frames of tokens
    with pytest.raises(ValueError, match="6 <image> placeholders but there are 8 frame tokens"):
        tiny_model.inputs_embeds(ids, tokens)
    with pytest.raises(ValueError, match="mode must be 'video' or 'movie'"):
        tiny_model.prompt_ids("q?", 3, mode="film")


def test_generation_greedy_is_argmax_and_sampling_is_seeded(tiny_model, features):
    tokens = tiny_model.frame_tokens(features[:, 1:], "q?")
    embeds = tiny_model.inputs_embeds(tiny_model.prompt_ids("q?", 4, mode="movie"), tokens)
    greedy = tiny_model.generate(embeds, max_new_tokens=3)
    assert greedy[0] == int(tiny_model.logits(embeds)[-1].argmax())
    assert len(greedy) <= 3
    torch.manual_seed(0)
    s1 = tiny_model.generate(embeds, max_new_tokens=6, do_sample=True, temperature=1.5)
    torch.manual_seed(0)
    assert tiny_model.generate(embeds, max_new_tokens=6, do_sample=True, temperature=1.5) == s1


def test_answer_drops_cls_and_decodes(tiny_model, features):
    with_cls = tiny_model.answer("what happens?", features, subtitles={1: " ok"}, max_new_tokens=5)
    without = tiny_model.answer("what happens?", features[:, 1:], subtitles={1: " ok"}, max_new_tokens=5)
    assert with_cls == without and isinstance(with_cls, str)
