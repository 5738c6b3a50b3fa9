"""Patch features recomputed on demand: the two tiny-index videos (tests/indexes.py) ingested again
on Ray with `index.feature_format: none` give, for the same question and frames, the context and
content tokens of the float16 index (within float16 rounding); with the source file gone, the
answer uses content tokens only and says so in the engine, the CLI and the API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from indexer.query.engine import QueryEngine
from indexer.query.search import SearchFilter
from indexer.server import create_app
from indexer.store.index import IndexReader
from indexer.store.root import IndexRoot
from tests.server.live import LOCAL

QUESTION = "what is shown?"


@pytest.fixture(scope="module")
def none_index(tiny_index, tmp_path_factory) -> IndexRoot:
    """The tiny index's two files, copied (a test moves one away) and ingested keeping no features."""
    import ray

    from actors.ingest import run_ingest

    work = tmp_path_factory.mktemp("none-index")
    sources = []
    for stream_id, video in tiny_index.videos.items():
        shutil.copy(video.path, work / video.path.name)
        sources.append(f"{stream_id}={work / video.path.name}")
    settings = tiny_index.settings.model_copy(deep=True)
    settings.index.feature_format = "none"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        summary = run_ingest(sources, IndexRoot.at(work / "index"), settings, progress=False)
    finally:
        ray.shutdown()
    assert not summary.failed, summary.lines()
    return IndexRoot.at(work / "index")


@pytest.fixture(scope="module")
def stored(tiny_index):
    engine = QueryEngine.open(IndexRoot.at(tiny_index.root))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def recomputing(none_index, stored):
    return QueryEngine(none_index, stored.model, stored.embedder, stored.llm, stored.settings)


def ids_by_time(engine: QueryEngine, stream_id: str) -> list[int]:
    return [int(i) for i in engine.frames.between(stream_id, None, None)]


def test_the_index_keeps_no_features_and_says_so_per_frame(recomputing):
    ids = ids_by_time(recomputing, "a")
    assert len(ids) == 8 and not recomputing.index.features_kept(ids).any()
    with pytest.raises(ValueError, match="keeps no patch features for frames"):
        recomputing.index.features(ids[:1])
    assert IndexReader(recomputing.root).sizes()["features"] == 0


def test_recomputed_features_and_tokens_equal_the_stored_float16_ones(recomputing, stored):
    for stream_id in ("a", "b"):
        got_ids, want_ids = ids_by_time(recomputing, stream_id), ids_by_time(stored, stream_id)
        assert [recomputing.frames.pts_s[i] for i in got_ids] == [stored.frames.pts_s[i] for i in want_ids]
        rows = recomputing.patch_features.get(got_ids)
        assert rows.available.all() and not rows.missing and rows.recomputed == len(got_ids)
        want = stored.index.features(want_ids)
        # float16 [8, 1+N, C]: encoded again from the same pictures, in other batches: float16 rounding apart
        torch.testing.assert_close(torch.from_numpy(rows.features).float(), torch.from_numpy(want).float(),
                                   rtol=2e-3, atol=2e-3)
        for content in sorted({recomputing.model.config.content_tokens_per_frame, 1}):
            got, missing = recomputing._frame_tokens(got_ids, QUESTION, content, {})
            expected, _ = stored._frame_tokens(want_ids, QUESTION, content, {})
            assert not missing and got.shape == expected.shape == (8, 1 + content, got.shape[-1])
            torch.testing.assert_close(got, expected, rtol=5e-3, atol=5e-3)  # context token and content tokens


def test_a_question_recomputes_only_the_frames_it_sends(recomputing, stored):
    where = SearchFilter(streams=("b",), start_s=2.0, end_s=5.0)
    answer = recomputing.ask(QUESTION, where)
    assert answer.mode == "whole" and answer.frames == 4 and not answer.degraded
    assert answer.recomputed_frames == 4 and answer.timings["recompute"] > 0  # only b's 2..5 s, rerank included
    assert answer.prompt_tokens == stored.ask(QUESTION, where).prompt_tokens


@pytest.fixture
def b_moved(none_index):
    """Stream b's source file moved away for the test, then put back."""
    path = Path(json.loads(none_index.manifest.read_text())["streams"]["b"]["uri"])
    moved = path.with_name("b-moved-away.mp4")
    shutil.move(path, moved)
    try:
        yield path
    finally:
        shutil.move(moved, path)


