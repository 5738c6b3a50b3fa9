"""The monitor job: ingestion of live (or archived) sources with the index's standing queries
evaluated on every commit, alerts printed as they fire.

    python -m actors.monitor SOURCE... --index DIR [--config FILE]
    ray job submit --working-dir . -- python -m actors.monitor SOURCE... --index DIR

`vidx monitor` runs the same `run_monitor`. With no SOURCE it only watches an index that another
process ingests. Ctrl-C or SIGTERM stops ingestion (which commits), evaluates what was committed,
and exits (0); open events stay open in the monitor state and go on at the next run. Once every
source ended, a Ctrl-C ends the wait for clips and webhook deliveries (they go on at the next
run) and exits 0 as well; a second Ctrl-C aborts (130)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable

from actors.arguments import (
    add_monitor_arguments,
    job_main,
    settings_from_args,
    show_progress,
)
from actors.ingest import IngestSummary, StopRequest, run_ingest
from indexer.console import plural
from indexer.monitor.alerts import Alert, alert_line
from indexer.monitor.monitor import Monitor
from indexer.monitor.queries import QueryStore
from indexer.settings import Settings
from indexer.store.root import IndexRoot

logger = logging.getLogger(__name__)
DRAIN_S = 20.0   # at exit: how long to wait for clips being cut and webhooks being delivered


def run_monitor(sources: list[str], root: IndexRoot, settings: Settings, address: str | None = None,
                progress: bool = False, on_alert: Callable[[Alert], None] | None = None,
                stop: threading.Event | None = None, stats: dict | None = None) -> IngestSummary | None:
    """Ingest `sources` into `root` while its standing queries run; returns when ingestion ends
    (no sources: when `stop` is set, or on SIGINT/SIGTERM). `stats` receives the monitor's counts
    (frames evaluated, candidates past the prefilter, windows verified)."""
    if not sources and not root.manifest.exists():
        raise FileNotFoundError(f"{root}: no index here; give sources to ingest, or run vidx ingest first")
    root.create()
    if not QueryStore(root).load():
        logger.warning("%s has no standing queries yet; add some with `vidx watch add` (they are picked up live)",
                       root)
    # commits are what the monitor sees: commit often enough for alerts within seconds
    settings = settings.model_copy(update={"index": settings.index.model_copy(
        update={"commit_interval_s": min(settings.index.commit_interval_s, settings.monitor.commit_interval_s)})})
    stop = stop or threading.Event()
    monitor = Monitor(root, settings, on_alert=on_alert)
    thread = threading.Thread(target=monitor.run, args=(stop,), name="monitor", daemon=True)
    thread.start()
    summary = None
    try:
        if sources:
            summary = run_ingest(sources, root, settings, address=address, progress=progress)
        else:
            _wait_for_signal(stop)
    finally:
        # every source ended (or was stopped, committed): a Ctrl-C now only cuts short the wait for
        # clips and webhooks, which stay pending in the state and the outbox for the next run. So
        # nothing is lost, and the exit code is what `vidx ingest` gives after a Ctrl-C that
        # committed: 0 (130 only for a second Ctrl-C, which leaves at once)
        with StopRequest("finishing: leaving pending clips and webhook deliveries for the next run") as hurry:
            stop.set()
            thread.join()   # the last evaluation of what was committed
            clips, deliveries = monitor.pending_work()
            if (clips or deliveries) and not hurry.requested:
                logger.warning("waiting up to %.0f s for %s and %s (Ctrl-C leaves them for the next run)", DRAIN_S,
                               plural(clips, "clip"), plural(deliveries, "webhook delivery", "webhook deliveries"))
            monitor.drain(DRAIN_S, hurry.event)
            monitor.close()
        if stats is not None:
            stats.update(monitor.stats)
    return summary


def _wait_for_signal(stop: threading.Event) -> None:
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def monitor_from_args(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    root = IndexRoot.at(args.index)
    settings = settings_from_args(args, root)
    summaries = sys.stderr if args.json else sys.stdout  # --json: stdout is JSON lines only

    def show(alert: Alert) -> None:
        line = json.dumps({**alert.to_json(), "thumbnail": None}) if args.json else alert_line(alert)
        tqdm.write(line, file=sys.stdout)  # above the progress bars, which it redraws below
        sys.stdout.flush()

    stats: dict = {}
    summary = run_monitor(args.sources, root, settings, address=args.address, progress=show_progress(args),
                          on_alert=show, stats=stats)
    if summary is not None:
        print("\n".join(summary.lines()), file=summaries, flush=True)
    if stats.get("frames"):
        print(f"conditions: {stats['frames']} frame evaluations, {stats['candidates']} past the prefilter "
              f"({100 * stats['candidates'] / stats['frames']:.1f} %), {stats['verifications']} windows verified",
              file=summaries, flush=True)
    return 1 if summary is not None and summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    return job_main("monitor", __doc__.splitlines()[0], add_monitor_arguments, monitor_from_args, argv)


if __name__ == "__main__":
    sys.exit(main())
