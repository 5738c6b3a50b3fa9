"""`manifest.json`: the one file that says what the index root holds. Everything a reader may
see is listed here; a commit is the atomic replacement of this file."""

from __future__ import annotations

import hashlib
import json
import os

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.store.files import TMP_SUFFIX, write_atomic_json
from indexer.store.integrity import FileChecksum, IndexDamaged, check_file, verify_file
from indexer.store.root import IndexRoot

FORMAT_VERSION = 1


class Layout(BaseModel):
    """What the stored arrays are: fixed when an index is created, checked on every ingest."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_fingerprint: str                # indexer.encoding.model_fingerprint: the weights, wherever they lie
    model_name: str                       # where the model was at the first ingest (for people, not checked)
    feature_shape: tuple[int, int]        # (1+N, C) per frame
    feature_format: str                   # float16 | int4 | none
    content_shape: tuple[int, int]        # (P, D) per frame
    embedding_model: str                  # where the retrieval embedding was at the first ingest (not checked)
    embedding_dim: int
    embedding_fingerprint: str = ""       # ImageTextEmbedder.fingerprint ("": an index older than this field)

    def differences(self, other: Layout) -> list[str]:
        """What makes `other` write data this index cannot hold: every field but the two names."""
        return [f"{name}: index has {getattr(self, name)!r}, this ingest makes {getattr(other, name)!r}"
                for name in type(self).model_fields if name not in ("model_name", "embedding_model")
                and getattr(self, name) != getattr(other, name)]


class Segment(BaseModel):
    """One commit's rows of one stream: contiguous frame ids."""

    model_config = ConfigDict(extra="forbid")

    generation: int
    first_frame_id: int
    frames: int
    gaps: int
    timeline: str                          # path relative to the root
    features: list[str] = Field(default_factory=list)
    bytes: dict[str, int] = Field(default_factory=dict)
    feature_format: str | None = None      # what `features` hold (retention converts); None: the layout's
    start_s: float | None = None           # media time of its first and last frame (None: an older
    end_s: float | None = None             # manifest's segment; store/retention.py reads them once)
    wall_end: float | None = None          # unix time its last frame was captured (live sources)
    thumbnails: bool = True                # False: retention rewrote its timeline without thumbnails

    def format_name(self, layout: Layout) -> str:
        """The format of this segment's stored features: float16, int4 or none."""
        if self.frames and not self.features:
            return "none"
        return self.feature_format or layout.feature_format


class Liveness(BaseModel):
    """A live source's reader, as it last reported: at `reported_at` (unix time) it had waited for
    a frame from the source since `waiting_since` (None: frames were arriving). The monitor's
    signal-lost rule reads it, so an outage is noticed while the source is still down."""

    model_config = ConfigDict(extra="forbid")

    reported_at: float
    waiting_since: float | None = None

    @property
    def waited_s(self) -> float:
        return self.reported_at - self.waiting_since if self.waiting_since is not None else 0.0


class StreamEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream_id: str
    uri: str
    protocol: str
    live: bool
    fps: float
    next_index: int = 0                    # resume watermark: first sample index not committed
    watermark_s: float | None = None       # media time of the last committed frame
    duration_s: float | None = None
    frames: int = 0
    gaps: int = 0
    last_gap: tuple[int, float] | None = None   # (sample index, start) of the last committed gap
    complete: bool = False
    error: str | None = None
    liveness: Liveness | None = None       # live sources: the reader's last report (see Liveness)
    warning: str | None = None             # what of the source could not be read (ends early, damage), with ranges
    segments: list[Segment] = Field(default_factory=list)

    def check_resume(self, uri: str, fps: float) -> None:
        """A rerun resumes this stream only from the same source at the same fps."""
        if self.uri != uri:
            raise ValueError(f"stream id {self.stream_id!r} already holds {self.uri}, not {uri}; "
                             "name the new source differently (NAME=URI)")
        if abs(self.fps - fps) > 1e-9:
            raise ValueError(f"stream {self.stream_id!r} ({uri}) was indexed at {self.fps} fps, not {fps}; "
                             f"resume it with --fps {self.fps} or index it into a new --index")


class VectorShard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generation: int
    file: str
    vectors: int
    bytes: int


class EmbeddingChunk(BaseModel):
    """float16 retrieval embeddings of frames [first_frame_id, first_frame_id + frames): an .npy file
    read memory-mapped to rescore the approximate index's candidates."""

    model_config = ConfigDict(extra="forbid")

    file: str
    first_frame_id: int
    frames: int
    bytes: int


