"""`ImageTextEmbedder`: the retrieval embedding, a CLIP-family image-text model (transformers
CLIPModel, or SigLIP: any model with `get_image_features`). Frames are embedded at ingest;
questions (the text side) at query time. Embeddings are L2-normalised: inner product = cosine."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
)
from transformers.models.clip import CLIPImageProcessorPil

from indexer.fingerprint import weights_fingerprint
from indexer.settings import Settings


class ImageTextEmbedder:
    def __init__(self, model_name_or_path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.name = str(model_name_or_path)
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.name)
            self.tokenizer = AutoTokenizer.from_pretrained(self.name)
            self.model = AutoModel.from_pretrained(self.name, dtype=dtype).to(device).eval()
        except OSError as exc:
            raise FileNotFoundError(f"retrieval embedding model {self.name!r}: {exc}") from exc
        if not hasattr(self.model, "get_image_features"):
            raise ValueError(f"retrieval embedding model {self.name!r} ({type(self.model).__name__}) has no image "
                             "tower; use a CLIP or SigLIP checkpoint")
        self.device = torch.device(device)
        self.dim = int(self.model.config.projection_dim if hasattr(self.model.config, "projection_dim")
                       else self.model.config.vision_config.hidden_size)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageTextEmbedder:
        """The embedding a settings file names (`embedding.model`), on LLaMA-VID's device and dtype
        (`model.device`, `model.dtype`): the one way every role (encoder, query side) loads it."""
        return cls(settings.embedding.model, device=settings.model.device, dtype=settings.model.torch_dtype)

    @property
    def fingerprint(self) -> str:
        """Identifies the weights, not the folder: the configuration without its `_name_or_path`."""
        config = {k: v for k, v in self.model.config.to_dict().items() if k != "_name_or_path"}
        return weights_fingerprint(json.dumps(config, sort_keys=True, default=str), self.model.state_dict())

    @torch.inference_mode()
    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 RGB frames (any sizes) -> float32 [T, E], unit length."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        features = out.pooler_output if hasattr(out, "pooler_output") else out  # (T, E)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Questions or captions -> float32 [T, E], unit length, in the same space as the images."""
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError(f"texts must be non-empty strings, got {texts!r}")
        # SigLIP was trained on text padded to its full length; CLIP pools at the end token
        padding = "max_length" if "siglip" in self.model.config.model_type else True
        tokens = self.tokenizer(list(texts), padding=padding, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()
                                              if k in ("input_ids", "attention_mask")})
        features = out.pooler_output if hasattr(out, "pooler_output") else out  # (T, E)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


# openai/clip-vit-large-patch14's image tower (the default retrieval embedding), for benchmarks
CLIP_VIT_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14)


def make_tiny_clip(out_dir: str | os.PathLike, projection_dim: int = 32, image_size: int = 32, seed: int = 0,
                   vision_config: dict | None = None) -> Path:
    """A tiny random CLIP (model, PIL image processor, character-level tokenizer) for tests and demos.
    `vision_config` replaces the image tower's sizes (e.g. `CLIP_VIT_L14_VISION`; its image_size wins)."""
    torch.manual_seed(seed)
    vision = vision_config or dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=image_size, patch_size=8)
    image_size = vision["image_size"]
    config = CLIPConfig(
        text_config=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=vision, projection_dim=projection_dim)
    out = Path(out_dir)
    CLIPModel(config).save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    # every lower-case character a token (CLIP lower-cases); no merges: words split into characters
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + string.punctuation:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=config.text_config.max_position_embeddings)
    tokenizer.save_pretrained(out)
    return out


__all__ = ["CLIP_VIT_L14_VISION", "ImageTextEmbedder", "make_tiny_clip"]
