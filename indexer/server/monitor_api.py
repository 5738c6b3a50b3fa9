"""`monitor_router`: the live-monitoring routes, over the monitor's files under an index root.

    api.include_router(monitor_router(root, poll_s=1.0))   # under /api, with its token check

| route                                 | what                                                          |
|---------------------------------------|---------------------------------------------------------------|
| `GET/POST /api/watch`                 | the standing queries; create one (201, its webhook secrets shown this once) |
| `PATCH/DELETE /api/watch/{id}`        | pause or resume (`{"paused": bool}`); remove (204)            |
| `GET  /api/alerts`                    | each alert's latest state, newest first (`?stream=&query=&limit=`) |
| `GET  /api/alerts/stream`             | server-sent events: each alert row as the monitor commits it  |
| `GET  /api/alerts/{id}`               | one alert; `/thumbnail` its JPEG, `/clip` its MP4 (HTTP Range) |

The alert feed, `GET /api/alerts/stream` (text/event-stream), sends one event per alert row:

    id: 12                      <- every row of monitor commits up to 12 has been sent
    event: alert.opened         <- or alert.closed
    data: {...}                 <- the alert as GET /api/alerts/{id} shows it

and `: keepalive` after 15 s without one. It starts after the monitor commit given by the
`Last-Event-ID` header (what EventSource sends when it reconnects) or `?after=GENERATION` (the
`generation` of GET /api/alerts, so a page misses nothing between the two), else at the latest.
It ends when its client goes or the server stops (Ctrl-C included).

The files (queries.json, state.json, alert rows, clips) are read and written in worker threads,
never through the engine gate: a question being answered does not hold up an alert.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import ValidationError

from indexer.monitor.alerts import Alert, AlertLog
from indexer.monitor.queries import (
    QueryIdTaken,
    QueryStore,
    StandingQuery,
)
from indexer.server.schemas import (
    VIDEO_TYPES,
    AlertModel,
    AlertsResponse,
    CreatedWatchModel,
    ErrorModel,
    WatchListResponse,
    WatchModel,
    WatchPatch,
    WatchRequest,
    finite,
)
from indexer.store.root import IndexRoot

logger = logging.getLogger(__name__)

KEEPALIVE_S = 15.0           # a comment line this often keeps proxies from closing a quiet alert feed
MIN_FEED_POLL_S = 0.25       # the alert feed reads state.json at most this often (poll_s may be 0)


def monitor_router(root: IndexRoot, poll_s: float, allow_private_webhooks: bool = False,
                   body_errors: dict[int | str, dict[str, Any]] | None = None) -> APIRouter:
    """The routes over the root's monitor folder (what `vidx monitor` runs on), without a prefix: include it
    in the /api router, whose dependencies (the token check) and error responses it takes on.

    poll_s: how often alert feeds look for new monitor commits (at most every MIN_FEED_POLL_S).
    allow_private_webhooks: new standing queries may have webhooks to loopback and private addresses.
    body_errors: the responses a route with a request body may give besides (413, 415), for /docs.
    Its lifespan ends open alert feeds when the server stops."""
    store = QueryStore(root)
    body_errors = body_errors or {}
    poll_s = max(poll_s, MIN_FEED_POLL_S)
    closing = threading.Event()  # set when the server stops: alert feeds end instead of holding it open

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        restore = _note_exit_signals(closing)
        try:
            yield
        finally:
            closing.set()
            restore()

    api = APIRouter(lifespan=lifespan)

    @api.get("/watch", response_model=WatchListResponse, summary="The standing queries (webhook secrets left out)")
    async def list_queries() -> dict[str, Any]:
        queries = await anyio.to_thread.run_sync(store.load)
        return {"queries": [q.public() for q in queries]}

    @api.post("/watch", status_code=201, response_model=CreatedWatchModel,
              summary="Add a standing query; the reply is the only one that shows its webhook secrets",
              responses={409: {"model": ErrorModel, "description": "a standing query with this id exists"},
                         **body_errors})
    async def add_query(body: WatchRequest) -> dict[str, Any]:
        query = await anyio.to_thread.run_sync(_add_query, store, body, allow_private_webhooks)
        return query.model_dump(mode="json")

    @api.patch("/watch/{query_id}", response_model=WatchModel, summary="Pause or resume a standing query",
               responses=body_errors)
    async def patch_query(query_id: str, body: WatchPatch) -> dict[str, Any]:
        query = await anyio.to_thread.run_sync(store.set_paused, query_id, body.paused)
        return query.public()

    @api.delete("/watch/{query_id}", status_code=204, response_class=Response,
                summary="Remove a standing query (its alerts stay)")
    async def remove_query(query_id: str) -> Response:
        await anyio.to_thread.run_sync(store.remove, query_id)
        return Response(status_code=204)

    @api.get("/alerts", response_model=AlertsResponse, summary="Each alert's latest state, newest first")
    async def alerts(request: Request, stream: str | None = Query(None, description="only this stream's"),
                     query: str | None = Query(None, description="only this standing query's"),
                     limit: int = Query(100, ge=1, le=10_000, description="at most this many")) -> AlertsResponse:
        def read() -> AlertsResponse:
            log = AlertLog(root)
            found = log.alerts(stream_id=stream, query_id=query, limit=limit)
            return AlertsResponse(generation=log.generation, alerts=[_alert_model(a, request) for a in found])

        return await anyio.to_thread.run_sync(read)

    # before /alerts/{alert_id}, which would take "stream" for an id
    @api.get("/alerts/stream", response_class=StreamingResponse,
             summary="Server-sent events: alert.opened and alert.closed as the monitor commits them",
             responses={200: {"content": {"text/event-stream": {}}}})
    async def alert_feed(request: Request,
                         # typed int, not int | None: a header or query value is never null
                         after: int = Query(None, ge=0, description="the monitor commit to start after (default: "
                                                                    "the latest)"),
                         last_event_id: int = Header(None, ge=0, description="the id of an event this feed "
                                                                             "sent (EventSource sends it when it "
                                                                             "reconnects); wins over ?after")
                         ) -> StreamingResponse:
        start = last_event_id if last_event_id is not None else after
        if start is None:
            start = (await anyio.to_thread.run_sync(AlertLog, root)).generation
        return StreamingResponse(_alert_events(request, root, start, poll_s, closing), media_type="text/event-stream",
                                 # X-Accel-Buffering: nginx passes the events on without buffering them
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def alert(alert_id: str) -> Alert:
        return await anyio.to_thread.run_sync(lambda: AlertLog(root).get(alert_id))

    @api.get("/alerts/{alert_id}", response_model=AlertModel, summary="An alert's latest state")
    async def get_alert(alert_id: str, request: Request) -> AlertModel:
        return _alert_model(await alert(alert_id), request)

    @api.get("/alerts/{alert_id}/thumbnail", response_class=Response, summary="The JPEG of an alert's best frame",
             responses={200: {"content": {"image/jpeg": {}}}})
    async def alert_thumbnail(alert_id: str) -> Response:
        found = await alert(alert_id)
        if found.thumbnail is None:
            raise KeyError(f"alert {alert_id!r} has no thumbnail ({found.kind} on {found.stream_id!r})")
        # the closing row may show a better frame than the opening one: no long caching
        return Response(found.thumbnail, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    async def alert_clip(alert_id: str) -> FileResponse:
        found = await alert(alert_id)
        if found.clip is None:
            raise KeyError(f"alert {alert_id!r} has no clip" + (" yet: it is cut when the event ends"
                                                                  if found.status == "open" else ""))
        path = _clip_path(root, found.clip)
        if path is None:  # the row is data on disk: serve nothing outside the clips folder
            raise KeyError(f"alert {alert_id!r}: its clip {found.clip!r} is outside "
                           f"{root.clips_dir.relative_to(root.path)}/ of the index, or reached through a symbolic link")
        if not path.is_file():
            raise KeyError(f"alert {alert_id!r}: its clip {found.clip} is no longer there")
        return FileResponse(path, media_type=VIDEO_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    clip_path = "/alerts/{alert_id}/clip"
    api.add_api_route(clip_path, alert_clip, methods=["GET"], response_class=FileResponse,
                      summary="An alert's clip (HTTP Range requests for seeking)",
                      responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "a byte range"}})
    api.add_api_route(clip_path, alert_clip, methods=["HEAD"], include_in_schema=False)
    return api


def _clip_path(root: IndexRoot, clip: str) -> Path | None:
    """Where an alert row's clip (a path relative to the index root) is, when it names a file in
    the root's clips folder, reached through no symbolic link (a clips folder linked out of the
    root is refused); else None. The root's path is real (IndexRoot.at resolved it)."""
    path = Path(os.path.normpath(root / clip))
    clips = root.clips_dir
    if not path.is_relative_to(clips) or path.resolve() != path:  # `..` out, or a link on the way
        return None
    return path


