"""The ingest job: readers -> encoder pool -> one writer, on Ray.

    python -m actors.ingest SOURCE... --index DIR [--config FILE] [--fps F]
    ray job submit --working-dir . -- python -m actors.ingest SOURCE... --index DIR

`vidx ingest` runs the same `run_ingest`. Ctrl-C or SIGTERM (`ray job stop`) asks every reader
to stop, waits for the last batches, commits, and exits."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from tqdm import tqdm

from actors.arguments import add_ingest_arguments, job_main, settings_from_args
from actors.encoder import EncoderActor
from actors.reader import ReaderActor, StreamSummary
from actors.writer import WriterActor
from indexer.media.source import check_stream_id, parse_source
from indexer.settings import Settings, resolve_model_paths, save_index_settings

logger = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    index: str
    streams: list[StreamSummary] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def failed(self) -> list[StreamSummary]:
        return [s for s in self.streams if s.error]

    def lines(self) -> list[str]:
        out = [f"index: {self.index}"]
        for s in self.streams:
            status = f"FAILED: {s.error}" if s.error else ("stopped" if s.stopped else "done")
            length = f"{s.duration_s:.1f} s" if s.duration_s else ("live" if s.live else "?")
            out.append(f"  {s.stream_id}: {s.frames_sent} frames, {s.gaps} gaps, {length}; {status}")
        frames = sum(s.frames_sent for s in self.streams)
        out.append(f"{frames} frames from {len(self.streams)} sources in {self.wall_s:.1f} s"
                   f"{' (interrupted, committed)' if self.interrupted else ''}")
        return out


def run_ingest(sources: list[str], index: str | Path, settings: Settings, address: str | None = None,
               progress: bool = True) -> IngestSummary:
    """Index `sources` into `index`; returns when every source has ended (or on Ctrl-C/SIGTERM,
    after committing)."""
    parsed = [parse_source(s) for s in sources]
    ids = [check_stream_id(s.stream_id) for s in parsed]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two sources share a stream id: {sorted(ids)}; name them (NAME=URI)")
    root = Path(index).expanduser().resolve()
    settings = resolve_model_paths(settings)  # actors on a `ray start` cluster do not run in this folder
    config = settings.model_dump(mode="json")
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    started = time.monotonic()
    encoders = [EncoderActor.options(num_cpus=settings.encoder.num_cpus, num_gpus=settings.encoder.num_gpus)
                .remote(config) for _ in range(settings.encoder.actors)]
    layout = ray.get(encoders[0].layout.remote())
    writer = WriterActor.remote(str(root), layout, settings.index.commit_interval_s, settings.index.max_vector_shards,
                                settings.search)
    ray.get(writer.commit.remote())  # fails fast on a locked root or another model's index
    save_index_settings(root, settings)
    readers = [ReaderActor.options(num_cpus=settings.ingest.reader_num_cpus).remote(s, config, encoders, writer, str(root))
               for s in parsed]
    runs = {reader.run.remote(): reader for reader in readers}
    summary = IngestSummary(str(root))
    stop = _StopRequest()
    bars = _ProgressBars(parsed, enabled=progress)
    pending = list(runs)
    try:
        with stop:
            while pending:
                done, pending = ray.wait(pending, timeout=0.5)
                for ref in done:
                    summary.streams.append(ray.get(ref))
                    ray.kill(runs[ref], no_restart=True)  # frees its CPUs for sources still waiting
                if stop.requested and not summary.interrupted:
                    summary.interrupted = True
                    ray.get([reader.stop.remote() for reader in readers])
                bars.update(ray.get(writer.progress.remote()))
        ray.get(writer.close.remote())
    finally:
        bars.close()
        for actor in [*readers, *encoders, writer]:
            ray.kill(actor, no_restart=True)
    order = {sid: i for i, sid in enumerate(ids)}
    summary.streams.sort(key=lambda s: order.get(s.stream_id, 0))
    summary.wall_s = time.monotonic() - started
    return summary


class _StopRequest:
    """SIGINT/SIGTERM set a flag instead of killing the driver mid-commit."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stopping: finishing the current batches and committing (Ctrl-C again to abort)")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class _ProgressBars:
    """A bar per source: percent of the duration for archived sources; frames, rate and lag for
    live ones."""

    def __init__(self, sources, enabled: bool):
        self.enabled = enabled
        self.bars: dict[str, tqdm] = {}
        self.order = [s.stream_id for s in sources]
        self.started = {}

    def update(self, progress: dict[str, dict]) -> None:
        if not self.enabled:
            return
        for position, sid in enumerate(self.order):
            state = progress.get(sid)
            if state is None:
                continue
            done_s = state["expected_index"] / state["fps"]
            if sid not in self.bars:
                total = None if state["live"] else state["duration_s"]
                self.bars[sid] = tqdm(total=round(total, 1) if total else None, desc=sid[:32], position=position,
                                      unit="s", leave=True, dynamic_ncols=True,
                                      bar_format=None if total else "{desc}: {n:.0f} s [{elapsed}, {postfix}]")
                self.started[sid] = (time.monotonic(), done_s)
            bar = self.bars[sid]
            bar.n = round(min(done_s, bar.total) if bar.total else done_s, 1)
            t0, s0 = self.started[sid]
            speed = (done_s - s0) / max(1e-6, time.monotonic() - t0)
            postfix = {"frames": state["frames"], "x realtime": f"{speed:.1f}"}
            if state["live"] and state["watermark_s"] is not None:
                postfix["gaps"] = state["gaps"]
            if state["error"]:
                postfix["error"] = state["error"][:60]
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def ingest_from_args(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    summary = run_ingest(args.sources, args.index, settings, address=args.address, progress=not args.no_progress)
    print("\n".join(summary.lines()), flush=True)  # before `ray job stop` SIGKILLs a slow exit
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    return job_main("ingest", __doc__.splitlines()[0], add_ingest_arguments, ingest_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
