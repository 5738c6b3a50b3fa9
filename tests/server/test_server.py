"""The server's own rules, over a stand-in engine (no models): questions one at a time while the
rest of the API stays responsive, refreshes for live commits, what the media route serves for
each kind of source, and the token rule of `vidx serve`."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from actors.cli import main
from indexer.server import check_exposure, create_app
from indexer.server.guards import is_loopback
from tests.server.fakes import FakeEngine, entry
from tests.server.live import LOCAL, running_server


@pytest.fixture
def engine(tmp_path) -> FakeEngine:
    video = tmp_path / "v.mp4"
    video.write_bytes(bytes(range(256)) * 4)
    notes = tmp_path / "credentials.txt"  # caught by `vidx ingest /data/*`: it failed, no frames
    notes.write_text("db password: hunter2\n")
    return FakeEngine([entry("file", str(video), "file"), entry("gone", str(tmp_path / "missing.mp4"), "file"),
                       entry("cam", "rtsp://127.0.0.1:8554/cam", "rtsp", live=True),
                       entry("web", "https://example.org/talk.mp4", "http"),
                       entry("secret", "https://user:pw@example.org/talk.mp4", "http"),
                       entry("signed", "https://example.org/talk.mp4?X-Amz-Signature=abc", "http"),
                       entry("hls", "http://127.0.0.1:9/live.m3u8", "hls", live=True),
                       entry("notes", str(notes), "file", error=f"{notes}: not a video (Invalid data found)"),
                       entry("door", "rtsp://admin:hunter2@10.0.0.7/live?token=t0k", "rtsp", live=True,
                             error="rtsp://admin:hunter2@10.0.0.7/live?token=t0k: connection refused")])


def test_questions_run_one_at_a_time_while_the_rest_of_the_api_answers(engine):
    engine.release.clear()
    with running_server(create_app(engine, refresh_interval_s=0)) as url, ThreadPoolExecutor(2) as pool:
        asks = [pool.submit(httpx.post, f"{url}/api/ask", json={"question": f"q{i}"}, timeout=120) for i in range(2)]
        deadline = time.monotonic() + 60
        while not engine.inside and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.inside == 1
        # the question holds until `release`: answering at all shows the API is not stuck behind it
        assert httpx.get(f"{url}/api/streams", timeout=60).status_code == 200
        assert httpx.get(f"{url}/api/frames/1/thumbnail.jpg", timeout=60).status_code == 200
        engine.release.set()
        answers = [a.result() for a in asks]
    assert [a.status_code for a in answers] == [200, 200] and engine.most_inside == 1
    body = answers[0].json()
    assert body["timings"]["llm_first_token"] is None  # NaN has no JSON form
    assert body["citations"][0]["frame_ids"] == [0, 1]
    assert engine.refreshes >= 2  # each question saw the latest commit


def test_refreshes_at_most_once_per_interval(engine):
    with TestClient(create_app(engine, refresh_interval_s=3600), base_url=LOCAL) as client:
        for _ in range(3):
            assert client.get("/api/streams").status_code == 200
    assert engine.refreshes == 1


def test_media_plays_local_files_redirects_plain_http_files_and_refuses_the_rest(engine, tmp_path):
    with TestClient(create_app(engine, media_roots=[tmp_path]), follow_redirects=False, base_url=LOCAL) as client:
        assert client.get("/api/streams/file/media", headers={"Range": "bytes=0-3"}).content == bytes([0, 1, 2, 3])
        web = client.get("/api/streams/web/media")
        assert web.status_code == 307 and web.headers["location"] == "https://example.org/talk.mp4"
        for sid, words in [("cam", "live rtsp source"), ("hls", "live hls source"), ("gone", "no longer there"),
                           ("secret", "only local files"), ("signed", "only local files"),
                           ("notes", "has no committed frames")]:
            response = client.get(f"/api/streams/{sid}/media")
            assert response.status_code == 404 and words in response.json()["detail"], (sid, response.text)
            assert "hunter2" not in response.text
        media = {s["stream_id"]: s["media"] for s in client.get("/api/streams").json()["streams"]}
        assert media == {"file": True, "gone": True, "cam": False, "web": True, "secret": False, "signed": False,
                         "hls": False, "notes": False, "door": False}


def test_local_files_are_served_only_under_a_media_root(engine, tmp_path):
    """The default serves no local file (a manifest names whatever `vidx ingest` was given); the
    refusal says which option plays them, and /api/streams does not offer them to the page."""
    elsewhere = tmp_path / "media-root"
    elsewhere.mkdir()
    link = elsewhere / "v.mp4"  # a link inside the root to a file outside it: checked as what it points at
    link.symlink_to(tmp_path / "v.mp4")
    for roots, words in [(None, "start it with --media-root DIR"), ([], "start it with --media-root DIR"),
                         ([elsewhere], "outside the media roots")]:
        with TestClient(create_app(engine, media_roots=roots), follow_redirects=False, base_url=LOCAL) as client:
            response = client.get("/api/streams/file/media")
            assert response.status_code == 403 and words in response.json()["detail"], (roots, response.text)
            assert client.head("/api/streams/file/media").status_code == 403
            media = {s["stream_id"]: s["media"] for s in client.get("/api/streams").json()["streams"]}
            assert not media["file"] and media["web"]  # a plain http(s) file is only a redirect: no local bytes
            assert client.get("/api/streams/web/media").status_code == 307
    engine.entries.append(entry("linked", str(link), "file"))
    engine.frames.streams["linked"] = engine.frames.streams["file"]
    with TestClient(create_app(engine, media_roots=[elsewhere]), base_url=LOCAL) as client:
        assert client.get("/api/streams/linked/media").status_code == 403
    with TestClient(create_app(engine, media_roots=[tmp_path]), base_url=LOCAL) as client:
        assert client.get("/api/streams/file/media").status_code == 200
        assert client.get("/api/streams/linked/media").content == (tmp_path / "v.mp4").read_bytes()


def test_streams_and_errors_show_no_credentials(engine):
    with TestClient(create_app(engine), base_url=LOCAL) as client:
        response = client.get("/api/streams")
        streams = {s["stream_id"]: s for s in response.json()["streams"]}
        assert streams["door"]["uri"] == "rtsp://admin:***@10.0.0.7/live?token=***"
        assert streams["door"]["error"] == "rtsp://admin:***@10.0.0.7/live?token=***: connection refused"
        assert streams["secret"]["uri"] == "https://user:***@example.org/talk.mp4"
        assert streams["signed"]["uri"] == "https://example.org/talk.mp4?X-Amz-Signature=***"
        assert "hunter2" not in response.text and "t0k" not in response.text and ":pw@" not in response.text
        missing = client.post("/api/ask", json={"question": "q", "streams": ["rtsp://admin:hunter2@10.0.0.7/"]})
        assert missing.status_code == 404 and "hunter2" not in missing.text  # errors echo no credentials either


def test_without_a_token_only_loopback_names_and_the_pages_own_origin_are_served(engine):
    app = create_app(engine)
    with TestClient(app, base_url=LOCAL) as client:
        for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
            assert client.get("/api/streams", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example", ""):
            response = client.get("/api/streams", headers={"Host": host})
            assert response.status_code == 403 and "not a loopback name" in response.json()["detail"], host
            assert client.get("/", headers={"Host": host}).status_code == 403  # the page too: it is the way in
        own = client.post("/api/ask", json={"question": "q"}, headers={"Origin": "http://127.0.0.1"})
        assert own.status_code == 200, own.text
        for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
            response = client.post("/api/watch", json={"kind": "black"}, headers={"Origin": origin})
            assert response.status_code == 403 and "not this server's own" in response.json()["detail"], origin
    with TestClient(create_app(engine, token="a-long-enough-token-123"), base_url="http://vidx.example") as client:
        headers = {"Authorization": "Bearer a-long-enough-token-123"}  # with a token, any name, as behind a proxy
        assert client.get("/api/streams", headers=headers).status_code == 200


def test_unsupported_methods_get_a_405_that_lists_the_routes_methods(engine):
    with TestClient(create_app(engine), base_url=LOCAL) as client:
        for method, path, allow in [("OPTIONS", "/api/ask", "POST"), ("GET", "/api/ask", "POST"),
                                    ("OPTIONS", "/api/watch", "GET, POST"), ("PUT", "/api/watch/q1", "PATCH, DELETE"),
                                    ("DELETE", "/api/streams/file/media", "GET, HEAD")]:
            response = client.request(method, path)
            assert response.status_code == 405 and response.headers["allow"] == allow, (method, path, response.headers)
            assert "no CORS preflight" in response.json()["detail"]
        assert client.get("/api/nope").status_code == 404
        assert client.post("/").headers["allow"] == "GET, HEAD"  # the page's files


def test_streams_report_the_latest_committed_frame(engine):
    with TestClient(create_app(engine), base_url=LOCAL) as client:
        cam = next(s for s in client.get("/api/streams").json()["streams"] if s["stream_id"] == "cam")
    assert cam["live"] and cam["latest_frame_id"] == 5 and cam["latest_pts_s"] == 1.0
    new = engine.add_frame("cam", 2.0)
    with TestClient(create_app(engine), base_url=LOCAL) as client:
        cam = next(s for s in client.get("/api/streams").json()["streams"] if s["stream_id"] == "cam")
        assert cam["latest_frame_id"] == new and cam["latest_pts_s"] == 2.0
        assert client.get(f"/api/frames/{new}/thumbnail.jpg").status_code == 200


def test_only_loopback_binds_go_without_a_token():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        check_exposure(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "myhost.example"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="give a token"):
            check_exposure(host, None)
        with pytest.raises(ValueError, match="at least 16"):
            check_exposure(host, "short")
        check_exposure(host, "a-long-enough-token-123")
    with pytest.raises(ValueError, match="empty"):
        create_app(FakeEngine([]), token="")


def test_vidx_serve_refuses_a_public_bind_without_a_token_before_loading_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("VIDX_TOKEN", raising=False)
    assert main(["serve", str(tmp_path / "no-index"), "--host", "0.0.0.0"]) == 2
    assert "give a token" in capsys.readouterr().err
    monkeypatch.setenv("VIDX_TOKEN", "a-long-enough-token-123")  # the token passes; then the missing index fails
    assert main(["serve", str(tmp_path / "no-index"), "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "no index here" in capsys.readouterr().err


def test_the_access_log_filter_blanks_tokens():
    import logging

    from indexer.server.serve import RedactTokens

    # as uvicorn's access logger makes it: (client, method, path with query, http version, status)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/api/frames/3/thumbnail.jpg?token=s3cret&x=1", "1.1", 200),
                               None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /api/frames/3/thumbnail.jpg?token=***&x=1 HTTP/1.1" 200'
