"""The ingest job: readers -> encoder pool -> one writer, on Ray.

    python -m actors.ingest SOURCE... --index DIR [--config FILE] [--fps F]
    ray job submit --working-dir . -- python -m actors.ingest SOURCE... --index DIR

`vidx ingest` runs the same `run_ingest`. Ctrl-C or SIGTERM (`ray job stop`) asks every reader
to stop, waits for the last batches, commits, and exits."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm import tqdm

from actors.arguments import (
    add_ingest_arguments,
    job_main,
    settings_from_args,
    show_progress,
)
from actors.capture import feeds_reader, start_captures
from indexer.console import plural
from indexer.media.capture_process import RemoteCapture
from indexer.media.source import Source, check_stream_id, parse_source
from indexer.preflight import IngestPlan, check_models, plan_ingest
from indexer.settings import Settings, resolve_model_paths
from indexer.store.manifest import read_manifest
from indexer.store.repair import check_index
from indexer.store.root import IndexRoot

if TYPE_CHECKING:  # not a loop: Ray and the actors are imported once live sources are being read (_ingest_on_ray)
    from actors.reader import StreamSummary

logger = logging.getLogger(__name__)
FEEDER_JOIN_S = 5.0   # at exit: how long a feeder may take to notice its reader is gone


@dataclass
class IngestSummary:
    index: str
    streams: list[StreamSummary] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    committed: dict[str, int] = field(default_factory=dict)  # frames committed by this run, per stream
    nothing_to_do: bool = False  # every source was already indexed to its end: Ray was not started

    @property
    def failed(self) -> list[StreamSummary]:
        return [s for s in self.streams if s.error]

    def lines(self) -> list[str]:
        out = [f"index: {self.index}"]
        for s in self.streams:
            status = f"FAILED: {s.error}" if s.error else ("stopped" if s.stopped else "done")
            length = f"{s.duration_s:.1f} s" if s.duration_s else ("live" if s.live else "?")
            if self.nothing_to_do:
                out.append(f"  {s.stream_id}: already complete ({length})")
                continue
            out.append(f"  {s.stream_id}: {plural(self.frames(s), 'frame')}, {plural(s.gaps, 'gap')}, {length}; "
                       f"{status}")
            out.extend(f"    warning: {s.uri}: {w}" for w in s.warnings)
        if self.nothing_to_do:
            out.append(f"nothing to do: {plural(len(self.streams), 'source')} already indexed to the end "
                       "(a new --index indexes them again)")
            return out
        frames = sum(self.frames(s) for s in self.streams)
        out.append(f"{plural(frames, 'frame')} from {plural(len(self.streams), 'source')} in {self.wall_s:.1f} s"
                   f"{' (interrupted, committed)' if self.interrupted else ''}")
        return out

    def frames(self, stream: StreamSummary) -> int:
        """Frames of `stream` this run committed (those sent, when the manifest was not read)."""
        return self.committed.get(stream.stream_id, stream.frames_sent)


def run_ingest(sources: list[str], root: IndexRoot, settings: Settings, address: str | None = None,
               progress: bool = True) -> IngestSummary:
    """Index `sources` into `root`; returns when every source has ended (or on Ctrl-C/SIGTERM,
    after committing). Live sources are read from the first second, while Ray and the models
    start (actors/feed.py)."""
    started = time.monotonic()
    if (address or os.environ.get("RAY_ADDRESS", "")).startswith("ray://"):
        raise ValueError(f"--address {address or os.environ['RAY_ADDRESS']}: Ray Client (ray://) would run the writer "
                         "on the head node, away from the index root here; run vidx on a node of the cluster "
                         "(--address HEAD:6379) or submit it with `ray job submit`")
    parsed = [parse_source(s) for s in sources]
    ids = [check_stream_id(s.stream_id) for s in parsed]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two sources share a stream id: {sorted(ids)}; name them (NAME=URI)")
    for damage in check_index(root):  # before Ray: never append to a damaged index
        raise damage
    plan = plan_ingest(parsed, root, settings.reader.fps)  # before Ray: a locked root, another fps, nothing to do
    if plan.nothing_to_do:
        from actors.reader import StreamSummary

        return IngestSummary(str(root), [StreamSummary(e.stream_id, e.uri, e.live, e.duration_s)
                                         for e in plan.complete], time.monotonic() - started, nothing_to_do=True)
    settings = resolve_model_paths(settings)  # actors on a `ray start` cluster do not run in this folder
    config = settings.model_dump(mode="json")
    capturing = start_captures(parsed, root, settings, read_manifest(root))
    try:
        if address is None and not os.environ.get("RAY_ADDRESS"):  # a Ray of this machine: its files are ours to see
            check_models(settings)
        summary = _ingest_on_ray(parsed, root, settings, config, capturing.captures if capturing else {}, address,
                                 progress, plan)
    finally:
        if capturing:
            with StopRequest("finishing: closing the live captures"):  # a Ctrl-C here has nothing left to stop
                capturing.close()
    order = {sid: i for i, sid in enumerate(ids)}
    summary.streams.sort(key=lambda s: order.get(s.stream_id, 0))
    summary.wall_s = time.monotonic() - started
    return summary


def _ingest_on_ray(parsed: list[Source], root: IndexRoot, settings: Settings, config: dict,
                   captures: dict[str, RemoteCapture], address: str | None, progress: bool,
                   plan: IngestPlan) -> IngestSummary:
    """Every actor is created at once, so worker processes start while the encoders load their
    models; the readers start reading once the writer has opened the root."""
    # imported here, not at the top: seconds on a busy machine that live sources need not wait for
    import ray

    from actors.encoder import EncoderActor
    from actors.feed import Feeder
    from actors.placement import ClusterError, EncoderWatch, on_driver_node, reads_on_driver_node
    from actors.reader import ReaderActor
    from actors.writer import WriterActor

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, include_dashboard=False)
    # readers find the encoders and the writer by name: actor handles among constructor arguments
    # would go through the object store, which Ray warns (on every ingest) a restart may lose
    run_id = uuid.uuid4().hex[:12]
    writer_name, encoder_names = f"vidx-{run_id}-writer", [f"vidx-{run_id}-encoder{i}"
                                                           for i in range(settings.encoder.actors)]
    # on a cluster (actors/placement.py): the writer, and the readers of local files and live sources,
    # run on this node, which holds the index root; encoders run wherever their resources are
    encoders = [EncoderActor.options(name=name, num_cpus=settings.encoder.num_cpus, num_gpus=settings.encoder.num_gpus,
                                     resources=settings.encoder.resources).remote(config) for name in encoder_names]
    # the first call to each actor is not retried: a constructor that raised (a model that does not
    # load, a locked root) ends the ingest with its error, without Ray's "will be retried" notices
    layout = encoders[0].layout.options(max_task_retries=0).remote()  # the writer asks for it too (by name)
    writer = WriterActor.options(name=writer_name, scheduling_strategy=on_driver_node()).remote(
        root, encoder_names[0], settings.index.commit_interval_s, settings.index.max_vector_shards,
        settings.search, settings.index.retention)
    fed = {s.stream_id: feeds_reader(captures.get(s.stream_id)) for s in parsed}
    readers = [ReaderActor.options(num_cpus=settings.ingest.reader_num_cpus,
                                   scheduling_strategy=on_driver_node() if reads_on_driver_node(s) else None)
               .remote(s, config, encoder_names, writer_name, root, fed=fed[s.stream_id]) for s in parsed]
    feeders = [Feeder(captures[s.stream_id], reader).start() for s, reader in zip(parsed, readers) if fed[s.stream_id]]
    summary = IngestSummary(str(root))
    bars = _ProgressBars(parsed, enabled=progress)
    stop = StopRequest("stopping: finishing the current batches and committing")
    watch = EncoderWatch(settings.encoder, settings.ingest.node_wait_s)
    try:
        watch.wait(layout)
        ray.get(layout)  # a model that fails to load raises its own error here, not the writer's death
        # fails fast on a locked root or another model's index
        ray.get(writer.commit.options(max_task_retries=0).remote())
        root.save_settings(settings)
        runs = {reader.run.remote(): reader for reader in readers}
        pending = list(runs)
        with stop:  # to the last commit: a Ctrl-C once every source ended stops nothing and loses nothing
            while pending:
                done, pending = ray.wait(pending, timeout=0.5)
                for ref in done:
                    summary.streams.append(ray.get(ref))
                    ray.kill(runs[ref], no_restart=True)  # frees its CPUs for sources still waiting
                if stop.requested and pending and not summary.interrupted:
                    summary.interrupted = True
                    ray.get([runs[ref].stop.remote() for ref in pending])   # the others are done (and killed)
                bars.update(ray.get(writer.progress.remote()))
                try:
                    watch.check()
                except ClusterError:  # what the readers have in flight waits for encoders that cannot run
                    for reader in readers:
                        ray.kill(reader, no_restart=True)
                    ray.get(writer.close.remote())  # commits what was appended: a rerun resumes there
                    raise
            ray.get(writer.close.remote())
        summary.committed = {sid: entry.frames - plan.frames_before.get(sid, 0)
                             for sid, entry in read_manifest(root).streams.items()}
    finally:
        with StopRequest("finishing: stopping the actors"):  # they go either way; nothing is left to stop
            bars.close()
            for actor in [*readers, *encoders, writer]:
                ray.kill(actor, no_restart=True)
            for feeder in feeders:
                feeder.join(FEEDER_JOIN_S)
    return summary


class StopRequest:
    """While entered, SIGINT/SIGTERM set `event` (and log `notice`) instead of raising
    KeyboardInterrupt mid-commit; a second one raises it (exit 130: the user wants out now).
    Outside, Ctrl-C aborts (e.g. while Ray starts: nothing is waited for)."""

    def __init__(self, notice: str):
        self.notice = notice
        self.event = threading.Event()
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.event.set()
        logger.warning("%s (Ctrl-C again to abort)", self.notice)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
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
    root = IndexRoot.at(args.index)
    settings = settings_from_args(args, root)
    summary = run_ingest(args.sources, root, settings, address=args.address, progress=show_progress(args))
    print("\n".join(summary.lines()), flush=True)  # before `ray job stop` SIGKILLs a slow exit
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    return job_main("ingest", __doc__.splitlines()[0], add_ingest_arguments, ingest_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
