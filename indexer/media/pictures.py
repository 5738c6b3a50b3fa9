"""Pictures of a stream at given media times, decoded again: what recomputing patch features
needs when an index no longer keeps them (`index.feature_format: none`, or a retention policy).

    pictures = FilePictures(Path("talk.mp4"), short_side=224)
    images = pictures.frames_at([12.0, 13.0])   # uint8 RGB [H, W, 3] each, as ingestion sampled them

`PictureSource` is the one interface the query side uses; `FilePictures` reads a file source
(which is its own recording). A recording of a live source (segments with media-time sidecars)
plugs in as another `PictureSource`: give `indexer.query.patch_features.pictures_for` a branch for it.

A time is a frame's own media time as the timeline stores it (`pts_s`), not a grid time: the
reader sampled the frame on screen at each grid point and stored that frame's time, so decoding
the frame with exactly that time and converting it as the reader did (`frame_image`) gives the
very picture the encoders saw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from indexer.media.reader import MEDIA_ERRORS, describe_media_error, frame_image, media_start_s

TIME_TOLERANCE_S = 1e-6   # the same frame gives the same float; more is another frame
DECODE_AHEAD_S = 2.0      # a wanted time this close after the last decoded frame is decoded to, not sought
SEEK_BACK_S = (0.0, 5.0, 60.0)  # a seek that lands after the wanted time is retried this much earlier, then from 0


class PicturesUnavailable(Exception):
    """The pictures cannot be had; the message names the source and says why."""


class PictureSource(Protocol):
    """Pictures of one stream at media times (the timeline's `pts_s`), as ingestion sampled them."""

    def frames_at(self, times_s: Sequence[float]) -> list[np.ndarray]:
        """uint8 RGB [H, W, 3] per time, in the order asked; raises PicturesUnavailable."""
        ...


class FilePictures:
    """A file source decoded again: seek to the keyframe before each wanted time (or decode on when
    it is close ahead), decode forward to the frame with exactly that time."""

    def __init__(self, path: Path, short_side: int, decoder_threads: int = 0):
        self.path = Path(path)
        self.short_side = short_side
        self.decoder_threads = decoder_threads

    def frames_at(self, times_s: Sequence[float]) -> list[np.ndarray]:
        if not self.path.is_file():
            raise PicturesUnavailable(f"{self.path}: the source file is gone (moved or deleted); put it back there "
                                      "to give these frames context tokens")
        wanted = sorted({float(t) for t in times_s})
        found: dict[float, np.ndarray] = {}
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise PicturesUnavailable(f"{self.path}: no video stream (the file changed since it was indexed)")
                video = container.streams.video[0]
                video.codec_context.thread_type = "AUTO"
                video.codec_context.thread_count = self.decoder_threads
                decoded = _Decoded(container, video)
                for t in wanted:
                    found[t] = frame_image(decoded.frame_at(t, self.path), self.short_side)
        except MEDIA_ERRORS as exc:
            raise PicturesUnavailable(f"{self.path}: cannot decode ({describe_media_error(exc)})") from exc
        return [found[float(t)] for t in times_s]


class _Decoded:
    """One decoder over a file, moved forward (or sought) from one wanted time to the next."""

    def __init__(self, container, video):
        self.container = container
        self.video = video
        self.start_s = media_start_s(container)
        self.frames: Iterator[tuple[float, av.VideoFrame]] | None = None
        self.current: tuple[float, av.VideoFrame] | None = None  # the last frame decoded

    def frame_at(self, t: float, path: Path) -> av.VideoFrame:
        if self.current is None or t < self.current[0] - TIME_TOLERANCE_S or t > self.current[0] + DECODE_AHEAD_S:
            self._seek_before(t, path)
        while self.current[0] < t - TIME_TOLERANCE_S:
            self._next(path, t)
        if abs(self.current[0] - t) > TIME_TOLERANCE_S:
            raise PicturesUnavailable(f"{path}: no frame at {t:.6f} s (the nearest decoded is at "
                                      f"{self.current[0]:.6f} s): the file changed since it was indexed")
        return self.current[1]

    def _seek_before(self, t: float, path: Path) -> None:
        for back in (*SEEK_BACK_S, None):
            target_s = 0.0 if back is None else max(0.0, t - back)
            self.container.seek(int((target_s + self.start_s) / self.video.time_base), stream=self.video,
                                backward=True)
            self.frames = self._decode()
            self.current = None
            self._next(path, t)
            if self.current[0] <= t + TIME_TOLERANCE_S or back is None:
                return

    def _next(self, path: Path, t: float) -> None:
        self.current = next(self.frames, None)
        if self.current is None:
            raise PicturesUnavailable(f"{path}: ends before {t:.3f} s (the file changed since it was indexed)")

    def _decode(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """(media time, frame) in presentation order; packets that do not decode are skipped."""
        for packet in self.container.demux(self.video):
            try:
                frames = packet.decode()
            except (av.error.InvalidDataError, av.error.UndefinedError):
                continue  # damage the reader skipped too; the frame wanted is checked by its time
            for frame in frames:
                if frame.pts is not None:
                    yield float(frame.pts * frame.time_base) - self.start_s, frame


__all__ = ["FilePictures", "PictureSource", "PicturesUnavailable"]
