"""Reading an official LLaMA-VID release: finding its files, reading its weights safely, and
renaming the official keys to this project's modules.

The modeling files know no official key names; everything about the released layout lives here:
`config.json` fields, sharded `pytorch_model-*.bin` (or safetensors) with an index, the LAVIS
`eva_vit_g.pth` vision tower (one block more than used), the CLIP processor config and the
`bert-base-uncased` config and vocab for the Q-Former.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from indexer.llamavid.configuration_llamavid import LlamaVidConfig, QFormerConfig, VisionTowerConfig
from indexer.llamavid.modeling_llamavid import Parts, holds

logger = logging.getLogger(__name__)

BUNDLED_PROCESSORS = Path(__file__).parent / "processors"
EVA_VIT_G_URL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"
DEFAULT_QFORMER = "bert-base-uncased"

# LLM-side config.json fields that LlamaConfig takes.
_LLM_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_scaling",
               "rope_theta", "bos_token_id", "eos_token_id", "pad_token_id", "pretraining_tp",
               "tie_word_embeddings", "attention_bias", "head_dim")

# Keys with no place in the model's state dict: the vision tower copy in the shards (the official
# loader reads eva_vit_g.pth), BERT `position_ids` buffers, and the rotary `inv_freq` buffers (not
# weights: stored_rope_frequencies reads them for the LLM's rotary embedding).
_IGNORED_KEYS = re.compile(r"^model\.vision_tower\.|\.rotary_emb\.inv_freq$|embeddings\.position_ids$")
_INV_FREQ_KEY = re.compile(r"^model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or key and the remedy."""


# -- finding files --------------------------------------------------------------------------------
def _candidates(path: str, model_dir: Path) -> list[Path]:
    """Where a path named in config.json may be: as the official code resolves it (from the working
    directory), then relative to the model folder and each of its parents."""
    given = Path(path).expanduser()
    if given.is_absolute():
        return [given]
    roots = [Path.cwd(), model_dir, *model_dir.resolve().parents]
    return [root / given for root in roots]


def resolve_asset(path: str, model_dir: Path, what: str, remedy: str) -> Path:
    tried = _candidates(path, model_dir)
    for candidate in tried:
        if candidate.exists():
            return candidate
    where = ", ".join(str(p) for p in tried[:4]) + (" ..." if len(tried) > 4 else "")
    raise FileNotFoundError(f"{what} {path!r} not found (looked in {where}). {remedy}")


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local model folder, or a hub repo id fetched (or found in the cache) by huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the model folder that holds config.json and the weights")
    name = str(name_or_path)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise FileNotFoundError(f"model folder {name} does not exist")
    return Path(_hub_download(name, "model"))


def resolve_qformer_dir(name_or_path: str, model_dir: Path) -> Path:
    for candidate in _candidates(name_or_path, model_dir):
        if (candidate / "vocab.txt").is_file():
            return candidate
    return Path(_hub_download(name_or_path, "Q-Former tokenizer/config",
                              allow_patterns=["config.json", "vocab.txt", "tokenizer_config.json"]))


def _hub_download(repo_id: str, what: str, allow_patterns: list[str] | None = None) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=allow_patterns)
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        raise FileNotFoundError(
            f"{what} {repo_id!r} is neither a local folder nor downloadable from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Download it on a machine "
            f"with network access (`huggingface-cli download {repo_id} --local-dir DIR`) and pass DIR") from exc


# -- reading weights ------------------------------------------------------------------------------
def weight_files(model_dir: Path) -> dict[str, Path]:
    """Where each tensor of a model folder is: key -> file, from the shard index json when there is
    one (no shard is opened), else from the single weights file's own key list."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = model_dir / index_name
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text()).get("weight_map") or {}
            missing = sorted({s for s in weight_map.values() if not (model_dir / s).is_file()})
            if missing:
                raise CheckpointError(f"{index_path} lists shards that are not in {model_dir}: {missing}")
            return {key: model_dir / shard for key, shard in weight_map.items()}
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / single).is_file():
            return dict.fromkeys(read_weights_file(model_dir / single), model_dir / single)
    raise CheckpointError(f"{model_dir} has no weights: expected pytorch_model.bin.index.json with its "
                          "pytorch_model-*.bin shards, model.safetensors(.index.json) or pytorch_model.bin")


def read_weights_file(path: Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one weights file that `keep` accepts (None: all). Safetensors reads only
    those; a .bin is memory-mapped, so the tensors left out are never read from disk."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}
    # weights_only: a checkpoint is untrusted input and must not run pickled code
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state if keep is None else {k: v for k, v in state.items() if keep(k)}


def load_model_weights(model_dir: Path, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a model folder (sharded with an index json, or a single file) that `keep`
    accepts (None: all). Shards that hold none of them are not opened."""
    files = weight_files(model_dir)
    wanted = {file for key, file in files.items() if keep is None or keep(key)}
    state: dict[str, torch.Tensor] = {}
    for path in sorted(wanted):
        state.update(read_weights_file(path, keep))
    return state


