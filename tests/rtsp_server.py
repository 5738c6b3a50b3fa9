#!/usr/bin/python3
"""A tiny RTSP server for tests: serves an H.264 file at ``rtsp://127.0.0.1:PORT/stream``.

Run with the *system* Python (``/usr/bin/python3``, which has ``python3-gi``)::

    /usr/bin/python3 tests/rtsp_server.py VIDEO.{mp4,ts} [--port 0] [--shared]

The file must hold H.264 without B-frames (``make_video(..., extra_args=["-bf", "0"])``).
Each client gets its own pipeline that plays the file from its start in real time (unless
``--shared``, where all clients join one running pipeline). Once listening, the server
prints ``READY <port>`` on stdout (``--port 0`` picks a free port) and serves until killed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 (gi.require_version must come first)


def launch_line(video: Path) -> str:
    """The media pipeline: demux the file, packetise its H.264 as RTP payload 96."""
    demux = "tsdemux" if video.suffix.lower() == ".ts" else "qtdemux"
    location = str(video).replace("\\", "\\\\").replace('"', '\\"')
    return f'( filesrc location="{location}" ! {demux} ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--mount", default="/stream")
    parser.add_argument("--shared", action="store_true")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"no such file: {args.video}")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.video.resolve()))
    factory.set_shared(args.shared)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        sys.stderr.write(f"cannot listen on {args.address}:{args.port}\n")
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    sys.stdout.write(f"READY {server.get_bound_port()}\n")
    sys.stdout.flush()
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
