"""Loading official layouts of every supported configuration, and the errors for broken ones."""

import json

import numpy as np
import pytest
import torch

from indexer.llamavid import LlamaVid
from indexer.llamavid.checkpoint import CheckpointError
from indexer.llamavid.tiny import TinySpec, make_tiny_checkpoint

FRAMES = (np.random.default_rng(0).random((3, 90, 160, 3)) * 255).astype(np.uint8)

CONFIGS = {
    "grid2-linear-32q-qformer-fp16-dictproc-linear-rope": TinySpec(
        bert_type="qformer", compress_type="grid:2", mm_projector_type="linear", num_query=32, vision_width=264,
        weights_dtype="float16", processor_format="dict", rope_scaling={"type": "linear", "factor": 2.0}),
    "grid4-mlp3-freeze_all-bf16-safetensors-dynamic-rope-gqa": TinySpec(
        bert_type="qformer_pretrain_freeze_all", compress_type="grid:4", vision_width=88, image_size=224,
        vision_depth=1, mm_projector_type="mlp3x_gelu", num_query=8, weights_dtype="bfloat16",
        weights_format="safetensors", qformer_layers=3, llm_kv_heads=2,
        rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=64),
    "pretrain-width-1408-no-bert-proj": TinySpec(vision_width=1408, vision_depth=1, image_size=56, qformer_layers=1),
    "no-compression": TinySpec(compress_type=None, image_size=56),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_configurations_load_and_run_both_paths(tmp_path, name):
    spec = CONFIGS[name]
    m = LlamaVid.from_pretrained(make_tiny_checkpoint(tmp_path, spec))
    grid = spec.image_size // spec.patch_size
    features = m.encode_frames(m.preprocess(FRAMES))
    assert features.shape == (3, 1 + grid * grid, spec.vision_width)
    p = m.config.content_tokens_per_frame
    if spec.compress_type == "mean":
        assert p == 1
    elif spec.compress_type is None:
        assert p == grid * grid
    else:
        assert p == int(spec.compress_type.removeprefix("grid:")) ** 2
    for feats in (features, features[:, 1:]):
        tokens = m.frame_tokens(feats, "where is the red car?")
        assert tokens.shape == (3, 1 + p, spec.llm_hidden) and torch.isfinite(tokens).all()
    ids = m.prompt_ids("where is the red car?", 3, mode="movie", subtitles={1: " hi"})
    assert int((ids == -200).sum()) == 3 * (1 + p)
    embeds = m.inputs_embeds(ids, tokens)
    assert m.logits(embeds).shape == (len(ids), m.config.llm["vocab_size"])
    assert m.model.text_queries.query_tokens.shape[1] == spec.num_query
    assert (m.model.text_queries.bert_proj is not None) == ("pretrain" in spec.bert_type and spec.vision_width != 1408)
    if spec.rope_scaling:
        assert m.model.language_model.config.rope_parameters["rope_type"] == spec.rope_scaling["type"]


def test_grid_content_tokens_are_projected_quadrant_means(tmp_path):
    config = CONFIGS["grid2-linear-32q-qformer-fp16-dictproc-linear-rope"]
    m = LlamaVid.from_pretrained(make_tiny_checkpoint(tmp_path, config))
    features = m.encode_frames(m.preprocess(FRAMES))
    grid = m.config.vision.grid  # 8x8 patches -> 2x2 cells of 4x4
    patches = features[:, 1:].reshape(3, grid, grid, -1)
    cells = [patches[:, r:r + 4, c:c + 4].mean(dim=(1, 2)) for r in (0, 4) for c in (0, 4)]
    expected = m.model.content_projector(torch.stack(cells, 1))
    torch.testing.assert_close(m.frame_tokens(features, "anything")[:, 1:], expected, rtol=1e-5, atol=1e-5)


def test_half_precision_shards_load_exactly_and_cast_to_the_requested_dtype(tmp_path):
    model_dir = make_tiny_checkpoint(tmp_path, TinySpec(weights_dtype="bfloat16", weights_format="safetensors"))
    m32 = LlamaVid.from_pretrained(model_dir)
    m16 = LlamaVid.from_pretrained(model_dir, dtype=torch.bfloat16)
    w32 = m32.model.context_attention.key_projector.weight
    assert w32.dtype == torch.float32 and torch.equal(w32.to(torch.bfloat16).float(), w32)  # bf16 values, exact
    assert m16.model.language_model.model.embed_tokens.weight.dtype == torch.bfloat16
    f = m32.encode_frames(m32.preprocess(FRAMES))
    t32, t16 = m32.frame_tokens(f, "the car"), m16.frame_tokens(f, "the car")
    assert t16.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(t32.flatten(), t16.float().flatten(), dim=0) > 0.99


# -- errors ---------------------------------------------------------------------------------------
@pytest.fixture
def tiny_root(tmp_path):
    make_tiny_checkpoint(tmp_path)
    return tmp_path


def _edit_config(root, **changes):
    path = root / "model" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _edit_shards(root, fn):
    for shard in sorted((root / "model").glob("pytorch_model-*.bin")):
        state = torch.load(shard, weights_only=True)
        fn(state)
        torch.save(state, shard)
        return  # the first shard is enough


def test_model_dir_without_weights(tiny_root):
    for f in (tiny_root / "model").glob("pytorch_model*"):
        f.unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        LlamaVid.from_pretrained(tiny_root / "model")


def test_index_naming_a_missing_shard(tiny_root):
    next((tiny_root / "model").glob("pytorch_model-*.bin")).unlink()
    with pytest.raises(CheckpointError, match="lists shards that are not in"):
        LlamaVid.from_pretrained(tiny_root / "model")


def test_vision_tower_of_the_wrong_width(tiny_root, tmp_path_factory):
    other = make_tiny_checkpoint(tmp_path_factory.mktemp("wide"), TinySpec(vision_width=264)).parent
    with pytest.raises(CheckpointError, match="vision tower width 264 .* mm_hidden_size 176"):
        LlamaVid.from_pretrained(tiny_root / "model", vision_tower=other / "model_zoo/LAVIS/eva_vit_g.pth")


@pytest.mark.parametrize("field,value,message", [
    ("compress_type", "max", "unknown compress_type 'max'"),
    ("compress_type", "grid:1", "grid size must be >= 2"),
    ("mm_projector_type", "mlp2x_relu", "unknown mm_projector_type 'mlp2x_relu'"),
    ("bert_type", "raw_bert", "bert_type 'raw_bert' is not supported"),
])
def test_config_naming_unknown_options(tiny_root, field, value, message):
    _edit_config(tiny_root, **{field: value})
    with pytest.raises(ValueError, match=message):
        LlamaVid.from_pretrained(tiny_root / "model")


def test_missing_vision_tower_names_the_path_and_the_download(tiny_root):
    (tiny_root / "model_zoo/LAVIS/eva_vit_g.pth").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"vision tower './model_zoo/LAVIS/eva_vit_g.pth' not found.*eva_vit_g.pth"):
        LlamaVid.from_pretrained(tiny_root / "model")


