"""The HTTP API end to end: two ffmpeg-made videos ingested on Ray with the tiny models
(tests/indexes.py), a real QueryEngine, FastAPI's TestClient."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from indexer.query.engine import QueryEngine
from indexer.server import create_app
from indexer.store import IndexReader
from indexer.store.root import IndexRoot
from tests.indexes import FPS, planted_image
from tests.mediagen import read_frame_number
from tests.server.live import LOCAL

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def engine(tiny_index):
    engine = QueryEngine.open(IndexRoot.at(tiny_index.root))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def media_roots(tiny_index) -> list:
    return sorted({video.path.parent for video in tiny_index.videos.values()})


@pytest.fixture(scope="module")
def client(engine, media_roots):
    with TestClient(create_app(engine, media_roots=media_roots), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def rows(tiny_index) -> dict[int, dict]:
    """frame id -> its timeline row (the truth the answers are checked against)."""
    index = IndexReader(IndexRoot.at(tiny_index.root))
    table = index.timeline(columns=["frame_id", "stream_id", "pts_s", "kind"]).to_pylist()
    return {r["frame_id"]: r for r in table if r["kind"] == "frame"}


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def test_streams_list_both_videos_and_their_latest_frames(client, tiny_index, rows):
    response = client.get("/api/streams")
    assert response.status_code == 200
    streams = {s["stream_id"]: s for s in response.json()["streams"]}
    assert sorted(streams) == ["a", "b"]
    for sid, video in tiny_index.videos.items():
        s = streams[sid]
        assert s["uri"] == str(video.path) and s["protocol"] == "file" and not s["live"] and s["media"]
        assert s["frames"] == 8 and s["duration_s"] == pytest.approx(video.duration_s, abs=0.05)
        assert s["complete"] and s["error"] is None and s["gaps"] == 0
        latest = rows[s["latest_frame_id"]]
        assert latest["stream_id"] == sid and latest["pts_s"] == s["latest_pts_s"] == 7.0


def test_ask_cites_real_frames_of_the_asked_streams_and_times(client, rows):
    response = client.post("/api/ask", json={"question": "What is on the screen?", "streams": ["b"],
                                             "from_s": 2.0, "to_s": 5.0})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer["text"], str) and answer["mode"] in ("whole", "spans") and answer["frames"] >= 1
    assert answer["history"] == [{"question": "What is on the screen?", "answer": answer["text"]}]
    assert answer["citations"] and set(answer["timings"]) >= {"embed", "search"}
    for c in answer["citations"]:
        assert c["stream_id"] == "b" and 2.0 <= c["start_s"] <= c["end_s"] <= 5.0
        assert c["best_frame_id"] in rows and rows[c["best_frame_id"]]["stream_id"] == "b"
        for frame_id in c["frame_ids"]:
            row = rows[frame_id]
            assert row["stream_id"] == "b" and 2.0 <= row["pts_s"] <= 5.0
            assert c["start_s"] <= row["pts_s"] <= c["end_s"]

    # the next turn carries the conversation; with no filters it may cite either stream
    follow = client.post("/api/ask", json={"question": "And then?", "history": answer["history"]})
    assert follow.status_code == 200, follow.text
    assert [t["question"] for t in follow.json()["history"]] == ["What is on the screen?", "And then?"]
    for c in follow.json()["citations"]:
        assert all(rows[i]["stream_id"] == c["stream_id"] for i in c["frame_ids"])


def test_search_by_text_returns_real_frames_best_first(client, rows):
    response = client.post("/api/search", json={"text": "black and white blocks", "k": 5})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert len(hits) == 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert rows[h["frame_id"]]["stream_id"] == h["stream_id"] and rows[h["frame_id"]]["pts_s"] == h["pts_s"]
    only_a = client.post("/api/search", json={"text": "blocks", "streams": ["a"], "from_s": 1, "to_s": 3}).json()
    assert only_a["hits"] and all(h["stream_id"] == "a" and 1 <= h["pts_s"] <= 3 for h in only_a["hits"])


def test_search_by_image_finds_the_planted_shot_at_its_time(client, tiny_index):
    video = tiny_index.videos["b"]
    start, end = video.planted_s
    tolerance = tiny_index.sample_interval_s
    upload = client.post("/api/search", files={"image": ("shot.png", png(planted_image()), "image/png")},
                         data={"k": "3"})
    as_json = client.post("/api/search", json={"image_base64": "data:image/png;base64,"
                                               + base64.b64encode(png(planted_image())).decode()})
    for response in (upload, as_json):
        assert response.status_code == 200, response.text
        top = response.json()["hits"][0]
        assert top["stream_id"] == "b" and start - tolerance <= top["pts_s"] <= end, top
    # a filter that excludes the shot's stream finds something else
    other = client.post("/api/search", files={"image": ("shot.png", png(planted_image()), "image/png")},
                        data={"streams": "a"})
    assert all(h["stream_id"] == "a" for h in other.json()["hits"])


def test_thumbnails_are_jpegs_of_their_own_frames(client, rows):
    for frame_id, row in [(i, r) for i, r in rows.items() if r["stream_id"] == "a"][:4]:
        response = client.get(f"/api/frames/{frame_id}/thumbnail.jpg")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "JPEG"
        assert read_frame_number(np.asarray(image.convert("RGB"))) == round(row["pts_s"] * FPS)


def test_media_answers_range_requests_with_the_source_bytes(client, tiny_index):
    source = tiny_index.videos["a"].path.read_bytes()
    whole = client.get("/api/streams/a/media")
    assert whole.status_code == 200 and whole.content == source
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"

    part = client.get("/api/streams/a/media", headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1123/{len(source)}"
    assert part.content == source[100:1124]
    tail = client.get("/api/streams/a/media", headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == source[-64:]
    head = client.head("/api/streams/a/media")
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(source)
    beyond = client.get("/api/streams/a/media", headers={"Range": f"bytes={len(source) + 10}-"})
    assert beyond.status_code == 416


@pytest.mark.parametrize("stream_id", ["..", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "a%2F..%2F..%2Fmanifest.json",
                                       "%2Fetc%2Fpasswd", "nope"])
def test_media_serves_no_path_but_a_streams_own_file(client, stream_id):
    response = client.get(f"/api/streams/{stream_id}/media")
    assert response.status_code == 404
    assert "root:" not in response.text


def test_bad_requests_get_a_4xx_with_a_reason_and_the_server_keeps_serving(client, engine):
    max_k = engine.settings.query.max_k
    bad = [
        (client.post("/api/ask", json={"question": "   "}), 422, "question: String should match pattern"),
        (client.post("/api/ask", json={}), 422, "question"),
        (client.post("/api/ask", json={"question": "q", "streams": ["nope"]}), 404, "nope"),
        (client.post("/api/ask", json={"question": "q", "from_s": 5, "to_s": 2}), 400, "from_s (5.0) is after to_s"),
        (client.post("/api/ask", json={"question": "q", "k": "5"}), 422, "k: Input should be a valid integer"),
        (client.post("/api/ask", json={"question": "q", "k": max_k + 1}), 400, "max_k"),
        (client.post("/api/ask", json={"question": "q", "k": 0}), 422, "k"),
        (client.post("/api/ask", content=b"{not json", headers={"Content-Type": "application/json"}), 422, ""),
        (client.post("/api/search", files={"image": ("x.png", b"not an image at all", "image/png")}), 400,
         "cannot be decoded"),
        (client.post("/api/search", files={"image": ("x.png", png(planted_image())[:200], "image/png")}), 400,
         "cannot be decoded"),
        (client.post("/api/search", json={"image_base64": "%%%"}), 400, "base64"),
        (client.post("/api/search", json={"text": "x", "image_base64": "AAAA"}), 422, "exactly one"),
        (client.post("/api/search", json={}), 422, "exactly one"),
        (client.post("/api/search", files={"image": ("x.png", png(planted_image()), "image/png")},
                     data={"text": "blocks"}), 422, "unknown form field text"),
        (client.post("/api/search", data={"k": "3"}, files={"other": ("x.txt", b"x", "text/plain")}), 422,
         "unknown form field other"),
        (client.post("/api/search", content=b"x", headers={"Content-Type": "text/plain"}), 415, "content type"),
        (client.get("/api/frames/999999/thumbnail.jpg"), 404, "999999"),
        (client.get("/api/frames/-1/thumbnail.jpg"), 404, ""),
    ]
    for response, status, words in bad:
        assert response.status_code == status, (response.request.url, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and words in detail, detail
    good = client.post("/api/ask", json={"question": "What happens?", "k": 2})
    assert good.status_code == 200 and good.json()["citations"]
    assert client.get("/api/streams").status_code == 200


def test_a_token_guards_the_api_but_not_the_page(engine, rows, media_roots):
    frame_id = next(iter(rows))
    with TestClient(create_app(engine, token=TOKEN, media_roots=media_roots)) as client:
        assert client.get("/api/streams").status_code == 401
        assert client.get("/api/streams").headers["www-authenticate"] == "Bearer"
        assert client.get("/api/streams", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/streams?token=wrong").status_code == 401
        assert client.post("/api/ask", json={"question": "q"}).status_code == 401
        assert client.get("/api/streams/a/media", headers={"Range": "bytes=0-9"}).status_code == 401
        assert client.get("/api/streams", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get(f"/api/frames/{frame_id}/thumbnail.jpg?token={TOKEN}").status_code == 200
        assert client.get(f"/api/streams/a/media?token={TOKEN}", headers={"Range": "bytes=0-9"}).status_code == 206
        page = client.get("/")
        assert page.status_code == 200 and "<textarea" in page.text
        assert client.get("/app.js").status_code == 200 and client.get("/docs").status_code == 200


def test_openapi_documents_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {"/api/ask", "/api/search", "/api/streams", "/api/frames/{frame_id}/thumbnail.jpg",
                          "/api/streams/{stream_id}/media"}
    assert set(paths["/api/search"]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}


def test_finite_damage_inside_a_features_file_answers_503_and_exit_1_naming_it(tiny_index, tmp_path, capsys):
    """Bytes changed in the middle of a features file (past the 64 KiB ends the cheap check hashes)
    into other finite numbers: no answer from them, over HTTP or on the command line."""
    import shutil

    from indexer.cli import main
    from indexer.store.manifest import read_manifest

    root = tmp_path / "index"
    shutil.copytree(tiny_index.root, root)
    damaged = []
    for stream in read_manifest(IndexRoot.at(root)).streams.values():
        name = next(seg for seg in stream.segments if seg.frames).features[0]
        path = root / name
        assert path.stat().st_size > 2 * 65536 + 4096, "the file must have a middle the cheap check does not read"
        with open(path, "r+b") as f:
            f.seek(65536 + 1024)
            f.write(np.random.default_rng(0).normal(size=1024).astype(np.float16).tobytes())  # finite values
        damaged.append(name)
    engine = QueryEngine.open(IndexRoot.at(root))
    try:
        with TestClient(create_app(engine), base_url=LOCAL) as client:
            reply = client.post("/api/ask", json={"question": "What is on the screen?"})
    finally:
        engine.close()
    assert reply.status_code == 503 and reply.headers["content-type"] == "application/json", reply.text
    assert reply.json()["file"] in damaged and "SHA-256" in reply.json()["detail"]
    capsys.readouterr()
    assert main(["ask", str(root), "What is on the screen?"]) == 1
    err = capsys.readouterr().err
    assert any(name in err for name in damaged) and "vidx repair" in err, err
