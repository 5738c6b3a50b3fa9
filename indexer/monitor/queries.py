"""Standing queries: what to watch for, on which streams, and where alerts go. They live in
`IndexRoot.queries` (mode 0600: it holds webhook secrets) and may be changed while a
monitor runs; the monitor re-reads the file when it changes."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from indexer.monitor.kinds import DEFAULT_KIND, KINDS, KindName, RuleKind, rule_kind
from indexer.monitor.webhooks import host_addresses, not_public
from indexer.redaction import redact_uri
from indexer.store.files import write_atomic
from indexer.store.root import IndexRoot

QUERY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# http(s)://[user[:password]@]host[:port][/path?query], whole: explicit character classes (no \s,
# whose meaning differs between regex engines), as the JSON schema of the HTTP API shows it
WEBHOOK_URL = re.compile(r"^https?://(?:[^ \t\r\n/?#@\[\]\\]*@)?[^ \t\r\n/?#@:\[\]\\]+(?::[0-9]{1,5})?"
                         r"(?:[/?#][^ \t\r\n]*)?$")


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    secret: str = Field(default_factory=lambda: secrets.token_hex(16), min_length=8, repr=False)
    # added with --allow-private (or by a server whose settings allow it): deliveries may go to a
    # loopback or private address; without it each delivery refuses one (webhooks.py)
    allow_private: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not WEBHOOK_URL.fullmatch(url):  # fullmatch: Python's $ would also match before a final newline
            raise ValueError(f"webhook url must be http(s)://HOST[:PORT]/..., got {redact_uri(url)!r}")
        return url


class QueryIdTaken(ValueError):
    """A new standing query's id is already used (the HTTP API answers 409)."""


def check_webhook_address(url: str, allow_private: bool = False) -> None:
    """Refuse (ValueError) a webhook URL whose host is, or now resolves to, an address that is not
    public: loopback, private, link-local (cloud metadata), shared or reserved. Unless
    `allow_private`: a receiver on this machine or the local network is then the user's choice,
    not something a request can pick (the monitor would POST alerts and thumbnails there).

    A name that does not resolve now passes: it reaches nothing, and deliveries to it retry. Each
    delivery checks the address again (a name may resolve elsewhere later: webhooks.py)."""
    if allow_private:
        return
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"webhook url {redact_uri(url)!r} names no host")
    try:
        address = not_public(host_addresses(host))
    except (OSError, UnicodeError):
        return
    if address is not None:
        raise ValueError(f"webhook url {redact_uri(url)!r} points at {address}, a loopback or private address: "
                         "allow it with monitor.webhooks.allow_private (vidx serve) or --allow-private "
                         "(vidx watch add)")


class StandingQuery(BaseModel):
    """A condition that stays asked. `kind` names its `RuleKind` (kinds.py): "condition" is a
    natural-language condition checked by the retrieval prefilter and LLaMA-VID; "black", "frozen"
    and "signal_lost" need no model."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: KindName = DEFAULT_KIND
    condition: str | None = None
    streams: list[str] = Field(default_factory=list, description="empty: every stream")
    sensitivity: float = Field(0.5, ge=0, le=1, description="higher: more frames pass the prefilter")
    cooldown_s: float = Field(60.0, ge=0, description="no new alert this long after the last one ended")
    min_duration_s: float = Field(0.0, ge=0, description="an event shorter than this raises no alert "
                                                         "(default: the kind's default_min_duration_s)")
    webhooks: list[Webhook] = Field(default_factory=list)
    paused: bool = False
    created: float = Field(default_factory=time.time)

    @model_validator(mode="before")
    @classmethod
    def _rule_min_duration(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("min_duration_s") is None:
            kind = data.get("kind", DEFAULT_KIND)
            known = KINDS.get(kind) if isinstance(kind, str) else None   # an unknown kind fails on its field
            data = {**data, "min_duration_s": known.default_min_duration_s if known else 0.0}
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not QUERY_ID.fullmatch(value):
            raise ValueError(f"query id {value!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        return value

    @model_validator(mode="after")
    def _condition_matches_kind(self) -> StandingQuery:
        rule_kind(self.kind).check(self.condition)
        return self

    def watches(self, stream_id: str) -> bool:
        return not self.streams or stream_id in self.streams

    def describe(self) -> str:
        return rule_kind(self.kind).describe(self.condition)

    def rule(self) -> RuleKind:
        """This query's rule: its kind, with its condition text and sensitivity."""
        return rule_kind(self.kind)(self.condition, self.sensitivity)

    def public(self) -> dict:
        """As shown by `vidx watch list` and the HTTP API: webhook secrets left out, and credentials
        in their URLs."""
        data = self.model_dump(mode="json")
        data["webhooks"] = [{"url": redact_uri(w.url)} for w in self.webhooks]
        return data


