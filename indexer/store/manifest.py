"""`manifest.json`: the one file that says what the index root holds. Everything a reader may
see is listed here; a commit is the atomic replacement of this file."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class Layout(BaseModel):
    """What the stored arrays are: fixed when an index is created, checked on every ingest."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_fingerprint: str
    model_name: str
    feature_shape: tuple[int, int]        # (1+N, C) per frame
    feature_format: str                   # float16 | int4 | none
    content_shape: tuple[int, int]        # (P, D) per frame
    embedding_model: str
    embedding_dim: int


class Segment(BaseModel):
    """One commit's rows of one stream: contiguous frame ids."""

    model_config = ConfigDict(extra="forbid")

    generation: int
    first_frame_id: int
    frames: int
    gaps: int
    timeline: str                          # path relative to the root
    features: list[str] = Field(default_factory=list)
    bytes: dict[str, int] = Field(default_factory=dict)


class StreamEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream_id: str
    uri: str
    protocol: str
    live: bool
    fps: float
    next_index: int = 0                    # resume watermark: first sample index not committed
    watermark_s: float | None = None       # media time of the last committed frame
    duration_s: float | None = None
    frames: int = 0
    gaps: int = 0
    last_gap: tuple[int, float] | None = None   # (sample index, start) of the last committed gap
    complete: bool = False
    error: str | None = None
    segments: list[Segment] = Field(default_factory=list)


class VectorShard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generation: int
    file: str
    vectors: int
    bytes: int


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    generation: int = 0
    next_frame_id: int = 0
    layout: Layout | None = None
    streams: dict[str, StreamEntry] = Field(default_factory=dict)
    vectors: list[VectorShard] = Field(default_factory=list)

    def files(self) -> set[str]:
        """Every data file the manifest refers to (relative paths)."""
        names = {shard.file for shard in self.vectors}
        for stream in self.streams.values():
            for segment in stream.segments:
                names.add(segment.timeline)
                names.update(segment.features)
        return names


def read_manifest(root: Path) -> Manifest | None:
    """The last committed manifest, or None for a new (empty) root."""
    path = root / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ValueError(f"{path}: not a readable llamavid-indexer manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest.format_version}, this version reads {FORMAT_VERSION}")
    return manifest


__all__ = ["FORMAT_VERSION", "MANIFEST", "Layout", "Manifest", "Segment", "StreamEntry", "VectorShard",
           "read_manifest"]
