"""QueryEngine over a real index (tests/indexes.py: two ffmpeg-made videos ingested on Ray with
the tiny models): citations point at real frames of the right stream and time range."""

import numpy as np
import pytest
import torch

from indexer.query.engine import QueryEngine
from indexer.query.prompt import Turn, time_label
from indexer.query.search import SearchFilter
from indexer.store.index import IndexReader
from indexer.store.root import IndexRoot
from tests.indexes import planted_image


@pytest.fixture(scope="module")
def engine(tiny_index):
    engine = QueryEngine.open(IndexRoot.at(tiny_index.root))  # the index's own ingest-config.yaml
    yield engine
    engine.close()


def frame_rows(root):
    table = IndexReader(IndexRoot.at(root)).timeline(columns=["frame_id", "stream_id", "pts_s", "kind"]).to_pylist()
    return {r["frame_id"]: r for r in table if r["kind"] == "frame"}


def test_answer_cites_real_frames_inside_the_filters(engine, tiny_index):
    rows = frame_rows(tiny_index.root)
    answer = engine.ask("what is shown?", SearchFilter(streams=("b",), start_s=2.0, end_s=6.0))
    assert isinstance(answer.text, str) and answer.citations
    assert answer.mode == "whole" and answer.frames == 5  # frames at 2, 3, 4, 5, 6 s
    for citation in answer.citations:
        assert citation.stream_id == "b" and 2.0 <= citation.start_s <= citation.end_s <= 6.0
        for frame_id in citation.frame_ids + (citation.best_frame_id,):
            assert rows[frame_id]["stream_id"] == "b" and 2.0 <= rows[frame_id]["pts_s"] <= 6.0
        assert citation.start_s == rows[citation.frame_ids[0]]["pts_s"]
    assert answer.prompt_tokens > answer.frames * answer.tokens_per_frame
    assert {"embed", "search", "features", "context_tokens", "llm_first_token", "llm_total"} <= set(answer.timings)


def test_spans_mode_when_the_context_is_short(engine, tiny_index):
    whole = engine.ask("what is shown?")
    assert whole.mode == "whole" and whole.frames == 16
    settings = tiny_index.settings.model_copy(deep=True)
    # too short for every frame even with one timestamp label: retrieved spans instead
    label = len(engine.model.tokenizer.encode(time_label(0.0)))
    settings.query.context_length = whole.prompt_tokens + settings.query.max_new_tokens - 16 * label
    settings.query.k = 2
    short = QueryEngine(engine.root, engine.model, engine.embedder, engine.llm, settings)
    rows = frame_rows(tiny_index.root)
    answer = short.ask("what is shown?")
    assert answer.mode == "spans"
    assert answer.prompt_tokens + settings.query.max_new_tokens <= settings.query.context_length
    sent = [i for c in answer.citations for i in c.frame_ids]
    assert 0 < len(sent) == answer.frames < len(rows)
    for citation in answer.citations:
        assert all(rows[i]["stream_id"] == citation.stream_id for i in citation.frame_ids)


def test_frame_tokens_are_the_models_long_video_tokens(engine, tiny_index):
    ids = [0, 3, 9]
    features = torch.from_numpy(IndexReader(IndexRoot.at(tiny_index.root)).features(ids))
    got = engine._frame_tokens(ids, "a question", engine.model.config.content_tokens_per_frame, {})
    want = engine.model.frame_tokens(features[:, 1:], "a question")
    torch.testing.assert_close(got, want)


def test_a_follow_up_keeps_the_history(engine):
    first = engine.ask("what is shown?")
    second = engine.ask("and after that?", history=first.history)
    assert second.history == [Turn("what is shown?", first.text), Turn("and after that?", second.text)]
    assert second.prompt_tokens > first.prompt_tokens - 10  # the earlier turn is in the prompt


def test_search_by_image_finds_the_planted_shot(engine, tiny_index):
    hits = engine.search(image=planted_image(), k=3)
    video = tiny_index.videos["b"]
    assert hits[0].stream_id == "b"
    assert video.planted_s[0] - tiny_index.sample_interval_s <= hits[0].pts_s < video.planted_s[1]
    text_hits = engine.search(text="a blue disc", k=4, where=SearchFilter(streams=("a",)))
    assert len(text_hits) == 4 and {h.stream_id for h in text_hits} == {"a"}