def _add_query(store: QueryStore, body: WatchRequest, allow_private_webhooks: bool) -> StandingQuery:
    """`QueryStore.create` with its errors as HTTP answers: 422 a bad field, 400 a private webhook
    address (the app's ValueError handler), 409 an id that is taken."""
    try:  # left out (None): the standing query's defaults, and a random secret
        return store.create(**body.model_dump(exclude_none=True), allow_private_webhooks=allow_private_webhooks)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    except QueryIdTaken as exc:
        raise HTTPException(409, str(exc)) from exc


def _alert_model(alert: Alert, request: Request) -> AlertModel:
    """JSON of an alert: the thumbnail and clip as URLs (under the app's root path), not bytes and file paths."""
    base = f"{request.scope.get('root_path', '')}/api/alerts/{quote(alert.alert_id, safe='')}"
    data = {k: v for k, v in asdict(alert).items() if k not in ("thumbnail", "clip")}
    return AlertModel.model_validate(finite(data) | {
        "thumbnail_url": f"{base}/thumbnail" if alert.thumbnail is not None else None,
        "clip_url": f"{base}/clip" if alert.clip is not None else None})


def _commits_after(root: IndexRoot, after: int) -> tuple[int, list[tuple[int, list[Alert]]]]:
    """The monitor's generation and the alert rows of each later commit, oldest first."""
    log = AlertLog(root)
    return log.generation, log.commits(after)