def test_missing_qformer_offline_says_how_to_provide_it(tiny_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import shutil
    shutil.rmtree(tiny_root / "bert-base-uncased")
    with pytest.raises(FileNotFoundError, match="bert-base-uncased.*huggingface-cli download"):
        LlamaVid.from_pretrained(tiny_root / "model")


def test_processor_falls_back_to_the_bundled_official_config(tiny_root):
    _edit_config(tiny_root, image_processor="./llamavid/processor/clip-patch14-224")
    m = LlamaVid.from_pretrained(tiny_root / "model")
    assert m.config.vision.image_size == 224 and m.config.vision.grid == 16  # pos_embed interpolated from 8x8
    assert m.encode_frames(m.preprocess(FRAMES)).shape == (3, 257, 176)


def test_unexpected_missing_and_mismatched_keys_are_named(tiny_root):
    _edit_shards(tiny_root, lambda s: s.update({"model.extra_head.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="unexpected in the checkpoint: .*model.extra_head.weight"):
        LlamaVid.from_pretrained(tiny_root / "model")


def test_shape_mismatch_is_named(tiny_root):
    def shrink(state):
        key = next(k for k in state if k.endswith("self_attn.q_proj.weight"))
        state[key] = state[key][:, :8]
    _edit_shards(tiny_root, shrink)
    with pytest.raises(CheckpointError, match=r"q_proj.weight: checkpoint \(64, 8\) vs model \(64, 64\)"):
        LlamaVid.from_pretrained(tiny_root / "model")


def test_pickles_are_refused(tiny_root):
    shard = next((tiny_root / "model").glob("pytorch_model-*.bin"))
    import fractions  # any non-tensor global stands in for a malicious pickle
    torch.save({"model.embed_tokens.weight": torch.zeros(1), "evil": fractions.Fraction(1, 3)}, shard)
    with pytest.raises(Exception, match="(?i)weights only load failed"):
        LlamaVid.from_pretrained(tiny_root / "model")


# -- rotary frequencies beyond max_position_embeddings --------------------------------------------
INV_FREQ = "self_attn.rotary_emb.inv_freq"


def _edit_every_shard(model_dir, fn):
    for shard in sorted(model_dir.glob("pytorch_model-*.bin")):
        state = torch.load(shard, weights_only=True)
        fn(state)
        torch.save(state, shard)


def _logits_pair(tmp_path, rope_scaling):
    """The same bfloat16 checkpoint (max_position_embeddings 16) loaded with and without its stored
    inv_freq copies."""
    spec = TinySpec(weights_dtype="bfloat16", max_position_embeddings=16, rope_scaling=rope_scaling)
    with_copies = make_tiny_checkpoint(tmp_path / "with", spec)
    without = make_tiny_checkpoint(tmp_path / "without", spec)
    _edit_every_shard(without, lambda s: [s.pop(k) for k in [k for k in s if k.endswith(INV_FREQ)]])
    return LlamaVid.from_pretrained(with_copies), LlamaVid.from_pretrained(without), with_copies


def test_linear_rope_rotates_longer_prompts_with_the_stored_frequencies(tmp_path):
    m, exact, model_dir = _logits_pair(tmp_path, {"type": "linear", "factor": 2.0})
    embeds = torch.randn(40, 64, generator=torch.Generator().manual_seed(0))
    # up to max_position_embeddings: the exact frequencies (4.31 built that cache at construction)
    torch.testing.assert_close(m.logits(embeds[:16]), exact.logits(embeds[:16]), rtol=0, atol=0)
    # longer: every position, from the first, rotates with the checkpoint's bfloat16 copy / factor
    long_logits = m.logits(embeds)
    assert (long_logits[:16] - exact.logits(embeds)[:16]).abs().max() > 1e-4
    stored = next(v for shard in model_dir.glob("pytorch_model-*.bin")
                  for k, v in torch.load(shard, weights_only=True).items() if k.endswith(INV_FREQ))
    assert stored.dtype == torch.bfloat16
    rotary = exact.model.language_model.model.rotary_emb  # reference: exact model, frequencies replaced
    rotary.inv_freq = rotary.original_inv_freq = stored.float() / 2
    torch.testing.assert_close(long_logits, exact.logits(embeds), rtol=0, atol=0)


def test_dynamic_rope_never_uses_the_stored_frequencies(tmp_path):
    m, exact, _ = _logits_pair(tmp_path, {"type": "dynamic", "factor": 2.0})
    embeds = torch.randn(40, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.logits(embeds), exact.logits(embeds), rtol=0, atol=0)


def test_stored_frequencies_that_differ_between_layers_are_named(tiny_root):
    def change_layer_1(state):
        if f"model.layers.1.{INV_FREQ}" in state:
            state[f"model.layers.1.{INV_FREQ}"] = state[f"model.layers.1.{INV_FREQ}"] * 1.01
    _edit_every_shard(tiny_root / "model", change_layer_1)
    with pytest.raises(CheckpointError, match=r"inv_freq is different in layers \[1\] from layer 0"):
        LlamaVid.from_pretrained(tiny_root / "model")
