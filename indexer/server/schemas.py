"""The HTTP API's request and response bodies (what /docs shows), the bounds every request is held
to (`MAX_*`: a request over one is refused with a 413 or 422 naming it, before any model runs),
and what every response body and file is made of: JSON-safe numbers (`finite`), video media
types (`VIDEO_TYPES`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from indexer.monitor.kinds import DEFAULT_KIND, KINDS, KindName
from indexer.monitor.queries import QUERY_ID, WEBHOOK_URL

# -- bounds: each keeps a request's memory and its time holding the model small ------------------------
MAX_QUESTION_CHARS = 2000        # a question, and each question of a history
MAX_ANSWER_CHARS = 16_000        # an earlier answer sent back in a history (query.max_new_tokens = 4096 fits)
MAX_HISTORY_TURNS = 20
MAX_TEXT_CHARS = 1000            # a search text (CLIP reads 77 tokens of it)
MAX_STREAM_IDS = 1000            # stream ids in a filter or a standing query
MAX_STREAM_ID_CHARS = 100        # as check_stream_id allows
MAX_CONDITION_CHARS = 1000
MAX_WEBHOOKS = 16
MAX_URL_CHARS = 2048
MAX_SECRET_CHARS = 256
MAX_JSON_BODY_BYTES = 4 * 2**20  # any request body but a search's: the longest history, JSON-escaped, fits
MAX_IMAGE_BYTES = 16 * 2**20     # an uploaded image file
MAX_SEARCH_BODY_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 2**20  # the image as base64 (or multipart), and the fields
MAX_IMAGE_PIXELS = 4096 * 4096   # width x height, read from the image's header before it is decoded

# JSON-schema pattern: a character that is not white space as str.strip() sees it (spelled out:
# regex engines differ on what \s matches, and the server strips what it is sent)
NOT_BLANK = "[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
def _integral(value: Any) -> Any:
    """1.0 -> 1: JSON schema's integer takes a number with no fraction (strict mode would not)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Count = Annotated[int, Field(ge=1), BeforeValidator(_integral)]  # in this order: the schema says minimum
StreamIds = Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STREAM_ID_CHARS)]],
                      Field(min_length=1, max_length=MAX_STREAM_IDS)]

VIDEO_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
               ".mkv": "video/x-matroska", ".ts": "video/mp2t", ".avi": "video/x-msvideo"}  # not left to the OS


def finite(value: Any) -> Any:
    """NaN/inf (e.g. an unknown time to first token) -> None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class Filters(BaseModel):
    """Which frames a request may see: some streams, a media-time range (seconds), or all.

    A from_s after to_s is a 400 (the server checks it: JSON schema cannot say it); 422 is kept
    for what the schema says. Strict: `"k": "5"` or `"paused": 0` is refused, as the schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)

    streams: StreamIds | None = Field(None, description="stream ids (default: every stream)")
    from_s: float | None = Field(None, ge=0, description="media time to start at, seconds")
    to_s: float | None = Field(None, ge=0, description="media time to end at, seconds (not before from_s)")


class TurnModel(BaseModel):
    model_config = ConfigDict(strict=True)

    question: str = Field(max_length=MAX_QUESTION_CHARS)
    answer: str = Field(max_length=MAX_ANSWER_CHARS)


class AskRequest(Filters):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, pattern=NOT_BLANK,
                          description="the question, in words")
    history: list[TurnModel] = Field(default_factory=list, max_length=MAX_HISTORY_TURNS,
                                     description="earlier turns of this conversation (the `history` of the "
                                                 "previous answer)")
    k: Count | None = Field(None, description="frames to retrieve (default: query.k; at most query.max_k)")


class SearchFields(Filters):
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, pattern=NOT_BLANK,
                             description="what the frames should show, in words")
    k: Count | None = Field(None, description="hits to return (default: query.k; at most query.max_k)")


