"""`LiveCapture`: a live source read in a thread from the moment a command starts, its samples
kept until a consumer takes them.

    capture = LiveCapture(source, options, start_index=entry.next_index, resume_time_s=entry.watermark_s)
    capture.start()                  # connects and samples at once, in a thread
    ...                              # Ray and the models start meanwhile
    info = capture.wait_opened()     # SourceInfo, or raises the SourceError
    items = capture.take(64, 0.2)    # SampledFrame / Gap in order, as the reader yielded them

A live source does not wait for a job to start: what it sends while Ray and the models load
would be lost. The capture is the source's one connection for the whole run (a second
connection would restart an RTSP session's clock or miss UDP datagrams, so no hand-over could
be exact); its `SourceReader` samples on the stream's own clock exactly as a reader in a Ray
actor would. Memory is bounded: beyond `memory_frames` waiting frames, images wait in .npy files.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from indexer.batches import Gap, SampledFrame, SourceInfo
from indexer.media.reader import SourceReader
from indexer.media.ring import SegmentRing
from indexer.media.source import Source, SourceError
from indexer.settings import ReaderOptions

logger = logging.getLogger(__name__)

MEMORY_FRAMES = 256   # waiting frames kept in memory (~70 MB at the default 224-pixel short side); more go to disk


@dataclass
class _Spilled:
    """A frame whose image waits in `path`."""

    frame: SampledFrame   # image=None while spilled
    path: Path


class SpillQueue:
    """First in, first out: samples and gaps from one thread to another. Beyond `memory_frames`
    frames in memory, the images of new frames are written to .npy files in a folder of their own
    (made on first need, removed by `discard`) and read back when taken."""

    def __init__(self, memory_frames: int = MEMORY_FRAMES, spill_parent: str | Path | None = None):
        self.memory_frames = memory_frames
        self.spill_parent = spill_parent
        self.spilled_frames = 0       # how many went through disk (for tests and logs)
        self._items: deque[SampledFrame | Gap | _Spilled] = deque()
        self._in_memory = 0
        self._dir: Path | None = None
        self._seq = 0
        self._closed = False
        self._changed = threading.Condition()

    def put(self, item: SampledFrame | Gap) -> None:
        with self._changed:
            if isinstance(item, SampledFrame):
                if self._in_memory >= self.memory_frames:
                    item = self._spill(item)
                else:
                    self._in_memory += 1
            self._items.append(item)
            self._changed.notify_all()

    def close(self) -> None:
        """No more items will be put: `take` returns what is left, then `drained` is true."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def drained(self) -> bool:
        with self._changed:
            return self._closed and not self._items

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    def take(self, max_items: int, timeout_s: float) -> list[SampledFrame | Gap]:
        """Up to `max_items` items in order, waiting up to `timeout_s` for the first; [] if none came."""
        with self._changed:
            self._changed.wait_for(lambda: self._items or self._closed, timeout=timeout_s)
            taken = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
        out = []
        for item in taken:
            if isinstance(item, _Spilled):
                image = np.load(item.path, allow_pickle=False)
                item.path.unlink()
                item = replace(item.frame, image=image)
            elif isinstance(item, SampledFrame):
                with self._changed:
                    self._in_memory -= 1
            out.append(item)
        return out

    def discard(self) -> None:
        """Forget what is waiting and remove the spill folder."""
        with self._changed:
            self._items.clear()
            self._in_memory = 0
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def _spill(self, frame: SampledFrame) -> _Spilled:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="vidx-capture-", dir=self.spill_parent))
        path = self._dir / f"{self._seq:09d}.npy"
        self._seq += 1
        np.save(path, frame.image, allow_pickle=False)
        self.spilled_frames += 1
        return _Spilled(replace(frame, image=None), path)


class LiveCapture:
    """One source opened and sampled in a thread from `start()` on; `take` hands its samples and
    gaps over in order. A source that turns out not to be live (an HLS playlist that is complete)
    is closed once opened: it can be read again from its start by whoever needs it.

    `start_index` / `resume_time_s` resume a stream the index already holds (its manifest entry's
    `next_index` / `watermark_s`), as `SourceReader` takes them. `ring` records the packets (the
    recording: clips, playback, recomputation; see `SegmentRing`)."""

    def __init__(self, source: Source, options: ReaderOptions, start_index: int = 0,
                 resume_time_s: float | None = None, ring: SegmentRing | None = None,
                 memory_frames: int = MEMORY_FRAMES, spill_parent: str | Path | None = None):
        self.source = source
        self.stop_event = threading.Event()
        self.reader = SourceReader(source, options, start_index=start_index, resume_time_s=resume_time_s,
                                   stop=self.stop_event, ring=ring)
        self.queue = SpillQueue(memory_frames, spill_parent)
        self.info: SourceInfo | None = None
        self.error: SourceError | None = None    # why the source failed (to open, or later)
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture {source.stream_id}", daemon=True)

    def start(self) -> LiveCapture:
        self._thread.start()
        return self

    def wait_opened(self, timeout_s: float | None = None) -> SourceInfo:
        """The source's info once opened; raises its SourceError if it could not be opened."""
        if not self._opened.wait(timeout_s):
            raise TimeoutError(f"{self.source.uri}: not opened after {timeout_s} s")
        if self.info is None:
            raise self.error
        return self.info

    @property
    def live(self) -> bool:
        """Opened and live: its samples are in the queue (check after `wait_opened`)."""
        return self.info is not None and self.info.live

    @property
    def finished(self) -> bool:
        """The source ended (or failed, or was stopped) and every item was taken."""
        return self.queue.drained

    def take(self, max_items: int, timeout_s: float) -> list[SampledFrame | Gap]:
        return self.queue.take(max_items, timeout_s)

    def stop(self) -> None:
        """End sampling at the next packet (what was sampled stays in the queue)."""
        self.stop_event.set()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop, wait for the thread, forget what was not taken."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.queue.discard()

    def _run(self) -> None:
        try:
            try:
                self.info = self.reader.open()
            except SourceError as exc:
                self.error = exc
                return
            finally:
                self._opened.set()
            if not self.info.live:
                return
            for item in self.reader.samples():
                self.queue.put(item)
        except SourceError as exc:
            self.error = exc
        except Exception as exc:  # a bug must not leave the consumer waiting for samples forever
            logger.exception("%s: capture failed", self.source.uri)
            self.error = SourceError(self.source.uri, f"capture failed: {type(exc).__name__}: {exc}")
        finally:
            self.reader.close()
            self.queue.close()


__all__ = ["MEMORY_FRAMES", "LiveCapture", "SpillQueue"]
