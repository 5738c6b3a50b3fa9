"""`LlamaVid`: an official LLaMA-VID checkpoint loaded for inference, from frames to answers.

    m = LlamaVid.from_pretrained(model_dir)      # parts="encoder" / "prompt": less of it (see below)
    pixel_values = m.preprocess(frames)            # uint8 [T,H,W,3] -> float [T,3,S,S]
    features = m.encode_frames(pixel_values)       # [T, 1+N, C], CLS first
    tokens = m.frame_tokens(features, question)    # [T, 1+P, D]: context token, then P content tokens
    context = m.context_tokens(features, question) # [T, 1, D]: the question-dependent part
    content = m.content_tokens(features)           # [T, P, D]: the question-independent part
    ids = m.prompt_ids(question, T, mode="movie")  # LongTensor [L], -200 at placeholders
    embeds = m.inputs_embeds(ids, tokens)          # [L', D]
    logits = m.logits(embeds)                      # [L', vocab]
    new_ids = m.generate(embeds, max_new_tokens=64)
    text = m.answer(question, features)

A role that needs less loads less: `parts="encoder"` builds the vision tower, Q-Former, context
attention and content projector only (frames to frame tokens), `parts="prompt"` adds the LLM's
token embedding table (prompt embeddings for an LLM served elsewhere). Only the tensors those
parts use are read from the release's files; the numbers are those of the full model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import GenerationConfig, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.models.clip import CLIPImageProcessorPil

from indexer.llamavid import checkpoint as ckpt
from indexer.llamavid.configuration_llamavid import LlamaVidConfig
from indexer.llamavid.conversation import (Conversation, first_user_message, get_template, movie_frames_text,
                                           video_frames_text)
from indexer.llamavid.modeling_llamavid import PARTS, LlamaVidModel, Parts
from indexer.llamavid.tokenization import LlamaPromptTokenizer, load_qformer_tokenizer, qformer_inputs
from indexer.settings import ModelSettings

PromptMode = Literal["video", "movie"]


class LlamaVid:
    def __init__(self, model: LlamaVidModel, image_processor: CLIPImageProcessorPil,
                 tokenizer: LlamaPromptTokenizer, qformer_tokenizer, generation_defaults: dict,
                 model_dir: Path):
        self.model = model.eval()
        self.config: LlamaVidConfig = model.config
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self.generation_defaults = generation_defaults  # the checkpoint's generation_config.json
        self.model_dir = model_dir

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, vision_tower: str | os.PathLike | None = None,
                        image_processor: str | os.PathLike | None = None, qformer: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        parts: Parts = "all") -> LlamaVid:
        """Load an official release folder (or hub repo id). `vision_tower`, `image_processor` and
        `qformer` override the paths that config.json names (None: as config.json says). `parts`:
        "all", or "encoder" / "prompt" to build and read only what that role uses."""
        if parts not in PARTS:
            raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
        model_dir = ckpt.resolve_model_dir(model_dir)
        assets = resolve_assets(model_dir, vision_tower, image_processor, qformer)
        llm_state = ckpt.load_model_weights(model_dir, keep=ckpt.reads_official_key(parts))
        eva_state = ckpt.load_eva_weights(assets.vision_tower)
        config = read_llamavid_config(model_dir, assets, llm_state, eva_state)

        with torch.device("meta"):
            model = LlamaVidModel(config, parts)
        model = model.to(dtype=dtype).to_empty(device=device)
        weights = ckpt.convert_official_weights(llm_state, eva_state, config)
        ckpt.load_into(model, weights, str(model_dir))
        _init_non_persistent_buffers(model, device)
        if parts == "all":
            model.language_model.model.rotary_emb.use_checkpoint_frequencies(ckpt.stored_rope_frequencies(llm_state))
        del llm_state, eva_state, weights

        generation_file = model_dir / "generation_config.json"
        generation_defaults = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
        return cls(model, CLIPImageProcessorPil.from_pretrained(str(assets.image_processor)),
                   LlamaPromptTokenizer.from_model_dir(model_dir), load_qformer_tokenizer(assets.qformer),
                   generation_defaults, model_dir)

    @classmethod
    def from_settings(cls, settings: ModelSettings, parts: Parts = "all") -> LlamaVid:
        """The model that a settings file's `model:` section names, with the parts a role uses."""
        return cls.from_pretrained(settings.model_dir, settings.vision_tower, settings.image_processor,
                                   settings.qformer, device=settings.device, dtype=settings.torch_dtype, parts=parts)

    @property
    def parts(self) -> Parts:
        return self.model.parts

    @property
    def device(self) -> torch.device:
        return self.model.context_attention.key_projector.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.context_attention.key_projector.weight.dtype

    @property
    def tokens_per_frame(self) -> int:
        return self.config.tokens_per_frame

    # -- frames -> features -> tokens -------------------------------------------------------------
    def preprocess(self, frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB frames [T, H, W, 3] (or a list of [H, W, 3] of any sizes) -> CLIP-normalised
        pixels [T, 3, S, S] (resize the shortest edge, center crop, rescale, normalize, as the
        checkpoint's processor config says)."""
        if isinstance(frames, list):
            if not frames:
                raise ValueError("frames is an empty list")
            for frame in frames:
                _check_frames(frame[None] if isinstance(frame, np.ndarray) else frame)
        else:
            _check_frames(frames)
        pixels = self.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype)  # (T, 3, S, S)

    @torch.inference_mode()
    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower output [T, 1+N, C] with the CLS token first."""
        size = self.config.vision.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(f"pixel_values must have shape [T, 3, {size}, {size}] (use preprocess()), "
                             f"got {list(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values must be floating point (use preprocess()), got {pixel_values.dtype}")
        return self.model.encode_frames(pixel_values.to(device=self.device, dtype=self.dtype))

    @torch.inference_mode()
    def frame_tokens(self, features: torch.Tensor, question: str) -> torch.Tensor:
        """[T, 1+P, D] LLM-space tokens per frame: the question's context token, then the content
        tokens. Features with CLS take the short-video path; `features[:, 1:]` the long-video path."""
        self._check_features(features)
        ids, mask = self._qformer_inputs(question)
        return self.model.frame_tokens(features.to(device=self.device, dtype=self.dtype), ids, mask)

    @torch.inference_mode()
    def text_queries(self, features: torch.Tensor, question: str) -> torch.Tensor:
        """[T, Q, C] the Q-Former's text queries per frame: the costly, question-dependent part of
        `context_tokens` and `context_scores`, which take it back (`text_queries=`) so that work
        over the same frames and question runs it once. Each frame's queries depend only on it."""
        self._check_features(features)
        ids, mask = self._qformer_inputs(question)
        return self.model.text_queries(features.to(device=self.device, dtype=self.dtype), ids, mask)

    @torch.inference_mode()
    def context_tokens(self, features: torch.Tensor, question: str,
                       text_queries: torch.Tensor | None = None) -> torch.Tensor:
        """[T, 1, D] the question's context token per frame (the first of `frame_tokens`);
        `text_queries`: `text_queries(features, question)` when already computed."""
        return self.model.context_attention(*self._attention_inputs(features, question, text_queries))

    @torch.inference_mode()
    def content_tokens(self, features: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """[T, P, D] content tokens (question-independent; what the index stores per frame).
        `num_tokens` 1 pools every patch into one token when a budget is tight (None: P, the
        checkpoint's compress_type)."""
        self._check_features(features)
        own = self.config.content_tokens_per_frame
        if num_tokens not in (None, own, 1):
            raise ValueError(f"num_tokens must be {own} (this checkpoint's compress_type "
                             f"{self.config.compress_type!r}) or 1, got {num_tokens}")
        return self.model.content_tokens(features.to(device=self.device, dtype=self.dtype),
                                         to_one=num_tokens == 1 and own != 1)

    @torch.inference_mode()
    def context_scores(self, features: torch.Tensor, question: str,
                       text_queries: torch.Tensor | None = None) -> torch.Tensor:
        """How strongly the question's text queries attend to each frame's patches, [T, Q, N];
        `text_queries`: `text_queries(features, question)` when already computed."""
        return self.model.context_attention.scores(*self._attention_inputs(features, question, text_queries))

    def _attention_inputs(self, features: torch.Tensor, question: str,
                          text_queries: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(text queries [T, Q, C], patches [T, N, C]) for the context attention."""
        self._check_features(features)
        features = features.to(device=self.device, dtype=self.dtype)
        if text_queries is None:
            text_queries = self.text_queries(features, question)
        return text_queries, self.model.patches_of(features)

    # -- prompt -> embeddings -> LLM --------------------------------------------------------------
    def prompt_text(self, question: str, num_frames: int, mode: PromptMode = "video",
                    subtitles: dict[int, str] | None = None, conv_mode: str = "vicuna_v1") -> str:
        if mode == "video":
            frames_text = video_frames_text(num_frames)
        elif mode == "movie":
            frames_text = movie_frames_text(num_frames, self.tokens_per_frame, subtitles)
        else:
            raise ValueError(f"mode must be 'video' or 'movie', got {mode!r}")
        conversation = Conversation(get_template(conv_mode))
        conversation.add_user(first_user_message(frames_text, _check_question(question)))
        return conversation.prompt()

    def prompt_ids(self, question: str, num_frames: int, mode: PromptMode = "video",
                   subtitles: dict[int, str] | None = None, conv_mode: str = "vicuna_v1") -> torch.Tensor:
        """LongTensor [L] of the templated prompt, IMAGE_TOKEN_INDEX (-200) at the placeholders."""
        return self.tokenizer.encode_with_images(self.prompt_text(question, num_frames, mode, subtitles, conv_mode))

    @torch.inference_mode()
    def inputs_embeds(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[L', D]: text embeddings with the frame tokens ([T, 1+P, D], or flattened) spliced in at the
        placeholders."""
        self._need("prompt", "inputs_embeds()")
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D [L], got shape {list(ids.shape)}")
        if tokens.ndim not in (2, 3) or tokens.shape[-1] != self.config.hidden_size:
            raise ValueError(f"tokens must have shape [T, 1+P, {self.config.hidden_size}] (or flattened "
                             f"[T*(1+P), {self.config.hidden_size}]), got {list(tokens.shape)}")
        if tokens.ndim == 2:
            if tokens.shape[0] % self.tokens_per_frame:
                raise ValueError(f"{tokens.shape[0]} flattened tokens are not a whole number of frames of "
                                 f"{self.tokens_per_frame} tokens")
            tokens = tokens.reshape(-1, self.tokens_per_frame, tokens.shape[-1])  # (T, 1+P, D)
        return self.model.inputs_embeds(ids.to(self.device), tokens.to(device=self.device, dtype=self.dtype))

    @torch.inference_mode()
    def logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """[L', vocab] next-token logits at every position."""
        self._need("all", "logits()")
        return self.model.logits(self._check_embeds(embeds))

    @torch.inference_mode()
    def generate(self, embeds: torch.Tensor, max_new_tokens: int = 64, do_sample: bool = False,
                 streamer: BaseStreamer | None = None, stopping_criteria: StoppingCriteriaList | None = None,
                 **sampling) -> list[int]:
        """New token ids after the prompt, up to and including eos. Sampling uses the checkpoint's
        generation_config.json (temperature, top_p) unless `sampling` overrides them. `streamer` and
        `stopping_criteria` go to transformers' `generate` (the LLM backends time the first token
        and stop at stop strings with them)."""
        self._need("all", "generate()")
        embeds = self._check_embeds(embeds)
        options = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   eos_token_id=self.tokenizer.eos_id,
                                   pad_token_id=self.generation_defaults.get("pad_token_id") or 0)
        if do_sample:
            defaults = {k: self.generation_defaults[k] for k in ("temperature", "top_p", "top_k")
                        if k in self.generation_defaults}
            options.update(**(defaults | sampling))
        self.model.reset_rope_state()
        out = self.model.language_model.generate(
            inputs_embeds=embeds[None], generation_config=options,
            attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long, device=self.device),
            streamer=streamer, stopping_criteria=stopping_criteria)
        return out[0].tolist()

    def answer(self, question: str, features: torch.Tensor, subtitles: dict[int, str] | None = None,
               max_new_tokens: int = 64, do_sample: bool = False, conv_mode: str = "vicuna_v1", **sampling) -> str:
        """Answer over frames with the movie prompt (long-video path; a leading CLS is dropped)."""
        self._need("all", "answer()")
        self._check_features(features)
        if features.shape[1] == self.config.vision.num_patches + 1:
            features = features[:, 1:]
        tokens = self.frame_tokens(features, question)
        ids = self.prompt_ids(question, features.shape[0], mode="movie", subtitles=subtitles, conv_mode=conv_mode)
        new_ids = self.generate(self.inputs_embeds(ids, tokens), max_new_tokens, do_sample, **sampling)
        text = self.tokenizer.decode(new_ids).strip()
        stop = get_template(conv_mode).stop_str
        return text[: -len(stop)].strip() if stop and text.endswith(stop) else text

    def _qformer_inputs(self, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = qformer_inputs(self.qformer_tokenizer, _check_question(question))
        return ids.to(self.device), mask.to(self.device)

    # -- checks -----------------------------------------------------------------------------------
    def _need(self, parts: Parts, what: str) -> None:
        if PARTS.index(self.parts) < PARTS.index(parts):
            either = "" if parts == "all" else " or 'all'"
            raise RuntimeError(f"{what} needs the parts {parts!r} of LLaMA-VID, but {self.model_dir} was loaded "
                               f"with parts={self.parts!r}; load it with parts={parts!r}{either}")

    def _check_features(self, features: torch.Tensor) -> None:
        width = self.config.vision.width
        if not isinstance(features, torch.Tensor) or features.ndim != 3 or features.shape[-1] != width \
                or 0 in features.shape:
            shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must be a tensor [T, N or 1+N, {width}] from encode_frames(), got {shape}")

    def _check_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.ndim != 2 or embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"embeds must have shape [L, {self.config.hidden_size}], got {list(embeds.shape)}")
        return embeds.to(device=self.device, dtype=self.dtype)


def _check_frames(frames) -> None:
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a numpy array of uint8 RGB frames [T,H,W,3], got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must have dtype uint8 (RGB 0..255), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must have shape [T, H, W, 3] with T, H, W > 0, got {list(frames.shape)}")


def _check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    return question


# -- loading helpers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedAssets:
    vision_tower: Path
    image_processor: Path
    qformer: Path


def read_model_config(model_dir: Path) -> dict:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ckpt.CheckpointError(f"{model_dir} has no config.json: not a LLaMA-VID model folder")
    return json.loads(config_file.read_text())


def read_llamavid_config(model_dir: Path, assets: ResolvedAssets, llm_state: dict[str, torch.Tensor],
                         eva_state: dict[str, torch.Tensor]) -> LlamaVidConfig:
    """The structure of a release: config.json, the weights' shapes, the Q-Former's BERT config and
    the processor's image size."""
    return ckpt.build_config(read_model_config(model_dir), eva_state, llm_state, ckpt.read_bert_config(assets.qformer),
                             ckpt.read_processor_settings(assets.image_processor))


def resolve_vision_tower(model_dir: Path, config: dict, override=None) -> Path:
    name = str(override or config.get("mm_vision_tower") or "./model_zoo/LAVIS/eva_vit_g.pth")
    if "openai" in name.lower() or "laion" in name.lower():
        raise ckpt.CheckpointError(f"vision tower {name!r} is a CLIP tower; this project runs the "
                                   "EVA ViT-g (LAVIS) towers that the LLaMA-VID video checkpoints use")
    return ckpt.resolve_asset(name, model_dir, "vision tower",
                              f"Download LAVIS' EVA ViT-g ({ckpt.EVA_VIT_G_URL}) to ./model_zoo/LAVIS/eva_vit_g.pth "
                              "or pass vision_tower=PATH")


def resolve_image_processor(model_dir: Path, config: dict, override=None) -> Path:
    """As config.json names it; else the official processor config of that name bundled here."""
    name = str(override or config.get("image_processor") or "./llamavid/processor/clip-patch14-224")
    bundled = ckpt.BUNDLED_PROCESSORS / Path(name).name
    try:
        return ckpt.resolve_asset(name, model_dir, "image processor",
                                  "Pass image_processor=PATH to a folder with preprocessor_config.json")
    except FileNotFoundError:
        if override is None and bundled.is_dir():
            return bundled
        raise


def resolve_assets(model_dir: Path, vision_tower=None, image_processor=None, qformer=None) -> ResolvedAssets:
    """The three things a release names outside its own folder, found as the official code finds
    them (from the working directory), then relative to the model folder and its parents."""
    config = read_model_config(model_dir)
    return ResolvedAssets(resolve_vision_tower(model_dir, config, vision_tower),
                          resolve_image_processor(model_dir, config, image_processor),
                          ckpt.resolve_qformer_dir(str(qformer or ckpt.DEFAULT_QFORMER), model_dir))


def _init_non_persistent_buffers(model: LlamaVidModel, device: str | torch.device) -> None:
    """Buffers that are computed, not stored (built on the meta device, so compute them now)."""
    embeddings = model.text_queries.qformer.embeddings
    embeddings.position_ids = torch.arange(embeddings.position_ids.shape[-1], device=device).expand(1, -1)
    if model.parts != "all":
        return
    rotary = model.language_model.model.rotary_emb
    fresh = type(rotary)(rotary.config)  # float32 frequencies, whatever the model dtype
    rotary.inv_freq = fresh.inv_freq.to(device)
    rotary.original_inv_freq = fresh.original_inv_freq.to(device)
    rotary.attention_scaling = fresh.attention_scaling


__all__ = ["LlamaVid", "ResolvedAssets", "read_llamavid_config", "resolve_assets", "resolve_vision_tower",
           "resolve_image_processor", "read_model_config"]
