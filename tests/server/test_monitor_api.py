"""The monitoring API over a real index root: standing queries in queries.json, alerts committed
the way the monitor commits them (alert rows, then state.json), real MP4 clips, and the
server-sent-event feed read from a real uvicorn server. The routes need only the root, so the
engine is the stand-in (no models to load)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from indexer.monitor.queries import QueryStore
from indexer.server import create_app
from indexer.store.root import IndexRoot
from tests.server.fakes import FakeEngine, alert, clip_file, commit, entry, jpeg
from tests.server.live import running_server

TOKEN = "monitor-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def engine(root) -> FakeEngine:
    return FakeEngine([entry("cam", "rtsp://127.0.0.1:8554/cam", "rtsp", live=True)], root=root)


@pytest.fixture
def client(engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, token=TOKEN, allow_private_webhooks=True)) as client:  # a receiver on 127.0.0.1
        client.headers.update(AUTH)
        yield client


# -- standing queries --------------------------------------------------------------------------------
def test_standing_queries_are_created_listed_paused_and_removed_and_secrets_shown_once(client, root):
    created = client.post("/api/watch", json={"condition": "a red van at the gate", "streams": ["cam", "later"],
                                              "cooldown_s": 5, "webhooks": [{"url": "https://hooks.example/a"},
                                                                            {"url": "http://127.0.0.1:9/b",
                                                                             "secret": "given-secret-1"}]})
    assert created.status_code == 201, created.text
    query = created.json()
    assert query["id"] == "q1" and query["kind"] == "condition" and query["streams"] == ["cam", "later"]
    assert query["cooldown_s"] == 5 and query["sensitivity"] == 0.5 and not query["paused"]  # defaults filled in
    generated, given = query["webhooks"]
    assert len(generated["secret"]) >= 16 and given == {"url": "http://127.0.0.1:9/b", "secret": "given-secret-1"}
    stored = QueryStore(IndexRoot.at(root)).get("q1")  # what a monitor reads: the same secrets, in a 0600 file
    assert [w.secret for w in stored.webhooks] == [generated["secret"], "given-secret-1"]
    assert os.stat(QueryStore(IndexRoot.at(root)).path).st_mode & 0o777 == 0o600

    rule = client.post("/api/watch", json={"id": "dark", "kind": "black", "streams": ["cam"]})
    assert rule.status_code == 201 and rule.json()["condition"] is None and rule.json()["webhooks"] == []
    assert rule.json()["min_duration_s"] == 2.0 and query["min_duration_s"] == 0.0   # the rule's default, as vidx

    listed = client.get("/api/watch")
    assert listed.status_code == 200
    assert [q["id"] for q in listed.json()["queries"]] == ["q1", "dark"]
    assert "secret" not in listed.text and generated["secret"] not in listed.text  # shown only at creation
    assert listed.json()["queries"][0]["webhooks"] == [{"url": "https://hooks.example/a"},
                                                       {"url": "http://127.0.0.1:9/b"}]

    paused = client.patch("/api/watch/q1", json={"paused": True})
    assert paused.status_code == 200 and paused.json()["paused"] and "secret" not in paused.text
    assert QueryStore(IndexRoot.at(root)).get("q1").paused
    assert client.patch("/api/watch/q1", json={"paused": False}).json()["paused"] is False

    assert client.delete("/api/watch/dark").status_code == 204
    assert [q.id for q in QueryStore(IndexRoot.at(root)).load()] == ["q1"]


def test_standing_query_errors_name_what_is_wrong(client):
    assert client.post("/api/watch", json={"id": "gate", "condition": "a person"}).status_code == 201
    clash = client.post("/api/watch", json={"id": "gate", "kind": "frozen"})
    assert clash.status_code == 409 and "'gate' already exists" in clash.json()["detail"]

    cases = [({"kind": "condition"}, "needs the condition text"),
             ({"kind": "black", "condition": "dark"}, "takes no condition text"),
             ({"kind": "smoke"}, "kind: Input should be 'condition'"),
             ({"id": "no spaces", "kind": "black"}, "id: query id 'no spaces'"),
             ({"condition": "x", "sensitivity": 2}, "sensitivity: Input should be less than or equal to 1"),
             ({"condition": "x", "webhooks": [{"url": "ftp://h/x"}]}, "webhooks.0.url: webhook url must be http(s)"),
             ({"condition": "x", "colour": "red"}, "colour: Extra inputs are not permitted")]
    for body, words in cases:
        response = client.post("/api/watch", json=body)
        assert response.status_code == 422 and words in response.json()["detail"], (body, response.text)

    for method in ("patch", "delete"):
        missing = client.request(method, "/api/watch/nope", json={"paused": True})
        detail = missing.json()["detail"]
        assert missing.status_code == 404 and "'nope'" in detail and "gate" in detail
    assert client.patch("/api/watch/gate", json={"paused": "later"}).status_code == 422
    assert [q["id"] for q in client.get("/api/watch").json()["queries"]] == ["gate"]


def test_webhooks_to_loopback_or_private_addresses_need_the_setting(engine, root):
    with TestClient(create_app(engine, token=TOKEN)) as client:
        client.headers.update(AUTH)
        for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.0.0.7/hook",
                    "http://169.254.169.254/latest/meta-data", "http://0.0.0.0:9/hook",
                    "http://admin:pw@192.168.1.2/hook?token=abc"):
            response = client.post("/api/watch", json={"kind": "black", "webhooks": [{"url": url}]})
            detail = response.json()["detail"]
            assert response.status_code == 400 and "a loopback or private address" in detail, (url, detail)
            assert "monitor.webhooks.allow_private" in detail and "pw" not in detail and "abc" not in detail
        assert QueryStore(IndexRoot.at(root)).load() == []
        public = client.post("/api/watch", json={"kind": "black", "webhooks": [{"url": "https://93.184.215.14/hook"}]})
        assert public.status_code == 201, public.text
        # and its deliveries may not go to a private address either, should the host later be one
        assert not QueryStore(IndexRoot.at(root)).get(public.json()["id"]).webhooks[0].allow_private
    with TestClient(create_app(engine, token=TOKEN, allow_private_webhooks=True)) as client:
        local = client.post("/api/watch", json={"kind": "frozen", "webhooks": [{"url": "http://127.0.0.1:9/hook"}]},
                            headers=AUTH)
        assert local.status_code == 201, local.text
        stored = QueryStore(IndexRoot.at(root)).get(local.json()["id"]).webhooks[0]
        assert stored.allow_private  # its deliveries go there too


def test_vidx_watch_add_refuses_a_private_webhook_unless_allowed(root, capsys):
    from actors.cli import main

    root.mkdir(parents=True)
    assert main(["watch", "add", str(root), "--rule", "black", "--webhook", "http://127.0.0.1:9/hook"]) == 2
    err = capsys.readouterr().err
    assert "webhook url 'http://127.0.0.1:9/hook' points at 127.0.0.1" in err and "--allow-private" in err
    assert len(err.strip().splitlines()) == 1 and QueryStore(IndexRoot.at(root)).load() == []
    assert main(["watch", "add", str(root), "--rule", "black", "--webhook", "http://127.0.0.1:9/hook",
                 "--allow-private"]) == 0
    stored = QueryStore(IndexRoot.at(root)).get("q1").webhooks
    assert [(w.url, w.allow_private) for w in stored] == [("http://127.0.0.1:9/hook", True)]


def test_every_monitor_route_wants_the_token(engine, root):
    commit(root, [alert("a1", "closed", clip=clip_file(root, "a1.mp4"))])
    with TestClient(create_app(engine, token=TOKEN)) as client:
        for method, path in [("GET", "/api/watch"), ("POST", "/api/watch"), ("PATCH", "/api/watch/q1"),
                             ("DELETE", "/api/watch/q1"), ("GET", "/api/alerts"), ("GET", "/api/alerts/a1"),
                             ("GET", "/api/alerts/a1/thumbnail"), ("GET", "/api/alerts/a1/clip"),
                             ("GET", "/api/alerts/stream")]:
            assert client.request(method, path).status_code == 401, (method, path)
        # <img>, <video> and EventSource cannot send a header: ?token= works
        assert client.get(f"/api/alerts/a1/clip?token={TOKEN}").status_code == 200
        assert client.get("/api/alerts/a1/thumbnail?token=wrong").status_code == 401


# -- alerts ------------------------------------------------------------------------------------------
def test_alerts_list_their_latest_state_newest_first_with_thumbnail_and_clip_urls(client, root):
    first = commit(root, [alert("a1", "open", thumbnail=jpeg(10))])
    assert client.get("/api/alerts").json()["generation"] == first
    clip = clip_file(root, "a1.mp4")
    second = commit(root, [alert("a1", "closed", clip=clip, thumbnail=jpeg(90)),
                           alert("b1", "open", stream_id="door", query_id="lost", wall_start=2000.0,
                                 thumbnail=None)])

    listed = client.get("/api/alerts")
    assert listed.status_code == 200
    body = listed.json()
    assert body["generation"] == second and [a["alert_id"] for a in body["alerts"]] == ["b1", "a1"]  # newest first
    a1 = body["alerts"][1]
    assert a1["status"] == "closed" and a1["end_s"] == 14.0 and a1["clip_covered"] is True
    assert "thumbnail" not in a1 and "clip" not in a1
    assert a1["thumbnail_url"] == "/api/alerts/a1/thumbnail" and a1["clip_url"] == "/api/alerts/a1/clip"
    b1 = body["alerts"][0]
    assert b1["clip_url"] is None and b1["thumbnail_url"] is None and b1["end_s"] is None
    assert [a["alert_id"] for a in client.get("/api/alerts?stream=cam").json()["alerts"]] == ["a1"]
    assert [a["alert_id"] for a in client.get("/api/alerts?query=lost").json()["alerts"]] == ["b1"]
    assert [a["alert_id"] for a in client.get("/api/alerts?limit=1").json()["alerts"]] == ["b1"]
    assert client.get("/api/alerts?limit=0").status_code == 422

    one = client.get("/api/alerts/a1")
    assert one.status_code == 200 and one.json() == a1
    missing = client.get("/api/alerts/zz")
    assert missing.status_code == 404 and "'zz'" in missing.json()["detail"]

    thumb = client.get(a1["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content == jpeg(90)  # the closing row's picture
    assert "has no thumbnail" in client.get("/api/alerts/b1/thumbnail").json()["detail"]
    assert client.get("/api/alerts/b1/clip").json()["detail"] == ("alert 'b1' has no clip yet: it is cut when the "
                                                                  "event ends")

    video = (root / clip).read_bytes()
    full = client.get(a1["clip_url"])
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4" and full.content == video
    part = client.get(a1["clip_url"], headers={"Range": "bytes=100-199"})  # what a <video> seeking asks
    assert part.status_code == 206 and part.content == video[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(video)}"
    assert client.head(a1["clip_url"]).status_code == 200


def test_a_clip_outside_the_clips_folder_is_refused(client, root, tmp_path):
    secret = tmp_path / "elsewhere.mp4"
    secret.write_bytes(b"not for the web")
    (root / "monitor" / "clips").mkdir(parents=True)
    (root / "monitor" / "clips" / "link.mp4").symlink_to(secret)
    (root / "ingest-config.yaml").write_text("models: private\n")
    commit(root, [alert(f"x{i}", "closed", clip=clip) for i, clip in enumerate(
        ["monitor/clips/../../ingest-config.yaml", "../elsewhere.mp4", str(secret), "monitor/clips/link.mp4",
         "monitor/queries.json"])])
    for i in range(5):
        response = client.get(f"/api/alerts/x{i}/clip")
        assert response.status_code == 404 and "is outside monitor/clips/" in response.json()["detail"], response.text
    gone = commit(root, [alert("y", "closed", clip="monitor/clips/deleted.mp4")])
    assert gone and "no longer there" in client.get("/api/alerts/y/clip").json()["detail"]


def test_a_clips_folder_linked_out_of_the_index_is_not_followed(client, root, tmp_path):
    outside = tmp_path / "outside"
    clip = clip_file(tmp_path / "outside-root", "z.mp4")  # a real MP4, under another root's monitor/clips/
    outside.mkdir()
    (tmp_path / "outside-root" / clip).rename(outside / "z.mp4")
    (root / "monitor").mkdir(parents=True)
    (root / "monitor" / "clips").symlink_to(outside, target_is_directory=True)
    commit(root, [alert("z", "closed", clip="monitor/clips/z.mp4")])
    response = client.get("/api/alerts/z/clip")
    assert response.status_code == 404 and "symbolic link" in response.json()["detail"], response.text

    (root / "monitor" / "clips").unlink()  # the same file in the real folder is served
    (root / "monitor" / "clips").mkdir()
    (outside / "z.mp4").rename(root / "monitor" / "clips" / "z.mp4")
    assert client.get("/api/alerts/z/clip").status_code == 200


def test_a_linked_index_root_still_serves_its_clips(engine, root, tmp_path):
    clip = clip_file(root, "a.mp4")
    commit(root, [alert("a", "closed", clip=clip)])
    link = tmp_path / "index-link"
    link.symlink_to(root, target_is_directory=True)  # the root itself may be reached through a link
    engine.root = IndexRoot.at(link)   # as `vidx serve` makes it: resolved once
    with TestClient(create_app(engine, token=TOKEN)) as client:
        assert client.get("/api/alerts/a/clip", headers=AUTH).status_code == 200


# -- the alert feed (server-sent events) ---------------------------------------------------------------
class Feed:
    """An open GET /api/alerts/stream: its events, parsed the way EventSource parses them."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self.lines = response.iter_lines()

    def next(self, skip_comments: bool = True) -> dict[str, str]:
        event: dict[str, str] = {}
        for line in self.lines:  # a silent feed fails on the client's read timeout
            if line == "":
                if event and (not skip_comments or set(event) != {"comment"}):
                    return event
                event = {}
            elif line.startswith(":"):
                event["comment"] = line[1:].strip()
            else:
                field, _, value = line.partition(":")
                event[field] = value.removeprefix(" ")
        raise AssertionError(f"the feed ended; last partial event {event}")

    def alerts(self, count: int) -> list[tuple[str, str, dict]]:
        return [(e["id"], e["event"], json.loads(e["data"])) for e in (self.next() for _ in range(count))]


