"""`create_app`: the HTTP API and the web page over a `QueryEngine`.

    app = create_app(QueryEngine.open("runs/idx"), token=None)    # then uvicorn.run(app)

| route                                 | what                                                          |
|---------------------------------------|---------------------------------------------------------------|
| `POST /api/ask`                       | a question (+ filters, history, k) -> the answer, its citations |
| `POST /api/search`                    | JSON `{text}` / `{image_base64}`, or a multipart `image` -> hits |
| `GET  /api/streams`                   | every stream: source, length, frames, gaps, errors, latest frame |
| `GET  /api/frames/{id}/thumbnail.jpg` | a frame's stored JPEG thumbnail                               |
| `GET  /api/streams/{id}/media`        | the stream's local source file (HTTP Range), 307 to an http(s) file, or 404 |
| `GET/POST /api/watch`                 | the standing queries; create one (201, its webhook secrets shown this once) |
| `PATCH/DELETE /api/watch/{id}`        | pause or resume (`{"paused": bool}`); remove (204)            |
| `GET  /api/alerts`                    | each alert's latest state, newest first (`?stream=&query=&limit=`) |
| `GET  /api/alerts/stream`             | server-sent events: each alert row as the monitor commits it  |
| `GET  /api/alerts/{id}`               | one alert; `/thumbnail` its JPEG, `/clip` its MP4 (HTTP Range) |
| `GET  /`                              | the web page; `/docs`: the OpenAPI docs                       |

With a token, every /api route wants `Authorization: Bearer TOKEN` or `?token=TOKEN` (for
<img> and <video> URLs, and for EventSource, which cannot send headers); the page and the docs
hold no index data and stay open.

The alert feed, `GET /api/alerts/stream` (text/event-stream), sends one event per alert row:

    id: 12                      <- every row of monitor commits up to 12 has been sent
    event: alert.opened         <- or alert.closed
    data: {...}                 <- the alert as GET /api/alerts/{id} shows it

and `: keepalive` after 15 s without one. It starts after the monitor commit given by the
`Last-Event-ID` header (what EventSource sends when it reconnects) or `?after=GENERATION` (the
`generation` of GET /api/alerts, so a page misses nothing between the two), else at the latest.

The engine is not thread-safe (torch models, the FAISS index, its view of the index swapped by
`refresh`): `EngineGate` runs its calls in worker threads, questions one at a time, so the
server keeps answering while a question is worked on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import io
import logging
import math
import mimetypes
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

import anyio.to_thread
import numpy as np
import pyarrow.parquet as pq
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from indexer.monitor.alerts import SCHEMA, Alert, AlertLog
from indexer.monitor.queries import MONITOR_DIR, QueryStore, StandingQuery
from indexer.server.schemas import (
    AlertModel,
    AlertsResponse,
    AnswerModel,
    AskRequest,
    CreatedWatchModel,
    ErrorModel,
    Filters,
    HitModel,
    SearchFields,
    SearchRequest,
    SearchResponse,
    StreamModel,
    StreamsResponse,
    WatchListResponse,
    WatchModel,
    WatchPatch,
    WatchRequest,
)

if TYPE_CHECKING:
    from indexer.query.engine import QueryEngine
    from indexer.query.search import SearchFilter
    from indexer.store.manifest import StreamEntry

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_IMAGE_BYTES = 16 * 2**20
THUMBNAIL_CACHE = "private, max-age=3600"  # frame ids never change meaning within an index root
VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".ts": "video/mp2t", ".avi": "video/x-msvideo"}  # not left to the OS
CLIPS_DIR = "clips"          # alert clips: <root>/monitor/clips/, the only files /api/alerts/{id}/clip serves
KEEPALIVE_S = 15.0           # a comment line this often keeps proxies from closing a quiet alert feed
MIN_FEED_POLL_S = 0.25       # the alert feed reads state.json at most this often (refresh_interval_s may be 0)
T = TypeVar("T")


class EngineGate:
    """Runs engine calls in worker threads without two of them racing.

    - Questions and searches (`model`) run one at a time, after a `refresh` so that commits of a
      live ingest appear (at most one refresh per `refresh_interval_s`).
    - Reads of the index view (`view`: streams, thumbnails) do not wait for a question: they only
      wait for a refresh that is swapping the view.
    """

    def __init__(self, engine: QueryEngine, refresh_interval_s: float = 1.0):
        self.engine = engine
        self.refresh_interval_s = refresh_interval_s
        self._model_lock = threading.Lock()   # ask / search / refresh
        self._view_lock = threading.Lock()    # reading the view / swapping it
        self._last_refresh = -math.inf
        self._model_slots: anyio.CapacityLimiter | None = None

    async def model(self, call: Callable[[], T]) -> T:
        if self._model_slots is None:  # made in the event loop; one thread: queued questions wait without one
            self._model_slots = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(partial(self._run_model, call), limiter=self._model_slots)

    async def view(self, call: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(partial(self._run_view, call))

    def _run_model(self, call: Callable[[], T]) -> T:
        with self._model_lock:
            self._refresh()
            return call()

    def _run_view(self, call: Callable[[], T]) -> T:
        if self._model_lock.acquire(blocking=False):  # refresh only when no question holds the engine
            try:
                self._refresh()
            finally:
                self._model_lock.release()
        with self._view_lock:
            return call()

    def _refresh(self) -> None:
        """With the model lock held."""
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_interval_s:
            return
        self._last_refresh = now
        try:
            with self._view_lock:
                self.engine.refresh()
        except (OSError, ValueError) as exc:  # a damaged or vanished root: keep serving the last good view
            logger.warning("cannot read the index's latest commit, serving the previous one: %s", exc)


def create_app(engine: QueryEngine, token: str | None = None, media_roots: Sequence[str | Path] | None = None,
               refresh_interval_s: float = 1.0) -> FastAPI:
    """The API and web page over `engine`.

    token: when set, every /api route wants it (`Authorization: Bearer TOKEN` or `?token=TOKEN`).
    media_roots: when set, /api/streams/{id}/media serves a stream's source file only if it lies
        in one of these folders (default: any local file a stream's manifest entry names).
    refresh_interval_s: how often questions pick up new index commits, and alert feeds look for
        new monitor commits (at most every 0.25 s).
    The monitor routes read and change `<engine.root>/monitor/` (what `vidx monitor` runs on).
    """
    if token is not None and not token:
        raise ValueError("token is empty: pass None for no token")
    gate = EngineGate(engine, refresh_interval_s)
    roots = None if media_roots is None else [Path(r).expanduser().resolve() for r in media_roots]
    closing = threading.Event()  # set when the server stops: alert feeds end instead of holding it open

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        restore = _note_exit_signals(closing)
        try:
            yield
        finally:
            closing.set()
            restore()

    app = FastAPI(title="llamavid-indexer", version="1", lifespan=lifespan,
                  description="Ask questions across hours of indexed video; answers cite their moments; "
                              "standing queries raise alerts on live streams.")
    app.state.gate = gate
    _add_error_handlers(app)

    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorModel, "description": "a bad request (the detail says why)"},
        401: {"model": ErrorModel, "description": "missing or wrong token"},
        404: {"model": ErrorModel, "description": "unknown stream, frame, standing query or alert"},
        422: {"model": ErrorModel, "description": "a malformed request body"},
    }
    api = APIRouter(prefix="/api", dependencies=[Depends(_token_check(token))] if token else [],
                    responses=errors)

    @api.post("/ask", response_model=AnswerModel, summary="Ask a question; the answer cites its moments")
    async def ask(body: AskRequest) -> dict[str, Any]:
        from indexer.query.prompt import Turn

        history = [Turn(t.question, t.answer) for t in body.history]

        def run():
            return engine.ask(body.question, _where(engine, body), history, body.k)

        answer = await gate.model(run)
        return _finite(answer.to_dict())

    @api.post("/search", response_model=SearchResponse, summary="Frames most like a text or an image",
              openapi_extra=_search_body_doc())
    async def search(request: Request) -> SearchResponse:
        filters, text, image, k = await _read_search(request)

        def run():
            return engine.search(text=text, image=image, k=k, where=_where(engine, filters))

        hits = await gate.model(run)
        return SearchResponse(hits=[HitModel(frame_id=int(h.frame_id), stream_id=h.stream_id,
                                             pts_s=float(h.pts_s), score=float(h.score)) for h in hits])

    @api.get("/streams", response_model=StreamsResponse, summary="The indexed streams and their latest frames")
    async def streams() -> StreamsResponse:
        return StreamsResponse(streams=await gate.view(lambda: _streams(engine)))

    @api.get("/frames/{frame_id}/thumbnail.jpg", response_class=Response, summary="A frame's JPEG thumbnail",
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(frame_id: int) -> Response:
        data = await gate.view(lambda: engine.thumbnail(frame_id))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": THUMBNAIL_CACHE})

    async def media(stream_id: str) -> Response:
        entries = await gate.view(lambda: {s.stream_id: s for s in engine.streams()})
        if stream_id not in entries:
            raise KeyError(f"unknown stream {stream_id!r}; streams: {sorted(entries)}")
        target = _media_target(entries[stream_id], roots)
        if isinstance(target, str):
            return RedirectResponse(target, status_code=307)
        media_type = VIDEO_TYPES.get(target.suffix.lower()) or mimetypes.guess_type(target.name)[0]
        return FileResponse(target, media_type=media_type or "application/octet-stream")

    media_path = "/streams/{stream_id}/media"
    api.add_api_route(media_path, media, methods=["GET"], response_class=FileResponse,
                      summary="The stream's archived source (HTTP Range requests for seeking)",
                      responses={200: {"content": {"video/*": {}}}, 206: {"description": "a byte range"},
                                 307: {"description": "an http(s) source: its URL"}})
    api.add_api_route(media_path, media, methods=["HEAD"], include_in_schema=False)

    _monitor_routes(api, Path(engine.root), max(refresh_interval_s, MIN_FEED_POLL_S), closing)
    app.include_router(api)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="page")
    return app


# -- monitoring: standing queries, alerts, the alert feed -------------------------------------------
def _monitor_routes(api: APIRouter, root: Path, poll_s: float, closing: threading.Event) -> None:
    """The monitor's files under `root` (queries.json, state.json, alert rows, clips). They are
    read and written in worker threads, never through the engine gate: a question being answered
    does not hold up an alert."""
    store = QueryStore(root)
    clips = (root / MONITOR_DIR / CLIPS_DIR).resolve()

    @api.get("/watch", response_model=WatchListResponse, summary="The standing queries (webhook secrets left out)")
    async def list_queries() -> dict[str, Any]:
        queries = await anyio.to_thread.run_sync(store.load)
        return {"queries": [q.public() for q in queries]}

    @api.post("/watch", status_code=201, response_model=CreatedWatchModel,
              summary="Add a standing query; the reply is the only one that shows its webhook secrets",
              responses={409: {"model": ErrorModel, "description": "a standing query with this id exists"}})
    async def add_query(body: WatchRequest) -> dict[str, Any]:
        query = await anyio.to_thread.run_sync(_add_query, store, body)
        return query.model_dump(mode="json")

    @api.patch("/watch/{query_id}", response_model=WatchModel, summary="Pause or resume a standing query")
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
                         after: int | None = Query(None, ge=0, description="the monitor commit to start after "
                                                                            "(default: the latest)"),
                         last_event_id: str | None = Header(None, description="sent by EventSource when it "
                                                                              "reconnects; wins over ?after")
                         ) -> StreamingResponse:
        start = _resume_point(last_event_id) if last_event_id is not None else after
        if start is None:
            start = (await anyio.to_thread.run_sync(AlertLog, root)).generation
        return StreamingResponse(_alert_events(request, root, start, poll_s, closing), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # nginx: no buffering

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
        path = (root / found.clip).resolve()
        if not path.is_relative_to(clips):  # the row is data on disk: serve nothing outside the clips folder
            raise KeyError(f"alert {alert_id!r}: its clip {found.clip!r} is outside {MONITOR_DIR}/{CLIPS_DIR}/")
        if not path.is_file():
            raise KeyError(f"alert {alert_id!r}: its clip {found.clip} is no longer there")
        return FileResponse(path, media_type=VIDEO_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    clip_path = "/alerts/{alert_id}/clip"
    api.add_api_route(clip_path, alert_clip, methods=["GET"], response_class=FileResponse,
                      summary="An alert's clip (HTTP Range requests for seeking)",
                      responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "a byte range"}})
    api.add_api_route(clip_path, alert_clip, methods=["HEAD"], include_in_schema=False)


def _add_query(store: QueryStore, body: WatchRequest) -> StandingQuery:
    """Validate and store a new standing query; 409 when its id is taken."""
    fields = body.model_dump(exclude_none=True)  # left out: the standing query's defaults (and a random secret)
    while True:
        query_id = fields.pop("id", None) or store.new_id()
        try:
            query = StandingQuery.model_validate({"id": query_id, **fields})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from exc
        try:
            return store.add(query)
        except ValueError as exc:
            if not any(q.id == query.id for q in store.load()):
                raise  # not a clash: e.g. an unreadable queries.json
            if body.id is not None:
                raise HTTPException(409, str(exc)) from exc
            # a generated id another request took meanwhile: take the next one


def _resume_point(last_event_id: str) -> int:
    try:
        generation = int(last_event_id)
    except ValueError:
        generation = -1
    if generation < 0:
        raise ValueError(f"Last-Event-ID {last_event_id!r} is not a monitor generation (an integer >= 0, the id of an "
                         "event this feed sent)")
    return generation


def _alert_model(alert: Alert, request: Request) -> AlertModel:
    """JSON of an alert: the thumbnail and clip as URLs (under the app's root path), not bytes and file paths."""
    base = f"{request.scope.get('root_path', '')}/api/alerts/{quote(alert.alert_id, safe='')}"
    data = {k: v for k, v in asdict(alert).items() if k not in ("thumbnail", "clip")}
    return AlertModel.model_validate(_finite(data) | {
        "thumbnail_url": f"{base}/thumbnail" if alert.thumbnail is not None else None,
        "clip_url": f"{base}/clip" if alert.clip is not None else None})


def _commits_after(root: Path, after: int) -> tuple[int, list[tuple[int, list[Alert]]]]:
    """The monitor's generation and the alert rows of each later commit, oldest first."""
    log = AlertLog(root)  # reads state.json only
    if log.generation <= after:
        return log.generation, []
    monitor_dir = root / MONITOR_DIR
    commits = [(gen, [Alert(**row) for row in pq.read_table(monitor_dir / name, schema=SCHEMA).to_pylist()])
               for gen, name in log.state.alert_files if gen > after]
    return log.generation, commits


async def _alert_events(request: Request, root: Path, after: int, poll_s: float,
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


# -- requests ---------------------------------------------------------------------------------------
def _token_check(token: str) -> Callable[[Request], None]:
    expected = token.encode()

    def check(request: Request) -> None:
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else request.query_params.get("token")
        if given is None or not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def _where(engine: QueryEngine, filters: Filters) -> SearchFilter | None:
    """The engine's filter; unknown streams are a 404 that lists the known ones."""
    from indexer.query.search import SearchFilter

    if filters.streams is None and filters.from_s is None and filters.to_s is None:
        return None
    if filters.streams is not None:
        known = {s.stream_id for s in engine.streams()}
        unknown = [s for s in filters.streams if s not in known]
        if unknown:
            raise KeyError(f"unknown stream{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                           f"streams: {sorted(known)}")
    return SearchFilter(streams=tuple(filters.streams) if filters.streams is not None else None,
                        start_s=filters.from_s, end_s=filters.to_s)


async def _read_search(request: Request) -> tuple[Filters, str | None, np.ndarray | None, int | None]:
    """JSON (`SearchRequest`) or multipart/form-data (an `image` file and the same fields)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data = None
    try:
        if content_type == "multipart/form-data":
            form = await request.form()
            fields = {name: form[name] for name in ("text", "from_s", "to_s", "k") if form.get(name) not in (None, "")}
            if form.get("streams"):
                fields["streams"] = [s.strip() for s in str(form["streams"]).split(",") if s.strip()]
            body = SearchFields.model_validate(fields)
            upload = form.get("image")
            if upload is not None and not isinstance(upload, str):
                data = await upload.read(MAX_IMAGE_BYTES + 1)
            if (body.text is None) == (data is None):
                raise HTTPException(422, "give exactly one of text and an image file (form field 'image')")
        elif content_type in ("application/json", ""):
            body = SearchRequest.model_validate_json(await request.body())
            if body.image_base64 is not None:
                data = _b64decode(body.image_base64)
        else:
            raise HTTPException(415, f"unsupported content type {content_type!r}: send application/json or "
                                     "multipart/form-data")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    if data is not None and len(data) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"the image is over {MAX_IMAGE_BYTES // 2**20} MiB")
    image = decode_image(data) if data is not None else None
    filters = Filters(streams=body.streams, from_s=body.from_s, to_s=body.to_s)
    return filters, body.text, image, body.k


def _b64decode(text: str) -> bytes:
    if text.startswith("data:"):  # data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image_base64 is not valid base64: {exc}") from exc


def decode_image(data: bytes) -> np.ndarray:
    """An uploaded image -> uint8 RGB [H, W, 3]; ValueError when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"the image cannot be decoded ({exc}); send a PNG, JPEG, WebP, GIF or BMP file") from exc
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"the image is empty (shape {rgb.shape})")
    return rgb  # (H, W, 3)


def _search_body_doc() -> dict[str, Any]:
    """The request body /docs shows for /api/search (read by hand: JSON or multipart)."""
    form = {"type": "object", "properties": {
        "image": {"type": "string", "format": "binary", "description": "the image file"},
        "text": {"type": "string"},
        "streams": {"type": "string", "description": "stream ids, comma-separated"},
        "from_s": {"type": "number"}, "to_s": {"type": "number"}, "k": {"type": "integer"}}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        "multipart/form-data": {"schema": form}}}}


