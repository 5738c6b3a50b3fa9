"""Retention policies and `vidx prune` on real indexes: ffmpeg-made files decoded with PyAV, encoded
with the tiny LLaMA-VID and CLIP, and written by the real IndexWriter one commit per
FRAMES_PER_COMMIT frames, so each stream has segments of known media times.

Each stream is 12 s sampled at 1 fps: frames at 0..11 s in four segments ending at 2, 5, 8 and
11 s, whose media-time ages (to the newest frame, 11 s) are 9, 6, 3 and 0 s."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from indexer.batches import FrameBatch, SampledFrame
from indexer.media.reader import SourceReader
from indexer.media.source import parse_source
from indexer.settings import RetentionSettings, Settings, load_settings
from indexer.store import IndexReader, IndexWriter
from indexer.store.features import Int4Features, stored_bytes
from indexer.store.info import describe_index
from indexer.store.manifest import read_manifest
from indexer.store.retention import human_bytes, prune_index
from indexer.store.root import IndexRoot
from indexer.store.timeline import read_timeline
from tests.indexes import make_planted_video, tiny_settings

FRAMES_PER_COMMIT = 3
SEGMENT_ENDS = [2.0, 5.0, 8.0, 11.0]
AGED = {"float16_s": 4, "int4_s": 4}   # ages 9, 6, 3, 0 -> none, int4, float16, float16


@dataclass
class Built:
    root: Path                           # a real index, never changed: tests prune copies of it
    settings: Settings
    videos: dict[str, Path]
    encoder: object                      # the FrameEncoder it was made with
    features: dict[int, np.ndarray]      # frame id -> float16 features as ingested


def ingest_in_commits(root: Path, settings: Settings, encoder, videos: dict[str, Path],
                      retention: RetentionSettings | None = None) -> None:
    """Decode each video, encode FRAMES_PER_COMMIT frames at a time and commit each batch."""
    writer = IndexWriter(IndexRoot.at(root), encoder.layout(), commit_interval_s=1e9, retention=retention)
    for sid, path in videos.items():
        source = parse_source(str(path), sid)
        reader = SourceReader(source, settings.reader)
        info = reader.open()
        writer.open_stream(info, settings.reader.fps, source.protocol)
        frames = [s for s in reader.samples() if isinstance(s, SampledFrame)]
        reader.close()
        for lo in range(0, len(frames), FRAMES_PER_COMMIT):
            chunk = frames[lo:lo + FRAMES_PER_COMMIT]
            writer.append(encoder([FrameBatch.of(sid, chunk[0].index, chunk, [], chunk[-1].index + 1)])[0])
            writer.commit()
        writer.finish_stream(sid)
    writer.close()
    IndexRoot.at(root).save_settings(settings.model_copy(
        update={"index": settings.index.model_copy(update={"retention": retention or RetentionSettings()})}))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    from indexer.encoding import FrameEncoder

    work = tmp_path_factory.mktemp("retention")
    settings = tiny_settings(work)
    videos = {"a": make_planted_video(work / "a.mp4", 12.0, None),
              "b": make_planted_video(work / "b.mp4", 12.0, (3.0, 5.0))}
    encoder = FrameEncoder.from_settings(settings)
    root = work / "index"
    ingest_in_commits(root, settings, encoder, videos)
    index = IndexReader(IndexRoot.at(root))
    ids = np.arange(index.manifest.next_frame_id)
    for entry in index.manifest.streams.values():
        assert [seg.end_s for seg in entry.segments] == SEGMENT_ENDS
    return Built(root, settings, videos, encoder, dict(zip(ids.tolist(), index.features(ids))))


def copy_index(built: Built, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built.root, tmp_path / "index"))


def formats(root: Path) -> dict[str, list[str]]:
    index = IndexReader(IndexRoot.at(root))
    return {sid: [seg.format_name(index.layout) for seg in entry.segments]
            for sid, entry in sorted(index.manifest.streams.items())}


def files_on_disk(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for folder in IndexRoot.DATA_DIRS for p in (root / folder).rglob("*")
            if p.is_file()}


def assert_features_as_policy(root: Path, built: Built) -> None:
    """Every frame gives the features its segment's format keeps: float16 as ingested, int4 as the
    int4 encoding of those, none an error naming the frames; content tokens and embeddings stay."""
    index = IndexReader(IndexRoot.at(root))
    int4 = Int4Features()
    for entry in index.manifest.streams.values():
        for seg in entry.segments:
            ids = list(range(seg.first_frame_id, seg.first_frame_id + seg.frames))
            original = np.stack([built.features[i] for i in ids])
            fmt = seg.format_name(index.layout)
            if fmt == "float16":
                np.testing.assert_array_equal(index.features(ids), original)
            elif fmt == "int4":
                np.testing.assert_array_equal(index.features(ids), int4.decode(int4.encode(original)))
            else:
                with pytest.raises(ValueError, match=f"no patch features for frames {ids[0]}"):
                    index.features(ids)
    before, after = IndexReader(IndexRoot.at(built.root)).timeline(), index.timeline()
    for column in ("frame_id", "pts_s", "content_tokens", "embedding"):
        assert after.column(column).equals(before.column(column))


def test_a_policy_converts_float16_to_int4_then_drops_features_by_media_age(built, tmp_path):
    root = copy_index(built, tmp_path)
    policy = RetentionSettings.model_validate({**AGED, "streams": {"b": {"float16_s": None}}})  # b keeps float16
    size_before = sum((root / f).stat().st_size for f in files_on_disk(root))
    report = prune_index(IndexRoot.at(root), policy)
    assert formats(root) == {"a": ["none", "int4", "float16", "float16"], "b": ["float16"] * 4}
    assert_features_as_policy(root, built)
    assert files_on_disk(root) == read_manifest(IndexRoot.at(root)).files()
    assert read_manifest(IndexRoot.at(root)).damaged_files(IndexRoot.at(root), full=True) == []
    size_after = sum((root / f).stat().st_size for f in files_on_disk(root))
    assert sum(step.frees for step in report.steps) == size_before - size_after > 0
    assert report.lines()[0].startswith("a 0.0-2.0 s: features dropped (1 segments, 1 files), freed ")
    assert report.lines()[1].startswith("a 3.0-5.0 s: float16 -> int4 (1 segments, 1 files), freed ")
    again = prune_index(IndexRoot.at(root), policy)  # nothing left to do
    assert not again.steps and "keeps everything stored" in again.lines()[-1]


def test_thumbnails_go_by_age_and_the_timeline_rows_stay(built, tmp_path):
    root = copy_index(built, tmp_path)
    prune_index(IndexRoot.at(root), RetentionSettings(thumbnails_s=4))
    index = IndexReader(IndexRoot.at(root))
    for seg in index.manifest.streams["a"].segments:
        thumbnails = read_timeline(root, seg.timeline, ["thumbnail"]).column("thumbnail").to_pylist()
        if seg.end_s < 11 - 4:
            assert not seg.thumbnails and seg.timeline.endswith(".nothumbs.parquet") and set(thumbnails) == {None}
        else:
            assert seg.thumbnails and all(t and t[:2] == b"\xff\xd8" for t in thumbnails)  # JPEG
    assert formats(root) == {"a": ["float16"] * 4, "b": ["float16"] * 4}
    assert_features_as_policy(root, built)
    assert files_on_disk(root) == index.manifest.files()
    from indexer.query.engine import QueryEngine

    engine = QueryEngine.open(IndexRoot.at(root))  # the thumbnail API answers 404 (KeyError) with why
    with pytest.raises(KeyError, match="frame 0 has no thumbnail any more: the index's retention policy dropped it"):
        engine.thumbnail(0)
    assert engine.thumbnail(index.manifest.next_frame_id - 1)[:2] == b"\xff\xd8"


def test_byte_caps_convert_then_drop_the_oldest_segments_first(built, tmp_path):
    root = copy_index(built, tmp_path)
    shape = IndexReader(IndexRoot.at(root)).layout.feature_shape
    segment_f16 = IndexReader(IndexRoot.at(root)).manifest.streams["a"].segments[0].bytes["features"]
    segment_int4 = stored_bytes(Int4Features(), FRAMES_PER_COMMIT, shape)
    prune_index(IndexRoot.at(root), RetentionSettings.model_validate(
        {"streams": {"a": {"float16_max_bytes": segment_f16, "int4_max_bytes": 2 * segment_int4}}}))
    assert formats(root) == {"a": ["none", "int4", "int4", "float16"], "b": ["float16"] * 4}
    index = IndexReader(IndexRoot.at(root))
    assert [seg.bytes.get("features", 0) for seg in index.manifest.streams["a"].segments] == [
        0, segment_int4, segment_int4, segment_f16]  # the planned int4 size is the written one
    assert_features_as_policy(root, built)


def test_the_writer_applies_the_policy_in_its_commits(built, tmp_path):
    root = tmp_path / "index"
    ingest_in_commits(root, built.settings, built.encoder, built.videos, RetentionSettings.model_validate(AGED))
    assert formats(root) == {"a": ["none", "int4", "float16", "float16"], "b": ["none", "int4", "float16", "float16"]}
    assert_features_as_policy(root, built)
    assert files_on_disk(root) == read_manifest(IndexRoot.at(root)).files()


def test_live_sources_age_by_the_wall_clock(tmp_path):
    """A live stream's segments age from the capture time of their newest frame, not media time:
    a camera that went quiet still has its old features converted."""
    from indexer.batches import SourceInfo
    from tests.store.test_writer import LAYOUT, batch

    root = IndexRoot.at(tmp_path)
    writer = IndexWriter(root, LAYOUT)
    writer.open_stream(SourceInfo("rtsp://127.0.0.1:1/cam", "cam", True, None, "h264", 320, 240, 25.0, False),
                       1.0, "rtsp")
    captured = 1_000_000.0
    for first in (0, 3):
        b = batch(first, 3)
        b.wall_time = captured + b.pts_s  # captured one frame a second
        writer.append(b)
        writer.commit()
    writer.close()
    policy = RetentionSettings(float16_s=10)
    assert not prune_index(root, policy, now=captured + 2 + 10).steps   # the older one's last frame: 10 s old
    report = prune_index(root, policy, now=captured + 5 + 10.5)         # both older than 10 s
    assert [step.action for step in report.steps] == ["float16 -> int4"] * 2
    assert formats(tmp_path) == {"cam": ["int4", "int4"]}


def test_prune_refuses_while_a_writer_holds_the_lock(built, tmp_path):
    root = copy_index(built, tmp_path)
    writer = IndexWriter(IndexRoot.at(root), IndexReader(IndexRoot.at(root)).layout)
    try:
        with pytest.raises(RuntimeError, match="another process is writing this index"):
            prune_index(IndexRoot.at(root), RetentionSettings.model_validate(AGED))
        dry = prune_index(IndexRoot.at(root), RetentionSettings.model_validate(AGED), dry_run=True)
        assert dry.steps  # a dry run only reads
    finally:
        writer.close()


def test_vidx_prune_dry_run_prints_what_goes_and_changes_nothing(built, tmp_path, capsys):
    from indexer.cli import main

    root = copy_index(built, tmp_path)
    config = tmp_path / "policy.yaml"
    config.write_text(json.dumps({"model": {"model_dir": "unused"}, "index": {"retention": {**AGED,
                                                                                           "thumbnails_s": 4}}}))
    manifest = (root / "manifest.json").read_bytes()
    assert main(["prune", str(root), "--dry-run", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("a 0.0-2.0 s: features dropped (1 segments, 1 files), would free ")
    assert out[1].startswith("a 3.0-5.0 s: float16 -> int4 (1 segments, 1 files), would free ")
    assert out[2].startswith("a 0.0-5.0 s: thumbnails dropped (2 segments, 2 files), would free ")
    assert out[-1].endswith("nothing changed (dry run)") and "would free" in out[-1]
    assert (root / "manifest.json").read_bytes() == manifest
    assert main(["prune", str(root), "--config", str(config)]) == 0
    assert "committed as generation" in capsys.readouterr().out
    assert formats(root)["a"] == ["none", "int4", "float16", "float16"]


def test_vidx_prune_uses_the_policy_the_index_was_ingested_with(built, tmp_path, capsys):
    from indexer.cli import main

    root = copy_index(built, tmp_path)
    IndexRoot.at(root).save_settings(built.settings.model_copy(update={"index": built.settings.index.model_copy(
        update={"retention": RetentionSettings.model_validate(AGED)})}))
    assert main(["prune", str(root)]) == 0
    assert formats(root)["b"] == ["none", "int4", "float16", "float16"]


def test_retention_bounds_are_checked_with_the_field_named(tmp_path):
    config = tmp_path / "bad.yaml"
    for value, message in (("-1", "greater than or equal to 0"), (".inf", "finite number")):
        config.write_text(f"model: {{model_dir: m}}\nindex: {{retention: {{streams: {{cam: {{int4_s: {value}}}}}}}}}\n")
        with pytest.raises(ValueError, match=f"index.retention.streams.cam.int4_s: Input should be .*{message}"):
            load_settings(config)


def test_info_shows_bytes_per_tier_and_stream_and_which_spans_give_context_tokens(built, tmp_path):
    root = copy_index(built, tmp_path)
    prune_index(IndexRoot.at(root), RetentionSettings.model_validate({**AGED, "thumbnails_s": 4}))
    lines = describe_index(IndexRoot.at(root))
    tiers = next(line for line in lines if line.startswith("tiers: "))
    assert "float16 features" in tiers and "int4 features" in tiers and "thumbnails" in tiers and "vectors" in tiers
    index = IndexReader(IndexRoot.at(root))
    a = [seg for seg in index.manifest.streams["a"].segments]
    f16 = sum(seg.bytes.get("features", 0) for seg in a if seg.format_name(index.layout) == "float16")
    stream_a = next(line for line in lines if line.startswith("  a: float16 features"))
    assert stream_a.startswith(f"  a: float16 features {human_bytes(f16)}, int4 features ")
    at = lines.index("context tokens from:")
    assert lines[at + 1] == (f"  a: 0.0-2.0 s no features stored: recomputable from the source {built.videos['a']}; "
                             "3.0-5.0 s int4 features; 6.0-11.0 s float16 features")
    assert lines[at + 2] == f"  b: 0.0-2.0 s no features stored: recomputable from the source {built.videos['b']}; " \
                            "3.0-5.0 s int4 features; 6.0-11.0 s float16 features"
    moved = built.videos["a"].with_suffix(".moved")
    built.videos["a"].rename(moved)
    try:
        assert (f"  a: 0.0-2.0 s no features stored and the source {built.videos['a']} is missing: content tokens "
                "only; 3.0-5.0 s int4 features; 6.0-11.0 s float16 features") in describe_index(IndexRoot.at(root))
    finally:
        moved.rename(built.videos["a"])


# -- a prune killed at a dozen moments (its file changes 1, 2, ..., the last), then run again --------------
KILLING_PRUNE = """
import os, signal, sys
root, policy, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
from indexer.settings import RetentionSettings
from indexer.store.retention import human_bytes, prune_index
from indexer.store.root import IndexRoot
steps = 0
def count(event, args):  # each change to a file under the root: SIGKILL before the kill_at-th
    global steps
    writes = (event == "open" and str(args[0]).startswith(root) and not str(args[0]).endswith("writer.lock")
              and (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR)
                   or isinstance(args[1], str) and set(args[1]) & set("wa+")))
    if writes or event in ("os.rename", "os.remove", "os.link") and str(args[0]).startswith(root):
        steps += 1
        if steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(count)
