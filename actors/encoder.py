"""`EncoderActor`: a `FrameEncoder` in a Ray actor that batches frames across streams.

Readers call `encode(batch)` concurrently (an asyncio actor); one worker coroutine gathers
what has queued, up to `max_batch_frames` or until `max_wait_s` passes, and runs one forward
pass in a thread while the next batch gathers."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import ray

from indexer.batches import EncodedBatch, FrameBatch
from indexer.settings import Settings
from indexer.store.manifest import Layout


@ray.remote(max_restarts=-1, max_task_retries=-1)
class EncoderActor:
    def __init__(self, settings: dict):
        import torch  # here, not at the top: the driver imports this module and needs neither

        from indexer.encoding import FrameEncoder

        self.settings = Settings.model_validate(settings)
        torch.set_num_threads(max(1, int(self.settings.encoder.num_cpus)))
        self.encoder = FrameEncoder.from_settings(self.settings)
        self._queue: list[tuple[FrameBatch, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1)
        self._worker: asyncio.Task | None = None
        self.frames_encoded = 0
        self.batches_run = 0

    async def layout(self) -> Layout:
        return self.encoder.layout()

    async def encode(self, batch: FrameBatch) -> EncodedBatch:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        self._wake.set()
        return await future

    async def stats(self) -> dict:
        return {"frames": self.frames_encoded, "batches": self.batches_run,
                "mean_batch": self.frames_encoded / max(1, self.batches_run)}

    async def _run(self) -> None:
        limit, wait_s = self.settings.encoder.max_batch_frames, self.settings.encoder.max_wait_s
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            deadline = loop.time() + wait_s
            while sum(len(b) for b, _ in self._queue) < limit and loop.time() < deadline:
                await asyncio.sleep(min(0.005, wait_s))
            taken, frames = [], 0
            while self._queue and (not taken or frames + len(self._queue[0][0]) <= limit):
                item = self._queue.pop(0)
                taken.append(item)
                frames += len(item[0])
            if not self._queue:
                self._wake.clear()
            try:
                results = await loop.run_in_executor(self._executor, self.encoder, [b for b, _ in taken])
            except Exception as exc:  # one bad batch fails its callers, not the actor
                for _, future in taken:
                    future.set_exception(exc)
                continue
            self.frames_encoded += frames
            self.batches_run += 1
            for (_, future), result in zip(taken, results):
                future.set_result(result)


__all__ = ["EncoderActor"]
