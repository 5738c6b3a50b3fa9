"""Validated settings read from the YAML files in configs/."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict


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


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSettings


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


__all__ = ["ModelSettings", "Settings", "load_settings"]
