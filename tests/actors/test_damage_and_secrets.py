"""`vidx ingest` / `vidx info` / `vidx repair` on a real Ray runtime with the tiny models:
passwords in source URIs are shown nowhere (output, manifest, timeline, Ray logs) but kept 0600;
a damaged index is refused until repaired, answers HTTP 503 naming the file, and a re-ingest after
`vidx repair` gives every frame exactly once; absurd settings are refused before Ray starts."""

import socket
import stat
from pathlib import Path

import pytest
import ray
import yaml
from fastapi.testclient import TestClient

from actors.cli import main
from indexer.query.engine import QueryEngine
from indexer.server import create_app
from indexer.store import IndexReader
from indexer.store.manifest import read_manifest
from indexer.store.root import IndexRoot
from tests.actors.test_ingest import settings  # noqa: F401  (module fixture: tiny models, short timeouts)
from tests.mediagen import make_video

PASSWORD = "hunter2secret"
TOKEN = "tok3nSECRETvalue"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_logs():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield Path(ray._private.worker._global_node.get_logs_dir_path())
    ray.shutdown()


@pytest.fixture(scope="module")
def config(settings, tmp_path_factory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    value = settings.model_dump(mode="json")
    value["reader"].update(open_timeout_s=2.0, give_up_after_s=1.0)
    value["llm"]["api_key"] = "sk-not-for-others"
    path.write_text(yaml.safe_dump(value))
    return path


def everything_written(root: Path) -> str:
    """Every byte under the index root except the 0600 file meant to hold the secrets."""
    secrets = IndexRoot.at(root).source_uris
    return "".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file() and p != secrets)


@pytest.mark.parametrize(("fps", "says"), [("inf", "finite"), ("nan", "finite"),
                                           ("1000000", "less than or equal to 60"), ("0", "greater than 0")])
def test_absurd_fps_is_refused_in_one_line_before_ray_starts(config, tmp_path, capsys, fps, says):
    assert not ray.is_initialized()
    code = main(["ingest", str(tmp_path / "x.mp4"), "--index", str(tmp_path / "i"), "--config", str(config),
                 "--fps", fps])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "reader.fps" in err and says in err
    assert not ray.is_initialized() and not (tmp_path / "i").exists()


def test_passwords_are_shown_nowhere_but_kept_private(ray_logs, config, tmp_path, capsys):
    port = closed_port()
    video = make_video(tmp_path / "a.mp4", duration_s=3.0, fps=25, size=(160, 120))
    sources = [f"a={video}", f"rtsp://admin:{PASSWORD}@127.0.0.1:{port}",
               f"web=http://127.0.0.1:{port}/clip.mp4?channel=1&token={TOKEN}"]
    root = tmp_path / "index"
    assert main(["ingest", *sources, "--index", str(root), "--config", str(config), "--no-progress"]) == 1
    assert main(["info", str(root)]) == 0
    shown = capsys.readouterr()
    shown = shown.out + shown.err
    assert "FAILED" in shown and "admin:***@127.0.0.1" in shown  # the failure is shown, its password is not
    manifest = read_manifest(IndexRoot.at(root))
    assert any(sid.startswith("127.0.0.1-") for sid in manifest.streams)  # the host, not user:password
    assert manifest.streams["web"].uri.endswith("?channel=1&token=***")
    written = everything_written(root)
    logs = "".join(p.read_bytes().decode("latin-1") for p in ray_logs.rglob("*") if p.is_file())
    for secret in (PASSWORD, TOKEN):
        assert secret not in shown and secret not in written and secret not in logs
    kept = IndexRoot.at(root).source_uris
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and PASSWORD in kept.read_text() and TOKEN in kept.read_text()
    assert stat.S_IMODE((root / "ingest-config.yaml").stat().st_mode) == 0o600  # it holds llm.api_key


def test_a_damaged_index_is_refused_answers_503_and_is_repaired_to_every_frame_once(ray_logs, config, tmp_path,
                                                                                    capsys):
    video = make_video(tmp_path / "a.mp4", duration_s=6.0, fps=25, size=(160, 120))
    root = tmp_path / "index"
    ingest = ["ingest", f"a={video}", "--index", str(root), "--config", str(config), "--no-progress"]
    assert main(ingest) == 0
    manifest = read_manifest(IndexRoot.at(root))
    segments = manifest.streams["a"].segments
    assert manifest.streams["a"].frames == 6
    victim = next(seg for seg in segments if seg.frames).features[0]
    with open(root / victim, "r+b") as f:  # 0xFF over the first frame's features
        f.seek(128)
        f.write(b"\xff" * 4096)
    capsys.readouterr()

    engine = QueryEngine.open(IndexRoot.at(root))
    try:
        with TestClient(create_app(engine), base_url="http://127.0.0.1") as client:  # tokenless: loopback only
            reply = client.post("/api/ask", json={"question": "what is shown?"})
    finally:
        engine.close()
    assert reply.status_code == 503 and reply.json()["file"] == victim and victim in reply.json()["detail"]

    assert main(["info", str(root)]) == 1
    assert f"DAMAGED {victim}" in capsys.readouterr().out
    assert main(ingest) == 1  # refused: nothing appended to a damaged index
    assert "vidx repair" in capsys.readouterr().err
    assert main(["repair", str(root)]) == 0
    assert main(ingest) == 0
    assert main(["info", str(root), "--verify"]) == 0
    index = IndexReader(IndexRoot.at(root))
    frames = [r for r in index.timeline("a", columns=["kind", "sample_index", "frame_id"]).to_pylist()
              if r["kind"] == "frame"]
    assert sorted(r["sample_index"] for r in frames) == list(range(6))  # every frame exactly once
    assert index.vectors().ntotal == 6
    index.features([r["frame_id"] for r in frames])  # every kept and re-read frame is intact
