"""The HTTP API's request and response bodies (what /docs shows)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Filters(BaseModel):
    """Which frames a request may see: some streams, a media-time range (seconds), or all."""

    model_config = ConfigDict(extra="forbid")

    streams: list[str] | None = Field(None, description="stream ids (default: every stream)")
    from_s: float | None = Field(None, ge=0, description="media time to start at, seconds")
    to_s: float | None = Field(None, ge=0, description="media time to end at, seconds")

    @model_validator(mode="after")
    def _ordered(self) -> Filters:
        if self.from_s is not None and self.to_s is not None and self.from_s > self.to_s:
            raise ValueError(f"from_s ({self.from_s}) is after to_s ({self.to_s})")
        if self.streams is not None and not self.streams:
            raise ValueError("streams is empty: leave it out for every stream")
        return self


class TurnModel(BaseModel):
    question: str
    answer: str


class AskRequest(Filters):
    question: str = Field(description="the question, in words")
    history: list[TurnModel] = Field(default_factory=list,
                                     description="earlier turns of this conversation (the `history` of the "
                                                 "previous answer)")
    k: int | None = Field(None, ge=1, description="frames to retrieve (default: query.k; at most query.max_k)")


class SearchFields(Filters):
    text: str | None = Field(None, description="what the frames should show, in words")
    k: int | None = Field(None, ge=1, description="hits to return (default: query.k; at most query.max_k)")


class SearchRequest(SearchFields):
    """Exactly one of `text` and `image_base64`. A file upload goes as multipart/form-data instead:
    field `image` (the file) and the other fields as form values (`streams` comma-separated)."""

    image_base64: str | None = Field(None, description="an image (PNG, JPEG, ...) as base64 or a data: URL")

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
                                    "file, or a redirect to an http(s) file)")


class StreamsResponse(BaseModel):
    streams: list[StreamModel]


class ErrorModel(BaseModel):
    detail: str


__all__ = ["AnswerModel", "AskRequest", "CitationModel", "ErrorModel", "Filters", "HitModel", "SearchFields",
           "SearchRequest", "SearchResponse", "StreamModel", "StreamsResponse", "TurnModel"]
