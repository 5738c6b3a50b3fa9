
from actors.cli import main


def test_info_describes_a_model(tiny_model_dir, capsys):
    assert main(["info", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "tokens per frame: 2 (1 context + 1 content)" in out
    assert "context length: 2048 tokens" in out
    assert "not found: nothing" in out
    assert "language model:" in out and "Q-Former:" in out


def test_info_lists_what_it_cannot_find(tmp_path, capsys):
    from indexer.llamavid.tiny import make_tiny_checkpoint

    model_dir = make_tiny_checkpoint(tmp_path)
    (tmp_path / "model_zoo/LAVIS/eva_vit_g.pth").unlink()
    assert main(["info", str(model_dir)]) == 1
    out = capsys.readouterr().out
    assert "not found:" in out and "eva_vit_g.pth" in out
    assert "bert_type: qformer_pretrain" in out  # what it could read is still shown


def test_info_rejects_a_missing_folder(capsys):
    assert main(["info", "/no/such/model"]) == 2
    assert "/no/such/model does not exist" in capsys.readouterr().err


def test_config_errors_name_the_file_and_field(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  model_dir: x\n  dtype: float8\n")
    assert main(["ingest", str(tmp_path / "clip.mp4"), "--index", str(tmp_path / "idx"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "dtype" in err


def test_shipped_configs_validate():
    from pathlib import Path

    from indexer.settings import load_settings

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        if path.name == "cluster.yaml":  # a Ray cluster-launcher file, not our settings
            continue
        assert load_settings(path).model.model_dir


def test_cluster_launcher_file_names_its_head_and_a_gpu_worker_type():
    from pathlib import Path

    import yaml

    cluster = yaml.safe_load((Path(__file__).parents[1] / "configs" / "cluster.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert any("gpu" in name for name in cluster["available_node_types"])
    assert cluster["provider"]["type"] and cluster["cluster_name"]