def load_eva_weights(path: Path) -> dict[str, torch.Tensor]:
    state = read_weights_file(path)
    state = state.get("model", state) if isinstance(state.get("model"), dict) else state
    if "patch_embed.proj.weight" not in state:
        state = {k.removeprefix("visual_encoder."): v for k, v in state.items()}
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError(f"{path} is not a LAVIS EVA ViT state dict (no 'patch_embed.proj.weight')")
    return state


def read_bert_config(bert_dir: Path) -> dict:
    config_file = bert_dir / "config.json"
    return json.loads(config_file.read_text()) if config_file.is_file() else {}


# -- building the config from config.json and the weights -----------------------------------------
@dataclass(frozen=True)
class ProcessorSettings:
    """CLIP preprocessing as the checkpoint's processor config says (old int or new dict format)."""

    path: Path
    resize_shortest_edge: int
    crop_size: int


def read_processor_settings(path: Path) -> ProcessorSettings:
    config_file = path / "preprocessor_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"image processor folder {path} has no preprocessor_config.json")
    raw = json.loads(config_file.read_text())
    size, crop = raw.get("size", 224), raw.get("crop_size", raw.get("size", 224))
    shortest = size if isinstance(size, int) else size.get("shortest_edge", size.get("height"))
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else (crop.get("height"), crop.get("width"))
    if crop_h != crop_w:
        raise CheckpointError(f"{config_file}: crop_size must be square for the EVA tower, got {crop_h}x{crop_w}")
    return ProcessorSettings(path, int(shortest), int(crop_h))


def _count_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def build_config(model_config: dict, eva: dict[str, torch.Tensor], llm_state: dict[str, torch.Tensor],
                 bert_config: dict, processor: ProcessorSettings) -> LlamaVidConfig:
    width, _, patch, _ = eva["patch_embed.proj.weight"].shape
    blocks_in_file = _count_layers(eva, "blocks.")
    mm_hidden = model_config.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != width:
        raise CheckpointError(f"vision tower width {width} (from its weights) does not match the checkpoint's "
                              f"mm_hidden_size {mm_hidden}: this eva_vit_g.pth belongs to another model")
    # The file holds one block more than the tower uses (the real eva_vit_g.pth: 40 blocks, 39 used).
    vision = VisionTowerConfig(width=int(width), depth=max(blocks_in_file - 1, 1), patch_size=int(patch),
                               image_size=processor.crop_size)

    bert_type = model_config.get("bert_type", "qformer")
    prefix = "model.vlm_att_encoder.bert."
    if f"{prefix}embeddings.word_embeddings.weight" not in llm_state:
        raise CheckpointError("the checkpoint has no Q-Former weights (model.vlm_att_encoder.bert.*): "
                              "it is not a LLaMA-VID checkpoint")
    vocab, hidden = llm_state[f"{prefix}embeddings.word_embeddings.weight"].shape
    cross_key = f"{prefix}encoder.layer.0.crossattention.self.key.weight"
    query = llm_state.get("model.vlm_att_query")
    if query is None:
        raise CheckpointError("the checkpoint has no model.vlm_att_query (the Q-Former's learned queries)")
    qformer = QFormerConfig(
        hidden_size=int(hidden), num_layers=_count_layers(llm_state, f"{prefix}encoder.layer."),
        num_heads=int(bert_config.get("num_attention_heads", 12)),
        intermediate_size=int(bert_config.get("intermediate_size", 3072)), vocab_size=int(vocab),
        max_position_embeddings=int(llm_state[f"{prefix}embeddings.position_embeddings.weight"].shape[0]),
        layer_norm_eps=float(bert_config.get("layer_norm_eps", 1e-12)),
        visual_width=int(llm_state[cross_key].shape[1]) if cross_key in llm_state else int(width),
        num_query=int(query.shape[1]))
    llm = {k: model_config[k] for k in _LLM_FIELDS if k in model_config}
    return LlamaVidConfig(vision=vision, qformer=qformer, llm=llm, bert_type=bert_type,
                          compress_type=model_config.get("compress_type"),
                          mm_projector_type=model_config.get("mm_projector_type", "linear"),
                          mm_vision_select_feature=model_config.get("mm_vision_select_feature", "patch"))