def test_without_features_or_source_the_answer_uses_content_tokens_and_says_so(recomputing, stored, b_moved, capsys):
    from indexer.cli import main

    where = SearchFilter(streams=("b",), start_s=2.0, end_s=5.0)
    engine = QueryEngine(recomputing.root, recomputing.model, recomputing.embedder, recomputing.llm,
                         recomputing.settings)
    answer = engine.ask(QUESTION, where)
    assert answer.frames == 4 and answer.recomputed_frames == 0 and answer.citations
    [degraded] = answer.degraded
    assert (degraded.stream_id, degraded.start_s, degraded.end_s, degraded.frames) == ("b", 2.0, 5.0, 4)
    assert str(b_moved) in degraded.reason and "moved or deleted" in degraded.reason
    assert answer.prompt_tokens == stored.ask(QUESTION, where).prompt_tokens - 4  # less the 4 context tokens

    # the tokens: the stored content tokens, no context token
    ids = [int(i) for i in engine.frames.between("b", 2.0, 5.0)]
    p = engine.model.config.content_tokens_per_frame
    tokens, missing = engine._frame_tokens(ids, QUESTION, p, {})
    assert sorted(missing) == ids
    stored_content = torch.from_numpy(engine.index.content_tokens(ids)).to(tokens.dtype)
    assert torch.equal(tokens[:, 1:], stored_content)

    # the CLI says it
    assert main(["ask", str(recomputing.root), QUESTION, "--stream", "b", "--from", "2", "--to", "5"]) == 0
    out = capsys.readouterr().out
    assert f"content tokens only: [b 0:02-0:05] 4 frames: no patch features kept, and {b_moved}" in out

    # the API says it
    with TestClient(create_app(engine), base_url=LOCAL) as client:
        response = client.post("/api/ask", json={"question": QUESTION, "streams": ["b"], "from_s": 2, "to_s": 5})
    assert response.status_code == 200, response.text
    [reported] = response.json()["degraded"]
    assert reported["stream_id"] == "b" and reported["frames"] == 4 and str(b_moved) in reported["reason"]
    assert response.json()["recomputed_frames"] == 0


def test_stored_content_tokens_are_the_ones_the_features_give(recomputing, stored):
    ids = ids_by_time(stored, "a")
    features = torch.from_numpy(stored.index.features(ids))[:, 1:]
    want = stored.model.content_tokens(features).float()  # from the float16 features; ingest used float32 ones
    torch.testing.assert_close(torch.from_numpy(stored.index.content_tokens(ids)).float(), want,
                               rtol=5e-3, atol=5e-3)


@pytest.mark.timeout(240)
def test_the_page_shows_which_spans_went_without_context_and_why(recomputing, b_moved):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.server.test_page import WAIT_S, chrome, serving

    engine = QueryEngine(recomputing.root, recomputing.model, recomputing.embedder, recomputing.llm,
                         recomputing.settings)
    driver = chrome()
    try:
        with serving(create_app(engine), driver) as url:
            driver.get(url + "/")
            wait = WebDriverWait(driver, WAIT_S)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#stream-choices input"))
            driver.find_element(By.ID, "choose-b").click()
            driver.find_element(By.ID, "from-s").send_keys("2")
            driver.find_element(By.ID, "to-s").send_keys("5")
            driver.find_element(By.ID, "question").send_keys(QUESTION)
            driver.find_element(By.ID, "ask-button").click()
            wait.until(lambda d: d.find_element(By.ID, "answer-text").text.strip())
            shown = driver.find_element(By.ID, "answer-degraded")
            assert shown.is_displayed()
            assert shown.text.startswith("b 0:02–0:05 (4 frames): content tokens only: no patch features kept, "
                                         f"and {b_moved}: the source file is gone (moved or deleted)")
            driver.find_element(By.ID, "choose-b").click()  # now stream a, whose file is there: recomputed
            driver.find_element(By.ID, "choose-a").click()
            driver.find_element(By.ID, "question").send_keys(QUESTION)
            driver.find_element(By.ID, "ask-button").click()
            wait.until(lambda d: "recomputed from the source" in d.find_element(By.ID, "answer-meta").text)
            assert not driver.find_element(By.ID, "answer-degraded").is_displayed()
    finally:
        driver.quit()


def test_a_live_source_without_a_recording_gives_a_reason_not_pictures(tmp_path):
    """A live source's pictures are its recording (indexer/media/recording.py); with none on disk
    the frames are unavailable with the reason named, which the answer reports (PicturesUnavailable)."""
    from indexer.media.pictures import PicturesUnavailable
    from indexer.query.patch_features import pictures_for
    from indexer.settings import ReaderOptions
    from indexer.store.manifest import StreamEntry

    live = StreamEntry(stream_id="cam", uri="rtsp://127.0.0.1:8554/cam", protocol="rtsp", live=True, fps=1.0)
    pictures = pictures_for(IndexRoot.at(tmp_path), live, ReaderOptions())
    with pytest.raises(PicturesUnavailable, match=r"stream cam: its recording \(.*\) holds nothing; 3\.000 s is not"):
        pictures.frames_at([3.0])
    other = StreamEntry(stream_id="feed", uri="rtmp://127.0.0.1:1935/feed", protocol="rtmp", live=False, fps=1.0)
    reason = pictures_for(IndexRoot.at(tmp_path), other, ReaderOptions())
    assert reason == "stream feed is a rtmp source and the index keeps no recording of it to decode again"
