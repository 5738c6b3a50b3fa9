"""Knowing when an index root is damaged.

Each commit records, for every data file it lists, its size, a SHA-256 of the whole file and a
SHA-256 of its first and last 64 KiB (`FileChecksum`, in the manifest). Readers check the cheap
part when they first open a file (its size and its ends: a truncated, extended, missing or
overwritten-at-an-end file); Parquet page checksums catch damage inside the timeline pages on
every read; a features file is checked in full the first time this process opens it
(`verify_once`: any changed byte, NaN or not, before an answer is made from it), and features read
back are checked to be finite (0xFF bytes are NaN in float16; files committed before checksums);
FAISS files, read whole anyway, are checked in full. `vidx info --verify` checks every byte of
every file. A damaged file raises `IndexDamaged` naming it and the remedy (`vidx repair`).

Why every byte of a features file, once per process: a question reads scattered frames from a few
segment files, and damage in the middle of one (past the 64 KiB ends) would give another answer
with no error. SHA-256 (with the CPU's SHA instructions) costs about 0.6 ms per MB on an idle core
of the development machine, 2.6-3 ms per MB with 16 runs sharing its 2 cores
(bench/integrity_bench.py): a segment of 512 frames of EVA-ViT-g features (370 MB) costs 0.2 s to
1 s, once, the first time a process reads from it; later readers in the process (the server makes
one per commit) pay nothing. That is paid again by every `vidx ask` (a process per question), and
is the price of never answering from damaged bytes. Checksums per block (say 1 MiB) would make the
first read cost what it reads, at the price of a much larger manifest or a side file per segment;
the next step if whole files prove too slow.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict

ENDS_BYTES = 64 * 1024     # the part of each end hashed for the cheap check
READ_BYTES = 1 << 20       # read size while hashing whole files


class IndexDamaged(Exception):
    """A file of an index root is missing or does not hold what its commit wrote. Not a ValueError:
    the input was fine, the index is not (the CLI exits 1, the HTTP API answers 503)."""

    def __init__(self, root: str | os.PathLike, file: str, reason: str):
        self.root, self.file, self.reason = Path(root), file, reason
        super().__init__(f"{self.root / file}: damaged ({reason}); the index answers nothing from it: "
                         f"`vidx repair {self.root}` rolls it back to its last intact state, then ingest the sources "
                         "again to fill it in")


class FileChecksum(BaseModel):
    """What a commit wrote into one data file."""

    model_config = ConfigDict(extra="forbid")

    bytes: int
    sha256: str            # of the whole file
    ends_sha256: str       # of its first and last ENDS_BYTES bytes (the whole file when smaller)


def checksum_file(path: Path) -> FileChecksum:
    whole = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            whole.update(chunk)
            size += len(chunk)
        return FileChecksum(bytes=size, sha256=whole.hexdigest(), ends_sha256=_ends(f, size))


def check_file(root: Path, name: str, expected: FileChecksum | None) -> None:
    """The cheap check, when a reader first opens `name`: it is there, has the size its commit wrote
    and the same first and last 64 KiB. (A file committed before checksums: only that it is there.)"""
    path = root / name
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if expected is None:
                return
            if size != expected.bytes:
                raise IndexDamaged(root, name, f"{size} bytes, its commit wrote {expected.bytes}")
            if _ends(f, size) != expected.ends_sha256:
                raise IndexDamaged(root, name, "its first or last 64 KiB changed since its commit")
    except FileNotFoundError:
        raise IndexDamaged(root, name, "missing") from None
    except IsADirectoryError:
        raise IndexDamaged(root, name, "a folder, not a file") from None


def verify_file(root: Path, name: str, expected: FileChecksum | None) -> None:
    """The full check (`vidx info --verify`, `vidx repair`): every byte against the commit's SHA-256."""
    check_file(root, name, expected)
    if expected is not None and checksum_file(root / name).sha256 != expected.sha256:
        raise IndexDamaged(root, name, "its SHA-256 differs from the one written at its commit")


# Files this process has checked in full: (path, device, inode, size, mtime in ns, SHA-256). A
# committed file is never rewritten in place; one that is (damage, a repair) has another mtime and
# is checked again.
_verified: set[tuple] = set()
_verified_lock = threading.Lock()


def verify_once(root: Path, name: str, expected: FileChecksum | None) -> None:
    """The cheap check, then every byte against the commit's SHA-256 the first time this process
    opens `name` (see the module docstring for the cost)."""
    check_file(root, name, expected)
    if expected is None:
        return
    path = root / name
    info = os.stat(path)
    key = (str(path.resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, expected.sha256)
    with _verified_lock:
        if key in _verified:
            return
    if checksum_file(path).sha256 != expected.sha256:
        raise IndexDamaged(root, name, "its SHA-256 differs from the one written at its commit")
    with _verified_lock:
        _verified.add(key)


def read_verified(root: Path, name: str, expected: FileChecksum | None) -> bytes:
    """A file read whole (FAISS indexes are), checked in full on the way."""
    check_file(root, name, expected)
    data = (root / name).read_bytes()
    if expected is not None and hashlib.sha256(data).hexdigest() != expected.sha256:
        raise IndexDamaged(root, name, "its SHA-256 differs from the one written at its commit")
    return data


def _ends(f, size: int) -> str:
    digest = hashlib.sha256()
    f.seek(0)
    digest.update(f.read(min(size, ENDS_BYTES)))
    if size > ENDS_BYTES:
        f.seek(max(ENDS_BYTES, size - ENDS_BYTES))
        digest.update(f.read())
    return digest.hexdigest()


__all__ = ["FileChecksum", "IndexDamaged", "check_file", "checksum_file", "read_verified", "verify_file",
           "verify_once"]