# -- renaming official keys -----------------------------------------------------------------------
_LLM_RENAMES = [
    (r"^model\.mm_projector\.weight$", "content_projector.0.weight"),  # "linear" projector
    (r"^model\.mm_projector\.bias$", "content_projector.0.bias"),
    (r"^model\.mm_projector\.", "content_projector."),
    (r"^model\.vlm_att_query$", "text_queries.query_tokens"),
    (r"^model\.vlm_att_bert_proj\.", "text_queries.bert_proj."),
    (r"^model\.vlm_att_ln\.", "text_queries.visual_norm."),
    (r"^model\.vlm_att_projector\.", "text_queries.projector."),
    (r"^model\.vlm_att_key_projector\.", "context_attention.key_projector."),
    (r"^model\.vlm_att_val_projector\.", "context_attention.value_projector."),
    # Q-Former (LAVIS BERT -> transformers InstructBLIP Q-Former)
    (r"^model\.vlm_att_encoder\.bert\.embeddings\.LayerNorm\.", "text_queries.qformer.embeddings.layernorm."),
    (r"^model\.vlm_att_encoder\.bert\.", "text_queries.qformer."),
    (r"\.attention\.self\.", ".attention.attention."),
    (r"\.crossattention\.self\.", ".crossattention.attention."),
    # the LLM keeps LLaMA's names under language_model
    (r"^model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
]

_EVA_RENAMES = [
    (r"^cls_token$", "vision_tower.embeddings.class_embedding"),
    (r"^pos_embed$", "vision_tower.embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "vision_tower.embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"vision_tower.encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"vision_tower.encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.weight$", r"vision_tower.encoder.layers.\1.self_attn.qkv.weight"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"vision_tower.encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"vision_tower.encoder.layers.\1.mlp."),
]


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    renamed = key
    for pattern, replacement in table:
        renamed = re.sub(pattern, replacement, renamed)
    return renamed if renamed != key else None


def _interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize the patch position embeddings to the processor's grid (bicubic, as LAVIS does)."""
    pos_embed = pos_embed.float()
    old_grid = int((pos_embed.shape[1] - 1) ** 0.5)
    if old_grid == grid:
        return pos_embed
    logger.info("interpolating vision position embeddings from %dx%d to %dx%d", old_grid, old_grid, grid, grid)
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    width = pos_embed.shape[-1]
    patch_pos = patch_pos.reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)  # (1, C, g, g)
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)  # (1, 1 + G*G, C)


@dataclass
class ConvertedWeights:
    state_dict: dict[str, torch.Tensor]
    origin: dict[str, str] = field(default_factory=dict)  # new key -> official key, for messages
    ignored: list[str] = field(default_factory=list)  # expected leftovers, as the official loader
    unknown: list[str] = field(default_factory=list)  # keys with no place in the model: reported


def reads_official_key(parts: Parts) -> Callable[[str], bool]:
    """Which keys of a release a model of `parts` reads: those renamed into its modules, and those
    with no place in any part (so that `load_into` reports them); never the keys that the official
    loader also skips."""
    def keep(key: str) -> bool:
        if _INV_FREQ_KEY.match(key):  # the LLM's rotary embedding reads them (stored_rope_frequencies)
            return parts == "all"
        if _IGNORED_KEYS.search(key):
            return False
        new_key = _rename(key, _LLM_RENAMES)
        return new_key is None or holds(parts, new_key)

    return keep


