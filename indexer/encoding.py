"""`FrameEncoder`: one pass over a batch of sampled frames (from any number of streams) gives
the LLaMA-VID vision features, the content tokens and the retrieval embedding of every frame,
plus a JPEG thumbnail."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from indexer.batches import EncodedBatch, FrameBatch
from indexer.embedding import ImageTextEmbedder
from indexer.fingerprint import weights_fingerprint
from indexer.llamavid import LlamaVid
from indexer.llamavid.modeling_llamavid import part_of
from indexer.settings import Settings
from indexer.store.manifest import Layout


class FrameEncoder:
    def __init__(self, model: LlamaVid, embedder: ImageTextEmbedder, thumbnail_width: int = 160,
                 feature_format: str = "float16"):
        self.model = model
        self.embedder = embedder
        self.thumbnail_width = thumbnail_width
        self.feature_format = feature_format
        self._layout: Layout | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> FrameEncoder:
        """LLaMA-VID's encoder parts only (no LLM: an encoder never runs it) and the retrieval embedder."""
        return cls(LlamaVid.from_settings(settings.model, parts="encoder"), ImageTextEmbedder.from_settings(settings),
                   settings.index.thumbnail_width, settings.index.feature_format)

    def layout(self) -> Layout:
        if self._layout is None:  # the fingerprint reads every weight: once, not per batch
            self._layout = self._make_layout()
        return self._layout

    def _make_layout(self) -> Layout:
        config = self.model.config
        return Layout(model_fingerprint=model_fingerprint(self.model), model_name=str(self.model.model_dir),
                      feature_shape=(config.vision.num_patches + 1, config.vision.width),
                      feature_format=self.feature_format,
                      content_shape=(config.tokens_per_frame - 1, config.hidden_size),
                      embedding_model=self.embedder.name, embedding_fingerprint=self.embedder.fingerprint,
                      embedding_dim=self.embedder.dim)

    def __call__(self, batches: list[FrameBatch]) -> list[EncodedBatch]:
        images = [image for batch in batches for image in batch.images]
        layout = self.layout()
        if images:
            features = self.model.encode_frames(self.model.preprocess(images))  # (T, 1+N, C)
            content = self.model.content_tokens(features)  # (T, P, D)
            features = features.to(torch.float16).cpu().numpy()
            content = content.to(torch.float16).cpu().numpy()
            embedding = self.embedder.embed_images(images)  # (T, E)
        else:
            features = np.zeros((0, *layout.feature_shape), np.float16)
            content = np.zeros((0, *layout.content_shape), np.float16)
            embedding = np.zeros((0, layout.embedding_dim), np.float32)
        out, start = [], 0
        for batch in batches:
            end = start + len(batch)
            thumbnails = [jpeg_thumbnail(image, self.thumbnail_width) for image in batch.images]
            out.append(batch.encoded(features[start:end], content[start:end], embedding[start:end], thumbnails))
            start = end
        return out


def jpeg_thumbnail(image: np.ndarray, width: int, quality: int = 80) -> bytes:
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    buffer = io.BytesIO()
    Image.fromarray(image).resize((width, height), Image.BILINEAR).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def model_fingerprint(model: LlamaVid) -> str:
    """Changes when the model's structure or the weights of its encoder parts change, not when its
    folder moves: the same for every `parts` a model is loaded with, so the query side (with or
    without the LLM) can check it against what the encoders wrote."""
    state = {name: t for name, t in model.model.state_dict().items() if part_of(name) == "encoder"}
    return weights_fingerprint(repr(model.config), state)


__all__ = ["FrameEncoder", "jpeg_thumbnail", "model_fingerprint"]
