"""`serve`: open an index root and run the API and web page with uvicorn (what `vidx serve` calls).

Bound to a loopback address (the default, 127.0.0.1) it needs no token (and answers loopback
names only: `guards.LoopbackOnly`); bound to any other address it refuses to start without one,
so an index is never open to a network by accident. The access log never shows a token."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from indexer.redaction import redact_query
from indexer.server.guards import is_loopback
from indexer.settings import Settings
from indexer.store.root import IndexRoot

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


class RedactTokens(logging.Filter):
    """Blanks `?token=T` (and other secret query parameters) in uvicorn's access log lines: the page
    puts the token in <img>, <video> and EventSource URLs, which cannot send a header."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):  # (client, method, path?query, http version, status)
            record.args = tuple(_redact_path(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        return True


def _redact_path(path: str) -> str:
    path, _, query = path.partition("?")
    return f"{path}?{redact_query(query)}"


def check_exposure(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token (or with one too short to resist guessing)."""
    if is_loopback(host):
        return
    make = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
    if not token:
        raise ValueError(f"--host {host} is reachable from other machines: give a token (--token T or $VIDX_TOKEN; "
                         f"make one with {make}), or bind 127.0.0.1")
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} (make one with "
                         f"{make})")


def serve(index: IndexRoot, settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, media_roots: Sequence[str | Path] | None = None, access_log: bool = False) -> None:
    """Load the index's models and serve until Ctrl-C (uvicorn says where; `access_log`: a line per request)."""
    import uvicorn

    from indexer.preflight import bind_port
    from indexer.query.engine import QueryEngine
    from indexer.server.app import create_app
    from indexer.stream_ids import index_stream_ids

    check_exposure(host, token)  # before the minutes a real model takes to load
    if index_stream_ids(index) is None:
        raise FileNotFoundError(f"{index}: no index here (no {index.manifest.name}); make one with vidx ingest")
    sock = bind_port(host, port)  # likewise: a port in use fails now, and the port is ours meanwhile
    access = logging.getLogger("uvicorn.access")
    redact = RedactTokens()
    access.addFilter(redact)
    try:
        engine = QueryEngine.open(index, settings)
        try:
            app = create_app(engine, token=token or None, media_roots=media_roots,
                             allow_private_webhooks=engine.settings.monitor.webhooks.allow_private)
            logger.info("serving %s on %s:%d (the page at /, API docs at /docs)", index, host, port)
            if not media_roots:
                logger.info("the page plays no local source files: give --media-root DIR (the folder of the "
                            "videos) to play them")
            config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=access_log)
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            engine.close()
    finally:
        access.removeFilter(redact)
        sock.close()


__all__ = ["MIN_TOKEN_CHARS", "RedactTokens", "check_exposure", "is_loopback", "serve"]
