import pytest

from indexer.query.budget import TokenCosts, plan_tokens


def test_whole_video_when_every_frame_fits_with_the_most_content_tokens_that_fit():
    costs = TokenCosts(available=10_000, label=5, span_header=10)
    plan = plan_tokens(100, [5], [16, 1], costs)
    assert (plan.mode, plan.content_tokens, plan.label_every, plan.frames) == ("whole", 16, 1, 100)
    assert plan.tokens == 100 * 17 + 100 * 5 + 10 <= costs.available


def test_three_hour_film_goes_in_whole_at_two_tokens_per_frame_with_sparser_labels():
    # the paper's long-video mode: 3 h at 1 fps = 10,800 frames x 2 tokens = 21,600 tokens
    costs = TokenCosts(available=32_000 - 600, label=5, span_header=10)
    plan = plan_tokens(10_800, [20, 20], [1], costs)
    assert (plan.mode, plan.content_tokens, plan.frames) == ("whole", 1, 10_800)
    assert plan.label_every == 10  # a label on every frame would need 54,000 more tokens, every 5th 10,800
    assert plan.tokens <= costs.available


def test_spans_when_the_whole_video_does_not_fit():
    costs = TokenCosts(available=2_000, label=5, span_header=10)
    plan = plan_tokens(10_800, [30, 20], [16, 1], costs)
    assert plan.mode == "spans"
    assert (plan.content_tokens, plan.frame_stride, plan.frames) == (16, 1, 50)  # 50 x 22 + 20 = 1120
    tight = plan_tokens(10_800, [30, 20], [16, 1], TokenCosts(available=400, label=5, span_header=10))
    assert (tight.content_tokens, tight.frame_stride, tight.frames) == (1, 1, 50)  # 50 x 7 + 20 = 370
    tighter = plan_tokens(10_800, [30, 20], [16, 1], TokenCosts(available=200, label=5, span_header=10))
    assert tighter.content_tokens == 1 and tighter.frame_stride == 2 and tighter.tokens <= 200
    assert tighter.spans == 2


def test_the_weakest_spans_go_when_one_frame_of_each_does_not_fit():
    plan = plan_tokens(10_800, [3, 3, 3], [1], TokenCosts(available=60, label=5, span_header=30))
    assert (plan.mode, plan.spans, plan.frame_stride, plan.frames) == ("spans", 1, 1, 3)  # 30 + 3 x 7 = 51


def test_subtitles_count_against_the_budget():
    plain = plan_tokens(100, [10], [1], TokenCosts(available=800, label=5, span_header=10))
    with_subtitles = plan_tokens(100, [10], [1], TokenCosts(available=800, label=5, span_header=10,
                                                            subtitle_per_frame=8.0))
    assert plain.mode == "whole" and with_subtitles.mode == "spans"


def test_clear_errors():
    with pytest.raises(ValueError, match="context is too small"):
        plan_tokens(10_000, [5, 5, 5], [1], TokenCosts(available=16, label=5, span_header=10))
    with pytest.raises(ValueError, match="no frame matched"):
        plan_tokens(10_000, [], [1], TokenCosts(available=20, label=5, span_header=10))
