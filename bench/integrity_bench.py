"""What checking a features file in full costs (`integrity.verify_once`: every byte against the
commit's SHA-256, the first time a process opens the file), next to reading a question's frames
from it. A segment file of EVA-ViT-g features (float16 [frames, 257, 1408], 724 KB a frame) is
written to a temporary folder; each figure is the median of `--repeats` runs.

    python bench/integrity_bench.py                  # 128 frames: a 93 MB file
    python bench/integrity_bench.py --frames 512     # the largest segment a commit makes (370 MB)

"cold" drops the file from the page cache first (posix_fadvise DONTNEED: a file not read since
boot, or evicted); "warm" reads it from memory. One figure per line: `<figure>: <value> <unit>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.store import integrity
from indexer.store.features import load_arrays

FEATURE_SHAPE = (257, 1408)  # EVA ViT-g: 1 + 16x16 patches, 1408 channels


def drop_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def timed(run, repeats: int, before=None) -> float:
    """Median seconds of `run()`, with `before()` (untimed) ahead of each."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=128, help="frames in the segment file (default %(default)s)")
    parser.add_argument("--read", type=int, default=8, help="frames a question reads from it (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="integrity-bench-") as tmp:
        root = Path(tmp)
        name = "part-00000001.f16.npy"
        rng = np.random.default_rng(0)
        features = rng.normal(size=(args.frames, *FEATURE_SHAPE)).astype(np.float16)
        np.save(root / name, features, allow_pickle=False)
        del features
        expected = integrity.checksum_file(root / name)
        mb = expected.bytes / 1e6
        rows = np.sort(rng.choice(args.frames, size=min(args.read, args.frames), replace=False))

        def first_open() -> None:
            integrity._verified.clear()  # as in a new process
            integrity.verify_once(root, name, expected)

        def cheap_open() -> None:
            integrity.check_file(root, name, expected)

        def read_rows() -> None:
            np.asarray(load_arrays([root / name])[0][rows])

        verify_warm = timed(first_open, args.repeats)
        verify_cold = timed(first_open, args.repeats, before=lambda: drop_cache(root / name))
        integrity.verify_once(root, name, expected)
        verify_again = timed(lambda: integrity.verify_once(root, name, expected), args.repeats)
        cheap_cold = timed(cheap_open, args.repeats, before=lambda: drop_cache(root / name))
        read_cold = timed(read_rows, args.repeats, before=lambda: drop_cache(root / name))

    print(f"features file: {mb:.1f} MB ({args.frames} frames x {FEATURE_SHAPE[0]}x{FEATURE_SHAPE[1]} float16)")
    print(f"full check at first open, warm: {verify_warm * 1e3:.0f} ms ({verify_warm * 1e3 / mb:.2f} ms/MB)")
    print(f"full check at first open, cold: {verify_cold * 1e3:.0f} ms ({verify_cold * 1e3 / mb:.2f} ms/MB)")
    print(f"later opens in the same process: {verify_again * 1e3:.2f} ms (size and ends only)")
    print(f"cheap check alone (size and 64 KiB ends), cold: {cheap_cold * 1e3:.2f} ms")
    print(f"reading {len(rows)} frames from the file, cold: {read_cold * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