class ApproximateIndex(BaseModel):
    """The approximate (IVF + 4-bit PQ fast-scan) index over frame ids [0, frames); frames after it
    (the tail) stay in exact vector shards until the writer adds them."""

    model_config = ConfigDict(extra="forbid")

    generation: int                        # the commit whose data `file` was last built from
    factory: str                           # faiss.index_factory string, e.g. "IVF1024,PQ256x4fs"
    metric: str = "L2"                     # on unit vectors L2 ranks like inner product
    nlist: int
    pq_bytes: int                          # code bytes per vector
    nprobe: int                            # the writer's search settings when it was built
    refine: int
    trained_frames: int                    # vectors indexed when it was trained (retrained after growth)
    training_sample: int
    frames: int                            # covers frame ids [0, frames)
    file: str
    bytes: int
    embeddings: list[EmbeddingChunk] = Field(default_factory=list)
    build_s: float = 0.0                   # seconds the last build or extension took

    def files(self) -> set[str]:
        return {self.file, *(chunk.file for chunk in self.embeddings)}

    def total_bytes(self) -> int:
        return self.bytes + sum(chunk.bytes for chunk in self.embeddings)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    generation: int = 0
    next_frame_id: int = 0
    layout: Layout | None = None
    streams: dict[str, StreamEntry] = Field(default_factory=dict)
    vectors: list[VectorShard] = Field(default_factory=list)   # exact shards: frames `approximate` lacks
    approximate: ApproximateIndex | None = None
    checksums: dict[str, FileChecksum] = Field(default_factory=dict)  # every file of files(), written at commit

    def files(self) -> set[str]:
        """Every data file the manifest refers to (relative paths)."""
        names = {shard.file for shard in self.vectors}
        if self.approximate is not None:
            names |= self.approximate.files()
        for stream in self.streams.values():
            for segment in stream.segments:
                names.add(segment.timeline)
                names.update(segment.features)
        return names

    def damaged_files(self, root: IndexRoot, full: bool = False) -> list[IndexDamaged]:
        """Every damaged file this manifest lists: by the cheap check, or (`full`) by every byte."""
        check = verify_file if full else check_file
        damage = []
        for name in sorted(self.files()):
            try:
                check(root.path, name, self.checksums.get(name))
            except IndexDamaged as exc:
                damage.append(exc)
        return damage


def read_manifest(root: IndexRoot, previous: bool = False) -> Manifest | None:
    """The last committed manifest (`previous`: the one before it), or None for a new (empty) root.
    A manifest that is not the one a commit wrote (unparsable, or its own checksum differs) raises
    IndexDamaged."""
    path = root.previous_manifest if previous else root.manifest
    name = path.name
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IndexDamaged(root.path, name, f"not readable JSON: {exc}") from None
    written = value.pop("checksum", None) if isinstance(value, dict) else None
    if written is not None and written != _manifest_checksum(value):
        raise IndexDamaged(root.path, name, "its checksum differs from the one written at its commit")
    try:
        manifest = Manifest.model_validate(value)
    except ValidationError as exc:
        raise IndexDamaged(root.path, name, f"not an llamavid-indexer manifest: {exc.errors()[0]['msg']} at "
                                            f"{'.'.join(map(str, exc.errors()[0]['loc']))}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest.format_version}, this version reads {FORMAT_VERSION}")
    return manifest


def write_manifest(root: IndexRoot, manifest: Manifest) -> None:
    """Commit: replace the manifest atomically, with a checksum of its own content. The one it
    replaces stays as the previous manifest (a hard link: no copy), for `vidx repair`."""
    value = manifest.model_dump(mode="json")
    if root.manifest.exists():
        link = root.previous_manifest.with_name(root.previous_manifest.name + TMP_SUFFIX)
        link.unlink(missing_ok=True)
        os.link(root.manifest, link)
        os.replace(link, root.previous_manifest)
        link.unlink(missing_ok=True)  # still there when both names were one file (a crash came between these steps)
    write_atomic_json(root.manifest, {**value, "checksum": _manifest_checksum(value)})


def _manifest_checksum(value: dict) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


__all__ = ["FORMAT_VERSION", "ApproximateIndex", "EmbeddingChunk", "Layout", "Liveness", "Manifest", "Segment",
           "StreamEntry", "VectorShard", "read_manifest", "write_manifest"]