async def _alert_events(request: Request, root: IndexRoot, after: int, poll_s: float,
                        closing: threading.Event) -> AsyncIterator[str]:
    """The alert feed: each committed row after monitor generation `after`, until the client goes
    or the server stops."""
    cursor = after
    quiet_since = time.monotonic()
    while not closing.is_set() and not await request.is_disconnected():
        try:
            generation, commits = await anyio.to_thread.run_sync(_commits_after, root, cursor)
        except (OSError, ValueError) as exc:  # a damaged state or alert file: say so, keep polling
            logger.warning("alert feed: cannot read the monitor's commits: %s", exc)
            generation, commits = cursor, []
        if generation < cursor:  # the monitor started over (state.json removed): follow it from there
            logger.warning("alert feed: the monitor's generation went back from %d to %d", cursor, generation)
        events = []
        for gen, rows in commits:
            for i, row in enumerate(rows):
                # the id promises every row up to it was sent, so only a commit's last row carries its generation
                done = gen if i == len(rows) - 1 else cursor
                data = _alert_model(row, request).model_dump_json()
                events.append(f"id: {done}\nevent: alert.{'opened' if row.status == 'open' else 'closed'}\n"
                              f"data: {data}\n\n")
            cursor = gen
        cursor = generation
        if events:
            yield "".join(events)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(poll_s)


def _note_exit_signals(closing: threading.Event) -> Callable[[], None]:
    """Set `closing` on SIGINT/SIGTERM, then run the handler that was there (uvicorn's own).

    Why: on Ctrl-C uvicorn waits for every open response before it shuts the app down, and tells
    a streaming response nothing, so an open alert feed would hold the server up for good.
    Returns what puts the previous handlers back. Signals belong to the main thread: elsewhere
    (TestClient, a server in a thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous = {sig: before for sig, before in previous.items() if callable(before)}  # SIG_DFL ends the process anyway

    def handler(signum: int, frame: Any) -> None:
        closing.set()
        previous[signal.Signals(signum)](signum, frame)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, before)

    return restore


__all__ = ["KEEPALIVE_S", "MIN_FEED_POLL_S", "monitor_router"]
