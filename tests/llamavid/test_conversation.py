import pytest

from indexer.llamavid.conversation import (MOVIE_END, MOVIE_START, Conversation, get_template, movie_frames_text,
                                           video_frames_text)

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


def test_vicuna_v1_single_and_multi_turn():
    conv = Conversation(get_template("vicuna_v1"))
    conv.add_user("<image>\nWhat?")
    assert conv.prompt() == f"{SYSTEM} USER: <image>\nWhat? ASSISTANT:"
    conv.add_assistant("A car.")
    conv.add_user("And then?")
    assert conv.prompt() == f"{SYSTEM} USER: <image>\nWhat? ASSISTANT: A car.</s>USER: And then? ASSISTANT:"


def test_imgsp_v1_matches_vicuna_text():
    assert get_template("imgsp_v1").render([("USER", "x"), ("ASSISTANT", None)]) == \
        get_template("vicuna_v1").render([("USER", "x"), ("ASSISTANT", None)])


def test_movie_text_places_subtitles_after_their_frame():
    text = movie_frames_text(3, tokens_per_frame=2, subtitles={1: "Hello there."})
    assert text == MOVIE_START + "<image><image><image><image>Hello there.<image><image>" + MOVIE_END
    assert video_frames_text(50) == "<image>"


def test_bad_subtitle_frames_and_modes_are_named():
    with pytest.raises(ValueError, match=r"\[5\]"):
        movie_frames_text(3, 2, {5: "late"})
    with pytest.raises(ValueError, match="unknown conv_mode 'nope'"):
        get_template("nope")
    with pytest.raises(ValueError, match="num_frames"):
        movie_frames_text(0, 2)
