"""Durable file writes: write a temporary file in the same folder, fsync, rename over the target.
A crash leaves either the old file or the new one, never half of one; readers skip `*.tmp`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, write: Callable[[BinaryIO], None], mode: int = 0o666) -> int:
    """Write `path` atomically with `write(file)`; return its size in bytes. `mode` (less the
    umask) is set when the file is created: 0o600 keeps secrets private from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.unlink(missing_ok=True)  # a leftover temporary would keep its old mode
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def write_atomic_json(path: Path, value: dict) -> int:
    data = json.dumps(value, indent=1, sort_keys=True).encode()
    size = write_atomic(path, lambda f: f.write(data))
    fsync_dir(path.parent)  # the rename itself must survive a power cut
    return size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["TMP_SUFFIX", "fsync_dir", "write_atomic", "write_atomic_json"]
