"""`serve`: open an index root and run the API and web page with uvicorn (what `vidx serve` calls).

Bound to a loopback address (the default, 127.0.0.1) it needs no token; bound to any other
address it refuses to start without one, so an index is never open to a network by accident."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path

from indexer.settings import Settings

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


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


def serve(index: str | Path, settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, media_roots: Sequence[str | Path] | None = None, access_log: bool = False) -> None:
    """Load the index's models and serve until Ctrl-C (uvicorn says where; `access_log`: a line per request)."""
    import uvicorn

    from indexer.preflight import bind_port
    from indexer.query.engine import QueryEngine
    from indexer.server.app import create_app
    from indexer.stream_ids import index_stream_ids

    check_exposure(host, token)  # before the minutes a real model takes to load
    if index_stream_ids(index) is None:
        raise FileNotFoundError(f"{index}: no index here (no manifest.json); make one with vidx ingest")
    sock = bind_port(host, port)  # likewise: a port in use fails now, and the port is ours meanwhile
    try:
        engine = QueryEngine.open(index, settings)
        try:
            app = create_app(engine, token=token or None, media_roots=media_roots)
            logger.info("serving %s on %s:%d (the page at /, API docs at /docs)", index, host, port)
            config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=access_log)
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            engine.close()
    finally:
        sock.close()


__all__ = ["MIN_TOKEN_CHARS", "check_exposure", "is_loopback", "serve"]