class SearchRequest(SearchFields):
    """Exactly one of `text` and `image_base64`. A file upload goes as multipart/form-data instead:
    field `image` (the file) and the filters as form values (`streams` comma-separated)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [  # what _one_query enforces, for schema readers
        {"required": ["text"], "properties": {"text": {"type": "string"}, "image_base64": {"type": "null"}}},
        {"required": ["image_base64"], "properties": {"image_base64": {"type": "string"}, "text": {"type": "null"}}},
    ]})

    image_base64: str | None = Field(None, min_length=1, max_length=MAX_SEARCH_BODY_BYTES,
                                     description=f"an image (PNG, JPEG, WebP, GIF or BMP; at most "
                                                 f"{MAX_IMAGE_BYTES // 2**20} MiB and {MAX_IMAGE_PIXELS:,} pixels) "
                                                 "as base64 or a data: URL")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of text and image_base64 (or upload an image as multipart)")
        return self


class CitationModel(BaseModel):
    stream_id: str
    start_s: float
    end_s: float
    frame_ids: list[int] = Field(description="the span's frames the model saw")
    best_frame_id: int = Field(description="its best-matching frame: the thumbnail to show")
    score: float


class DegradedSpanModel(BaseModel):
    stream_id: str
    start_s: float
    end_s: float
    frames: int
    reason: str = Field(description="why these frames had no patch features (none kept, and no source or "
                                    "recording to recompute them from)")


class AnswerModel(BaseModel):
    question: str
    text: str
    citations: list[CitationModel]
    mode: Literal["whole", "spans"] = Field(description="whole: every frame in scope was sent; spans: the "
                                                        "retrieved spans only")
    frames: int = Field(description="frames sent to the LLM")
    tokens_per_frame: int
    prompt_tokens: int
    timings: dict[str, float | None] = Field(description="seconds per stage (null: the LLM backend does not say)")
    history: list[TurnModel] = Field(description="this conversation, this turn included: send it back as the "
                                                 "next question's `history`")
    degraded: list[DegradedSpanModel] = Field(description="frames sent with their content tokens only (no context "
                                                          "token), and why; empty when every frame had its features")
    recomputed_frames: int = Field(description="frames whose patch features were decoded from the source and "
                                               "encoded again for this answer (the index keeps none for them)")


class HitModel(BaseModel):
    frame_id: int
    stream_id: str
    pts_s: float
    score: float


class SearchResponse(BaseModel):
    hits: list[HitModel]


class StreamModel(BaseModel):
    stream_id: str
    uri: str
    protocol: str
    live: bool
    fps: float = Field(description="samples per second")
    duration_s: float | None = Field(description="the source's length (None while live or unknown)")
    watermark_s: float | None = Field(description="media time of the last committed frame")
    frames: int
    gaps: int
    complete: bool
    error: str | None
    latest_frame_id: int | None = Field(description="the newest committed frame (a live stream's latest picture)")
    latest_pts_s: float | None
    media: bool = Field(description="GET /api/streams/{stream_id}/media plays the source (an archived local "
                                    "file under the server's --media-root, or a redirect to an http(s) file)")


class StreamsResponse(BaseModel):
    streams: list[StreamModel]


class ErrorModel(BaseModel):
    detail: str


# -- monitoring -------------------------------------------------------------------------------------
QueryKind = KindName   # a registered rule kind's name (indexer/monitor/kinds.py)


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(max_length=MAX_URL_CHARS, json_schema_extra={"pattern": WEBHOOK_URL.pattern},  # Webhook checks it
                     description="where alerts are POSTed (http:// or https://; a loopback or private address only "
                                 "where the server allows it: monitor.webhooks.allow_private)")
    secret: str | None = Field(None, min_length=8, max_length=MAX_SECRET_CHARS,
                               description="the HMAC-SHA256 key of the X-Vidx-Signature header (default: a random one, "
                                           "in the reply)")


def _condition_by_kind(schema: dict[str, Any]) -> None:
    """What StandingQuery enforces, by the kinds registered when the schema is made: a kind that
    takes condition text (the default kind among them) needs it, the others take none."""
    texts = [name for name, kind in KINDS.items() if kind.takes_condition]
    rules = [name for name, kind in KINDS.items() if not kind.takes_condition]
    schema["anyOf"] = [
        {"required": ["condition"], "properties": {"kind": {"enum": texts},
                                                   "condition": {"type": "string", "pattern": NOT_BLANK}}},
        {"required": ["kind"], "properties": {"kind": {"enum": rules},
                                              "condition": {"anyOf": [{"type": "null"}, {"maxLength": 0}]}}},
    ]


class WatchRequest(BaseModel):
    """A new standing query. Left out (null): the standing query's default. A condition query
    (the default kind) needs its condition text; a rule takes none."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_condition_by_kind)

    id: str | None = Field(None, json_schema_extra={"pattern": QUERY_ID.pattern},  # StandingQuery checks it
                           description="letters, digits, '.', '_', '-' (default: q1, q2, ...)")
    kind: QueryKind = Field(DEFAULT_KIND, description="condition: a question in words, checked by the models; "
                                                     "black, frozen, signal_lost: rules that need no model")
    condition: str | None = Field(None, max_length=MAX_CONDITION_CHARS,
                                  description="what to watch for, in words (kind condition only)")
    streams: StreamIds | None = Field(None, description="stream ids, also ones not indexed yet (default: every "
                                                        "stream)")
    sensitivity: float | None = Field(None, ge=0, le=1, description="0 to 1: higher lets more frames reach the "
                                                                    "verifier")
    cooldown_s: float | None = Field(None, ge=0, description="no new alert this long after the last one ended")
    min_duration_s: float | None = Field(None, ge=0, description="an event shorter than this raises no alert")
    webhooks: list[WebhookRequest] | None = Field(None, max_length=MAX_WEBHOOKS)


class WatchPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    paused: bool


class WebhookModel(BaseModel):
    url: str


class WatchModel(BaseModel):
    """A standing query as the API shows it: webhook secrets left out."""

    id: str
    kind: QueryKind
    condition: str | None
    streams: list[str] = Field(description="empty: every stream")
    sensitivity: float
    cooldown_s: float
    min_duration_s: float
    webhooks: list[WebhookModel]
    paused: bool
    created: float = Field(description="unix time")


class WatchListResponse(BaseModel):
    queries: list[WatchModel]


class WebhookSecretModel(WebhookModel):
    secret: str = Field(description="verify each delivery with it; it is never shown again")


class CreatedWatchModel(WatchModel):
    """The reply to creating a standing query: the one time its webhook secrets are shown."""

    webhooks: list[WebhookSecretModel]


class AlertModel(BaseModel):
    """The latest state of an alert (its opening row, or its closing row once the event ended)."""

    alert_id: str
    query_id: str
    kind: QueryKind
    condition: str = Field(description="the condition text, or the rule's name")
    stream_id: str
    status: Literal["open", "closed"]
    start_s: float = Field(description="media time the event started")
    end_s: float | None = Field(description="media time it ended (null while open)")
    wall_start: float | None = Field(description="unix time it started (live sources)")
    wall_end: float | None
    frame_id: int | None = Field(description="the frame that shows it best")
    score: float | None
    answer: str = Field(description="the verifier's answer, or what the rule measured")
    clip_start_s: float | None
    clip_end_s: float | None
    clip_covered: bool | None = Field(description="the clip spans the whole event and its pre/post roll")
    raised_at: float = Field(description="unix time this state was committed")
    thumbnail_url: str | None = Field(description="its JPEG (null: none, e.g. a lost signal)")
    clip_url: str | None = Field(description="its MP4 clip, seekable (null: no clip yet, or none could be cut)")


class AlertsResponse(BaseModel):
    generation: int = Field(description="the monitor commit these alerts are as of: GET /api/alerts/stream?after= "
                                        "it sends what came later")
    alerts: list[AlertModel]


__all__ = ["MAX_ANSWER_CHARS", "MAX_CONDITION_CHARS", "MAX_HISTORY_TURNS", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS",
           "MAX_JSON_BODY_BYTES", "MAX_QUESTION_CHARS", "MAX_SEARCH_BODY_BYTES", "MAX_SECRET_CHARS", "MAX_STREAM_IDS",
           "MAX_STREAM_ID_CHARS", "MAX_TEXT_CHARS", "MAX_URL_CHARS", "MAX_WEBHOOKS", "NOT_BLANK", "VIDEO_TYPES",
           "AlertModel", "AlertsResponse", "AnswerModel", "AskRequest", "CitationModel", "CreatedWatchModel",
           "DegradedSpanModel", "ErrorModel",
           "Filters", "HitModel", "QueryKind", "SearchFields", "SearchRequest", "SearchResponse", "StreamModel",
           "StreamsResponse", "TurnModel", "WatchListResponse", "WatchModel", "WatchPatch", "WatchRequest",
           "WebhookModel", "WebhookRequest", "WebhookSecretModel", "finite"]
