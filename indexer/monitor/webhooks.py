"""Webhook delivery for alerts: HMAC-signed JSON POSTs to the users' own endpoints, retried with
exponential backoff, recorded in a durable outbox, dead-lettered when a receiver stays down.

`submit()` only appends to the outbox (fsync'd) and wakes a background thread, so ingestion and
evaluation never wait on a receiver. The thread runs an asyncio loop: one task per pending
delivery, at most `concurrency` requests in flight per receiver (scheme, host, port), so a receiver
that hangs cannot hold up another one. Delivery is at least once: an acknowledged delivery is
never sent again, but a crash between the receiver's 2xx and the outbox line that records it
resends it, which the receiver can dedupe by the X-Vidx-Delivery header (the deterministic id).

Where a POST goes is checked at each attempt, not only when the webhook was added: a name that
resolved to a public address then may resolve to 127.0.0.1 or a private one now (DNS rebinding).
Each attempt resolves the host once (`host_addresses`), refuses a loopback, private, link-local or
reserved answer unless the webhook was allowed one (`Delivery.allow_private`), and connects to the
address it checked, with the URL's name kept in `Host:` and in TLS SNI (and certificate checks):
httpx never resolves the name a second time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from indexer.redaction import redact_text, redact_uri
from indexer.store.files import fsync_dir, write_atomic

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Vidx-Signature"
EVENT_HEADER = "X-Vidx-Event"
DELIVERY_HEADER = "X-Vidx-Delivery"
USER_AGENT = "llamavid-indexer-webhook"

OUTBOX_MODE = 0o600  # the outbox holds the receivers' secrets
STATES = ("pending", "delivered", "dead")
DELIVERED_RETENTION_S = 7 * 24 * 3600.0  # how long a delivered id still dedupes a re-submit
COMPACT_MIN_LINES = 1000  # below this the log is not worth rewriting
RETRYABLE_STATUS = (408, 429)  # 4xx that may succeed later; every other 4xx (and 3xx) is final


def sign(secret: str, body: bytes) -> str:
    """The signature header value: "sha256=<hex HMAC-SHA256(secret, body)>"."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """True if `header` is the signature of the raw `body` (constant-time comparison)."""
    return hmac.compare_digest(sign(secret, body).encode(), header.encode())


def host_addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses `host` (a name, or an address as a URL writes it) stands for, in the resolver's
    order; OSError (socket.gaierror) when a name does not resolve."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:  # a name
        pass
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos))


def not_public(addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
               ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The first address that is loopback, private, link-local (cloud metadata), shared or
    reserved (an IPv4-mapped IPv6 address judged as its IPv4 one), or None when all are public."""
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global:
            return address
    return None


