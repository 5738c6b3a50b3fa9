"""Checks before Ray starts or a model loads: a command that cannot succeed says why in one line
at once (not in an actor's traceback half a minute later), and an ingest with nothing to do ends
without starting Ray.

- `check_models`: every model file the settings name is on this machine.
- `plan_ingest`: the index root is not being written by another process, each source that the
  index already holds is resumed at the fps it was indexed at, and which sources are complete.
- `bind_port`: the port `vidx serve` listens on, bound before the models load.
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.redaction import redact_uri
from indexer.settings import Settings
from indexer.store.manifest import StreamEntry, read_manifest
from indexer.store.root import IndexRoot

if TYPE_CHECKING:  # not a loop: the indexer.media package loads PyAV, which the checks before Ray starts do without
    from indexer.media.source import Source

TINY_REMEDY = ("for a first try, make the tiny random models with `vidx tiny out/tiny` and pass --config "
               "configs/tiny.yaml; for real ones see README.md, 'Using a real checkpoint' (what to download)")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def check_models(settings: Settings) -> None:
    """Every model the settings name is a local folder or file, or a hub id already in the
    Hugging Face cache; the vision tower, image processor and Q-Former tokenizer that the
    LLaMA-VID config names are found; a CUDA device exists if one is asked for. For a Ray that
    this machine runs (a cluster's workers may hold what the driver lacks)."""
    model = settings.model
    model_dir = _model_folder("model.model_dir", model.model_dir)
    _model_folder("embedding.model", settings.embedding.model)
    if model.vision_tower:
        _model_file("model.vision_tower", model.vision_tower)
    if model.image_processor:
        _model_file("model.image_processor", model.image_processor)
    _check_llamavid_assets(model_dir, settings)
    if model.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"model.device is {model.device!r} but torch sees no CUDA GPU on this machine; set "
                             "model.device: cpu in the --config file (or run on a GPU machine)")


def _model_folder(name: str, value: str) -> Path:
    """A local folder, or the cached snapshot of a hub repo id."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    if path.is_absolute() or value.startswith((".", "~")) or not _HUB_ID.fullmatch(value):
        raise FileNotFoundError(f"model path {value!r} not found ({name}; relative to {Path.cwd()}); {TINY_REMEDY}")
    snapshot = _hub_snapshot(value)
    if snapshot is None:
        raise FileNotFoundError(
            f"{name} {value!r} is not downloaded (not a local folder, not in the Hugging Face cache); download it "
            f"first (`hf download {value}`, or --local-dir DIR and name DIR in the config), or, {TINY_REMEDY}")
    return snapshot


def _model_file(name: str, value: str) -> None:
    if not Path(value).expanduser().exists():
        raise FileNotFoundError(f"model path {value!r} not found ({name}; relative to {Path.cwd()}); {TINY_REMEDY}")


def _hub_snapshot(repo_id: str, allow_patterns: list[str] | None = None) -> Path | None:
    """The cached snapshot of a hub repo, without asking the network; None when it is not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _check_llamavid_assets(model_dir: Path, settings: Settings) -> None:
    """What config.json names outside the model folder, found as loading finds it."""
    from indexer.llamavid import checkpoint as ckpt
    from indexer.llamavid.pipeline import (
        read_model_config,
        resolve_image_processor,
        resolve_vision_tower,
    )

    model = settings.model
    config = read_model_config(model_dir)
    resolve_vision_tower(model_dir, config, model.vision_tower)
    resolve_image_processor(model_dir, config, model.image_processor)
    qformer = str(model.qformer or ckpt.DEFAULT_QFORMER)
    if any((candidate / "vocab.txt").is_file() for candidate in ckpt._candidates(qformer, model_dir)):
        return
    is_path = Path(qformer).is_absolute() or qformer.startswith((".", "~"))
    if not is_path and _hub_snapshot(qformer, ["vocab.txt"]) is not None:
        return
    raise FileNotFoundError(
        f"Q-Former tokenizer {qformer!r} (model.qformer) not found: not a folder with vocab.txt beside the model "
        f"or the working directory, not in the Hugging Face cache; download it (`hf download {qformer} config.json "
        "vocab.txt tokenizer_config.json`) or set model.qformer to a bert-base-uncased folder")


@dataclass
class IngestPlan:
    """What an ingest has to do, read from the index root's manifest before Ray starts."""

    complete: list[StreamEntry] = field(default_factory=list)  # archived sources indexed to their end
    todo: list[Source] = field(default_factory=list)
    frames_before: dict[str, int] = field(default_factory=dict)  # committed frames per stream at the start

    @property
    def nothing_to_do(self) -> bool:
        return not self.todo


def plan_ingest(sources: list[Source], root: IndexRoot, fps: float) -> IngestPlan:
    """Fails on a root that another process writes, or a source that the index holds at another
    fps or under another URI (the writer checks the same again)."""
    manifest = read_manifest(root)
    streams = manifest.streams if manifest is not None else {}
    plan = IngestPlan(frames_before={sid: entry.frames for sid, entry in streams.items()})
    for source in sources:
        entry = streams.get(source.stream_id)
        if entry is not None:
            entry.check_resume(redact_uri(source.uri), fps)  # the manifest keeps URIs without secrets
        if entry is not None and entry.complete and not entry.live:
            plan.complete.append(entry)
        else:
            plan.todo.append(source)
    if plan.todo:
        check_unlocked(root)
    return plan


def check_unlocked(root: IndexRoot) -> None:
    """No other process holds the index root's writer lock (taken and released at once)."""
    if root.exists():
        root.lock_writer().release()


def bind_port(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying the port is taken and what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise RuntimeError(f"port {port} on {host} is in use (another vidx serve?); pick another with --port, "
                               "or stop what listens there") from None
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)  # uvicorn's default backlog
    return sock


__all__ = ["TINY_REMEDY", "IngestPlan", "bind_port", "check_models", "check_unlocked", "plan_ingest"]
