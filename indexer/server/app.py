"""`create_app`: the HTTP API and the web page over a `QueryEngine`.

    app = create_app(QueryEngine.open(IndexRoot.at("runs/idx")), token=None)    # then uvicorn.run(app)

| route                                 | what                                                          |
|---------------------------------------|---------------------------------------------------------------|
| `POST /api/ask`                       | a question (+ filters, history, k) -> the answer, its citations |
| `POST /api/search`                    | JSON `{text}` / `{image_base64}`, or a multipart `image` -> hits |
| `GET  /api/streams`                   | every stream: source, length, frames, gaps, errors, latest frame |
| `GET  /api/frames/{id}/thumbnail.jpg` | a frame's stored JPEG thumbnail                               |
| `GET  /api/streams/{id}/media`        | its local source file under --media-root (Range), 307 to an http(s) file |
| `GET  /api/streams/{id}/media?start_s=` | a live stream: an MP4 of its recording from `start_s` (`LIVE_MEDIA_S`) |
| `/api/watch...`, `/api/alerts...`     | live monitoring: standing queries, alerts, the alert feed (`monitor_api`) |
| `GET  /`                              | the web page; `/docs`, `/redoc`: the OpenAPI docs (offline)    |

With a token, every /api route wants `Authorization: Bearer TOKEN` or `?token=TOKEN` (for
<img> and <video> URLs, and for EventSource, which cannot send headers); the page and the docs
hold no index data and stay open. Without one, only loopback Host names and the page's own
origin are answered (`guards.LoopbackOnly`).

Every request is bounded before it reaches the engine (`schemas.MAX_*`): its body (413), its
texts and lists (422), an image's pixels (checked from its header, 400); replies and errors show
no credentials (`redact_uri`).

The engine is not thread-safe (torch models, the FAISS index, its view of the index swapped by
`refresh`): `EngineGate` runs its calls in worker threads, questions one at a time, so the
server keeps answering while a question is worked on.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import mimetypes
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.media.clips import cut_clip
from indexer.media.recording import Recording
from indexer.redaction import redact_text, redact_uri
from indexer.server.guards import (
    API_PREFIX,
    BodyLimit,
    LoopbackOnly,
    PageFiles,
    allowed_methods,
)
from indexer.server.images import decode_image
from indexer.server.monitor_api import monitor_router
from indexer.server.schemas import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_JSON_BODY_BYTES,
    MAX_SEARCH_BODY_BYTES,
    MAX_STREAM_ID_CHARS,
    MAX_STREAM_IDS,
    VIDEO_TYPES,
    AnswerModel,
    AskRequest,
    ErrorModel,
    Filters,
    HitModel,
    SearchFields,
    SearchRequest,
    SearchResponse,
    StreamModel,
    StreamsResponse,
    finite,
)

if TYPE_CHECKING:  # not a loop: the app is built around an engine passed in; `import indexer.server` stays light
    from indexer.media.clips import Clip
    from indexer.query.engine import QueryEngine
    from indexer.query.search import SearchFilter
    from indexer.store.manifest import StreamEntry
    from indexer.store.root import IndexRoot

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
FORM_FIELDS = ("image", "streams", "from_s", "to_s", "k")  # a multipart /api/search: an image and its filters
MAX_FORM_STREAMS_CHARS = MAX_STREAM_IDS * (MAX_STREAM_ID_CHARS + 1)
THUMBNAIL_CACHE = "private, max-age=3600"  # frame ids never change meaning within an index root
LIVE_MEDIA_S = 60.0  # a live stream's media: this much of its recording from the time asked for
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
               refresh_interval_s: float = 1.0, allow_private_webhooks: bool = False) -> FastAPI:
    """The API and web page over `engine`.

    token: when set, every /api route wants it (`Authorization: Bearer TOKEN` or `?token=TOKEN`);
        when not, only loopback Host names and the page's own origin are answered.
    media_roots: the folders /api/streams/{id}/media may serve local source files from (`vidx serve
        --media-root`); none (the default): it serves no local file, and answers 403 saying so. Why
        not every file the index names: a manifest names what `vidx ingest` was given, and a
        server should hand out only what its operator chose to publish.
    refresh_interval_s: how often questions pick up new index commits, and alert feeds look for
        new monitor commits (at most every 0.25 s).
    allow_private_webhooks: POST /api/watch may add webhooks to loopback and private addresses.
    The monitor routes (`monitor_router`) read and change the monitor folder of `engine.root`.
    """
    if token is not None and not token:
        raise ValueError("token is empty: pass None for no token")
    gate = EngineGate(engine, refresh_interval_s)
    roots = [Path(r).expanduser().resolve() for r in media_roots or ()]

    # /docs (Swagger UI) and /redoc from assets in the fastapi-offline package, not a CDN: they work
    # with no network; no validator badge either (it would ask validator.swagger.io)
    app = FastAPIOffline(title="llamavid-indexer", version="1", swagger_ui_parameters={"validatorUrl": None},
                         description="Ask questions across hours of indexed video; answers cite their moments; "
                                     "standing queries raise alerts on live streams. Without a token the server "
                                     "answers only loopback Host names and its own page's origin (403 otherwise); "
                                     "it answers no CORS preflight (OPTIONS: 405).")
    app.state.gate = gate
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, default=MAX_JSON_BODY_BYTES, limits={"/api/search": MAX_SEARCH_BODY_BYTES})
    if not token:
        app.add_middleware(LoopbackOnly)  # added last: runs first

    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorModel, "description": "a bad request (the detail says why)"},
        404: {"model": ErrorModel, "description": "unknown stream, frame, standing query or alert"},
        422: {"model": ErrorModel, "description": "a malformed request body, or one over a bound (the detail names "
                                                  "the field and the bound)"},
    }
    errors[401 if token else 403] = ({"model": ErrorModel, "description": "missing or wrong token"} if token else
                                     {"model": ErrorModel, "description": "a Host that is not a loopback name, or a "
                                                                          "request from another page's origin"})
    with_body = {413: {"model": ErrorModel, "description": f"the body is over its bound ({MAX_JSON_BODY_BYTES:,} "
                                                           f"bytes; /api/search {MAX_SEARCH_BODY_BYTES:,})"},
                 415: {"model": ErrorModel, "description": "a body that is not application/json (or, for "
                                                           "/api/search, multipart/form-data)"}}
    api = APIRouter(prefix="/api", dependencies=[Depends(_token_check(token))] if token else [],
                    responses=errors)

    @api.post("/ask", response_model=AnswerModel, summary="Ask a question; the answer cites its moments",
              responses=with_body)
    async def ask(body: AskRequest) -> dict[str, Any]:
        from indexer.query.prompt import Turn

        history = [Turn(t.question, t.answer) for t in body.history]

        def run():
            return engine.ask(body.question, _where(engine, body), history, body.k)

        answer = await gate.model(run)
        return finite(answer.to_dict())

    @api.post("/search", response_model=SearchResponse, summary="Frames most like a text or an image",
              openapi_extra=_search_body_doc(), responses=with_body)
    async def search(request: Request) -> SearchResponse:
        filters, text, image, k = await _read_search(request)

        def run():
            return engine.search(text=text, image=image, k=k, where=_where(engine, filters))

        hits = await gate.model(run)
        return SearchResponse(hits=[HitModel(frame_id=int(h.frame_id), stream_id=h.stream_id,
                                             pts_s=float(h.pts_s), score=float(h.score)) for h in hits])

    @api.get("/streams", response_model=StreamsResponse, summary="The indexed streams and their latest frames")
    async def streams() -> StreamsResponse:
        return StreamsResponse(streams=await gate.view(lambda: _streams(engine, roots)))  # credentials left out

    @api.get("/frames/{frame_id}/thumbnail.jpg", response_class=Response, summary="A frame's JPEG thumbnail",
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(frame_id: int) -> Response:
        data = await gate.view(lambda: engine.thumbnail(frame_id))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": THUMBNAIL_CACHE})

    async def media(stream_id: str, start_s: float | None = Query(None, ge=0, allow_inf_nan=False, description=(
            "a live stream: the media time to play from (its recording from the keyframe at or before it, "
            f"{LIVE_MEDIA_S:.0f} s at most); default: the last {LIVE_MEDIA_S:.0f} s it holds"))) -> Response:
        def read() -> tuple[dict[str, StreamEntry], bool]:
            entries = {s.stream_id: s for s in engine.streams()}
            return entries, stream_id in entries and engine.latest_frame(stream_id) is not None

        entries, has_frames = await gate.view(read)
        if stream_id not in entries:
            raise KeyError(f"unknown stream {stream_id!r}; streams: {sorted(entries)}")
        entry = entries[stream_id]
        if entry.live and has_frames:
            folder, clip = await anyio.to_thread.run_sync(partial(_live_media, engine.root, entry, start_s))
            return FileResponse(clip.path, media_type="video/mp4", headers={"X-Media-Start-S": f"{clip.start_s:.6f}"},
                                background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))
        target = _media_target(entry, roots, has_frames)
        if isinstance(target, str):
            return RedirectResponse(target, status_code=307)
        media_type = VIDEO_TYPES.get(target.suffix.lower()) or mimetypes.guess_type(target.name)[0]
        return FileResponse(target, media_type=media_type or "application/octet-stream")

    media_path = "/streams/{stream_id}/media"
    api.add_api_route(media_path, media, methods=["GET"], response_class=FileResponse,
                      summary="The stream's archived source (HTTP Range requests for seeking), or a live "
                              "stream's recording from a time (an MP4; X-Media-Start-S: its first frame's media time)",
                      responses={200: {"content": {"video/*": {}}}, 206: {"description": "a byte range"},
                                 307: {"description": "an http(s) source: its URL"},
                                 403: {"model": ErrorModel, "description": "a local file outside the server's "
                                                                           "media roots (`--media-root`)"}})
    api.add_api_route(media_path, media, methods=["HEAD"], include_in_schema=False)

    api.include_router(monitor_router(engine.root, refresh_interval_s, allow_private_webhooks,
                                      body_errors=with_body))  # with the token check
    app.include_router(api)
    app.router.routes.append(PageFiles(STATIC_DIR))  # what app.mount("/", ...) does, leaving /api to the API
    settings = getattr(engine, "settings", None)  # a stand-in engine in tests may have none
    if settings is not None:
        app.openapi = _with_max_k(app.openapi, settings.query.max_k)
    return app


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

    if filters.from_s is not None and filters.to_s is not None and filters.from_s > filters.to_s:
        raise ValueError(f"from_s ({filters.from_s}) is after to_s ({filters.to_s})")
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
            form = await request.form(max_files=1, max_fields=len(FORM_FIELDS), max_part_size=MAX_JSON_BODY_BYTES)
            unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
            if unknown:
                raise HTTPException(422, f"unknown form field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                         f"the fields are {', '.join(FORM_FIELDS)}")
            body = SearchFields.model_validate({name: form[name] for name in ("from_s", "to_s", "k") if name in form},
                                               strict=False)  # form values are text: "5" is k 5
            streams = str(form.get("streams", ""))
            if len(streams) > MAX_FORM_STREAMS_CHARS:
                raise HTTPException(422, f"streams: over {MAX_FORM_STREAMS_CHARS:,} characters")
            if streams.strip():  # empty: every stream, as left out; an id no stream has is a 404
                body = body.model_copy(update={"streams": [s.strip() for s in streams.split(",")]})
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "image: send the image as a file (form field 'image'); search by text "
                                         "with a JSON body")
            data = await upload.read(MAX_IMAGE_BYTES + 1)
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
    # decoded in a worker thread, outside the model lock: the event loop and questions go on meanwhile
    image = await anyio.to_thread.run_sync(decode_image, data) if data is not None else None
    filters = Filters(streams=body.streams, from_s=body.from_s, to_s=body.to_s)
    return filters, body.text, image, body.k


def _b64decode(text: str) -> bytes:
    if text.startswith("data:"):  # data:image/png;base64,....
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image_base64 is not valid base64: {exc}") from exc


def _search_body_doc() -> dict[str, Any]:
    """The request body /docs shows for /api/search (read by hand: JSON or multipart)."""
    fields = SearchFields.model_json_schema()["properties"]
    form = {"type": "object", "additionalProperties": False, "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary",
                  "description": f"the image file (at most {MAX_IMAGE_BYTES // 2**20} MiB and {MAX_IMAGE_PIXELS:,} "
                                 "pixels)"},
        **{name: fields[name]["anyOf"][0] for name in ("from_s", "to_s", "k")},  # the JSON fields' bounds
        "streams": {"type": "string", "maxLength": MAX_FORM_STREAMS_CHARS,
                    "description": "stream ids, comma-separated (empty: every stream)"}}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        "multipart/form-data": {"schema": form}}}}


def _with_max_k(openapi: Callable[[], dict[str, Any]], max_k: int) -> Callable[[], dict[str, Any]]:
    """`app.openapi` with the bound of every `k`: query.max_k, a setting of the index, not of the schema."""

    def bound(node: Any) -> None:
        if isinstance(node, dict):
            k = node.get("properties", {}).get("k")
            for variant in (k.get("anyOf", [k]) if isinstance(k, dict) else []):
                if variant.get("type") == "integer":
                    variant["maximum"] = max_k
            for value in node.values():
                bound(value)
        elif isinstance(node, list):
            for value in node:
                bound(value)

    def patched() -> dict[str, Any]:
        schema = openapi()  # FastAPI keeps the one it built: bounding it once is enough
        bound(schema)
        return schema

    return patched


# -- responses --------------------------------------------------------------------------------------
def _streams(engine: QueryEngine, roots: list[Path]) -> list[StreamModel]:
    out = []
    for entry in engine.streams():
        latest_id, latest_pts = engine.latest_frame(entry.stream_id) or (None, None)
        out.append(StreamModel(
            stream_id=entry.stream_id, uri=redact_uri(entry.uri), protocol=entry.protocol, live=entry.live,
            fps=entry.fps, duration_s=entry.duration_s, watermark_s=entry.watermark_s, frames=entry.frames,
            gaps=entry.gaps, complete=entry.complete, error=None if entry.error is None else redact_text(entry.error),
            latest_frame_id=latest_id, latest_pts_s=latest_pts,
            media=latest_id is not None and _playable(engine.root, entry, roots)))
    return out


def _playable(root: IndexRoot, entry: StreamEntry, roots: list[Path]) -> bool:
    if entry.live:
        return bool(Recording(root, entry.stream_id).segments())
    return _under(Path(entry.uri), roots) if entry.protocol == "file" else _redirectable(entry)


def _under(path: Path, roots: list[Path]) -> bool:
    """`path`, links resolved, lies in one of `roots` (already resolved)."""
    path = path.resolve()
    return any(path.is_relative_to(root) for root in roots)


def _redirectable(entry: StreamEntry) -> bool:
    """An http(s) file (not HLS, not live) whose URL carries no credentials (no user, no secret
    query parameter)."""
    return entry.protocol == "http" and urlsplit(entry.uri).scheme in ("http", "https") and \
        redact_uri(entry.uri) == entry.uri


def _media_target(entry: StreamEntry, roots: list[Path], has_frames: bool) -> Path | str:
    """The one file (or URL) a stream's manifest entry names, once frames from it are committed (a
    file that never decoded, say a credentials.txt caught by a glob, is not media) and, for a local
    file, only inside `roots`: HTTPException 403 outside them; KeyError (404) for anything else."""
    name = entry.stream_id
    if not has_frames:
        raise KeyError(f"stream {name!r} has no committed frames: its source is not served"
                       + (f" (it failed: {redact_text(entry.error)})" if entry.error else ""))
    if entry.protocol == "http" and _redirectable(entry):
        return entry.uri
    if entry.protocol != "file":
        raise KeyError(f"stream {name!r} is a {entry.protocol} source: only local files (and plain http(s) files, "
                       "by redirect) can be played")
    path = Path(entry.uri).resolve()  # a link is served as what it points at, and checked as that
    if not roots:
        raise HTTPException(403, f"stream {name!r}: this server plays no local files; start it with --media-root "
                                 "DIR (the folder that holds the sources) to play them")
    if not _under(path, roots):
        raise HTTPException(403, f"stream {name!r}: its source is outside the media roots this server may serve "
                                 "(--media-root)")
    if not path.is_file():
        raise KeyError(f"stream {name!r}: its source file {entry.uri} is no longer there")
    return path


def _live_media(root: IndexRoot, entry: StreamEntry, start_s: float | None) -> tuple[Path, Clip]:
    """A live stream's recording from `start_s` (default: its last LIVE_MEDIA_S), remuxed into an
    MP4 in a temporary folder the caller deletes once it is sent. Only the root's recordings folder
    is read. KeyError (404) when it has no recording; ValueError (400) for a time it does not hold."""
    stream_id = entry.stream_id
    recording = Recording(root, stream_id)
    held = recording.held()
    if not held:
        raise KeyError(f"stream {stream_id!r} is a live {entry.protocol} source with no recording to play "
                       "(index.retention.recording_s 0, or nothing recorded yet)")
    if start_s is None:
        start_s = max(held[0][0], held[-1][1] - LIVE_MEDIA_S)
    end_s = min(start_s + LIVE_MEDIA_S, held[-1][1])
    if not end_s > start_s:
        raise ValueError(f"stream {stream_id!r}: start_s {start_s:.3f} is past its recording, which holds "
                         + ", ".join(f"{a:.3f}..{b:.3f} s" for a, b in held))
    folder = Path(tempfile.mkdtemp(prefix="vidx-live-media-"))
    try:
        return folder, cut_clip(folder / "recording.mp4", start_s, end_s, recording_dir=recording.directory)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _add_error_handlers(app: FastAPI) -> None:
    """The engine's ValueError -> 400, KeyError -> 404, an unreachable LLM -> 503, a malformed body
    -> 422, a body over its bound -> 413 naming it; each as {"detail": message}, with any URL in it
    shown without credentials."""

    def reply(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": redact_text(message)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405 and request.url.path.startswith(API_PREFIX + "/"):  # the page's files say their own
            allow = ", ".join(allowed_methods(app.router.routes, request.scope))
            return JSONResponse({"detail": f"{request.method} is not allowed here; allowed: {allow} (no CORS "
                                           "preflight: the API serves its own page only)"},
                                status_code=405, headers={"Allow": allow})
        return await http_exception_handler(request, exc)

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

    from indexer.store.integrity import IndexDamaged

    @app.exception_handler(IndexDamaged)
    async def damaged(request: Request, exc: IndexDamaged) -> JSONResponse:
        logger.error("%s", exc)
        return JSONResponse({"detail": f"index file {exc.file} is damaged ({exc.reason}); nothing is answered from "
                                       "it until `vidx repair` rolls the index back", "file": exc.file},
                            status_code=503)


__all__ = ["EngineGate", "create_app"]
