"""Durable file writes: write a temporary file in the same folder, fsync, rename over the target.
A crash leaves either the old file or the new one, never half of one; readers skip `*.tmp`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> int:
    """Write `path` atomically with `write(file)`; return its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
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
