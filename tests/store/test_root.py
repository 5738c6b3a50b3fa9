"""`IndexRoot` owns the index root's layout: no other module of the library or the actors names a
file or folder of it, or takes a file lock; its lock refuses a second holder and dies with its
process; its crash clean-up removes what no commit lists; the saved settings come back."""

from __future__ import annotations

import ast
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from indexer.store.root import IndexRoot

REPO = Path(__file__).resolve().parents[2]
OWNER = REPO / "indexer" / "store" / "root.py"
FILE_NAMES = ("manifest.json", "manifest.prev.json", "ingest-config.yaml", "source-uris.json", "writer.lock",
              "monitor.lock", "queries.lock", "queries.json", "state.json", "deliveries.jsonl")
FOLDERS = ("monitor", "alerts", "clips", "recordings", "outbox", "timeline", "features", "vectors")
FOLDER_IN_PATH = re.compile(r"(?:^|/)(" + "|".join(FOLDERS) + r")/")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def layout_literals(path: Path, base: Path = REPO) -> list[str]:
    """Where `path` names a file or folder of an index root itself: a string (not a docstring)
    holding one of the file names, a relative path through one of the folders, or a folder name
    joined onto a path with `/`."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = _docstrings(tree)
    joined = {id(side) for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              for side in (node.left, node.right)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
            continue
        text = node.value
        names = [name for name in FILE_NAMES if name in text]
        if "/api/" not in text and not text.startswith("/"):  # "/api/alerts/...", "/alerts/{id}": URL routes
            names += FOLDER_IN_PATH.findall(text)
        if id(node) in joined and text in FOLDERS:
            names.append(text)
        found += [f"{path.relative_to(base)}:{node.lineno}: {name!r} in {text!r}" for name in names]
    return found


def sources() -> list[Path]:
    return [p for folder in ("indexer", "actors") for p in sorted((REPO / folder).rglob("*.py")) if p != OWNER]


def test_only_index_root_names_the_roots_files_and_takes_file_locks():
    assert len(sources()) > 50
    literals = [hit for path in sources() for hit in layout_literals(path)]
    assert literals == [], "name these through IndexRoot (indexer/store/root.py):\n" + "\n".join(literals)
    flocks = [f"{p.relative_to(REPO)}:{n}" for p in sources() for n, line in enumerate(p.read_text().splitlines(), 1)
              if "fcntl" in line]
    assert flocks == [], "take file locks through IndexRoot: " + ", ".join(flocks)


def test_the_literal_check_finds_what_it_looks_for(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(textwrap.dedent('''
        """A docstring may say manifest.json and monitor/clips/."""
        from pathlib import Path
        a = Path("x") / "manifest.json"
        b = Path("x") / "monitor" / "q"
        c = f"timeline/stream={a}/part.parquet"
        d = "/api/alerts/stream"
        e = "alerts"
    '''))
    hits = layout_literals(planted, base=tmp_path)
    assert sorted(h.split(":")[1] for h in hits) == ["4", "5", "6"]


def test_it_resolves_once_pickles_small_and_refuses_an_unresolved_path(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    root = IndexRoot.at(tmp_path / "link" / ".." / "link")
    assert root.path == (tmp_path / "real").resolve() and str(root) == str(root.path)
    assert pickle.loads(pickle.dumps(root)) == root and len(pickle.dumps(root)) < 200
    assert root.recording_dir("cam").is_relative_to(root.recordings_dir)
    assert root.outbox.is_relative_to(root.monitor_dir)
    with pytest.raises(ValueError, match=r"IndexRoot\.at"):
        IndexRoot(Path("relative/index"))


HOLD = """
import sys, time
from indexer.store.root import IndexRoot
lock = getattr(IndexRoot.at(sys.argv[1]), sys.argv[2])()
print("held", flush=True)
time.sleep(600)
"""


def _holder(root: IndexRoot, which: str) -> subprocess.Popen:
    """Another process that takes the lock and keeps it until it is killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(root), which], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.mark.parametrize("which", ["lock_writer", "lock_monitor"])
def test_a_second_holder_is_refused_naming_the_root_until_the_first_process_dies(tmp_path, which):
    root = IndexRoot.at(tmp_path / "index")
    root.create()
    child = _holder(root, which)
    try:
        with pytest.raises(RuntimeError) as refused:
            getattr(root, which)()
        message = str(refused.value)
        assert str(root) in message and "\n" not in message and ("writing" in message or "monitor" in message)
    finally:
        child.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the flock
        child.wait(30)
    getattr(root, which)().release()  # free again
    with getattr(root, which)():
        with pytest.raises(RuntimeError):  # within one process too: each holder opens its own file
            getattr(root, which)()


def test_the_writer_and_the_monitor_locks_are_independent(tmp_path):
    root = IndexRoot.at(tmp_path)
    with root.lock_writer(), root.lock_monitor():
        pass


def test_the_queries_lock_waits_for_its_holder(tmp_path):
    root = IndexRoot.at(tmp_path)
    order = []
    with root.queries_locked():
        def second() -> None:
            with root.queries_locked():
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(30)
    assert order == ["first", "second"]


def test_the_crash_clean_up_removes_what_no_commit_lists(tmp_path):
    root = IndexRoot.at(tmp_path)
    timeline = root / IndexRoot.timeline_file("cam", 1)
    orphan = root / IndexRoot.timeline_file("cam", 2)
    half = root / (IndexRoot.ann_file(2) + ".tmp")
    outside = tmp_path / "notes.txt"   # not a data folder: never touched
    manifest_tmp = root.manifest.with_name(root.manifest.name + ".tmp")
    for path in (timeline, orphan, half, outside, manifest_tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    removed = root.remove_uncommitted_index({IndexRoot.timeline_file("cam", 1)})
    assert sorted(removed) == sorted([orphan, half, manifest_tmp])
    assert timeline.exists() and outside.exists() and not orphan.exists() and not half.exists()

    kept, crashed = root.monitor_dir / IndexRoot.alerts_file(1), root.monitor_dir / IndexRoot.alerts_file(2)
    for path in (kept, crashed, root.monitor_state):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert root.remove_uncommitted_alerts({IndexRoot.alerts_file(1)}) == [crashed]
    assert kept.exists() and root.monitor_state.exists()


def test_the_settings_come_back_and_follow_models_moved_with_the_index(tmp_path):
    from indexer.settings import Settings

    models = tmp_path / "place" / "models"
    for name in ("llamavid", "eva.pth", "processor", "bert", "clip"):
        (models / name).mkdir(parents=True)
    settings = Settings.model_validate({"model": {
        "model_dir": str(models / "llamavid"), "vision_tower": str(models / "eva.pth"),
        "image_processor": str(models / "processor"), "qformer": str(models / "bert")},
        "embedding": {"model": str(models / "clip")}, "reader": {"fps": 2.0}})
    root = IndexRoot.at(tmp_path / "place" / "index")
    root.create()
    root.save_settings(settings)
    assert root.has_settings() and root.settings_file.stat().st_mode & 0o777 == 0o600
    assert root.load_settings() == settings
    assert yaml.safe_load(root.settings_file.read_text())["reader"]["fps"] == 2.0

    (tmp_path / "place").rename(tmp_path / "moved")   # the index and its models moved together
    moved = IndexRoot.at(tmp_path / "moved" / "index")
    assert moved.load_settings().model.model_dir == str(tmp_path / "moved" / "models" / "llamavid")
    with pytest.raises(FileNotFoundError, match="not an index made by vidx ingest"):
        IndexRoot.at(tmp_path / "nowhere").load_settings()