@pytest.mark.parametrize("call, error, message", [
    (lambda e: e.ask("   "), ValueError, "non-empty"),
    (lambda e: e.ask("q", SearchFilter(streams=("nope",))), KeyError, "nope"),
    (lambda e: e.ask("q", SearchFilter(start_s=5.0, end_s=1.0)), ValueError, "start"),
    (lambda e: e.ask("q", k=10**6), ValueError, "max_k"),
    (lambda e: e.search(text="x", image=np.zeros((4, 4, 3), np.uint8)), ValueError, "exactly one"),
    (lambda e: e.search(image=np.zeros((4, 4), np.uint8)), ValueError, "uint8 RGB"),
    (lambda e: e.thumbnail(10**6), KeyError, "frame id 1000000 is not in"),
])
def test_bad_requests_name_the_problem(engine, call, error, message):
    with pytest.raises(error, match=message):
        call(engine)


def test_thumbnails_are_the_stored_jpegs(engine, tiny_index):
    assert engine.thumbnail(0)[:2] == b"\xff\xd8"


def test_vidx_ask_prints_the_answer_and_its_citations_as_json(tiny_index, capsys):
    import json

    from indexer.cli import main

    rows = frame_rows(tiny_index.root)
    assert main(["ask", str(tiny_index.root), "what is shown?", "--stream", "a", "--from", "1", "--to", "0:05",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["question"] == "what is shown?" and answer["citations"]
    for citation in answer["citations"]:
        assert all(rows[i]["stream_id"] == "a" and 1.0 <= rows[i]["pts_s"] <= 5.0 for i in citation["frame_ids"])
    assert main(["ask", str(tiny_index.root), "what?", "--stream", "zz"]) == 2
    assert "zz" in capsys.readouterr().err


def test_with_a_vllm_server_the_engine_holds_no_llm_layers_and_answers_the_same(engine, tiny_index, tmp_path):
    """llm.backend vllm-server (here the OpenAI-compatible stand-in for `vllm serve`, running the
    exported LLM): the engine loads LLaMA-VID's encoder parts and token embeddings only."""
    from indexer.llm.export import export_llm
    from indexer.settings import LLMSettings
    from tests.llm.openai_server import CompletionsServer

    llm_dir = export_llm(tiny_index.settings.model.model_dir, tmp_path / "llm").out_dir
    with CompletionsServer(llm_dir) as server:
        settings = tiny_index.settings.model_copy(update={"llm": LLMSettings(backend="vllm-server", url=server.url)})
        served = QueryEngine.open(IndexRoot.at(tiny_index.root), settings)  # the index's model fingerprint checks out
        try:
            keys = served.model.model.state_dict()
            assert served.model.parts == "prompt" and "language_model.model.embed_tokens.weight" in keys
            assert not [k for k in keys if k.startswith("language_model.") and "embed_tokens" not in k]
            question = "what is shown?"
            expected, answer = engine.ask(question), served.ask(question)
            assert (answer.text, answer.citations, answer.prompt_tokens) == \
                (expected.text, expected.citations, expected.prompt_tokens)
        finally:
            served.close()


def test_the_q_former_runs_once_per_frame_of_a_question_and_on_one_thread(engine, monkeypatch):
    seen: list[int] = []
    threads: list[int] = []
    text_queries = engine.model.text_queries

    def counted(features, question):
        seen.append(features.shape[0])
        threads.append(torch.get_num_threads())
        return text_queries(features, question)

    monkeypatch.setattr(engine.model, "text_queries", counted)
    before = torch.get_num_threads()
    answer = engine.ask("what is shown?", k=8)
    sent = {i for c in answer.citations for i in c.frame_ids}
    assert len(seen) == 2 and seen[0] == 8  # the 8 candidates reranked, then only the sent frames not among them
    assert sum(seen) < 8 + len(sent)  # some reranked frames were sent: their queries were reused
    assert set(threads) == {engine.settings.query.torch_threads} and torch.get_num_threads() == before
