"""`vidx export-llm MODEL OUT`: the language model of an official LLaMA-VID release as a plain
LLaMA folder that `vllm serve` and transformers' `LlamaForCausalLM.from_pretrained` load.

    vidx export-llm work/model work/llm
    vllm serve work/llm --enable-prompt-embeds --max-model-len 32768
    # settings: llm: {backend: vllm-server, url: http://127.0.0.1:8000/v1}

(`--max-model-len` at most the context the export prints: vLLM refuses a longer one.)

What is written (atomically: into OUT.tmp, renamed to OUT at the end):
- config.json: `LlamaForCausalLM`, model_type "llama", built from the release's config.json with
  the fields and the `LlamaConfig` that `LlamaVid` builds its LLM from (sizes, rope_theta,
  rope_scaling, max_position_embeddings), dtype = the weights' dtype;
- safetensors shards with only the LLaMA keys (model.embed_tokens, model.layers.*, model.norm,
  lm_head), checked name by name and shape by shape against that config;
- tokenizer.model, tokenizer_config.json, special_tokens_map.json, generation_config.json (and
  tokenizer.json, added_tokens.json) when the release has them.
Dropped: the vision tower copy (model.vision_tower.*), the content projector (model.mm_projector.*),
the Q-Former and context attention (model.vlm_att_*), rotary `inv_freq` buffers, anything else.

The vision tower (eva_vit_g.pth) is never read, and the release's shards are read one at a time
(.bin memory-mapped, safetensors key by key): memory holds about one output shard (5 GB by default).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from indexer.llamavid import checkpoint as ckpt

# The config.json fields LlamaVid builds its LLM's LlamaConfig from (checkpoint.build_config ->
# LlamaVidConfig.llm_config): the same list, so the export cannot drift from what LlamaVid runs.
from indexer.llamavid.checkpoint import _LLM_FIELDS

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # transformers' default shard size ("5GB")
_LLAMA_KEY = re.compile(r"^(model\.embed_tokens\.|model\.layers\.\d+\.|model\.norm\.|lm_head\.)")
_BUFFER_KEY = re.compile(r"\.rotary_emb\.inv_freq$")  # vLLM computes exact frequencies (vllm_backend)
_DROPPED_GROUPS = [(re.compile(r"^model\.vision_tower\."), "model.vision_tower.*"),
                   (re.compile(r"^model\.mm_projector\."), "model.mm_projector.*"),
                   (re.compile(r"^model\.vlm_att_"), "model.vlm_att_*"),
                   (_BUFFER_KEY, "*.rotary_emb.inv_freq")]
_COPIED_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "tokenizer.json", "added_tokens.json")


class ExportError(ValueError):
    """An export that cannot be done; the message names the path and the remedy."""


@dataclass
class ExportReport:
    source: Path
    out_dir: Path
    dtype: torch.dtype
    kept_keys: list[str]
    tensor_bytes: int
    parameters: int
    shards: list[str]
    dropped_keys: list[str]
    copied: list[str]
    config: dict = field(repr=False)

    @property
    def dropped_groups(self) -> dict[str, int]:
        return dict(Counter(_dropped_group(k) for k in self.dropped_keys))

    @property
    def context_length(self) -> int:
        """What vLLM allows as --max-model-len: max_position_embeddings x the rope factor."""
        rope = self.config.get("rope_scaling") or {}
        return int(self.config["max_position_embeddings"] * float(rope.get("factor", 1.0)))

    def lines(self) -> list[str]:
        rope = self.config.get("rope_scaling")
        rope_text = f"{rope.get('type') or rope.get('rope_type')} x{rope.get('factor')}" if rope else "none"
        dtype = str(self.dtype).removeprefix("torch.")
        dropped = ", ".join(f"{group} {n}" for group, n in sorted(self.dropped_groups.items())) or "none"
        config = self.config
        out = [f"exported the LLM of {self.source} to {self.out_dir}",
               (f"  kept {len(self.kept_keys)} tensors ({self.parameters:,} parameters), {self.tensor_bytes:,} bytes "
                f"{dtype}, in {len(self.shards)} safetensors file(s): {', '.join(self.shards)}"),
               f"  dropped {len(self.dropped_keys)} keys: {dropped}",
               (f"  config: LlamaForCausalLM, hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, "
                f"vocab {config['vocab_size']}, max_position_embeddings {config['max_position_embeddings']}, "
                f"rope_theta {config.get('rope_theta')}, rope scaling {rope_text}: up to {self.context_length} tokens"),
               f"  copied: {', '.join(self.copied) or 'nothing'}",
               f"  serve it: vllm serve {self.out_dir} --enable-prompt-embeds --max-model-len {self.context_length}"]
        if rope and (rope.get("type") or rope.get("rope_type")) == "dynamic":
            out.append("  note: vLLM applies dynamic NTK rope with one base for the whole scaled length; transformers "
                       "(and the official code) grow it with the sequence, so answers can differ")
        return out


def export_llm(model_dir: str | os.PathLike, out_dir: str | os.PathLike, force: bool = False,
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ExportReport:
    """Write the LLM of the LLaMA-VID release `model_dir` (folder or hub id) to `out_dir` as a
    plain LLaMA folder. A non-empty `out_dir` is replaced only with `force`."""
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
    source = ckpt.resolve_model_dir(model_dir)
    out = Path(out_dir).expanduser()
    _check_out_dir(source, out, force)
    release_config = _read_release_config(source)
    try:
        where = ckpt.weight_files(source)
    except ckpt.CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    files, keys = sorted(set(where.values())), list(where)
    if not any(k.startswith("model.vlm_att_") for k in keys):
        raise ExportError(f"{source} is not a LLaMA-VID checkpoint: its weights have no model.vlm_att_* (Q-Former) "
                          "keys. A plain LLaMA folder needs no export: serve it with vLLM as it is")
    kept = [k for k in keys if _LLAMA_KEY.match(k) and not _BUFFER_KEY.search(k)]
    dropped = [k for k in keys if k not in set(kept)]
    if not (source / "tokenizer.model").is_file():
        raise ExportError(f"{source} has no tokenizer.model: LLaMA-VID releases ship the LLaMA sentencepiece model "
                          "beside config.json; copy it there from the base Vicuna checkpoint")

    llama_config = LlamaConfig(**{k: release_config[k] for k in _LLM_FIELDS if k in release_config})
    with torch.device("meta"):  # names and shapes only: no memory for the weights
        expected = {k: tuple(v.shape) for k, v in LlamaForCausalLM(llama_config).state_dict().items()}
    _check_keys(source, kept, expected)
    dtype = _weights_dtype(files, "model.embed_tokens.weight")
    llama_config.architectures = ["LlamaForCausalLM"]
    llama_config.dtype = dtype

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        logger.warning("removing %s, left by an export that did not finish", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        shards, tensor_bytes, parameters = _write_shards(files, set(kept), expected, dtype, tmp, max_shard_bytes)
        config = _config_json(llama_config, dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copied = [name for name in _COPIED_FILES if (source / name).is_file()]
        for name in copied:
            shutil.copyfile(source / name, tmp / name)
        if out.exists():  # empty, or --force: checked above
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = ExportReport(source, out, dtype, kept, tensor_bytes, parameters, shards, dropped, copied, config)
    logger.info("%s", "\n".join(report.lines()))
    return report


# -- checks ---------------------------------------------------------------------------------------
def _check_out_dir(source: Path, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; OUT must be a folder to create")
    resolved_source, resolved_out = source.resolve(), out.resolve()
    if resolved_out == resolved_source or resolved_out in resolved_source.parents:
        raise ExportError(f"OUT {out} would replace the release {source} itself; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; pass --force (force=True) to replace it, or choose another folder")


def _read_release_config(source: Path) -> dict:
    config_file = source / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{source} has no config.json: not a LLaMA-VID model folder")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_file} is not valid JSON: {exc}") from exc
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if k not in config]
    if missing:
        raise ExportError(f"{config_file} lacks the LLaMA fields {missing}: not a LLaMA-VID model folder")
    return config


def _check_keys(source: Path, kept: list[str], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    if missing or unexpected:
        raise ExportError(f"the LLaMA weights of {source} do not fit its config.json: "
                          f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
                          f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")


def _dropped_group(key: str) -> str:
    for pattern, group in _DROPPED_GROUPS:
        if pattern.search(key):
            return group
    return ".".join(key.split(".")[:2]) + ".*"


def _weights_dtype(files: list[Path], key: str) -> torch.dtype:
    for path in files:
        tensor = ckpt.read_weights_file(path, keep={key}.__contains__).get(key)
        if tensor is not None:
            return tensor.dtype
    raise ExportError(f"no file of the release holds {key}")


def _write_shards(files: list[Path], keep: set[str], expected: dict[str, tuple[int, ...]], dtype: torch.dtype,
                  out: Path, max_shard_bytes: int) -> tuple[list[str], int, int]:
    """Copy the kept tensors into safetensors shards of at most `max_shard_bytes` (a larger tensor
    gets a shard of its own), named as transformers names them. Returns (shard names, bytes, parameters)."""
    part: dict[str, torch.Tensor] = {}
    part_keys: list[list[str]] = []  # the keys of each written part, in order
    part_bytes = total_bytes = parameters = cast = 0

    def flush() -> None:
        save_file(part, str(out / f"part-{len(part_keys):05d}.safetensors"), metadata={"format": "pt"})
        part_keys.append(list(part))
        part.clear()  # releases the tensors (and the .bin memory maps they came from)

    for path in files:
        for key, tensor in ckpt.read_weights_file(path, keep=keep.__contains__).items():
            if tuple(tensor.shape) != expected[key]:
                raise ExportError(f"{path.name}: {key} has shape {tuple(tensor.shape)}, but the release's "
                                  f"config.json makes it {expected[key]}")
            if tensor.dtype != dtype:
                tensor, cast = tensor.to(dtype), cast + 1
            nbytes = tensor.numel() * tensor.element_size()
            if part and part_bytes + nbytes > max_shard_bytes:
                flush()
                part_bytes = 0
            part[key] = tensor.contiguous()
            part_bytes += nbytes
            total_bytes += nbytes
            parameters += tensor.numel()
    if part:
        flush()
    if cast:
        logger.warning("cast %d tensors to %s, the dtype of model.embed_tokens.weight", cast, dtype)

    n = len(part_keys)
    names = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        os.replace(out / f"part-{i:05d}.safetensors", out / name)
    if n > 1:
        weight_map = {key: name for keys, name in zip(part_keys, names, strict=True) for key in keys}
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    return names, total_bytes, parameters


def _config_json(config: LlamaConfig, dtype: torch.dtype) -> dict:
    """transformers 5's config.json, plus the legacy spellings (`torch_dtype`, `rope_theta`,
    `rope_scaling`) that readers built on transformers 4 look for."""
    full = config.to_dict()
    out = config.to_diff_dict()  # what save_pretrained writes: no generic defaults (id2label, return_dict, ...)
    # ... but every LLaMA field spelled out, so a reader's own defaults cannot differ from LlamaVid's
    out |= {k: full[k] for k in (*_LLM_FIELDS, "rope_parameters", "head_dim", "architectures") if k in full}
    out["model_type"] = "llama"
    out["torch_dtype"] = str(dtype).removeprefix("torch.")
    rope = dict(out.get("rope_parameters") or {})
    if "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    rope_type = rope.get("rope_type") or rope.get("type")
    if rope_type and rope_type != "default":
        out["rope_scaling"] = {"type": rope_type, "rope_type": rope_type, "factor": rope["factor"]}
    return out


__all__ = ["DEFAULT_MAX_SHARD_BYTES", "ExportError", "ExportReport", "export_llm"]
