"""`vidx`, the console script: the library's commands (indexer/cli.py) plus the ones that start
Ray jobs (ingest, monitor, demo), added here so that `indexer` never imports `actors`.

    vidx ingest SOURCE... --index DIR      (actors/ingest.py)
    vidx monitor [SOURCE...] --index DIR   (actors/monitor.py)
    vidx demo [--out DIR]                  (actors/demo.py)

Parsing imports argparse only (actors/arguments.py): `vidx --help` starts without Ray or the models."""

from __future__ import annotations

import argparse
import sys

from actors.arguments import add_ingest_arguments, add_monitor_arguments
from indexer import cli


def _cmd_ingest(args: argparse.Namespace) -> int:
    from actors.ingest import ingest_from_args

    return ingest_from_args(args)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from actors.monitor import monitor_from_args

    return monitor_from_args(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from actors.demo import run_demo

    return run_demo(args.out)


def add_job_commands(sub: argparse._SubParsersAction) -> None:
    """The commands that start Ray jobs, added to `vidx`'s subcommands."""
    ingest = sub.add_parser("ingest", help="index sources (files, URLs, live streams) into an index root on Ray")
    add_ingest_arguments(ingest)
    ingest.set_defaults(func=_cmd_ingest)

    monitor = sub.add_parser("monitor", help="ingest sources with the index's standing queries running; prints "
                                             "alerts as they fire")
    add_monitor_arguments(monitor)
    monitor.set_defaults(func=_cmd_monitor)

    demo = sub.add_parser("demo", help="the main job in under a minute on the CPU: tiny models, a generated clip "
                                       "with planted scenes, ingest on Ray, search by image and text, a cited answer")
    demo.add_argument("--out", default="out/demo", help="folder for the models, clip, index and thumbnails "
                                                        "(default: %(default)s; made again on each run)")
    demo.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """Every command of `vidx`."""
    return cli.build_parser(add_job_commands)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