def open_feed(http: httpx.Client, url: str, **headers: str):
    return http.stream("GET", url, headers=headers)


def test_the_feed_sends_each_committed_row_and_resumes_after_last_event_id(engine, root):
    commit(root, [alert("old", "open")])  # before the client connects: not sent
    with running_server(create_app(engine, token=TOKEN, refresh_interval_s=0)) as url, \
            httpx.Client(base_url=url, timeout=httpx.Timeout(10.0)) as http:
        with open_feed(http, f"/api/alerts/stream?token={TOKEN}") as response:  # as EventSource sends it
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            feed = Feed(response)
            opened = commit(root, [alert("a1", "open")])
            [(event_id, kind, data)] = feed.alerts(1)
            assert (event_id, kind) == (str(opened), "alert.opened")
            assert data["alert_id"] == "a1" and data["status"] == "open" and data["stream_id"] == "cam"
            assert data["thumbnail_url"] == "/api/alerts/a1/thumbnail" and data["clip_url"] is None
            assert "thumbnail" not in data

            clip = clip_file(root, "a1.mp4")
            both = commit(root, [alert("a1", "closed", clip=clip), alert("b1", "open", stream_id="door")])
            events = feed.alerts(2)
            # the id says "every row up to this commit was sent": only the commit's last row carries it
            assert [(i, k, d["alert_id"]) for i, k, d in events] == [(str(opened), "alert.closed", "a1"),
                                                                    (str(both), "alert.opened", "b1")]
            assert events[0][2]["clip_url"] == "/api/alerts/a1/clip" and events[0][2]["end_s"] == 14.0

        # EventSource reconnecting after the first event: only the later commit's rows come again
        with open_feed(http, "/api/alerts/stream", **AUTH, **{"Last-Event-ID": str(opened)}) as response:
            assert [(i, d["alert_id"]) for i, _, d in Feed(response).alerts(2)] == [(str(opened), "a1"),
                                                                                  (str(both), "b1")]
        # ?after=0: everything; the header wins over ?after
        with open_feed(http, "/api/alerts/stream?after=0", **AUTH) as response:
            assert [d["alert_id"] for _, _, d in Feed(response).alerts(4)] == ["old", "a1", "a1", "b1"]
        with open_feed(http, f"/api/alerts/stream?after=0&token={TOKEN}", **{"Last-Event-ID": str(both)}) as response:
            feed = Feed(response)
            later = commit(root, [alert("c1", "open")])
            assert [(i, d["alert_id"]) for i, _, d in feed.alerts(1)] == [(str(later), "c1")]

        bad = http.get("/api/alerts/stream", headers={**AUTH, "Last-Event-ID": "yesterday"})
        assert bad.status_code == 422 and "last-event-id: Input should be a valid integer" in bad.json()["detail"]
        negative = http.get("/api/alerts/stream", headers={**AUTH, "Last-Event-ID": "-1"})
        assert negative.status_code == 422 and "greater than or equal to 0" in negative.json()["detail"]
        assert http.get("/api/alerts/stream").status_code == 401
        started = time.monotonic()
    # every feed ended with its client: the server stops at once instead of waiting for them
    assert time.monotonic() - started < 5


