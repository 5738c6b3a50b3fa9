"""Standing queries: validated, kept in the index root with their secrets private, and changed
by `vidx watch` while another process reads them."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from indexer.monitor import conditions
from indexer.monitor.frames import Frames
from indexer.monitor.queries import QueryIdTaken, QueryStore, StandingQuery, Webhook
from indexer.store.root import IndexRoot
from tests.actors.jobs import REPO


def test_store_create_pause_remove_and_errors(tmp_path):
    store = QueryStore(IndexRoot.at(tmp_path))
    assert store.load() == [] and store.version() is None
    store.create(id="fence", condition="a person climbs the fence", streams=["cam1"],
                 webhooks=[Webhook(url="http://127.0.0.1:9/hook")], allow_private_webhooks=True)
    assert store.create(kind="black").id == "q1"  # no id: the next free one
    assert [q.id for q in store.load()] == ["fence", "q1"]
    version = store.version()
    assert store.set_paused("fence", True).paused and store.get("fence").paused
    assert store.version() != version
    assert store.remove("q1").id == "q1" and [q.id for q in store.load()] == ["fence"]
    with pytest.raises(QueryIdTaken, match="already exists"):
        store.create(id="fence", kind="frozen")
    with pytest.raises(ValueError, match="points at 127.0.0.1"):  # checked before anything is written
        store.create(kind="black", webhooks=[{"url": "http://127.0.0.1:9/hook"}])
    assert [q.id for q in store.load()] == ["fence"]
    with pytest.raises(KeyError, match="nope.*fence"):
        store.remove("nope")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600   # holds webhook secrets
    secret = store.get("fence").webhooks[0].secret
    assert len(secret) >= 16 and secret not in json.dumps(store.get("fence").public())


def test_ids_given_out_at_once_are_distinct(tmp_path):
    """`create` picks the next free id under the file lock: queries added at the same moment (the
    HTTP API's threads, a `vidx watch add` beside it) never take the same one."""
    from concurrent.futures import ThreadPoolExecutor

    stores = [QueryStore(IndexRoot.at(tmp_path)) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda store: store.create(kind="black").id, stores))
    assert sorted(ids) == sorted(f"q{n}" for n in range(1, 9))
    assert sorted(q.id for q in QueryStore(IndexRoot.at(tmp_path)).load()) == sorted(ids)


@pytest.mark.parametrize("fields, message", [
    ({"id": "a"}, "needs the condition text"),
    ({"id": "a", "kind": "black", "condition": "x"}, "takes no condition"),
    ({"id": "a b", "kind": "black"}, "query id"),
    ({"id": "a", "kind": "black", "sensitivity": 2}, "sensitivity"),
    ({"id": "a", "kind": "black", "webhooks": [{"url": "ftp://x"}]}, "http"),
])
def test_invalid_queries_name_the_field(fields, message):
    with pytest.raises(ValidationError, match=message):
        StandingQuery.model_validate(fields)


def test_vidx_watch_commands(tmp_path):
    def vidx(*args):
        return subprocess.run([sys.executable, "-m", "actors.cli", "watch", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120, check=False)

    added = vidx("add", str(tmp_path), "a red car", "--id", "car", "--webhook", "http://127.0.0.1:8/h",
                 "--allow-private", "--secret", "s3cret-value", "--stream", "cam1", "--cooldown", "30")
    assert added.returncode == 0, added.stderr
    assert "s3cret" not in added.stdout + added.stderr and "secret as given (--secret)" in added.stdout  # no echo
    assert vidx("add", str(tmp_path), "--rule", "frozen").returncode == 0
    listing = vidx("list", str(tmp_path))
    assert "car: a red car [cam1]" in listing.stdout and "q1: frozen [all streams]" in listing.stdout
    assert "min 3 s" in listing.stdout and "s3cret" not in listing.stdout
    assert vidx("pause", str(tmp_path), "car").stdout.strip() == "car paused"
    assert json.loads(vidx("list", str(tmp_path), "--json").stdout)[0]["paused"] is True
    assert vidx("rm", str(tmp_path), "q1").returncode == 0
    bad = vidx("add", str(tmp_path))
    assert bad.returncode == 2 and "CONDITION" in bad.stderr
    missing = vidx("list", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    assert "no alerts" in vidx("alerts", str(tmp_path)).stdout


def _frames(images: list[np.ndarray]) -> Frames:
    import io

    from PIL import Image

    def jpeg(image):
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="JPEG", quality=80)
        return out.getvalue()

    n = len(images)
    return Frames("s", np.arange(n), np.arange(n), np.arange(n, dtype=float), np.full(n, np.nan),
                  np.zeros((n, 2), np.float32), [jpeg(i) for i in images])


def test_black_and_frozen_rules_on_thumbnails():
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:90, 0:160]
    scene = np.stack([xs * 1.5, ys * 2.5, 255 - xs], -1).astype(np.uint8)   # smooth, like a real picture
    scene[20:50, 40:90] = (250, 200, 30)
    dark_scene = (scene // 3).astype(np.uint8)               # night: dark but not black
    black = np.zeros_like(scene)
    noisy = np.clip(scene.astype(int) + rng.integers(-2, 3, scene.shape), 0, 255).astype(np.uint8)
    frames = _frames([scene, black, dark_scene, scene, scene, noisy])
    p99 = conditions.black_scores(frames)
    threshold = conditions.black_threshold(0.5)
    assert list(p99 <= threshold) == [False, True, False, False, False, False]
    change = conditions.frozen_scores(frames, None)
    frozen = change <= conditions.frozen_threshold(0.5)
    assert np.isinf(change[0]) and list(frozen) == [False, False, False, False, True, True]
    # the batch boundary: the first frame compares with the last image of the batch before
    assert conditions.frozen_scores(frames[4:], frames.image(3).astype(np.float32) @ np.array(
        [0.299, 0.587, 0.114], np.float32))[0] < 1.0


def test_yes_no_parsing():
    assert conditions.is_yes("Yes, a person climbs the fence.")
    assert conditions.is_yes("  \"yes.\" The car is red")
    assert not conditions.is_yes("No. Nothing like that.")
    assert not conditions.is_yes("yesterday a car passed")
    assert not conditions.is_yes("")
    assert "a red car" in conditions.verification_question("a red car.")
