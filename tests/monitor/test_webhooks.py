"""Webhook delivery against real HTTP receivers on 127.0.0.1 (http.server in a thread, no mocks):
signatures, retries, dead letters, a slow receiver that blocks nothing, and the outbox across restarts.
The receivers are on loopback, so deliveries are submitted with allow_private=True, except where a
test shows what each attempt refuses without it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from indexer.monitor import webhooks
from indexer.monitor.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookSender,
    sign,
    verify_signature,
)

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret"
FAST = {"timeout_s": 1.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool


class Receiver(ThreadingHTTPServer):
    """A webhook receiver whose behaviour a test switches: `fail` answers `fail_status` that many
    times first, `delay_s` sleeps before answering (until `release` is set at teardown)."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.received: list[Received] = []
        self.status = 200
        self.fail = 0
        self.fail_status = 500
        self.fail_headers: dict[str, str] = {}
        self.delay_s = 0.0
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def count(self) -> int:
        with self.lock:
            return len(self.received)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        if server.delay_s:
            server.release.wait(server.delay_s)
        with server.lock:
            signed = verify_signature(SECRET, body, self.headers.get(SIGNATURE_HEADER, ""))
            server.received.append(Received(dict(self.headers), body, signed))
            failing = server.fail > 0
            server.fail -= failing
        self.send_response(server.fail_status if failing else server.status)
        for name, value in (server.fail_headers if failing else {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@contextlib.contextmanager
def receiver(port: int = 0) -> Iterator[Receiver]:
    server = Receiver(port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A port with nothing listening on it (bound once, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def senders():
    """Make senders that are stopped at the end of the test."""
    made: list[WebhookSender] = []

    def make(outbox_dir, **options) -> WebhookSender:
        sender = WebhookSender(outbox_dir / "deliveries.jsonl", **{**FAST, **options})
        made.append(sender)
        sender.start()
        return sender

    yield make
    for sender in made:
        sender.stop()


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_delivered_once_with_valid_signature(tmp_path, senders):
    payload = {"alert_id": "a1", "stream": "cam-1", "score": 0.93, "question": "is the door open?"}
    with receiver() as r:
        sender = senders(tmp_path)
        assert sender.submit("a1:alert.opened:0", r.url, SECRET, "alert.opened", payload, allow_private=True)
        assert sender.wait_idle(60)
        time.sleep(0.1)  # nothing more arrives
    assert r.count() == 1
    got = r.received[0]
    assert got.signature_ok
    assert got.headers[SIGNATURE_HEADER] == sign(SECRET, got.body)
    assert got.headers[EVENT_HEADER] == "alert.opened"
    assert got.headers[DELIVERY_HEADER] == "a1:alert.opened:0"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "llamavid-indexer-webhook"
    assert json.loads(got.body) == payload
    assert got.body == json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    assert not verify_signature("wrong", got.body, got.headers[SIGNATURE_HEADER])
    assert not verify_signature(SECRET, got.body + b" ", got.headers[SIGNATURE_HEADER])
    (d,) = sender.deliveries(state="delivered")
    assert (d.attempts, d.last_error, d.body) == (1, None, got.body)
    assert d.finished_at is not None


def test_500_twice_then_200_is_delivered_on_the_third_attempt(tmp_path, senders):
    with receiver() as r:
        r.fail = 2
        sender = senders(tmp_path)
        sender.submit("a2:alert.opened:0", r.url, SECRET, "alert.opened", {"n": 1}, allow_private=True)
        assert sender.wait_idle(60)
    (d,) = sender.deliveries()
    assert (d.state, d.attempts, r.count()) == ("delivered", 3, 3)
    assert all(got.signature_ok and got.body == d.body for got in r.received)  # identical bytes on every retry


def test_429_honours_retry_after(tmp_path, senders):
    with receiver() as r:
        r.fail, r.fail_status, r.fail_headers = 1, 429, {"Retry-After": "0"}
        # A backoff this long would outlast the test: only Retry-After: 0 lets it through in time.
        sender = senders(tmp_path, backoff_initial_s=30.0, backoff_max_s=30.0)
        sender.submit("a3:alert.opened:0", r.url, SECRET, "alert.opened", {}, allow_private=True)
        assert sender.wait_idle(20)
    assert (sender.deliveries()[0].attempts, r.count()) == (2, 2)


def test_receiver_down_becomes_a_dead_letter(tmp_path, senders, caplog):
    url = f"http://127.0.0.1:{free_port()}/hook"
    sender = senders(tmp_path, max_attempts=3)
    sender.submit("a4:alert.opened:0", url, SECRET, "alert.opened", {}, allow_private=True)
    assert sender.wait_idle(60)
    (dead,) = sender.deliveries(state="dead")
    assert (dead.id, dead.attempts) == ("a4:alert.opened:0", 3)
    assert dead.last_error.startswith("connect error: ")
    assert sender.deliveries(state="pending") == []
    assert any("dead letter" in m and url in m and "a4:alert.opened:0" in m for m in caplog.messages)


def test_404_is_dead_after_one_attempt(tmp_path, senders):
    with receiver() as r:
        r.status = 404
        sender = senders(tmp_path, max_attempts=5)
        sender.submit("a5:alert.opened:0", r.url, SECRET, "alert.opened", {}, allow_private=True)
        assert sender.wait_idle(60)
    (dead,) = sender.deliveries(state="dead")
    assert (dead.attempts, dead.last_error, r.count()) == (1, "HTTP 404", 1)


def test_a_slow_receiver_blocks_neither_submit_nor_other_receivers(tmp_path, senders):
    with receiver() as slow, receiver() as healthy:
        slow.delay_s = 3.0
        sender = senders(tmp_path, timeout_s=1.0, max_attempts=1)
        started = time.monotonic()
        sender.submit("a6:alert.opened:0", slow.url, SECRET, "alert.opened", {}, allow_private=True)
        submit_s = time.monotonic() - started
        sender.submit("a6:alert.opened:1", healthy.url, SECRET, "alert.opened", {}, allow_private=True)
        wait_for(lambda: healthy.count() == 1)
        healthy_s = time.monotonic() - started
        # the slow receiver holds its request for 1 s (the timeout): waiting on it would take longer
        assert submit_s < 0.5
        assert healthy_s < 0.9
        assert sender.wait_idle(60)
    (dead,) = sender.deliveries(state="dead")
    assert (dead.id, dead.last_error) == ("a6:alert.opened:0", "timed out after 1.0 s")
    assert [d.id for d in sender.deliveries(state="delivered")] == ["a6:alert.opened:1"]


def test_submit_from_many_threads_delivers_each_id_once(tmp_path, senders):
    with receiver() as r:
        sender = senders(tmp_path, concurrency=4)

        def submit_all(thread: int) -> None:
            for i in range(20):
                assert sender.submit(f"t{thread}:{i}", r.url, SECRET, "alert.opened", {"i": i}, allow_private=True)
                assert not sender.submit(f"t{thread}:{i}", r.url, SECRET, "alert.opened", {"i": i}, allow_private=True)

        threads = [threading.Thread(target=submit_all, args=(t,)) for t in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sender.wait_idle(60)
    assert sorted(got.headers[DELIVERY_HEADER] for got in r.received) == sorted(f"t{t}:{i}" for t in range(5)
                                                                                  for i in range(20))
    assert len(sender.deliveries(state="delivered")) == 100


def test_restart_delivers_pending_exactly_once(tmp_path, senders):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    first = senders(tmp_path, backoff_initial_s=0.2, backoff_max_s=0.2)
    assert first.submit("a7:alert.opened:0", url, SECRET, "alert.opened", {"k": "v"}, allow_private=True)
    wait_for(lambda: first.deliveries()[0].attempts >= 1)  # it tried, the receiver is down
    first.stop()
    assert first.deliveries()[0].state == "pending"

    with receiver(port) as r:
        second = senders(tmp_path)
        assert second.wait_idle(60)
        assert second.deliveries()[0].state == "delivered"
        # a re-raised alert
        assert not second.submit("a7:alert.opened:0", url, SECRET, "alert.opened", {"k": "v"}, allow_private=True)
        second.stop()
        third = senders(tmp_path)
        assert not third.submit("a7:alert.opened:0", url, SECRET, "alert.opened", {"k": "v"}, allow_private=True)
        assert third.wait_idle(0)
        time.sleep(0.3)
    assert r.count() == 1
    assert json.loads(r.received[0].body) == {"k": "v"}


def test_torn_last_line_is_ignored_and_the_outbox_is_private(tmp_path, senders):
    outbox = tmp_path / "deliveries.jsonl"
    with receiver() as r:
        unstarted = WebhookSender(outbox, **FAST)  # persisted, never sent: a crash before start
        assert unstarted.submit("a8:alert.opened:0", r.url, SECRET, "alert.opened", {"i": 0}, allow_private=True)
        assert stat.S_IMODE(os.stat(outbox).st_mode) == 0o600
        with open(outbox, "ab") as f:
            f.write(b'{"id":"a8:alert.opened:1","url":"http://127.0.0.1')  # a crash mid-append

        sender = senders(tmp_path)
        assert [d.id for d in sender.deliveries()] == ["a8:alert.opened:0"]
        assert sender.wait_idle(60)
        assert sender.submit("a8:alert.opened:1", r.url, SECRET, "alert.opened", {"i": 1}, allow_private=True)
        assert sender.wait_idle(60)
    assert r.count() == 2
    lines = outbox.read_bytes().splitlines()
    assert all(json.loads(line)["id"].startswith("a8:") for line in lines)  # the torn tail was cut, not extended
    assert stat.S_IMODE(os.stat(outbox).st_mode) == 0o600


def test_compaction_keeps_the_latest_state_per_id(tmp_path, senders, monkeypatch):
    outbox = tmp_path / "deliveries.jsonl"
    down = f"http://127.0.0.1:{free_port()}/hook"
    with receiver() as r:
        sender = senders(tmp_path, max_attempts=2)
        sender.submit("a9:alert.opened:0", r.url, SECRET, "alert.opened", {}, allow_private=True)
        sender.submit("a9:alert.opened:1", down, SECRET, "alert.opened", {}, allow_private=True)
        assert sender.wait_idle(60)
        sender.stop()
    left_pending = WebhookSender(outbox)
    left_pending.submit("a9:alert.opened:2", down, SECRET, "alert.opened", {}, allow_private=True)
    assert len(outbox.read_bytes().splitlines()) == 6  # 3 submits, 1 delivered, 2 attempts of the dead one

    monkeypatch.setattr(webhooks, "COMPACT_MIN_LINES", 0)
    monkeypatch.setattr(webhooks, "DELIVERED_RETENTION_S", 0.0)  # the delivered one is past retention
    compacted = WebhookSender(outbox)
    states = {d.id: d.state for d in compacted.deliveries()}
    assert states == {"a9:alert.opened:1": "dead", "a9:alert.opened:2": "pending"}
    assert len(outbox.read_bytes().splitlines()) == 2
    assert stat.S_IMODE(os.stat(outbox).st_mode) == 0o600
    assert compacted.deliveries(state="dead")[0].last_error.startswith("connect error: ")


# -- where each attempt goes: checked, then pinned --------------------------------------------------
class Resolver:
    """The system resolver, with some names answered as a test says (a DNS server that can
    change its answers: no real one can be pointed at offline). Counts the lookups of those names,
    whoever makes them: the creation check, the sender, or httpx itself."""

    def __init__(self, monkeypatch, answers: dict[str, str]) -> None:
        self.answers = answers
        self.lookups: dict[str, int] = {}
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self._real(host, port, *args, **kwargs)
        self.lookups[name] = self.lookups.get(name, 0) + 1
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (self.answers[name], port or 0))]


PUBLIC = "93.184.215.14"  # a public address (example.com's): never connected to below but in test 3


def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(tmp_path, senders):
    """`localhost` by the real resolver: refused at each attempt unless allowed, and recorded so."""
    with receiver() as r:
        port = r.server_address[1]
        sender = senders(tmp_path)
        sender.submit("b1:alert.opened:0", f"http://localhost:{port}/hook", SECRET, "alert.opened", {})
        assert sender.wait_idle(60)
        dead = webhooks.read_deliveries(tmp_path / "deliveries.jsonl")[0]  # the outbox on disk (vidx watch list)
        assert dead.state == "dead" and dead.attempts == 1 and r.count() == 0
        assert dead.last_error.startswith("refused: localhost resolves to ")
        assert "loopback or private" in dead.last_error and "--allow-private" in dead.last_error
        sender.submit("b1:alert.opened:1", f"http://localhost:{port}/hook", SECRET, "alert.opened", {},
                      allow_private=True)
        assert sender.wait_idle(60)
        assert r.count() == 1 and r.received[0].headers["Host"] == f"localhost:{port}"


def test_a_name_rebound_to_loopback_after_its_check_at_creation_is_refused_at_delivery(tmp_path, senders,
                                                                                      monkeypatch):
    """DNS rebinding: the name was public when the webhook was added (the check at creation passed),
    then its owner pointed it at 127.0.0.1, where a receiver listens. Nothing reaches it."""
    from indexer.monitor.queries import Webhook, check_webhook_address

    dns = Resolver(monkeypatch, {"alerts.rebind.test": PUBLIC})
    with receiver() as r:
        url = f"http://alerts.rebind.test:{r.server_address[1]}/hook"
        check_webhook_address(url)  # passes: a public address today
        hook = Webhook(url=url)
        assert dns.lookups == {"alerts.rebind.test": 1} and not hook.allow_private
        dns.answers["alerts.rebind.test"] = "127.0.0.1"
        sender = senders(tmp_path)
        sender.submit("b2:alert.opened:0", hook.url, hook.secret, "alert.opened", {}, allow_private=hook.allow_private)
        assert sender.wait_idle(60)
        assert r.count() == 0
        [dead] = sender.deliveries()
        assert dead.state == "dead" and dead.last_error.startswith("refused: alerts.rebind.test resolves to 127.0.0.1")


def test_each_attempt_connects_to_the_address_it_checked(tmp_path, senders, monkeypatch):
    """One lookup per attempt, and the connection goes where it said: a resolver that answers a
    public address and then 127.0.0.1 (a rebinding between the check and the connection) gets the
    connection to the public one (unreachable here), never to the receiver on 127.0.0.1."""
    class Rebinding(Resolver):
        def getaddrinfo(self, host, port, *args, **kwargs):
            answer = super().getaddrinfo(host, port, *args, **kwargs)
            if host == "alerts.rebind.test":
                self.answers[host] = "127.0.0.1"  # the next lookup, if any, would say 127.0.0.1
            return answer

    dns = Rebinding(monkeypatch, {"alerts.rebind.test": PUBLIC})
    with receiver() as r:
        sender = senders(tmp_path, max_attempts=1, timeout_s=2.0)
        sender.submit("b3:alert.opened:0", f"http://alerts.rebind.test:{r.server_address[1]}/hook", SECRET,
                      "alert.opened", {})
        assert sender.wait_idle(60)
        assert r.count() == 0 and dns.lookups == {"alerts.rebind.test": 1}
        [dead] = sender.deliveries()
        assert dead.state == "dead" and not dead.last_error.startswith("refused")  # it tried PUBLIC and failed


def test_a_pinned_delivery_keeps_the_name_in_host_and_tls_sni(tmp_path, senders, monkeypatch):
    """A name only the test resolver knows (httpx could not resolve it): delivered through the
    address it was checked at, with `Host:` the URL's; over https the TLS handshake names the host
    (SNI), not the address (the receiver's self-signed certificate then fails verification)."""
    import ssl
    import subprocess

    dns = Resolver(monkeypatch, {"hooks.pinned.test": "127.0.0.1"})
    with receiver() as r:
        sender = senders(tmp_path)
        port = r.server_address[1]
        sender.submit("b4:alert.opened:0", f"http://hooks.pinned.test:{port}/hook", SECRET, "alert.opened", {"k": 1},
                      allow_private=True)
        assert sender.wait_idle(60)
        assert [d.state for d in sender.deliveries()] == ["delivered"] and dns.lookups == {"hooks.pinned.test": 1}
        assert r.received[0].headers["Host"] == f"hooks.pinned.test:{port}" and r.received[0].signature_ok

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=hooks.pinned.test"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: names.append(name)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def handshake() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(ssl.SSLError, OSError), context.wrap_socket(conn, server_side=True):
                pass

        thread = threading.Thread(target=handshake, daemon=True)
        thread.start()
        url = f"https://hooks.pinned.test:{listener.getsockname()[1]}/hook"
        once = senders(tmp_path / "tls", max_attempts=1)
        once.submit("b4:alert.opened:1", url, SECRET, "alert.opened", {}, allow_private=True)
        thread.join(30)
        assert once.wait_idle(60)
    assert names == ["hooks.pinned.test"]
    assert "CERTIFICATE_VERIFY_FAILED" in once.deliveries(state="dead")[0].last_error
