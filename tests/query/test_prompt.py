from indexer.llamavid.conversation import MOVIE_END, MOVIE_START
from indexer.query.prompt import PromptFrame, PromptSpan, Turn, clock, conversation_prompt, video_text


def test_clock():
    assert [clock(0), clock(72.9), clock(3600), clock(4000)] == ["0:00", "1:12", "1:00:00", "1:06:40"]


def test_video_text_interleaves_headers_labels_placeholders_and_subtitles():
    spans = [PromptSpan("cam1", 70.0, 72.0,
                        (PromptFrame(5, 70.0, "hello"), PromptFrame(6, 71.0), PromptFrame(7, 72.0))),
             PromptSpan("cam2", 3.0, 3.0, (PromptFrame(9, 3.0),))]
    text = video_text(spans, tokens_per_frame=2, label_every=2)
    assert text == (MOVIE_START + "\n[cam1 1:10-1:12]\n<1:10><image><image>hello<image><image><1:12><image><image>"
                    + "\n[cam2 0:03-0:03]\n<0:03><image><image>" + MOVIE_END)
    assert "hello" not in video_text(spans, 2, subtitles=False)


def test_a_frame_without_a_context_token_has_one_placeholder_less():
    spans = [PromptSpan("cam1", 1.0, 2.0, (PromptFrame(1, 1.0), PromptFrame(2, 2.0, context=False)))]
    assert video_text(spans, tokens_per_frame=3) == (MOVIE_START + "\n[cam1 0:01-0:02]\n<0:01><image><image><image>"
                                                     + "<0:02><image><image>" + MOVIE_END)


def test_earlier_turns_are_text_and_the_frames_go_with_the_new_question():
    prompt = conversation_prompt("<image>", "and then?", [Turn("who enters?", "a courier")])
    assert prompt.endswith("USER: who enters? ASSISTANT: a courier</s>USER: <image>\nand then? ASSISTANT:")
    assert prompt.count("<image>") == 1
