import json

import numpy as np
import pytest
from pydantic import ValidationError

from indexer.query.search import FrameSearch
from indexer.settings import SearchSettings
from indexer.store import IndexReader, ann
from indexer.store.root import IndexRoot
from tests.store.embedded import EmbeddingWriter, clustered

DIM = 64
SMALL = SearchSettings(exact_max_vectors=2000)


def grow(root, frames: int, seed: int, stream: str = "cam", search: SearchSettings = SMALL) -> None:
    """Commit `frames` more frames of one stream, 1,000 per commit, in a writer session of its own."""
    w = EmbeddingWriter(root, DIM, search)
    emb = clustered(frames, DIM, seed)
    for lo in range(0, frames, 1000):
        w.add(stream, emb[lo:lo + 1000])
        w.commit()
    w.close()


def files_on_disk(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "vectors").rglob("*") if p.is_file()}


def test_the_manifest_records_the_approximate_index_and_readers_use_it(tmp_path):
    grow(tmp_path, 2000, seed=0)
    assert IndexReader(IndexRoot.at(tmp_path)).manifest.approximate is None  # at most exact_max_vectors: exact
    grow(tmp_path, 1000, seed=1)
    index = IndexReader(IndexRoot.at(tmp_path))
    a = index.manifest.approximate
    assert a is not None and index.manifest.vectors == []  # the shards went into it
    assert (a.factory, a.nlist, a.pq_bytes, a.metric) == (f"IVF{a.nlist},PQ64x4fs", 46, 32, "L2")
    assert (a.nprobe, a.refine, a.frames, a.trained_frames, a.generation) == (16, 16, 3000, 3000, 3)
    assert a.training_sample == min(3000, 64 * a.nlist) and a.build_s > 0
    assert [(c.first_frame_id, c.frames) for c in a.embeddings] == [(0, 3000)]
    for name, size in [(a.file, a.bytes)] + [(c.file, c.bytes) for c in a.embeddings]:
        assert (tmp_path / name).stat().st_size == size
    assert files_on_disk(tmp_path) == a.files()  # the folded shards were deleted
    assert index.sizes()["vectors"] == a.total_bytes()
    saved = json.loads((tmp_path / "manifest.json").read_text())["approximate"]
    assert saved["factory"] == a.factory and saved["frames"] == 3000
    assert FrameSearch(index, SMALL).kind.startswith(f"{a.factory} over 3000 frames nprobe=16 refine=16")
    everything = index.vectors()  # exact, every frame (float16-rounded where approximate)
    assert everything.ntotal == 3000 and everything.search(clustered(1000, DIM, 1)[-1:], 1)[1][0, 0] == 2999


def test_the_index_grows_by_adding_tails_then_retrains_after_fourfold_growth(tmp_path):
    grow(tmp_path, 3000, seed=0)
    first = IndexReader(IndexRoot.at(tmp_path)).manifest.approximate
    grow(tmp_path, 2000, seed=1)  # 2,000 left exact: a tail, not yet added
    index = IndexReader(IndexRoot.at(tmp_path))
    assert index.manifest.approximate == first and index.shard_vectors().ntotal == 2000
    grow(tmp_path, 1000, seed=2)  # 3,000 beyond it: added without retraining
    added = IndexReader(IndexRoot.at(tmp_path)).manifest.approximate
    assert (added.frames, added.trained_frames, added.factory) == (6000, 3000, first.factory)
    assert [(c.first_frame_id, c.frames) for c in added.embeddings] == [(0, 3000), (3000, 3000)]
    grow(tmp_path, 6000, seed=3)  # 12,000 = 4 x 3,000: retrained on everything, one chunk
    index = IndexReader(IndexRoot.at(tmp_path))
    retrained = index.manifest.approximate
    assert retrained.trained_frames == retrained.frames == 12000 and retrained.nlist == 128
    assert [(c.first_frame_id, c.frames) for c in retrained.embeddings] == [(0, 12000)]
    assert files_on_disk(tmp_path) == retrained.files()
    emb = np.concatenate([clustered(n, DIM, s) for n, s in [(3000, 0), (2000, 1), (1000, 2), (6000, 3)]])
    search = FrameSearch(index, SMALL)
    for frame_id in (5, 4000, 11999):  # rows kept in order through the rebuild
        assert search.search(emb[frame_id], 1)[0].frame_id == frame_id


def test_parameters_follow_the_size_and_the_dimension():
    assert ann.choose_nlist(1_000_000, None) == 1024 and ann.choose_nlist(3000, None) == 46  # sample-bound
    assert ann.choose_nlist(1_000_000, 4096) == 4096
    assert ann.choose_subquantizers(512, 128) == 256 and ann.choose_subquantizers(64, 128) == 64
    assert ann.choose_subquantizers(96, 20) == 32  # largest divisor of 96 within 40 codes
    with pytest.raises(ValueError, match="at least 1000 vectors"):
        ann.build(None, 1, [ann.VectorBlock(0, np.zeros((10, 8), np.float32))], None, 4, 1, 1)
    with pytest.raises(ValueError, match="consecutive frame ids"):
        ann.build(None, 1, [ann.VectorBlock(5, np.zeros((10, 8), np.float32))], None, 4, 1, 1)
    with pytest.raises(ValidationError, match="greater than or equal to 1000"):
        SearchSettings(exact_max_vectors=10)
