"""`IndexRoot`: the one owner of an index root's layout.

Every file and folder under an index root is named here and nowhere else:

    <root>/manifest.json            the last commit (store/manifest.py); manifest.prev.json the one before
    <root>/ingest-config.yaml       the settings the index was made with (`save_settings`, `load_settings`)
    <root>/source-uris.json         source URIs with their secrets (store/credentials.py)
    <root>/writer.lock              held by the one writer (`lock_writer`)
    <root>/timeline/stream=<id>/    Parquet rows per commit     } data files: what the manifest lists;
    <root>/features/stream=<id>/    patch features per commit   } anything else there is a crashed
    <root>/vectors/                 FAISS shards, the ANN index } commit's leftover (`remove_uncommitted`)
    <root>/monitor/                 standing queries, their state, alerts, clips, webhook outbox
    <root>/recordings/<id>/         a live source's recording: stream-copied segments with media-time sidecars

It also holds the one file lock (an flock: the kernel releases it when its process dies, so a
crash never leaves a root locked) and the one crash clean-up that the writer and the monitor
share. An `IndexRoot` is made once at each entry point (CLI, actor, server) and passed down; it
is a frozen dataclass of one path, so it pickles small into Ray actors."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

import yaml

from indexer.store.files import TMP_SUFFIX, write_atomic

if TYPE_CHECKING:
    from indexer.settings import Settings

logger = logging.getLogger(__name__)

SAVED_AT = "# index: "  # ingest-config.yaml's first line: where the index was when it was saved


class RootLock:
    """An exclusive flock this process holds on a file of the root, until `release` or the
    process's death (the kernel drops it: no stale lock after a crash)."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock(path: Path, busy: str | None) -> RootLock:
    """Take the flock on `path`: waiting for it when `busy` is None, else refusing at once with
    RuntimeError(busy) when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(busy) from None
    except BaseException:
        os.close(fd)
        raise
    return RootLock(path, fd)


@dataclass(frozen=True)
class IndexRoot:
    """An index root, resolved once (absolute, symlinks followed): `IndexRoot.at("out/index")`."""

    path: Path

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path) or not self.path.is_absolute():
            raise ValueError(f"IndexRoot({self.path!r}): make it with IndexRoot.at(path), which resolves the path")

    @classmethod
    def at(cls, path: str | os.PathLike) -> IndexRoot:
        return cls(Path(path).expanduser().resolve())

    def __str__(self) -> str:   # error messages name the root as before: its path
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, relative: str) -> Path:
        """A file the manifest or the monitor state names, relative to the root."""
        return self.path / relative

    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    # -- the index (written by store/writer.py) ------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def previous_manifest(self) -> Path:
        """The commit before the last, kept (a hard link) for `vidx repair`."""
        return self.path / "manifest.prev.json"

    @property
    def settings_file(self) -> Path:
        return self.path / "ingest-config.yaml"

    @property
    def source_uris(self) -> Path:
        return self.path / "source-uris.json"

    @property
    def writer_lock_file(self) -> Path:
        return self.path / "writer.lock"

    DATA_DIRS = ("timeline", "features", "vectors")   # what the manifest lists lies only in these

    @staticmethod
    def timeline_file(stream_id: str, generation: int, thumbnails: bool = True) -> str:
        """A commit's Parquet rows of one stream, relative to the root (as the manifest lists it);
        `thumbnails=False`: the same rows rewritten without thumbnails by retention (store/retention.py)."""
        return f"timeline/stream={stream_id}/part-{generation:08d}{'' if thumbnails else '.nothumbs'}.parquet"

    @staticmethod
    def features_dir(stream_id: str) -> str:
        """Where a stream's patch feature files lie, relative to the root."""
        return f"features/stream={stream_id}"

    @staticmethod
    def features_stem(generation: int) -> str:
        """A commit's patch feature files' name before their suffixes (store/features.py adds them)."""
        return f"part-{generation:08d}"

    @staticmethod
    def vector_shard_file(generation: int, kind: str = "part") -> str:
        """An exact FAISS shard: "part" (a commit's), "merged" (shards merged) or "repaired"."""
        if kind not in ("part", "merged", "repaired"):
            raise ValueError(f"vector shard kind {kind!r}: one of part, merged, repaired")
        return f"vectors/{kind}-{generation:08d}.faiss"

    @staticmethod
    def ann_file(generation: int) -> str:
        """The approximate (IVF-PQ) index built from the data of commit `generation`."""
        return f"vectors/ivf-{generation:08d}.faiss"

    @staticmethod
    def embeddings_file(generation: int) -> str:
        """The float16 retrieval embeddings that the build from commit `generation` added to the approximate
        index."""
        return f"vectors/emb-{generation:08d}.f16.npy"

    # -- the monitor (indexer/monitor/) ---------------------------------------------------------------
    @property
    def monitor_dir(self) -> Path:
        return self.path / "monitor"

    @property
    def monitor_lock_file(self) -> Path:
        return self.monitor_dir / "monitor.lock"

    @property
    def queries(self) -> Path:
        """The standing queries (mode 0600: webhook secrets)."""
        return self.monitor_dir / "queries.json"

    @property
    def queries_lock_file(self) -> Path:
        return self.monitor_dir / "queries.lock"

    @property
    def monitor_state(self) -> Path:
        return self.monitor_dir / "state.json"

    @property
    def alerts_dir(self) -> Path:
        return self.monitor_dir / "alerts"

    @staticmethod
    def alerts_file(generation: int) -> str:
        """A monitor commit's alert rows, relative to `monitor_dir` (as state.json lists it)."""
        return f"alerts/alerts-{generation:08d}.parquet"

    @property
    def clips_dir(self) -> Path:
        """The alert clips: the only files the HTTP API serves as clips."""
        return self.monitor_dir / "clips"

    def clip_file(self, alert_id: str) -> Path:
        return self.clips_dir / f"{alert_id}.mp4"

    # -- recordings of live sources (indexer/media/ring.py writes, indexer/media/recording.py reads) -----
    @property
    def recordings_dir(self) -> Path:
        """The only folder the HTTP API serves a live stream's media from."""
        return self.path / "recordings"

    def recording_dir(self, stream_id: str) -> Path:
        """A live source's recording: `<seq>.ts` segments (stream copy) and `<seq>.json` sidecars,
        written by its reader, kept as `index.retention.recording_s` / `recording_bytes` say; clips,
        playback and recomputation read it."""
        if not stream_id or "/" in stream_id or stream_id in (".", ".."):
            raise ValueError(f"stream id {stream_id!r} cannot name a recording folder")
        return self.recordings_dir / stream_id

    @property
    def outbox_dir(self) -> Path:
        return self.monitor_dir / "outbox"

    @property
    def outbox(self) -> Path:
        """The webhook deliveries' durable log (mode 0600: it holds the receivers' secrets)."""
        return self.outbox_dir / "deliveries.jsonl"

    # -- locks ----------------------------------------------------------------------------------------
    def lock_writer(self) -> RootLock:
        """The one writer's lock: a second writer (or `vidx repair`) is refused at once. The root
        must exist (a mistyped root is not created here)."""
        return _lock(self.writer_lock_file, f"{self.path}: another process is writing this index (holds "
                                            f"{self.writer_lock_file.name}); wait for it or stop it first")

    def lock_monitor(self) -> RootLock:
        """The one monitor's lock: a second monitor on the same root is refused at once."""
        self.monitor_dir.mkdir(parents=True, exist_ok=True)
        return _lock(self.monitor_lock_file, f"another monitor is running on {self.path} "
                                             f"(lock {self.monitor_lock_file}); stop it first")

    @contextmanager
    def queries_locked(self) -> Iterator[None]:
        """Held around a read-modify-write of the standing queries: waits for another writer of them
        (`vidx watch`, the HTTP API), which holds it only for that short step."""
        self.monitor_dir.mkdir(parents=True, exist_ok=True)
        with _lock(self.queries_lock_file, None):
            yield

    # -- crash clean-up -------------------------------------------------------------------------------
    def remove_uncommitted(self, base: Path, folders: Iterable[str], keep: set[str],
                           temporaries: Iterable[Path] = ()) -> list[Path]:
        """Delete what a crashed commit left: every file under `base`/folder that `keep` (paths
        relative to `base`, as a manifest or the monitor state lists them) does not name, half-written
        `*.tmp` included, and the `temporaries` named. The caller holds the lock of what it cleans.
        Returns what was removed."""
        removed = []
        for folder in folders:
            top = base / folder
            for path in sorted(top.rglob("*")) if top.is_dir() else []:
                if path.is_file() and (path.relative_to(base).as_posix() not in keep or path.name.endswith(TMP_SUFFIX)):
                    logger.info("removing %s (not in the last commit)", path)
                    path.unlink()
                    removed.append(path)
        for path in temporaries:
            if path.name.endswith(TMP_SUFFIX) and path.exists():
                path.unlink()
                removed.append(path)
        return removed

    def remove_uncommitted_index(self, committed: set[str]) -> list[Path]:
        """The writer's clean-up on open: data files the manifest does not list, and its temporary."""
        return self.remove_uncommitted(self.path, self.DATA_DIRS, committed,
                                       [path.with_name(path.name + TMP_SUFFIX)
                                        for path in (self.manifest, self.previous_manifest)])

    def remove_uncommitted_alerts(self, committed: set[str]) -> list[Path]:
        """The monitor's clean-up on open: alert files its state does not list."""
        return self.remove_uncommitted(self.monitor_dir, [self.alerts_dir.name], committed)

    # -- the settings the index was made with ---------------------------------------------------------
    def save_settings(self, settings: Settings) -> None:
        """`settings`, model paths resolved, as the index's ingest-config.yaml: a later `vidx ask`,
        `serve` or `monitor` from any folder loads the same models. Its first line names the index's
        own place, so that models moved together with the index are found again."""
        from indexer.settings import resolve_model_paths

        data = (f"{SAVED_AT}{self.path}\n"
                + yaml.safe_dump(resolve_model_paths(settings).model_dump(mode="json"), sort_keys=False)).encode()
        write_atomic(self.settings_file, lambda f: f.write(data), mode=0o600)  # it may hold llm.api_key

    def has_settings(self) -> bool:
        return self.settings_file.is_file()

    def load_settings(self) -> Settings:
        """The settings the index was made with. A model path that is gone is looked for where it
        lies relative to the index (both moved together); if not there either, the error names the
        path and the remedy (`--config` with its new place; the fingerprints check the weights)."""
        from indexer.settings import load_settings, with_model_paths

        path = self.settings_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not an index made by vidx ingest, or pass the settings it "
                                    "was built with (--config)")
        settings = load_settings(path)
        first = path.read_text().partition("\n")[0]
        saved_at = Path(first.removeprefix(SAVED_AT)) if first.startswith(SAVED_AT) else self.path

        def find(section: str, name: str, value: str | None) -> str | None:
            if not value or not Path(value).is_absolute() or Path(value).exists():
                return value
            moved = (self.path / os.path.relpath(value, saved_at)).resolve()
            if moved.exists():
                return str(moved)
            raise FileNotFoundError(
                f"{self.path} was indexed with {section}.{name} {value}, which is not there any more: put it back, "
                "or pass --config with settings naming where it is now (its weights are checked against the index)")

        return with_model_paths(settings, find)


__all__ = ["IndexRoot", "RootLock"]
