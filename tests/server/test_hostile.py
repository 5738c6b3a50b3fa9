"""Hostile requests to a real `vidx -v serve` process on the tiny index (tests/indexes.py): bodies,
texts and images over their bounds are answered at once with a 4xx naming the bound, the
server's memory stays put, and its access log shows no token. Then schemathesis, every check,
against the same server (bounded in time), so the OpenAPI schema stays true."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from indexer.server.schemas import MAX_IMAGE_PIXELS, MAX_JSON_BODY_BYTES
from tests.mediagen import png_bomb

TOKEN = "hostile-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[2]
RSS_GROWTH_BOUND_MB = 64  # what one refused request may add to the server's resident memory
ANSWER_BOUND_S = 1.0      # a refusal comes this fast (the bound), measured from the request's first bytes


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_index, tmp_path_factory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    vidx = shutil.which("vidx", path=os.path.dirname(sys.executable)) or "vidx"
    with open(log, "w") as out:
        process = subprocess.Popen([vidx, "-v", "serve", str(tiny_index.root), "--port", str(port)],
                                   env={**os.environ, "VIDX_TOKEN": TOKEN}, cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a model load on a busy machine
        while True:
            try:
                if httpx.get(f"{url}/api/streams", headers=AUTH, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        yield Server(process, url, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def raw_request(server: Server, head: str, first_bytes: bytes) -> tuple[int, dict, float]:
    """Send a request's head and the first bytes of a (much larger) declared body, then read the
    answer without sending the rest: (status, JSON body, seconds from the first byte sent)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + first_bytes)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        elapsed = time.monotonic() - started
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.partition(b"\r\n\r\n")[2]), elapsed


def _length(reply: bytes) -> int:
    for line in reply.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("L", (12000, 12000), 128).save(out, format="JPEG", quality=50)
    return out.getvalue()


def test_a_100_mb_question_is_refused_at_once_without_reading_it(server):
    body_size = 100 * 2**20
    before = server.rss_mb()
    head = (f"POST /api/ask HTTP/1.1\r\nHost: {server.url[7:]}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {body_size}\r\n\r\n")
    status, body, elapsed = raw_request(server, head, b'{"question": "' + b"x" * 65536)
    assert status == 413 and f"{MAX_JSON_BODY_BYTES:,} bytes" in body["detail"] and "/api/ask" in body["detail"]
    assert elapsed < ANSWER_BOUND_S, elapsed

    # the same sent whole, as a client that does not look at the answer first would (chunked: no
    # length to refuse it by); refused once the bound is read
    def chunks() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(100):
            yield b"x" * 2**20
        yield b'"}'

    sent = httpx.post(f"{server.url}/api/ask", content=chunks(), headers={**AUTH, "Content-Type": "application/json"},
                      timeout=60)
    assert sent.status_code == 413 and "the request body is over" in sent.json()["detail"]
    assert server.rss_mb() - before < RSS_GROWTH_BOUND_MB, (before, server.rss_mb())


def test_texts_and_histories_over_their_bounds_name_the_bound(server):
    turns_21 = [{"question": "a", "answer": "b"}] * 21
    long_answer = [{"question": "a", "answer": "b" * 16001}]
    cases = [({"question": "x" * 2001}, "question: String should have at most 2000 characters"),
             ({"question": "q", "history": turns_21}, "history: List should have at most 20 items"),
             ({"question": "q", "history": long_answer}, "history.0.answer: String should have at most 16000"),
             ({"question": "   "}, "question: String should match pattern")]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        for body, words in cases:
            response = client.post("/api/ask", json=body)
            assert response.status_code == 422 and words in response.json()["detail"], (body, response.text)
        long_text = client.post("/api/search", json={"text": "y" * 1001})
        assert long_text.status_code == 422 and "text: String should have at most 1000" in long_text.json()["detail"]
        # within every bound, the question and its history still may not fit the model's context: a 400 that says so
        longest = client.post("/api/ask", json={"question": "q " * 999, "history": [
            {"question": "q " * 999, "answer": "a " * 7999}] * 20})
        assert longest.status_code == 400 and "shorten the question or send fewer history turns" in longest.text


def test_a_decompression_bomb_and_a_12000x12000_jpeg_are_refused_from_their_headers(server, big_jpeg):
    bomb = png_bomb(30_000)
    assert len(bomb) < 2**20  # 900 million pixels in under 1 MiB
    before = server.rss_mb()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        for name, send in [
            ("bomb (JSON)", lambda: client.post("/api/search", json={"image_base64": base64.b64encode(bomb).decode()})),
            ("bomb (upload)", lambda: client.post("/api/search", files={"image": ("b.png", bomb, "image/png")})),
            ("jpeg (upload)", lambda: client.post("/api/search", files={"image": ("j.jpg", big_jpeg, "image/jpeg")})),
        ]:
            started = time.monotonic()
            response = send()
            elapsed = time.monotonic() - started
            assert response.status_code == 400, (name, response.text)
            assert f"over the {MAX_IMAGE_PIXELS:,} pixels allowed" in response.json()["detail"], (name, response.text)
            assert elapsed < ANSWER_BOUND_S, (name, elapsed)
    assert server.rss_mb() - before < RSS_GROWTH_BOUND_MB, (before, server.rss_mb())


def test_the_access_log_shows_no_token(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get(f"/api/streams?token={TOKEN}").status_code == 200
    deadline = time.monotonic() + 10
    while "GET /api/streams?token=***" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log.read_text()
    assert "GET /api/streams?token=***" in log and TOKEN not in log


@pytest.mark.timeout(240)
def test_schemathesis_with_every_check_passes(server, tmp_path):
    """A bounded run (90 s of generated requests) of every schemathesis check: what the schema
    promises, the server does (tests/server/schemathesis.toml says which rejections only the
    server can judge)."""
    st = shutil.which("st", path=os.path.dirname(sys.executable))
    assert st, "schemathesis is in the test extras: pip install -e '.[test]'"
    run = subprocess.run([st, "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run",
                          f"{server.url}/openapi.json", "--checks", "all", "--max-time", "90", "--max-examples", "25",
                          "--workers", "1", "--header", f"Authorization: Bearer {TOKEN}", "--seed", "1"],
                         capture_output=True, text=True, timeout=220, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