def encode_payload(payload: dict) -> bytes:
    """The exact bytes that are signed and sent: compact, key-sorted JSON."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class Delivery:
    """One webhook delivery as the outbox records it; times are Unix seconds (they outlive the process)."""

    id: str  # deterministic, e.g. f"{alert_id}:{event}:{destination_index}"
    url: str
    secret: str = field(repr=False)
    event: str
    body: bytes  # fixed at submit time, identical on every retry
    attempts: int = 0
    state: str = "pending"  # pending | delivered | dead
    last_error: str | None = None
    created_at: float = 0.0
    next_attempt_at: float = 0.0
    finished_at: float | None = None  # when it was delivered or went dead
    allow_private: bool = False  # the host may resolve to a loopback or private address (its webhook's allowance)


@dataclass
class _Attempt:
    """What one POST came to."""

    error: str | None  # None: a 2xx
    retryable: bool = False
    retry_after_s: float | None = None  # the receiver's numeric Retry-After, if any


class _Outbox:
    """The append-only JSON-lines log of deliveries: one full line on submit, one line of changed
    fields per state change; replay merges the lines per id, so the last line wins."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, repair: bool = True) -> tuple[dict[str, Delivery], int]:
        """Replay the log; return the deliveries by id and the number of lines read. `repair=False`
        (a reader beside the running sender) leaves a torn last line alone: it may be an append
        in progress."""
        if not self.path.exists():
            return {}, 0
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data) and repair:
            # A crash mid-append left a torn last line: cut it, or the next append would extend it.
            logger.warning("webhook outbox %s: ignoring a torn last line (%d bytes)", self.path, len(data) - end)
            os.truncate(self.path, end)
        records: dict[str, dict] = {}
        lines = bad = 0
        for line in data[:end].splitlines():
            lines += 1
            try:
                record = json.loads(line)
                records.setdefault(record["id"], {}).update(record)
            except (ValueError, KeyError, TypeError):  # not a JSON object with an id
                bad += 1
        deliveries = {}
        for id_, record in records.items():
            if "url" not in record:  # state changes without their submit line
                bad += 1
                continue
            record["body"] = record["body"].encode()
            deliveries[id_] = Delivery(**record)
        if bad and repair:
            logger.warning("webhook outbox %s: skipped %d unreadable lines", self.path, bad)
        return deliveries, lines

    def append(self, record: dict) -> None:
        created = not self.path.exists()
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with open(self.path, "ab", opener=lambda p, flags: os.open(p, flags, OUTBOX_MODE)) as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(self.path.parent)  # the new file's name must survive a power cut too

    def rewrite(self, deliveries: list[Delivery]) -> None:
        """Replace the log with one line per delivery (atomically)."""
        data = b"".join(json.dumps(_full_record(d), separators=(",", ":")).encode() + b"\n" for d in deliveries)

        def write(f) -> None:
            os.fchmod(f.fileno(), OUTBOX_MODE)
            f.write(data)

        write_atomic(self.path, write)
        fsync_dir(self.path.parent)


def _full_record(d: Delivery) -> dict:
    record = dataclasses.asdict(d)
    record["body"] = d.body.decode()  # JSON made with ensure_ascii: plain ASCII text
    return record


