"""The manifest holds the URI as shown; the URI with its password lives in a 0600 file."""

import stat

from indexer.batches import SourceInfo
from indexer.store import IndexReader, IndexWriter
from indexer.store.credentials import source_uri
from indexer.store.root import IndexRoot
from tests.store.test_writer import LAYOUT, batch


def open_cam(root, uri):
    w = IndexWriter(IndexRoot.at(root), LAYOUT)
    w.open_stream(SourceInfo(uri, "cam", True, None, "h264", 320, 240, 25.0, False), 1.0, "rtsp")
    return w


def test_the_password_is_kept_private_and_a_new_one_resumes_the_same_stream(tmp_path):
    w = open_cam(tmp_path, "rtsp://admin:first-pw@10.0.0.5/live?token=abc&ch=1")
    w.append(batch(0, 2))
    w.close()
    entry = IndexReader(IndexRoot.at(tmp_path)).manifest.streams["cam"]
    assert entry.uri == "rtsp://admin:***@10.0.0.5/live?token=***&ch=1"
    index = IndexReader(IndexRoot.at(tmp_path))
    timeline = index.timeline("cam", columns=["source_uri"]).column("source_uri").to_pylist()
    assert set(timeline) == {entry.uri}
    kept = IndexRoot.at(tmp_path).source_uris
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert source_uri(IndexRoot.at(tmp_path), entry) == "rtsp://admin:first-pw@10.0.0.5/live?token=abc&ch=1"
    assert "first-pw" not in (tmp_path / "manifest.json").read_text()

    w = open_cam(tmp_path, "rtsp://admin:rotated-pw@10.0.0.5/live?token=def&ch=1")  # a new password: same stream
    w.close()
    assert source_uri(IndexRoot.at(tmp_path), entry) == "rtsp://admin:rotated-pw@10.0.0.5/live?token=def&ch=1"
    assert "first-pw" not in kept.read_text()


def test_a_uri_without_secrets_writes_no_secrets_file(tmp_path):
    w = open_cam(tmp_path, "rtsp://10.0.0.5/live")
    w.close()
    assert not IndexRoot.at(tmp_path).source_uris.exists()
    root = IndexRoot.at(tmp_path)
    assert source_uri(root, IndexReader(root).manifest.streams["cam"]) == "rtsp://10.0.0.5/live"
