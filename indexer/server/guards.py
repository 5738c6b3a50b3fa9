"""What the server refuses before any route runs: a body over its bound (`BodyLimit`, 413), foreign
Host names and cross-origin requests to a server without a token (`LoopbackOnly`, 403), and
methods an /api path does not take (`PageFiles`, `allowed_methods` for the 405's `Allow:`).

Why the Host rule: a server without a token trusts whoever can reach 127.0.0.1. A web page on
any site can make the browser reach it too, by a name of its own that it re-resolves to
127.0.0.1 (DNS rebinding); those requests carry that name in `Host:`, so a tokenless server
answers only loopback names (localhost, 127.x.x.x, [::1], with any port). And a page on another
origin may send requests (not read the answers) to 127.0.0.1 itself: requests that carry an
`Origin:` are answered only when it is the server's own origin (its page and /docs).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_PREFIX = "/api"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def is_loopback(host: str) -> bool:
    """A host name or address (a bind address, a `Host:` header; a port may follow) that names this
    machine only."""
    name = host.strip().lower()
    if name.startswith("["):  # [::1] or [::1]:8000
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # any other name: it may resolve to anything, today 127.0.0.1
        return False


class BodyLimit:
    """ASGI middleware: a request body over its path's bound is refused with a 413 that names the
    bound, before a byte of it is parsed: at once when `Content-Length` says so, else as soon as
    the bytes read pass it (a chunked upload).

    limits: a bound per path, in bytes; default: the bound of every other path."""

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.limits = limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        refusal = (f"the request body is over {limit:,} bytes, the bound of {scope['method']} {scope['path']}"
                   + ("" if scope["path"] in self.limits else " (every request but a search's)"))
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _reply(scope, send, 413, refusal)
            return
        read = 0

        async def bounded() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:  # raised inside the route: the app's handler answers it
                    raise HTTPException(413, refusal)
            return message

        await self.app(scope, bounded, send)


class LoopbackOnly:
    """ASGI middleware for a server without a token: 403 unless `Host:` is a loopback name and
    `Origin:` (when sent) is the server's own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            host = headers.get("host", "")
            origin = headers.get("origin")
            refusal = None
            if not is_loopback(host):
                refusal = (f"Host {host!r} is not a loopback name: this server has no token, so it answers only "
                           "localhost, 127.0.0.1 and [::1] (give it --token to serve other names)")
            elif origin is not None and origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
                refusal = (f"a request from the page at {origin!r}, not this server's own: this server has no token, "
                           "so only its own page may call it (give it --token to allow others)")
            if refusal is not None:
                await _reply(scope, send, 403, refusal)
                return
        await self.app(scope, receive, send)


async def _reply(scope: Scope, send: Send, status: int, detail: str) -> None:
    """{"detail": ...} with `status`, as the app's own errors are (a websocket is closed)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class PageFiles(Mount):
    """The web page's files at "/", leaving every /api path to the API routes.

    Why: a mount at "/" matches any path and method, so without this an unknown method on an
    API route (OPTIONS /api/ask) would reach the page's files and get their 405 (`Allow: GET,
    HEAD`) instead of the route's own (`Allow: POST`), and an unknown /api path their 404."""

    def __init__(self, directory: str | Path) -> None:
        super().__init__("/", app=StaticFiles(directory=directory, html=True), name="page")

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            return Match.NONE, {}
        return super().matches(scope)


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route takes at this request's path (Starlette's 405 names only the first
    route's: `Allow: GET` for GET and POST /api/watch). Routes are asked as the router asks them."""
    return [method for method in METHODS
            if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)]


__all__ = ["API_PREFIX", "METHODS", "BodyLimit", "LoopbackOnly", "PageFiles", "allowed_methods", "is_loopback"]
