"""Commands that cannot succeed, or have nothing to do, say so in one line before Ray starts or a
model loads: `vidx ingest` (missing models, another fps, every stream complete, a locked index),
`vidx ask` (empty question, no index: before torch is imported), `vidx serve` (a port in use:
before the index's models are opened). Each runs `vidx` as a user does, in its own process, with
RAY_TMPDIR pointed at a folder of the test's: Ray not starting means that folder never appears."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from indexer.store.files import write_atomic_json
from indexer.store.manifest import Layout, Manifest, StreamEntry
from indexer.store.root import IndexRoot
from tests.actors.jobs import REPO, driver_env

STREAM = "clip.mp4-0123abcd"


def vidx(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
         check_imports: bool = False) -> subprocess.CompletedProcess:
    """`vidx ARGS`; with check_imports, stdout's last line says whether torch / Ray were imported."""
    code = "import sys; from actors.cli import main; rc = main(sys.argv[1:]); " + (
        "print('imported:', 'torch' in sys.modules, 'ray' in sys.modules); " if check_imports else "") + "sys.exit(rc)"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env or driver_env(), capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture
def ray_tmp(tmp_path) -> Path:
    """Where a Ray started by the command would put its session: must stay absent."""
    return tmp_path / "ray-tmp"


def env_with(ray_tmp: Path, **extra: str) -> dict[str, str]:
    return driver_env() | {"RAY_TMPDIR": str(ray_tmp)} | extra


def one_line_error(done: subprocess.CompletedProcess, command: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vidx {command}: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def fake_index(root: Path, fps: float = 1.0, complete: bool = True, uri: str = "/data/clip.mp4") -> Path:
    """An index root whose manifest holds one archived stream (what the pre-checks read)."""
    layout = Layout(model_fingerprint="f" * 16, model_name="tiny", feature_shape=(5, 32), feature_format="float16",
                    content_shape=(1, 64), embedding_model="clip", embedding_dim=32)
    entry = StreamEntry(stream_id=STREAM, uri=uri, protocol="file", live=False, fps=fps, next_index=6, frames=6,
                        duration_s=6.0, complete=complete)
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(layout=layout, streams={STREAM: entry})
    write_atomic_json(IndexRoot.at(root).manifest, manifest.model_dump(mode="json"))
    return root


def config(tmp_path: Path, **model: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": {"model_dir": str(tmp_path / "no-model"), **model},
                                    "embedding": {"model": str(tmp_path / "no-clip")}}))
    return path


def test_ingest_without_models_names_the_path_and_the_remedy_before_ray_starts(tmp_path, ray_tmp):
    done = vidx("ingest", str(tmp_path / "clip.mp4"), "--index", str(tmp_path / "idx"), "--config",
                str(config(tmp_path)), env=env_with(ray_tmp))
    assert done.returncode == 2
    line = one_line_error(done, "ingest")
    assert str(tmp_path / "no-model") in line and "vidx tiny out/tiny" in line and "configs/tiny.yaml" in line
    assert "Using a real checkpoint" in line
    assert not ray_tmp.exists()


def test_ingest_with_a_hub_model_not_downloaded_says_how_to_download_it(tmp_path, ray_tmp):
    done = vidx("ingest", str(tmp_path / "clip.mp4"), "--index", str(tmp_path / "idx"), "--config",
                str(REPO / "configs" / "default.yaml"),
                env=env_with(ray_tmp, HF_HUB_CACHE=str(tmp_path / "empty-cache"), HF_HUB_OFFLINE="1"))
    assert done.returncode == 2
    line = one_line_error(done, "ingest")
    assert "'YanweiLi/llama-vid-7b-full-224-video-fps-1' is not downloaded" in line
    assert "hf download YanweiLi/llama-vid-7b-full-224-video-fps-1" in line and "vidx tiny" in line
    assert not ray_tmp.exists()


