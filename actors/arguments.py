"""Command-line arguments of the ingest and monitor jobs, shared by `python -m actors.*` and
`vidx`; argparse only, so building `vidx --help` does not import Ray or the models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not a loop: `vidx --help` builds its parser without pydantic
    from indexer.settings import Settings
    from indexer.store.root import IndexRoot


def add_ingest_arguments(parser: argparse.ArgumentParser, sources: str = "+") -> None:
    parser.add_argument("sources", nargs=sources, metavar="SOURCE",
                        help="path or URL (file, http(s), HLS .m3u8, rtsp, rtmp, udp, srt); NAME=URI names the stream")
    parser.add_argument("--index", required=True, help="index root folder (created if missing; resumed if present)")
    parser.add_argument("--config", help="YAML settings (default: the settings saved in the index when it "
                                         "exists, else configs/default.yaml)")
    parser.add_argument("--fps", type=float, help="samples per second (overrides reader.fps)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, or a local Ray)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are drawn only when stderr is a terminal)")


def add_monitor_arguments(parser: argparse.ArgumentParser) -> None:
    add_ingest_arguments(parser, sources="*")   # none: watch an index another process ingests
    parser.add_argument("--json", action="store_true",
                        help="print each alert row as one line of JSON on stdout (thumbnail left out); the summaries "
                             "go to stderr")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal only: redirected to a file they would be carriage-return noise."""
    return not args.no_progress and sys.stderr.isatty()


def settings_from_args(args: argparse.Namespace, root: IndexRoot) -> Settings:
    """--config (default: the settings the index was built with), with --fps over reader.fps."""
    from pydantic import ValidationError

    from indexer.settings import load_settings, settings_error

    if args.config is None and root.has_settings():
        settings = root.load_settings()
    else:
        settings = load_settings(args.config or "configs/default.yaml")
    if args.fps is not None:
        try:
            settings.reader = type(settings.reader).model_validate({**settings.reader.model_dump(), "fps": args.fps})
        except ValidationError as exc:
            raise ValueError(f"--fps {args.fps:g}: {settings_error(exc, 'reader')}") from None
    return settings


def job_main(name: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """`python -m actors.NAME`: parse, then run through the wrapper `vidx` uses (one-line errors,
    the same exit codes)."""
    from indexer.console import run_parsed

    parser = argparse.ArgumentParser(prog=f"python -m actors.{name}", description=description)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress, library and actor output, and full tracebacks")
    add_arguments(parser)
    return run_parsed(parser, argv, lambda args: name, run)


__all__ = ["add_ingest_arguments", "add_monitor_arguments", "job_main", "settings_from_args", "show_progress"]
