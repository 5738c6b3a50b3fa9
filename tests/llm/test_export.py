"""`vidx export-llm`: the LLM of a release as a plain LLaMA folder, proven by logits."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM

from actors.cli import main
from indexer.llamavid import LlamaVid
from indexer.llamavid.checkpoint import load_model_weights
from indexer.llamavid.tiny import TinySpec, make_tiny_checkpoint
from indexer.llm.export import ExportError, export_llm
from tests.conftest import REPO
from tests.llm.conftest import movie_embeds

GOLDEN_C = REPO / "tests" / "golden" / "llamavid-tiny-c" / "model"  # bfloat16, dynamic rope x2, GQA
LLAMA_KEY = re.compile(r"^(model\.embed_tokens|model\.layers\.\d+|model\.norm|lm_head)\.")


def exported_keys(out: Path) -> dict[str, torch.dtype]:
    keys = {}
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            keys |= {k: f.get_tensor(k).dtype for k in f.keys()}
    return keys


def assert_same_logits(model: LlamaVid, out: Path, num_frames: int = 4) -> int:
    llm = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    embeds = movie_embeds(model, num_frames=num_frames)
    with torch.inference_mode():
        logits = llm(inputs_embeds=embeds[None]).logits[0]  # (L, vocab)
    torch.testing.assert_close(logits, model.logits(embeds), atol=1e-5, rtol=0)
    return embeds.shape[0]


def test_exported_llm_gives_llamavid_logits(tiny_model, exported_tiny):
    assert_same_logits(tiny_model, exported_tiny.out_dir)
    config = json.loads((exported_tiny.out_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["torch_dtype"] == "float32" and config["max_position_embeddings"] == 2048
    assert "rope_scaling" not in config
    assert {"tokenizer.model", "tokenizer_config.json", "generation_config.json"} <= set(exported_tiny.copied)
    assert not exported_tiny.out_dir.with_name("llm.tmp").exists()


def test_dropped_keys_are_exactly_the_non_llama_ones(tiny_model_dir, exported_tiny):
    source = load_model_weights(tiny_model_dir)
    llama = {k for k in source if LLAMA_KEY.match(k) and not k.endswith("rotary_emb.inv_freq")}
    assert set(exported_keys(exported_tiny.out_dir)) == llama == set(exported_tiny.kept_keys)
    assert set(exported_tiny.dropped_keys) == set(source) - llama
    assert set(exported_tiny.dropped_groups) == {"model.vision_tower.*", "model.mm_projector.*", "model.vlm_att_*",
                                                 "*.rotary_emb.inv_freq"}


def test_golden_c_bfloat16_dynamic_rope_gqa(tmp_path):
    """Set C was made with the official code: bfloat16 shards, dynamic rope x2 over 128 positions,
    2 kv heads. A prompt longer than 128 rows makes the dynamic base grow in both models."""
    model = LlamaVid.from_pretrained(GOLDEN_C)
    report = export_llm(GOLDEN_C, tmp_path / "llm")
    assert assert_same_logits(model, report.out_dir, num_frames=8) > 128
    config = json.loads((report.out_dir / "config.json").read_text())
    assert config["rope_scaling"]["type"] == "dynamic" and config["rope_scaling"]["factor"] == 2.0
    assert config["max_position_embeddings"] == 128 and config["num_key_value_heads"] == 2
    assert config["torch_dtype"] == "bfloat16" and report.dtype == torch.bfloat16
    assert set(exported_keys(report.out_dir).values()) == {torch.bfloat16}
    assert report.context_length == 256
    assert "special_tokens_map.json" in report.copied
    assert any("dynamic NTK" in line for line in report.lines())


def test_linear_rope_float16_safetensors_release_in_several_shards(tmp_path):
    spec = TinySpec(rope_scaling={"type": "linear", "factor": 4.0}, max_position_embeddings=32,
                    weights_format="safetensors", weights_dtype="float16", llm_kv_heads=2, seed=3)
    model_dir = make_tiny_checkpoint(tmp_path / "release", spec)
    report = export_llm(model_dir, tmp_path / "llm", max_shard_bytes=40_000)
    assert len(report.shards) > 1 and (report.out_dir / "model.safetensors.index.json").is_file()
    assert set(exported_keys(report.out_dir).values()) == {torch.float16}
    config = json.loads((report.out_dir / "config.json").read_text())
    assert config["rope_scaling"]["type"] == "linear" and config["rope_parameters"]["factor"] == 4.0
    assert report.context_length == 128
    model = LlamaVid.from_pretrained(model_dir)
    # beyond max_position_embeddings LlamaVid rotates with the shards' float16 inv_freq (the official
    # 4.31 rule); an exported folder carries none, so transformers and vLLM use the exact frequencies:
    # the known difference vllm_backend names. The rest of the export must match exactly.
    model.model.language_model.model.rotary_emb.use_checkpoint_frequencies(None)
    assert assert_same_logits(model, report.out_dir) > 32


def test_missing_model_folder():
    with pytest.raises(FileNotFoundError, match="/no/such/release"):
        export_llm("/no/such/release", "/tmp/never-written")


def test_folder_that_is_not_a_llamavid_checkpoint(tmp_path, exported_tiny):
    with pytest.raises(ExportError, match=f"{tmp_path} has no config.json"):
        export_llm(tmp_path, tmp_path / "out")
    # a plain LLaMA folder (the export itself) is not a LLaMA-VID release
    with pytest.raises(ExportError, match=rf"{re.escape(str(exported_tiny.out_dir))} is not a LLaMA-VID checkpoint"):
        export_llm(exported_tiny.out_dir, tmp_path / "out")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "num_hidden_layers": 1,
                                                      "num_attention_heads": 1, "vocab_size": 10}))
    with pytest.raises(ExportError, match=f"{tmp_path} has no weights"):
        export_llm(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_weights_that_do_not_fit_the_config_write_nothing(tmp_path, tiny_model_dir):
    import shutil

    release = tmp_path / "model"
    shutil.copytree(tiny_model_dir, release)
    config = json.loads((release / "config.json").read_text())
    (release / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ExportError, match=r"do not fit its config.json: missing \['model.layers.2"):
        export_llm(release, tmp_path / "llm")
    (release / "config.json").write_text(json.dumps({**config, "intermediate_size": 100}))
    with pytest.raises(ExportError, match=r"has shape \(128, 64\), but the release's config.json makes it \(100, 64\)"):
        export_llm(release, tmp_path / "llm")
    assert not (tmp_path / "llm").exists() and not (tmp_path / "llm.tmp").exists()


def test_non_empty_out_needs_force(tmp_path, tiny_model_dir):
    out = tmp_path / "llm"
    out.mkdir()
    export_llm(tiny_model_dir, out)  # an empty folder is fine
    (out / "stale.txt").write_text("old")
    with pytest.raises(ExportError, match=f"{out} is not empty; pass --force"):
        export_llm(tiny_model_dir, out)
    assert (out / "stale.txt").is_file()
    export_llm(tiny_model_dir, out, force=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    with pytest.raises(ExportError, match="would replace the release"):
        export_llm(tiny_model_dir, tiny_model_dir.parent, force=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="is a file"):
        export_llm(tiny_model_dir, tmp_path / "file")


def test_leftover_tmp_from_a_crash_is_replaced(tmp_path, tiny_model_dir):
    (tmp_path / "llm.tmp").mkdir()
    (tmp_path / "llm.tmp" / "half-written.safetensors").write_text("x")
    report = export_llm(tiny_model_dir, tmp_path / "llm")
    assert not (tmp_path / "llm.tmp").exists() and not (report.out_dir / "half-written.safetensors").exists()


def test_cli_prints_what_it_wrote(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "llm"
    assert main(["export-llm", str(tiny_model_dir), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept 21 tensors" in printed and "float32" in printed and "bytes" in printed
    assert "dropped 106 keys" in printed and "model.vlm_att_* 70" in printed
    assert f"vllm serve {out} --enable-prompt-embeds --max-model-len 2048" in printed
    assert main(["export-llm", str(tiny_model_dir), str(out)]) == 2
    assert f"{out} is not empty; pass --force" in capsys.readouterr().err
    assert main(["export-llm", str(tiny_model_dir), str(out), "--force"]) == 0
    assert main(["export-llm", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
