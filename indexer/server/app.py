"""`create_app`: the HTTP API and the web page over a `QueryEngine`.

    app = create_app(QueryEngine.open("runs/idx"), token=None)    # then uvicorn.run(app)

| route                                 | what                                                          |
|---------------------------------------|---------------------------------------------------------------|
| `POST /api/ask`                       | a question (+ filters, history, k) -> the answer, its citations |
| `POST /api/search`                    | JSON `{text}` / `{image_base64}`, or a multipart `image` -> hits |
| `GET  /api/streams`                   | every stream: source, length, frames, gaps, errors, latest frame |
| `GET  /api/frames/{id}/thumbnail.jpg` | a frame's stored JPEG thumbnail                               |
| `GET  /api/streams/{id}/media`        | the stream's local source file (HTTP Range), 307 to an http(s) file, or 404 |
| `/api/watch...`, `/api/alerts...`     | live monitoring: standing queries, alerts, the alert feed (`monitor_api`) |
| `GET  /`                              | the web page; `/docs`, `/redoc`: the OpenAPI docs (offline)    |

With a token, every /api route wants `Authorization: Bearer TOKEN` or `?token=TOKEN` (for
<img> and <video> URLs, and for EventSource, which cannot send headers); the page and the docs
hold no index data and stay open.

The engine is not thread-safe (torch models, the FAISS index, its view of the index swapped by
`refresh`): `EngineGate` runs its calls in worker threads, questions one at a time, so the
server keeps answering while a question is worked on.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import logging
import math
import mimetypes
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError

from indexer.server.monitor_api import monitor_router
from indexer.server.schemas import (
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

if TYPE_CHECKING:
    from indexer.query.engine import QueryEngine
    from indexer.query.search import SearchFilter
    from indexer.store.manifest import StreamEntry

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
MAX_IMAGE_BYTES = 16 * 2**20
THUMBNAIL_CACHE = "private, max-age=3600"  # frame ids never change meaning within an index root
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
    The monitor routes (`monitor_router`) read and change `<engine.root>/monitor/`.
    """
    if token is not None and not token:
        raise ValueError("token is empty: pass None for no token")
    gate = EngineGate(engine, refresh_interval_s)
    roots = None if media_roots is None else [Path(r).expanduser().resolve() for r in media_roots]

    # /docs (Swagger UI) and /redoc from assets in the fastapi-offline package, not a CDN: they work
    # with no network; no validator badge either (it would ask validator.swagger.io)
    app = FastAPIOffline(title="llamavid-indexer", version="1", swagger_ui_parameters={"validatorUrl": None},
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
        return finite(answer.to_dict())

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

    api.include_router(monitor_router(Path(engine.root), refresh_interval_s))  # with the token check
    app.include_router(api)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="page")
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