def convert_official_weights(llm_state: dict[str, torch.Tensor], eva_state: dict[str, torch.Tensor],
                             config: LlamaVidConfig) -> ConvertedWeights:
    out = ConvertedWeights({})
    for key, tensor in llm_state.items():
        if _IGNORED_KEYS.search(key):
            out.ignored.append(key)
            continue
        new_key = _rename(key, _LLM_RENAMES)
        if new_key is None:
            out.unknown.append(key)
        else:
            out.state_dict[new_key] = tensor
            out.origin[new_key] = key
    for key, tensor in eva_state.items():
        block = re.match(r"blocks\.(\d+)\.", key)
        if block and int(block.group(1)) >= config.vision.depth:
            out.ignored.append(f"eva:{key}")  # the unused last block
            continue
        if key.endswith(("attn.q_bias", "attn.v_bias")):
            continue  # folded into qkv.bias below
        if key == "pos_embed":
            tensor = _interpolate_pos_embed(tensor, config.vision.grid)
        new_key = _rename(key, _EVA_RENAMES)
        if new_key is None:
            out.unknown.append(f"eva:{key}")
        else:
            out.state_dict[new_key] = tensor
            out.origin[new_key] = f"eva:{key}"
    for i in range(config.vision.depth):
        q_bias, v_bias = eva_state.get(f"blocks.{i}.attn.q_bias"), eva_state.get(f"blocks.{i}.attn.v_bias")
        if q_bias is not None and v_bias is not None:
            # EVA has no k bias: the fused qkv bias is (q, 0, v)
            out.state_dict[f"vision_tower.encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat(
                [q_bias, torch.zeros_like(v_bias), v_bias])
    return out


def stored_rope_frequencies(llm_state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The rotary `inv_freq` that the checkpoint stores (transformers 4.31 saved one copy per layer, in
    the shard dtype), upcast exactly to float32; None if it stores none (the official model then keeps
    the exact frequencies). Every layer computes and rounds the same value, so one copy serves all;
    copies that differ, or layers without one, would need a rotary embedding per layer: an error."""
    copies = {int(m.group(1)): t for key, t in llm_state.items() if (m := _INV_FREQ_KEY.match(key))}
    if not copies:
        return None
    layers = _count_layers(llm_state, "model.layers.")
    missing = sorted(set(range(layers)) - set(copies))
    first = copies[min(copies)]
    differing = sorted(i for i, t in copies.items() if t.shape != first.shape or not torch.equal(t, first))
    problems = ([f"missing for layers {missing}"] if missing else []) + (
        [f"different in layers {differing} from layer {min(copies)}"] if differing else [])
    if problems:
        raise CheckpointError("the checkpoint's model.layers.N.self_attn.rotary_emb.inv_freq is "
                              + " and ".join(problems) + ": store the same value for every layer, or none")
    return first.float()


def load_into(model: torch.nn.Module, weights: ConvertedWeights, source: str) -> None:
    """Copy converted weights into `model`; any missing key, unknown key or shape mismatch is an
    error that names the keys."""
    expected = model.state_dict()
    name = lambda key: weights.origin.get(key, key)  # noqa: E731 - report the official key names
    mismatched = [f"{name(k)}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in weights.state_dict.items() if k in expected and v.shape != expected[k].shape]
    missing = sorted(set(expected) - set(weights.state_dict))
    unexpected = sorted(name(k) for k in set(weights.state_dict) - set(expected)) + weights.unknown
    problems = []
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if missing:
        problems.append(f"missing from the checkpoint: {missing}")
    if unexpected:
        problems.append(f"unexpected in the checkpoint: {unexpected}")
    if problems:
        raise CheckpointError(f"{source} does not fit this LLaMA-VID configuration: " + " | ".join(problems))
    model.load_state_dict(weights.state_dict, strict=True)
    logger.debug("ignored %d keys the official loader also skips", len(weights.ignored))


__all__ = ["CheckpointError", "ProcessorSettings", "ConvertedWeights", "resolve_model_dir", "resolve_asset",
           "resolve_qformer_dir", "read_bert_config", "weight_files", "read_weights_file", "load_model_weights",
           "load_eva_weights", "read_processor_settings", "reads_official_key",
           "build_config", "convert_official_weights", "stored_rope_frequencies", "load_into", "BUNDLED_PROCESSORS",
           "EVA_VIT_G_URL", "DEFAULT_QFORMER"]
