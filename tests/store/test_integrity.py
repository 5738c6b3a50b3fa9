"""Damaged index files are found and named, never answered from; `vidx repair` rolls back so that a
re-ingest gives every frame exactly once. Real files written by IndexWriter, damaged on disk."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from actors.cli import main
from indexer.batches import EncodedBatch
from indexer.store import IndexReader, IndexWriter
from indexer.store.integrity import IndexDamaged
from indexer.store.manifest import read_manifest
from indexer.store.repair import check_index, repair_index
from indexer.store.root import IndexRoot
from tests.store.test_writer import LAYOUT, batch, info

SEGMENTS = 3      # commits of FRAMES frames each
FRAMES = 4
SOURCE = batch(0, SEGMENTS * FRAMES)   # what the source gives, every time it is read


def part(lo, hi):
    """Samples [lo, hi) of SOURCE as a reader would send them."""
    s = SOURCE
    return EncodedBatch(s.stream_id, lo, hi, s.indices[lo:hi], s.pts_s[lo:hi], s.wall_time[lo:hi], s.subtitles[lo:hi],
                        [], s.features[lo:hi], s.content[lo:hi], s.embedding[lo:hi], s.thumbnails[lo:hi])


def build(root):
    """An index of one stream, `SEGMENTS` commits of `FRAMES` frames; returns the writer (closed)."""
    w = IndexWriter(IndexRoot.at(root), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    for s in range(SEGMENTS):
        assert w.append(part(s * FRAMES, (s + 1) * FRAMES)).accepted
        w.commit()
    w.close()
    return read_manifest(IndexRoot.at(root))


def segment_file(root, i, kind):
    segment = read_manifest(IndexRoot.at(root)).streams["cam"].segments[i]
    return segment.timeline if kind == "timeline" else segment.features[0]


def overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_clean_index_verifies_and_every_file_has_a_checksum(tmp_path):
    manifest = build(tmp_path)
    assert set(manifest.checksums) == manifest.files() and len(manifest.files()) == 3 * SEGMENTS
    assert check_index(IndexRoot.at(tmp_path), full=True) == []
    # page checksums are on in the timeline files
    meta = pq.ParquetFile(tmp_path / segment_file(tmp_path, 0, "timeline")).metadata
    assert meta.num_rows == FRAMES


def test_0xff_in_a_features_file_is_named_not_answered_from(tmp_path):
    build(tmp_path)
    name = segment_file(tmp_path, 1, "features")
    size = (tmp_path / name).stat().st_size
    overwrite(tmp_path / name, size // 2 - 64, b"\xff" * 128)
    reader = IndexReader(IndexRoot.at(tmp_path))
    with pytest.raises(IndexDamaged, match=name) as caught:
        reader.features(np.arange(FRAMES, 2 * FRAMES))
    assert caught.value.file == name and "vidx repair" in str(caught.value)
    np.testing.assert_array_equal(reader.features([0]), SOURCE.features[[0]])  # intact segments still read
    assert [d.file for d in check_index(IndexRoot.at(tmp_path), full=True)] == [name]


def large_features_index(root):
    """One segment of 4 frames of 64 KiB of features each (the middle frames lie past the cheap
    check's 64 KiB ends); returns (the batch written, the features file's name)."""
    big = LAYOUT.model_copy(update={"feature_shape": (512, 64)})
    w = IndexWriter(IndexRoot.at(root), big)
    w.open_stream(info(), 1.0, "file")
    b = batch(0, 4)
    b.features = np.random.default_rng(0).normal(size=(4, 512, 64)).astype(np.float16)
    w.append(b)
    w.close()
    name = read_manifest(IndexRoot.at(root)).streams["cam"].segments[0].features[0]
    assert (root / name).stat().st_size > 200_000
    return b, name


def test_0xff_in_the_middle_of_a_large_features_file_is_named_at_its_first_read(tmp_path):
    b, name = large_features_index(tmp_path)
    overwrite(tmp_path / name, 128 + 2 * 65536 + 100, b"\xff" * 200)  # frame 2, never in the ends
    assert check_index(IndexRoot.at(tmp_path)) == []  # the cheap check cannot see it ...
    with pytest.raises(IndexDamaged, match=name):  # ... the first read of the file does, whichever frame it wants
        IndexReader(IndexRoot.at(tmp_path)).features([1])
    assert [d.file for d in check_index(IndexRoot.at(tmp_path), full=True)] == [name]


def test_finite_random_bytes_in_the_middle_of_a_features_file_are_named_not_answered_from(tmp_path):
    """Damage that reads as plausible numbers (no NaN for the finiteness check to see): only the
    checksum knows, and it is checked when the file is first opened."""
    b, name = large_features_index(tmp_path)
    finite = np.random.default_rng(1).normal(size=100).astype(np.float16).tobytes()
    overwrite(tmp_path / name, 128 + 2 * 65536 + 100, finite)  # frame 2's values, still finite
    assert check_index(IndexRoot.at(tmp_path)) == []
    with pytest.raises(IndexDamaged, match=name) as caught:
        IndexReader(IndexRoot.at(tmp_path)).features([2])
    assert caught.value.file == name and "SHA-256" in caught.value.reason and "vidx repair" in str(caught.value)


def test_a_features_file_is_checked_in_full_once_per_process(tmp_path, monkeypatch):
    """Whole-file hashing happens at the first open in the process (a new reader after each
    commit does not repeat it); a file changed since is checked again."""
    from indexer.store import integrity

    b, name = large_features_index(tmp_path)
    hashed = []
    real = integrity.checksum_file

    def counted(path):
        hashed.append(path.relative_to(tmp_path).as_posix())
        return real(path)

    monkeypatch.setattr(integrity, "checksum_file", counted)
    for _ in range(3):  # the server makes a reader per refresh
        np.testing.assert_array_equal(IndexReader(IndexRoot.at(tmp_path)).features([2]), b.features[[2]])
    assert hashed == [name]
    finite = np.random.default_rng(1).normal(size=100).astype(np.float16).tobytes()
    overwrite(tmp_path / name, 128 + 2 * 65536 + 100, finite)
    os.utime(tmp_path / name, ns=(1, 1))  # another mtime even on a file system with coarse times
    with pytest.raises(IndexDamaged, match=name):
        IndexReader(IndexRoot.at(tmp_path)).features([2])
    assert hashed == [name, name]


@pytest.mark.parametrize("damage", ["truncated", "missing", "extended"])
def test_a_truncated_missing_or_extended_features_file_is_named(tmp_path, damage):
    build(tmp_path)
    name = segment_file(tmp_path, 2, "features")
    path = tmp_path / name
    if damage == "truncated":
        os.truncate(path, path.stat().st_size - 100)
    elif damage == "missing":
        path.unlink()
    else:
        with open(path, "ab") as f:
            f.write(b"\0" * 10)
    with pytest.raises(IndexDamaged, match=name):
        IndexReader(IndexRoot.at(tmp_path)).features([2 * FRAMES])
    assert [d.file for d in check_index(IndexRoot.at(tmp_path))] == [name]  # the cheap check finds these


def test_random_bytes_in_a_timeline_page_are_named(tmp_path):
    build(tmp_path)
    name = segment_file(tmp_path, 1, "timeline")
    path = tmp_path / name
    # inside the first column chunk's data pages, past the 4-byte magic
    column = pq.ParquetFile(path).metadata.row_group(0).column(13)  # thumbnail: a page a broken JPEG came from
    overwrite(path, column.data_page_offset + column.total_compressed_size // 2,
              np.random.default_rng(0).bytes(8))
    with pytest.raises(IndexDamaged, match=name):
        IndexReader(IndexRoot.at(tmp_path)).timeline("cam")
    with pytest.raises(IndexDamaged, match=name):
        IndexReader(IndexRoot.at(tmp_path)).frame_row(FRAMES, ["thumbnail"])
    assert [d.file for d in check_index(IndexRoot.at(tmp_path), full=True)] == [name]


def test_a_damaged_vector_shard_is_named(tmp_path):
    manifest = build(tmp_path)
    name = manifest.vectors[1].file
    size = (tmp_path / name).stat().st_size
    overwrite(tmp_path / name, size - 20, b"\x7f" * 8)  # an embedding's bytes
    with pytest.raises(IndexDamaged, match=name):
        IndexReader(IndexRoot.at(tmp_path)).vectors()


def test_a_damaged_manifest_is_named_and_repair_restores_the_previous_commit(tmp_path):
    build(tmp_path)
    text = IndexRoot.at(tmp_path).manifest.read_text()
    value = json.loads(text)
    value["streams"]["cam"]["frames"] = 999  # valid JSON, valid schema: only the checksum tells
    IndexRoot.at(tmp_path).manifest.write_text(json.dumps(value))
    with pytest.raises(IndexDamaged, match="manifest.json"):
        IndexReader(IndexRoot.at(tmp_path))
    lines = repair_index(IndexRoot.at(tmp_path))
    assert any("restored the previous commit" in line for line in lines)
    manifest = read_manifest(IndexRoot.at(tmp_path))
    assert manifest.streams["cam"].frames == (SEGMENTS - 1) * FRAMES  # the commit before the last
    assert check_index(IndexRoot.at(tmp_path), full=True) == []
    reingest_and_check_every_frame_once(tmp_path)


def reingest_and_check_every_frame_once(root):
    """What a re-ingest does: resume each stream at its watermark and send to the end."""
    w = IndexWriter(IndexRoot.at(root), LAYOUT)
    entry = w.open_stream(info(), 1.0, "file")
    total = SEGMENTS * FRAMES
    assert w.append(part(entry.next_index, total)).accepted
    w.commit()
    w.close()
    reader = IndexReader(IndexRoot.at(root))
    frames = reader.timeline("cam").to_pydict()
    assert sorted(frames["sample_index"]) == list(range(total))  # every frame exactly once
    assert reader.vectors().ntotal == total
    for frame_id, sample in zip(frames["frame_id"], frames["sample_index"]):  # features match the source's
        np.testing.assert_array_equal(reader.features([frame_id])[0], SOURCE.features[sample])
    assert check_index(IndexRoot.at(root), full=True) == []


@pytest.mark.parametrize("kind", ["features", "timeline"])
def test_repair_drops_the_damaged_segment_and_later_ones_then_a_reingest_fills_them_once(tmp_path, kind):
    build(tmp_path)
    name = segment_file(tmp_path, 1, kind)
    overwrite(tmp_path / name, 200, b"\xff" * 64)
    with pytest.raises(IndexDamaged, match=name):  # a writer refuses it: nothing is appended to damage
        IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    lines = repair_index(IndexRoot.at(tmp_path))
    assert lines[0].startswith(name) and any("from sample 4" in line for line in lines)
    manifest = read_manifest(IndexRoot.at(tmp_path))
    assert manifest.streams["cam"].next_index == FRAMES and manifest.streams["cam"].frames == FRAMES
    assert IndexReader(IndexRoot.at(tmp_path)).vectors().ntotal == FRAMES  # the dropped frames' vectors went too
    assert not (tmp_path / name).exists()
    reingest_and_check_every_frame_once(tmp_path)


def test_repair_of_a_damaged_vector_shard_rebuilds_it_from_the_timeline(tmp_path):
    manifest = build(tmp_path)
    overwrite(tmp_path / manifest.vectors[0].file, 100, b"\x00" * 16)
    repair_index(IndexRoot.at(tmp_path))
    reader = IndexReader(IndexRoot.at(tmp_path))
    assert reader.manifest.streams["cam"].frames == SEGMENTS * FRAMES  # no frame lost
    _, ids = reader.vectors().search(SOURCE.embedding[2:3], 1)
    assert ids[0, 0] == 2 and reader.vectors().ntotal == SEGMENTS * FRAMES
    assert repair_index(IndexRoot.at(tmp_path))[0].endswith("nothing to repair")


def test_vidx_info_exits_1_naming_the_damage_and_vidx_repair_fixes_it(tmp_path, capsys):
    build(tmp_path)
    name = segment_file(tmp_path, 2, "features")
    size = (tmp_path / name).stat().st_size
    overwrite(tmp_path / name, size // 2, b"\x01\x02\x03")
    assert main(["info", str(tmp_path), "--verify"]) == 1
    out = capsys.readouterr()
    assert f"DAMAGED {name}" in out.out and "vidx repair" in out.err
    os.truncate(tmp_path / name, 10)
    assert main(["info", str(tmp_path)]) == 1
    assert main(["repair", str(tmp_path)]) == 0
    assert main(["info", str(tmp_path), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out


def test_a_damaged_manifest_fails_vidx_info_with_exit_1(tmp_path, capsys):
    build(tmp_path)
    IndexRoot.at(tmp_path).manifest.write_bytes(b"\xff" * 100)
    assert main(["info", str(tmp_path)]) == 1
    assert "manifest.json" in capsys.readouterr().err


def test_random_bytes_inside_a_large_timeline_file_are_caught_by_the_page_checksums(tmp_path):
    """Past the cheap check's 64 KiB ends: the Parquet page checksums find it on the read."""
    w = IndexWriter(IndexRoot.at(tmp_path), LAYOUT)
    w.open_stream(info(), 1.0, "file")
    b = batch(0, 4)
    b.thumbnails = [np.random.default_rng(i).bytes(100_000) for i in range(4)]  # incompressible: a 400 KB file
    w.append(b)
    w.close()
    name = read_manifest(IndexRoot.at(tmp_path)).streams["cam"].segments[0].timeline
    path = tmp_path / name
    size = path.stat().st_size
    assert size > 300_000
    overwrite(path, size // 2, np.random.default_rng(9).bytes(16))
    assert check_index(IndexRoot.at(tmp_path)) == []  # the cheap check cannot see it ...
    with pytest.raises(IndexDamaged, match=name):  # ... the page checksums can, in a scan of many files
        IndexReader(IndexRoot.at(tmp_path)).timeline()
    with pytest.raises(IndexDamaged, match=name):
        IndexReader(IndexRoot.at(tmp_path)).timeline(columns=["thumbnail"])


def test_damage_in_the_approximate_index_is_named_and_repair_rebuilds_it(tmp_path):
    from indexer.query.search import FrameSearch, SearchFilter
    from indexer.settings import SearchSettings
    from tests.store.test_ann import DIM, grow

    search = SearchSettings(exact_max_vectors=1000)
    grow(tmp_path, 1200, seed=0, search=search)  # an IVF index and an embedding chunk over 1200 frames
    approximate = read_manifest(IndexRoot.at(tmp_path)).approximate
    assert approximate is not None and approximate.frames == 1200
    chunk = approximate.embeddings[0].file
    overwrite(tmp_path / chunk, 128 + 600 * DIM * 2, b"\xff" * 64)  # frame 600's float16 embedding
    assert check_index(IndexRoot.at(tmp_path)) == []  # in the middle: the cheap check cannot see it ...
    reader = IndexReader(IndexRoot.at(tmp_path))
    with pytest.raises(IndexDamaged, match=chunk):  # ... rescoring every candidate meets frame 600
        FrameSearch(reader, search).search(np.ones(DIM, np.float32), 5, SearchFilter(None, 590.0, 610.0))
    overwrite(tmp_path / approximate.file, (tmp_path / approximate.file).stat().st_size // 2, b"\x00" * 32)
    with pytest.raises(IndexDamaged, match=approximate.file):
        IndexReader(IndexRoot.at(tmp_path)).approximate()
    lines = repair_index(IndexRoot.at(tmp_path))
    assert any("rebuilt from the timeline (1200 frames)" in line for line in lines)
    reader = IndexReader(IndexRoot.at(tmp_path))
    assert reader.manifest.approximate is None and reader.vectors().ntotal == 1200
    assert check_index(IndexRoot.at(tmp_path), full=True) == []