def test_ingest_without_a_config_file_names_it(tmp_path, ray_tmp):
    done = vidx("ingest", "clip.mp4", "--index", str(tmp_path / "idx"), env=env_with(ray_tmp), cwd=tmp_path)
    assert done.returncode == 2
    line = one_line_error(done, "ingest")
    assert "settings file configs/default.yaml not found" in line and "configs/tiny.yaml" in line
    assert not ray_tmp.exists()


def test_ingest_with_nothing_to_do_says_so_and_exits_0_without_ray(tmp_path, ray_tmp):
    root = fake_index(tmp_path / "idx")
    done = vidx("ingest", f"{STREAM}=/data/clip.mp4", "--index", str(root), "--config",
                str(config(tmp_path)), env=env_with(ray_tmp))  # the models are not needed, so not checked
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert f"  {STREAM}: already complete (6.0 s)" in done.stdout
    assert "nothing to do: 1 source already indexed to the end" in done.stdout
    assert not ray_tmp.exists()


def test_ingest_at_another_fps_fails_before_ray(tmp_path, ray_tmp):
    root = fake_index(tmp_path / "idx", complete=False)
    done = vidx("ingest", f"{STREAM}=/data/clip.mp4", "--index", str(root), "--config", str(config(tmp_path)),
                "--fps", "2", env=env_with(ray_tmp))
    assert done.returncode == 2
    line = one_line_error(done, "ingest")
    assert "was indexed at 1.0 fps, not 2.0" in line and "--fps 1.0" in line
    assert not ray_tmp.exists()


def test_ingest_into_a_locked_index_fails_before_ray(tmp_path, ray_tmp):
    root = fake_index(tmp_path / "idx", complete=False)
    fd = os.open(root / "writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running ingest holds it
    try:
        done = vidx("ingest", f"{STREAM}=/data/clip.mp4", "--index", str(root), "--config", str(config(tmp_path)),
                    env=env_with(ray_tmp))
    finally:
        os.close(fd)
    assert done.returncode == 2
    assert "another process is writing this index" in one_line_error(done, "ingest")
    assert not ray_tmp.exists()


def test_python_m_actors_ingest_reports_errors_as_vidx_does(tmp_path, ray_tmp):
    root = fake_index(tmp_path / "idx", complete=False)
    done = subprocess.run([sys.executable, "-m", "actors.ingest", f"{STREAM}=/data/clip.mp4", "--index", str(root),
                           "--config", str(config(tmp_path)), "--fps", "2"], cwd=REPO, env=env_with(ray_tmp),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("ingest: error: ") and "was indexed at 1.0 fps" in done.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (("QUESTION", "  "), "the question is empty"),
    (("missing", "what happens?"), "no index here"),
])
def test_ask_reports_bad_arguments_before_torch_loads(tmp_path, args, expected):
    index = fake_index(tmp_path / "idx") if args[0] == "QUESTION" else tmp_path / "missing"
    done = vidx("ask", str(index), args[1], check_imports=True)
    assert done.returncode == 2
    assert expected in one_line_error(done, "ask")
    assert done.stdout.strip().splitlines()[-1] == "imported: False False"


def test_ask_stream_prefix_unknown_or_ambiguous_lists_the_streams(tmp_path):
    index = fake_index(tmp_path / "idx")
    unknown = vidx("ask", str(index), "what?", "--stream", "cam", check_imports=True)
    assert unknown.returncode == 2
    assert f"no stream 'cam' in {index} (streams: {STREAM})" in one_line_error(unknown, "ask")
    assert unknown.stdout.strip().splitlines()[-1] == "imported: False False"


def test_serve_finds_its_port_taken_before_opening_the_index(tmp_path):
    index = fake_index(tmp_path / "idx")  # no ingest-config.yaml, no models: opening it would fail otherwise
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = vidx("serve", str(index), "--port", str(port))
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in one_line_error(done, "serve") and "--port" in done.stderr