def test_a_quiet_feed_sends_keepalive_comments(engine, monkeypatch):
    monkeypatch.setattr("indexer.server.monitor_api.KEEPALIVE_S", 0.3)
    with running_server(create_app(engine, refresh_interval_s=0)) as url, \
            httpx.Client(base_url=url, timeout=httpx.Timeout(10.0)) as http, \
            open_feed(http, "/api/alerts/stream") as response:
        feed = Feed(response)
        assert feed.next(skip_comments=False) == {"comment": "keepalive"}
        assert feed.next(skip_comments=False) == {"comment": "keepalive"}


SERVE = """
import sys
from pathlib import Path
from types import SimpleNamespace

import uvicorn

from indexer.server import create_app
from indexer.store.root import IndexRoot
from indexer.store.root import IndexRoot

engine = SimpleNamespace(root=IndexRoot.at(sys.argv[1]), refresh=lambda force=False: False, streams=lambda: [])
uvicorn.run(create_app(engine), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_ctrl_c_ends_open_feeds_so_the_server_stops(root):
    # On a busy machine (load 40 on 2 cores) the server took up to 42 s to answer and up to 16 s
    # to exit after the feed had ended: the waits are bounded by "never", not by an idle machine's
    # seconds. Without the fix the feed never ends (uvicorn waits for it, sending keepalives) and
    # the test fails on its timeout.
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(root), str(port)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/api/alerts", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout and server.stdout.read()
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=httpx.Timeout(60.0)) as http, \
                open_feed(http, "/api/alerts/stream") as response:
            lines = response.iter_lines()
            server.send_signal(signal.SIGINT)
            assert list(lines) == []  # the feed ends cleanly (no broken chunk), not on a timeout
            assert server.wait(timeout=120) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
