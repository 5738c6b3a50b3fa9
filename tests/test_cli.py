import subprocess
import sys

from indexer.cli import main


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


def test_demo_runs_end_to_end_as_a_console_script():
    result = subprocess.run([sys.executable, "-m", "indexer.cli", "demo", "--frames", "4"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tokens [4, 2, 64]" in result.stdout and "answer:" in result.stdout