class WebhookSender:
    """Delivers webhooks from a durable outbox in a background thread; see the module docstring."""

    def __init__(
        self,
        outbox: Path,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 8,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        concurrency: int = 8,
    ) -> None:
        if timeout_s <= 0 or max_attempts < 1 or backoff_initial_s < 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"WebhookSender needs timeout_s > 0, max_attempts >= 1 and 0 <= backoff_initial_s <= backoff_max_s; "
                f"got timeout_s={timeout_s}, max_attempts={max_attempts}, "
                f"backoff_initial_s={backoff_initial_s}, backoff_max_s={backoff_max_s}"
            )
        if concurrency < 1:
            raise ValueError(f"concurrency (requests in flight per receiver) must be >= 1, got {concurrency}")
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.concurrency = concurrency

        outbox.parent.mkdir(parents=True, exist_ok=True)
        self._outbox = _Outbox(outbox)
        self._deliveries = self._replay()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a delivery leaves "pending"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._accepting = False  # the loop is up and takes new deliveries
        self._thread: threading.Thread | None = None
        # Owned by the loop thread:
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task] = set()
        self._slots: dict[tuple, asyncio.Semaphore] = {}  # per receiver: (scheme, host, port)

    def _replay(self) -> dict[str, Delivery]:
        deliveries, lines = self._outbox.load()
        if self._outbox.path.exists():
            os.chmod(self._outbox.path, OUTBOX_MODE)
        cutoff = time.time() - DELIVERED_RETENTION_S
        kept = {
            id_: d for id_, d in deliveries.items()
            if not (d.state == "delivered" and d.finished_at is not None and d.finished_at < cutoff)
        }
        if lines >= COMPACT_MIN_LINES and lines > 2 * len(kept):
            self._outbox.rewrite(list(kept.values()))
            logger.info("webhook outbox %s compacted: %d lines -> %d", self._outbox.path, lines, len(kept))
            return kept
        return deliveries

    # -- the caller's side -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread; pending deliveries in the outbox are (re)sent when due."""
        if self._thread is not None:
            raise RuntimeError("WebhookSender.start() was already called; make a new sender on the same outbox")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="webhooks", daemon=True)
        self._thread.start()
        ready.wait()

    def submit(self, delivery_id: str, url: str, secret: str, event: str, payload: dict,
               allow_private: bool = False) -> bool:
        """Record a delivery in the outbox (fsync'd) and queue it; never waits on the network.
        Returns False, doing nothing, if `delivery_id` is already in the outbox in any state.
        allow_private: the host may be (or resolve to) a loopback or private address; otherwise an
        attempt that finds one is refused (a dead letter saying so), see the module docstring."""
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"webhook url must be an absolute http(s) URL, got {url!r}")
        now = time.time()
        delivery = Delivery(
            id=delivery_id, url=url, secret=secret, event=event, body=encode_payload(payload),
            created_at=now, next_attempt_at=now, allow_private=allow_private,
        )
        with self._lock:
            if delivery_id in self._deliveries:
                return False
            self._outbox.append(_full_record(delivery))
            self._deliveries[delivery_id] = delivery
            if self._accepting:
                self._loop.call_soon_threadsafe(self._schedule, delivery)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the background thread; deliveries not yet finished stay pending in the outbox."""
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("webhook sender did not stop within %.1f s", timeout_s)

    def deliveries(self, state: str | None = None) -> list[Delivery]:
        """Copies of the outbox's deliveries, oldest first; state="dead" lists the dead letters."""
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {STATES} or None, got {state!r}")
        with self._lock:
            found = [dataclasses.replace(d) for d in self._deliveries.values() if state in (None, d.state)]
        return sorted(found, key=lambda d: d.created_at)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no delivery is pending; False if some still are after `timeout_s`."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(d.state != "pending" for d in self._deliveries.values()), timeout_s
            )

    # -- the background thread ---------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop, ready))
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            ready.set()  # also when _main failed before it was ready
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        # No pool-wide connection cap: it would be a queue shared by all receivers.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            self._client = client
            with self._lock:
                self._loop = loop
                for d in self._deliveries.values():
                    if d.state == "pending":
                        self._schedule(d)
                self._accepting = True
            ready.set()
            await self._stopping.wait()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _schedule(self, delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, d: Delivery) -> None:
        while d.state == "pending":
            wait_s = d.next_attempt_at - time.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            url = httpx.URL(d.url)
            slot = self._slots.setdefault((url.scheme, url.host, url.port), asyncio.Semaphore(self.concurrency))
            async with slot:
                attempt = await self._post(d)
            # The outbox append fsyncs: off the loop, so other deliveries keep going meanwhile.
            await asyncio.to_thread(self._record, d, self._outcome(d, attempt))

    async def _post(self, d: Delivery) -> _Attempt:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(d.secret, d.body),
            EVENT_HEADER: d.event,
            DELIVERY_HEADER: d.id,
        }
        url = httpx.URL(d.url)
        try:
            async with asyncio.timeout(self.timeout_s):  # a total deadline; httpx's is per phase
                try:
                    addresses = await asyncio.to_thread(host_addresses, url.host)
                except (OSError, UnicodeError) as exc:
                    return _Attempt(f"cannot resolve {url.host}: {exc}", retryable=True)
                refused = None if d.allow_private else not_public(addresses)
                if refused is not None:
                    return _Attempt(f"refused: {url.host} resolves to {refused}, a loopback or private address; "
                                    "add the webhook with --allow-private (vidx watch add), or set "
                                    "monitor.webhooks.allow_private, to deliver there")
                # Pinned: the connection goes to an address just checked (the next one when it cannot be
                # reached, as a browser would), with the name kept in Host: and in TLS SNI.
                headers["Host"] = url.netloc.decode("ascii")
                extensions = {}
                if url.scheme == "https" and [url.host] != [str(a) for a in addresses]:  # a name, not an address
                    extensions["sni_hostname"] = url.host
                    # the pool knows connections by address: one made for another name (another
                    # certificate) must not carry this request
                    headers["Connection"] = "close"
                for n, address in enumerate(addresses):
                    try:
                        # stream(): the status is all we need, so a large response body is never read.
                        async with self._client.stream("POST", url.copy_with(host=str(address)), content=d.body,
                                                       headers=headers, extensions=extensions) as response:
                            status = response.status_code
                            retry_after = response.headers.get("Retry-After")
                        break
                    except httpx.ConnectError:
                        if n == len(addresses) - 1:
                            raise
        except (TimeoutError, httpx.TimeoutException):
            return _Attempt(f"timed out after {self.timeout_s} s", retryable=True)
        except httpx.ConnectError as exc:
            return _Attempt(f"connect error: {exc}", retryable=True)
        except httpx.UnsupportedProtocol as exc:
            return _Attempt(f"unsupported URL: {exc}")
        except httpx.TransportError as exc:
            return _Attempt(f"transport error: {type(exc).__name__}: {exc}", retryable=True)
        if 200 <= status < 300:
            return _Attempt(None)
        retryable = status >= 500 or status in RETRYABLE_STATUS
        return _Attempt(f"HTTP {status}", retryable=retryable, retry_after_s=_seconds(retry_after))

    def _outcome(self, d: Delivery, attempt: _Attempt) -> dict:
        """The fields that change after `attempt` (the next attempt counted from now)."""
        now = time.time()
        attempts = d.attempts + 1
        if attempt.error is None:
            return {"attempts": attempts, "state": "delivered", "last_error": None, "finished_at": now}
        if not attempt.retryable or attempts >= self.max_attempts:
            return {"attempts": attempts, "state": "dead", "last_error": attempt.error, "finished_at": now}
        if attempt.retry_after_s is not None:
            delay_s = min(attempt.retry_after_s, self.backoff_max_s)
        else:
            delay_s = min(self.backoff_initial_s * 2 ** (attempts - 1), self.backoff_max_s)
            delay_s *= random.uniform(0.9, 1.1)  # jitter: receivers coming back are not hit in lockstep
        return {"attempts": attempts, "last_error": attempt.error, "next_attempt_at": now + delay_s}

    def _record(self, d: Delivery, changes: dict) -> None:
        """Persist a state change, then apply it (under the lock: readers see only persisted states)."""
        with self._lock:
            self._outbox.append({"id": d.id, **changes})
            for name, value in changes.items():
                setattr(d, name, value)
            # Logged before waiters wake, so whoever sees the dead letter also finds its log line.
            if d.state == "dead":
                logger.warning(
                    "webhook dead letter: %s to %s (delivery %s) failed after %d attempts: %s",
                    d.event, redact_uri(d.url), d.id, d.attempts, redact_text(d.last_error or ""),
                )
            elif d.state == "pending":  # the first failure is shown (vidx monitor prints it), the retries logged
                logger.log(
                    logging.WARNING if d.attempts == 1 else logging.DEBUG,
                    "webhook %s to %s: attempt %d of %d failed (%s); retrying with backoff", d.event,
                    redact_uri(d.url), d.attempts, self.max_attempts, redact_text(d.last_error or ""),
                )
            if d.state != "pending":
                self._changed.notify_all()