prune_index(IndexRoot.at(root), RetentionSettings.model_validate_json(policy))
print(steps)
"""


def run_killing_prune(root: Path, policy: RetentionSettings, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLING_PRUNE, str(root), policy.model_dump_json(), str(kill_at)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])


def test_a_prune_killed_at_a_dozen_moments_then_run_again_leaves_a_valid_index_of_manifest_files(built, tmp_path):
    policy = RetentionSettings.model_validate({**AGED, "thumbnails_s": 4})
    whole = run_killing_prune(copy_index(built, tmp_path / "whole"), policy, 0)
    assert whole.returncode == 0, whole.stderr
    changes = int(whole.stdout.split()[-1])
    assert changes >= 20  # new files, their renames, the manifest, the deletions
    expected = formats(tmp_path / "whole" / "index")
    generation = read_manifest(IndexRoot.at(built.root)).generation
    killed_before, killed_after = 0, 0
    for kill_at in sorted({1, 2, changes, *np.linspace(1, changes, 10).round().astype(int).tolist()}):
        root = copy_index(built, tmp_path / f"kill-{kill_at}")
        run = run_killing_prune(root, policy, kill_at)
        assert run.returncode == -signal.SIGKILL, run.stderr
        manifest = read_manifest(IndexRoot.at(root))  # the last commit is whole: every file it names intact, readable
        assert manifest.damaged_files(IndexRoot.at(root), full=True) == []
        IndexReader(IndexRoot.at(root)).timeline()
        killed_before += manifest.generation == generation
        killed_after += manifest.generation == generation + 1
        leftovers = (files_on_disk(root) - manifest.files()) | {n for n in os.listdir(root) if n == "manifest.json.tmp"}
        rerun = prune_index(IndexRoot.at(root), policy)
        if leftovers:
            assert rerun.lines()[0] == f"removed {len(leftovers)} files an interrupted commit left"
        assert files_on_disk(root) == read_manifest(IndexRoot.at(root)).files()
        assert read_manifest(IndexRoot.at(root)).damaged_files(IndexRoot.at(root), full=True) == []
        assert formats(root) == expected
        assert_features_as_policy(root, built)
        assert [name for name in os.listdir(root) if name.endswith(".tmp")] == [], kill_at
    assert killed_before and killed_after  # both crash windows were hit: before the commit and after it


def test_a_manifest_from_before_retention_reads_and_prunes(built, tmp_path):
    """Segments without a format or times (older manifests): the layout's format, times read from
    the timeline by the first prune, which records them."""
    root = copy_index(built, tmp_path)
    value = json.loads((root / "manifest.json").read_text())
    value.pop("checksum")
    for entry in value["streams"].values():
        for seg in entry["segments"]:
            for field in ("feature_format", "start_s", "end_s", "wall_end", "thumbnails"):
                seg.pop(field)
    (root / "manifest.json").write_text(json.dumps(value))
    assert formats(root) == {"a": ["float16"] * 4, "b": ["float16"] * 4}
    assert_features_as_policy(root, built)
    prune_index(IndexRoot.at(root), RetentionSettings.model_validate(AGED))
    assert formats(root) == {"a": ["none", "int4", "float16", "float16"], "b": ["none", "int4", "float16", "float16"]}
    assert [seg.end_s for seg in read_manifest(IndexRoot.at(root)).streams["a"].segments] == SEGMENT_ENDS
    assert_features_as_policy(root, built)


def test_prune_refuses_a_damaged_index_and_changes_nothing(built, tmp_path):
    from indexer.store.integrity import IndexDamaged

    root = copy_index(built, tmp_path)
    victim = read_manifest(IndexRoot.at(root)).streams["a"].segments[1].features[0]
    data = bytearray((root / victim).read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
    (root / victim).write_bytes(bytes(data))
    manifest = (root / "manifest.json").read_bytes()
    with pytest.raises(IndexDamaged, match=f"{victim}: damaged .*vidx repair"):
        prune_index(IndexRoot.at(root), RetentionSettings.model_validate(AGED))
    assert (root / "manifest.json").read_bytes() == manifest
    assert files_on_disk(root) == read_manifest(IndexRoot.at(root)).files()
