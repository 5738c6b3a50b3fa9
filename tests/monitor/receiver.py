"""A webhook receiver on 127.0.0.1 (http.server in a thread) that records every POST."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from indexer.monitor.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify_signature


@dataclass
class Post:
    delivery: str
    signature: str
    body: bytes
    received_at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[Post] = []
        self.status = 200
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def received(self) -> list[Post]:
        with self.lock:
            return list(self.posts)

    def events(self, secret: str) -> list[tuple[str, str]]:
        """(event, alert id) of each POST, after checking that its signature is valid."""
        out = []
        for post in self.received():
            assert verify_signature(secret, post.body, post.signature), f"bad signature on {post.delivery}"
            out.append((post.json["event"], post.json["alert"]["alert_id"]))
        return out


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        import time

        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            status = self.server.status
            if status == 200:
                self.server.posts.append(Post(self.headers.get(DELIVERY_HEADER, ""),
                                              self.headers.get(SIGNATURE_HEADER, ""), body, time.time()))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