def read_deliveries(outbox: Path) -> list[Delivery]:
    """The outbox's deliveries (`IndexRoot.outbox`) as its last lines say, oldest first, read without
    touching the file (a running monitor may be appending)."""
    deliveries, _ = _Outbox(outbox).load(repair=False)
    return sorted(deliveries.values(), key=lambda d: d.created_at)


def delivery_states(deliveries: list[Delivery]) -> str:
    """'2 delivered, 1 retrying (attempt 3: HTTP 503), 1 dead (connect error: ...)'; '' for none."""
    parts = []
    for state, word in (("delivered", "delivered"), ("pending", "retrying"), ("dead", "dead")):
        found = [d for d in deliveries if d.state == state]
        if not found:
            continue
        last = max(found, key=lambda d: d.finished_at or d.next_attempt_at or d.created_at)
        if state == "pending" and not last.attempts:
            word = "pending"
        detail = f" (attempt {last.attempts}: {last.last_error})" if state == "pending" and last.last_error else ""
        detail = f" ({last.last_error})" if state == "dead" else detail
        parts.append(f"{len(found)} {word}{detail}")
    return ", ".join(parts)


def _seconds(retry_after: str | None) -> float | None:
    """A numeric Retry-After in seconds; None for an absent one or an HTTP date (backoff applies then)."""
    try:
        return max(0.0, float(retry_after)) if retry_after is not None else None
    except ValueError:
        return None


__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "Delivery",
    "WebhookSender",
    "delivery_states",
    "encode_payload",
    "host_addresses",
    "not_public",
    "read_deliveries",
    "sign",
    "verify_signature",
]
