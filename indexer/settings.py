"""Validated settings read from the YAML files in configs/."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from indexer.media.source import ReaderOptions


class ModelSettings(BaseModel):
    """Which LLaMA-VID to load and where: the arguments of `LlamaVid.from_pretrained`."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str
    vision_tower: str | None = None
    image_processor: str | None = None
    qformer: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


class EmbeddingSettings(BaseModel):
    """The retrieval embedding: a CLIP-family image-text model (hub id or local folder)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "openai/clip-vit-large-patch14"


class EncoderSettings(BaseModel):
    """The encoder pool: Ray actors that batch frames across streams."""

    model_config = ConfigDict(extra="forbid")

    actors: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per encoder actor (fractions share a GPU)")
    num_cpus: float = Field(1.0, gt=0)
    max_batch_frames: int = Field(32, ge=1)
    max_wait_s: float = Field(0.05, ge=0, description="how long a partial batch waits for more frames")


class IndexSettings(BaseModel):
    """What the index root stores and how often it commits."""

    model_config = ConfigDict(extra="forbid")

    feature_format: Literal["float16", "int4", "none"] = "float16"
    commit_interval_s: float = Field(5.0, gt=0)
    thumbnail_width: int = Field(160, ge=16)
    max_vector_shards: int = Field(32, ge=1, description="FAISS shards folded into one beyond this")


class IngestSettings(BaseModel):
    """Per-reader flow control."""

    model_config = ConfigDict(extra="forbid")

    batch_frames: int = Field(8, ge=1, description="frames per batch from an archived source (live: 1)")
    max_inflight_batches: int = Field(4, ge=1, description="batches a reader may have in the encoders and writer")
    max_uncommitted_frames: int = Field(512, ge=1, description="a reader waits when this many are not yet committed")
    reader_num_cpus: float = Field(0.5, gt=0)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSettings
    embedding: EmbeddingSettings = EmbeddingSettings()
    reader: ReaderOptions = ReaderOptions()
    encoder: EncoderSettings = EncoderSettings()
    index: IndexSettings = IndexSettings()
    ingest: IngestSettings = IngestSettings()


def load_settings(path: str | Path) -> Settings:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read settings {path}: {exc}") from exc
    try:
        return Settings.model_validate(raw)
    except Exception as exc:
        raise ValueError(f"{path}: {exc}") from exc


__all__ = ["EmbeddingSettings", "EncoderSettings", "IndexSettings", "IngestSettings", "ModelSettings", "Settings",
           "load_settings"]