# -- responses --------------------------------------------------------------------------------------
def _streams(engine: QueryEngine) -> list[StreamModel]:
    out = []
    for entry in engine.streams():
        latest_id, latest_pts = engine.latest_frame(entry.stream_id) or (None, None)
        out.append(StreamModel(
            stream_id=entry.stream_id, uri=entry.uri, protocol=entry.protocol, live=entry.live, fps=entry.fps,
            duration_s=entry.duration_s, watermark_s=entry.watermark_s, frames=entry.frames, gaps=entry.gaps,
            complete=entry.complete, error=entry.error, latest_frame_id=latest_id, latest_pts_s=latest_pts,
            media=_playable(entry)))
    return out


def _playable(entry: StreamEntry) -> bool:
    return not entry.live and (entry.protocol == "file" or _redirectable(entry))


def _redirectable(entry: StreamEntry) -> bool:
    """An http(s) file (not HLS, not live) whose URL carries no credentials."""
    parts = urlsplit(entry.uri)
    return entry.protocol == "http" and parts.scheme in ("http", "https") and not parts.username and not parts.password


def _media_target(entry: StreamEntry, roots: list[Path] | None) -> Path | str:
    """The one file (or URL) a stream's manifest entry names; KeyError (404) for anything else."""
    name = entry.stream_id
    if entry.live:
        raise KeyError(f"stream {name!r} is a live {entry.protocol} source: there is no archived file to play; "
                       "its latest frames are in /api/streams")
    if entry.protocol == "http" and _redirectable(entry):
        return entry.uri
    if entry.protocol != "file":
        raise KeyError(f"stream {name!r} is a {entry.protocol} source: only local files (and plain http(s) files, "
                       "by redirect) can be played")
    path = Path(entry.uri)
    if roots is not None and not any(path.resolve().is_relative_to(root) for root in roots):
        raise KeyError(f"stream {name!r}: its source is outside the media roots this server may serve")
    if not path.is_file():
        raise KeyError(f"stream {name!r}: its source file {path} is no longer there")
    return path


def _finite(value: Any) -> Any:
    """NaN/inf (e.g. an unknown time to first token) -> None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _add_error_handlers(app: FastAPI) -> None:
    """The engine's ValueError -> 400, KeyError -> 404, an unreachable LLM -> 503, a malformed body
    -> 422; each as {"detail": message}."""

    def reply(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            msg = str(error.get("msg")).removeprefix("Value error, ")  # pydantic's prefix to a validator's words
            parts.append(f"{where}: {msg}" if where else msg)
        return reply(422, "; ".join(parts) or "malformed request")

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return reply(400, str(exc))

    @app.exception_handler(KeyError)
    async def not_found(request: Request, exc: KeyError) -> JSONResponse:
        return reply(404, str(exc.args[0]) if exc.args else "not found")  # str(KeyError) adds quotes

    from indexer.llm.base import LLMBackendError

    @app.exception_handler(LLMBackendError)
    async def llm_down(request: Request, exc: LLMBackendError) -> JSONResponse:
        logger.error("LLM backend: %s", exc)
        return reply(503, f"the language model is not available: {exc}")


__all__ = ["MAX_IMAGE_BYTES", "EngineGate", "create_app", "decode_image"]
