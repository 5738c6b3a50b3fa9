"""LLaMA-VID (arXiv 2311.17043): an image is worth two tokens. Loads official checkpoints and
reproduces the official numerics; see `LlamaVid`."""

from indexer.llamavid.configuration_llamavid import LlamaVidConfig, QFormerConfig, VisionTowerConfig
from indexer.llamavid.pipeline import LlamaVid
from indexer.llamavid.tokenization import IMAGE_TOKEN_INDEX

__all__ = ["LlamaVid", "LlamaVidConfig", "VisionTowerConfig", "QFormerConfig", "IMAGE_TOKEN_INDEX"]
