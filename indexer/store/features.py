"""Patch-feature storage formats. Features are a cache for context tokens, not the record, so
besides the official float16 there is a 4-bit format (per-group min/scale) at a quarter of the
size, and "none". Every format writes plain .npy files that load memory-mapped."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from indexer.store.files import write_atomic


class Float16Features:
    """The official format: float16 [n, T, C]."""

    name = "float16"
    suffixes = (".f16.npy",)

    def encode(self, features: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(features, dtype=np.float16)]

    def decode(self, arrays: list[np.ndarray]) -> np.ndarray:
        return np.asarray(arrays[0], dtype=np.float16)

    def arrays(self, n: int, t: int, c: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        """The shapes and dtypes `encode` writes for n frames of [t, c]."""
        return [((n, t, c), np.dtype(np.float16))]


class Int4Features:
    """4-bit codes with a float16 minimum and step per group of channels: x ~ min + code * step.
    Two codes per byte; [n, T, C/2] codes plus [n, T, C/G, 2] (min, step)."""

    name = "int4"
    suffixes = (".q4.npy", ".q4scale.npy")

    def __init__(self, group_size: int = 128):
        self.group_size = group_size

    def group_for(self, channels: int) -> int:
        return math.gcd(channels, self.group_size)

    def encode(self, features: np.ndarray) -> list[np.ndarray]:
        n, t, c = features.shape
        g = self.group_for(c)
        x = features.astype(np.float32).reshape(n, t, c // g, g)  # (n, T, C/G, G)
        low = x.min(axis=-1, keepdims=True)
        step = (x.max(axis=-1, keepdims=True) - low) / 15.0
        # float16 rounding of the stored min/step must not push codes out of range, so quantise with them
        low16, step16 = low.astype(np.float16), step.astype(np.float16)
        safe = np.where(step16 > 0, step16.astype(np.float32), 1.0)
        codes = np.clip(np.rint((x - low16.astype(np.float32)) / safe), 0, 15).astype(np.uint8).reshape(n, t, c)
        packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # (n, T, C/2)
        scales = np.concatenate([low16, step16], axis=-1)  # (n, T, C/G, 2)
        return [packed, scales]

    def decode(self, arrays: list[np.ndarray]) -> np.ndarray:
        packed, scales = np.asarray(arrays[0]), np.asarray(arrays[1], dtype=np.float32)
        n, t, half = packed.shape
        codes = np.empty((n, t, half * 2), dtype=np.float32)
        codes[..., 0::2] = packed & 0x0F
        codes[..., 1::2] = packed >> 4
        groups = scales.shape[2]
        codes = codes.reshape(n, t, groups, -1)  # (n, T, C/G, G)
        x = scales[..., :1] + codes * scales[..., 1:]
        return x.reshape(n, t, half * 2).astype(np.float16)

    def arrays(self, n: int, t: int, c: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        return [((n, t, c // 2), np.dtype(np.uint8)), ((n, t, c // self.group_for(c), 2), np.dtype(np.float16))]


class NoFeatures:
    """Keep no patch features: queries recompute those they need from the source file
    (indexer/query/patch_features.py), or answer with content tokens only where it is gone."""

    name = "none"
    suffixes = ()

    def encode(self, features: np.ndarray) -> list[np.ndarray]:
        return []

    def decode(self, arrays: list[np.ndarray]) -> np.ndarray:
        raise ValueError("this index keeps no patch features (features.format: none)")

    def arrays(self, n: int, t: int, c: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        return []


FORMATS = {"float16": Float16Features, "int4": Int4Features, "none": NoFeatures}


def feature_format(name: str):
    if name not in FORMATS:
        raise ValueError(f"unknown feature format {name!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[name]()


def stored_bytes(fmt, frames: int, feature_shape: tuple[int, int]) -> int:
    """Bytes on disk of `frames` frames' features in format `fmt`: the .npy files exactly as
    `save_arrays` writes them (headers included), without writing them."""
    total = 0
    for shape, dtype in fmt.arrays(frames, *feature_shape):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": shape})
        total += len(header.getvalue()) + math.prod(shape) * dtype.itemsize
    return total


def save_arrays(base: Path, fmt, features: np.ndarray) -> list[str]:
    """Write the format's files next to `base` (no suffix); return their names."""
    names = []
    for suffix, array in zip(fmt.suffixes, fmt.encode(features)):
        path = base.with_name(base.name + suffix)
        write_atomic(path, lambda f, array=array: np.save(f, array, allow_pickle=False))
        names.append(path.name)
    return names


def load_arrays(paths: list[Path]) -> list[np.ndarray]:
    return [np.load(p, mmap_mode="r", allow_pickle=False) for p in paths]


__all__ = ["FORMATS", "Float16Features", "Int4Features", "NoFeatures", "feature_format", "load_arrays", "save_arrays",
           "stored_bytes"]
