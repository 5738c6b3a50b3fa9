"""`Frames`: newly committed frames of one stream as the monitor's evaluators see them."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

# timeline columns the monitor reads (never the content tokens: they are the bulk of a row)
FRAME_COLUMNS = ["frame_id", "stream_id", "kind", "sample_index", "pts_s", "end_s", "wall_time", "wall_end", "reason",
                 "embedding", "thumbnail"]


@dataclass
class Frames:
    stream_id: str
    frame_ids: np.ndarray        # int64 [n]
    sample_index: np.ndarray     # int64 [n]
    pts_s: np.ndarray            # float64 [n], media time
    wall_time: np.ndarray        # float64 [n], unix seconds (NaN: not live)
    embeddings: np.ndarray       # float32 [n, E], unit retrieval embeddings
    thumbnails: list[bytes]      # JPEG
    _images: list[np.ndarray | None] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.frame_ids)

    @classmethod
    def from_rows(cls, stream_id: str, rows: pa.Table) -> Frames:
        """Frame rows (kind == "frame") of one stream's timeline, in sample order."""
        n = rows.num_rows
        embedding_dim = rows.schema.field("embedding").type.list_size
        wall = rows.column("wall_time").cast(pa.int64()).to_numpy(zero_copy_only=False)
        return cls(
            stream_id,
            rows.column("frame_id").to_numpy().astype(np.int64),
            rows.column("sample_index").to_numpy().astype(np.int64),
            rows.column("pts_s").to_numpy().astype(np.float64),
            np.where(rows.column("wall_time").is_null().to_numpy(zero_copy_only=False), np.nan, wall / 1e6),
            rows.column("embedding").combine_chunks().flatten().to_numpy().astype(np.float32).reshape(n, embedding_dim),
            rows.column("thumbnail").to_pylist(),
        )

    def __getitem__(self, part: slice) -> Frames:
        images = self._images[part] if self._images else []
        return Frames(self.stream_id, self.frame_ids[part], self.sample_index[part], self.pts_s[part],
                      self.wall_time[part], self.embeddings[part], self.thumbnails[part], list(images))

    @staticmethod
    def concat(parts: list[Frames]) -> Frames:
        """Parts in order, with the thumbnails already decoded kept decoded."""
        parts = [p for p in parts if len(p)]
        first = parts[0]
        return Frames(first.stream_id, *(np.concatenate([getattr(p, name) for p in parts]) for name in
                                         ("frame_ids", "sample_index", "pts_s", "wall_time", "embeddings")),
                      [t for p in parts for t in p.thumbnails],
                      [image for p in parts for image in (p._images or [None] * len(p))])

    def image(self, i: int) -> np.ndarray:
        """Frame i's thumbnail decoded: uint8 RGB [h, w, 3] (decoded once)."""
        if not self._images:
            self._images = [None] * len(self)
        if self._images[i] is None:
            self._images[i] = np.asarray(Image.open(io.BytesIO(self.thumbnails[i])).convert("RGB"))
        return self._images[i]

    def wall(self, i: int) -> float | None:
        value = float(self.wall_time[i])
        return None if np.isnan(value) else value


__all__ = ["FRAME_COLUMNS", "Frames"]