class QueryStore:
    """Read-modify-write of the standing queries under the root's queries lock, so `vidx watch` and
    the HTTP API can change them while a monitor reads them."""

    def __init__(self, root: IndexRoot):
        self.root = root
        self.path = root.queries

    def load(self) -> list[StandingQuery]:
        if not self.path.exists():
            return []
        try:
            raw = json.loads(self.path.read_text())
            return [StandingQuery.model_validate(q) for q in raw["queries"]]
        except (OSError, ValueError, KeyError, ValidationError) as exc:
            raise ValueError(f"{self.path}: not a readable standing-query file: {exc}") from exc

    def version(self) -> tuple[int, int] | None:
        """Changes whenever the file is rewritten (a cheap check before `load`)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    def get(self, query_id: str) -> StandingQuery:
        for query in self.load():
            if query.id == query_id:
                return query
        raise KeyError(f"no standing query {query_id!r} in {self.root}")

    def create(self, *, allow_private_webhooks: bool = False, **fields: Any) -> StandingQuery:
        """The one door for a new standing query (`vidx watch add`, POST /api/watch, tests): the
        fields of `StandingQuery` (left out or None: its default; no id: the next free q1, q2, ...)
        are validated, every webhook's address is checked (`check_webhook_address`) and keeps
        `allow_private_webhooks` as its `allow_private` (each delivery checks again), the id is
        assigned and the query saved, under the file lock. Raises pydantic's ValidationError (a
        bad field), ValueError (a webhook at a private address) or QueryIdTaken (the id given
        exists); nothing is written then."""
        fields = {name: value for name, value in fields.items() if value is not None}
        given_id = fields.pop("id", None)
        query = StandingQuery.model_validate({"id": "q1" if given_id is None else given_id, **fields})
        for hook in query.webhooks:  # a well-formed URL; now where it points (before the lock: DNS takes time)
            check_webhook_address(hook.url, allow_private_webhooks)
        query.webhooks = [hook.model_copy(update={"allow_private": allow_private_webhooks}) for hook in query.webhooks]
        with self._locked() as queries:
            taken = {q.id for q in queries}
            if given_id is None:
                query = query.model_copy(update={"id": _next_id(taken)})
            elif given_id in taken:
                raise QueryIdTaken(f"a standing query {given_id!r} already exists in {self.root}")
            queries.append(query)
        return query

    def set_paused(self, query_id: str, paused: bool) -> StandingQuery:
        with self._locked() as queries:
            query = _find(queries, query_id, self.root)
            query.paused = paused
        return query

    def remove(self, query_id: str) -> StandingQuery:
        with self._locked() as queries:
            query = _find(queries, query_id, self.root)
            queries.remove(query)
        return query

    @contextmanager
    def _locked(self) -> Iterator[list[StandingQuery]]:
        with self.root.queries_locked():
            queries = self.load()
            yield queries
            data = json.dumps({"queries": [q.model_dump(mode="json") for q in queries]}, indent=1).encode()
            write_atomic(self.path, lambda f: f.write(data), mode=0o600)


def _next_id(taken: set[str]) -> str:
    n = 1
    while f"q{n}" in taken:
        n += 1
    return f"q{n}"


def _find(queries: list[StandingQuery], query_id: str, root: IndexRoot) -> StandingQuery:
    for query in queries:
        if query.id == query_id:
            return query
    raise KeyError(f"no standing query {query_id!r} in {root}; have: {sorted(q.id for q in queries) or 'none'}")


__all__ = [
    "QUERY_ID",
    "WEBHOOK_URL",
    "QueryIdTaken",
    "QueryStore",
    "StandingQuery",
    "Webhook",
    "check_webhook_address",
]
