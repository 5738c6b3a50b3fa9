"""An index remembers its models: ingested with a config of relative paths from one folder, it
is asked, monitored and opened from another; fingerprints identify weights, not folders; models
moved together with the index are found again; a model folder moved alone is named in the error,
and found again through --config."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from indexer.demo import SCENES, write_tiny
from indexer.llamavid.tiny import TinySpec
from indexer.store.root import IndexRoot

QUESTION = "When is the blue disc on screen?"


def vidx(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


def relative_config(folder: Path, models: str) -> Path:
    """Settings naming the tiny models by paths relative to `folder` (as configs/tiny.yaml does)."""
    path = folder / f"{models.replace('/', '-')}.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"model_dir": f"{models}/model"}, "embedding": {"model": f"{models}/clip"},
        "reader": {"fps": 1.0}, "encoder": {"max_batch_frames": 16}, "index": {"commit_interval_s": 1.0},
        "ingest": {"reader_num_cpus": 0.25}, "query": {"k": 8, "max_new_tokens": 8}}))
    return path


def test_fingerprints_identify_weights_not_where_they_lie(tmp_path):
    from indexer.embedding import ImageTextEmbedder
    from indexer.encoding import model_fingerprint
    from indexer.llamavid import LlamaVid

    tiny = write_tiny(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    b = tmp_path / "elsewhere" / "b"
    assert ImageTextEmbedder(tiny.clip).fingerprint == ImageTextEmbedder(b / "clip").fingerprint
    assert model_fingerprint(LlamaVid.from_pretrained(tiny.model)) == model_fingerprint(
        LlamaVid.from_pretrained(b / "model"))
    other = write_tiny(tmp_path / "other", TinySpec(num_query=8))
    assert model_fingerprint(LlamaVid.from_pretrained(other.model)) != model_fingerprint(
        LlamaVid.from_pretrained(tiny.model))


@pytest.mark.timeout(900)  # several commands, each loading torch and the models: minutes on a busy machine
def test_an_index_made_with_relative_paths_works_from_any_folder_and_names_a_moved_model(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    tiny = write_tiny(a / "out" / "tiny")
    config = relative_config(a, "out/tiny")
    ingest = vidx("ingest", "clip=out/tiny/sample.mp4", "--index", "runs/idx", "--config", config.name,
                  "--no-progress", cwd=a)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    index = a / "runs" / "idx"
    saved = yaml.safe_load((index / "ingest-config.yaml").read_text())  # absolute paths
    assert saved["model"]["model_dir"] == str(tiny.model) and saved["embedding"]["model"] == str(tiny.clip)

    # from another folder: ask (the CLI), QueryEngine.open (what vidx serve runs), monitor
    ask = vidx("ask", str(index), QUESTION, "--json", cwd=b)
    assert ask.returncode == 0, ask.stderr[-3000:]
    assert {c["stream_id"] for c in json.loads(ask.stdout)["citations"]} == {"clip"}

    from indexer.query.engine import QueryEngine

    monkeypatch.chdir(b)
    engine = QueryEngine.open(IndexRoot.at(index))
    try:
        hits = engine.search(image=SCENES[0].picture(), k=3)
        assert sorted(h.pts_s for h in hits) == [6.0, 7.0, 8.0]
    finally:
        engine.close()
    watch = vidx("watch", "add", str(index), "a blue disc", cwd=b)
    assert watch.returncode == 0, watch.stderr
    monitor = vidx("monitor", f"more={tiny.sample}", "--index", str(index), "--no-progress", cwd=b)
    assert monitor.returncode == 0, monitor.stderr[-3000:]
    assert "more: 20 frames" in monitor.stdout and "frame evaluations" in monitor.stdout

    # the index and its models move together: found again relative to the index
    a2 = tmp_path / "a2"
    shutil.move(a, a2)
    together = vidx("ask", str(a2 / "runs" / "idx"), QUESTION, "--json", cwd=b)
    assert together.returncode == 0, together.stderr[-3000:]
    assert json.loads(together.stdout)["citations"]

    # the model folder alone moves: the error names where it was and the remedy; --config finds it again
    shutil.move(a2 / "out" / "tiny", a2 / "out" / "moved")
    lost = vidx("ask", str(a2 / "runs" / "idx"), QUESTION, cwd=b)
    assert lost.returncode == 2
    assert str(tiny.model) in lost.stderr and "not there any more" in lost.stderr and "--config" in lost.stderr
    assert len(lost.stderr.strip().splitlines()) == 1
    moved = relative_config(a2, "out/moved")
    found = vidx("ask", "runs/idx", QUESTION, "--config", moved.name, "--json", cwd=a2)
    assert found.returncode == 0, found.stderr[-3000:]
    assert json.loads(found.stdout)["citations"]
