"""Command-line arguments of the ingest and monitor jobs, shared by `python -m actors.*` and
`vidx`; argparse only, so building `vidx --help` does not import Ray or the models."""

from __future__ import annotations

import argparse


def add_ingest_arguments(parser: argparse.ArgumentParser, sources: str = "+") -> None:
    parser.add_argument("sources", nargs=sources, metavar="SOURCE",
                        help="path or URL (file, http(s), HLS .m3u8, rtsp, rtmp, udp, srt); NAME=URI names the stream")
    parser.add_argument("--index", required=True, help="index root folder (created if missing; resumed if present)")
    parser.add_argument("--config", default="configs/default.yaml", help="YAML settings (default: %(default)s)")
    parser.add_argument("--fps", type=float, help="samples per second (overrides reader.fps)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, or a local Ray)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_monitor_arguments(parser: argparse.ArgumentParser) -> None:
    add_ingest_arguments(parser, sources="*")   # none: watch an index another process ingests
    parser.add_argument("--json", action="store_true", help="print each alert row as JSON (thumbnail left out)")


__all__ = ["add_ingest_arguments", "add_monitor_arguments"]
