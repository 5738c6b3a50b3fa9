"""Live streams on 127.0.0.1 for tests, published by real ffmpeg / GStreamer processes.

Each context manager makes a pattern video (:mod:`tests.mediagen`: frame ``n`` shows ``n``),
starts the publishing processes in their own process groups, waits until the stream is
really there, yields its URL and kills every process group on exit.

The URL is a :class:`LiveUrl` (a ``str``) whose ``info`` (:class:`LiveInfo`) says how media
time relates to the frame number: for all four live streams ``pts_s == n / fps`` exactly
(``info.pts_offset_s == 0``), as read by PyAV/FFmpeg (``frame.time``), except that over RTSP
the first frame of a session has no pts. :func:`http_files` serves files that are not live.
A killed test runner leaves no process behind (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.mediagen import ffmpeg_bin, make_video

__all__ = ["RTSP_OPTIONS", "SYSTEM_PYTHON", "UDP_QUERY", "HlsInfo", "LiveInfo", "LiveUrl", "hls_live", "http_files",
           "rtmp_server", "rtsp_server", "udp_mpegts"]

SYSTEM_PYTHON = "/usr/bin/python3"  # has python3-gi (GStreamer bindings); a venv does not
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")
RTSP_OPTIONS = {"rtsp_transport": "tcp"}  # PyAV ``av.open(url, options=RTSP_OPTIONS)``
# Query to append to a udp:// URL when reading: a 40 MB receive FIFO, and a reader that falls
# behind drops packets instead of failing with "Circular buffer overrun".
UDP_QUERY = "overrun_nonfatal=1&fifo_size=212766"


@dataclass(frozen=True)
class LiveInfo:
    """What a test needs to check a reader of a live stream against the truth.

    ``pts_s(n) == n / fps + pts_offset_s`` is the media time a reader sees for the frame
    showing ``n``. ``started`` is the ``time.monotonic()`` at which the publisher began to send
    frame 0 (to within a few tenths of a second); the publisher then runs in real time.
    """

    url: str
    fps: int
    size: tuple[int, int]
    num_frames: int
    started: float
    pts_offset_s: float = 0.0

    def pts_s(self, n: int) -> float:
        """Media time of the frame showing ``n``."""
        return n / self.fps + self.pts_offset_s

    def frame_at(self, pts_s: float) -> int:
        """The frame number shown at media time ``pts_s``."""
        return round((pts_s - self.pts_offset_s) * self.fps)

    def live_frame(self, now: float | None = None) -> int:
        """Roughly the frame being published at ``now`` (default: now), clamped to the file."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        return max(0, min(self.num_frames - 1, int(elapsed * self.fps)))


class LiveUrl(str):
    """A stream URL that also carries its :class:`LiveInfo` as ``.info``."""

    info: LiveInfo

    def __new__(cls, url: str, info: LiveInfo) -> Self:
        obj = super().__new__(cls, url)
        obj.info = info
        return obj


# ---------------------------------------------------------------------------------------------
# Process plumbing
# ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test process dies (Linux), so that even
    a test runner killed with SIGKILL leaves no publisher behind."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


try:
    _PRCTL: Callable[[int, int], int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


class _Processes:
    """Processes started in new sessions; ``close()`` kills their whole process groups."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        with open(self.logdir / f"{name}.out", "wb") as out, open(self.logdir / f"{name}.err", "wb") as err:
            # PR_SET_PDEATHSIG fires when the spawning *thread* ends: only from the main thread.
            guard = _die_with_parent if threading.current_thread() is threading.main_thread() else None
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=guard,  # noqa: PLW1509 (it only calls prctl)
            )
        self.procs.append((name, proc))
        return proc

    def output(self, name: str) -> str:
        return (self.logdir / f"{name}.out").read_text(errors="replace")

    def check_alive(self, *, allow_exit_0: Sequence[str] = ()) -> None:
        """Raise with the log tail if a process died (``allow_exit_0``: may have finished)."""
        for name, proc in self.procs:
            rc = proc.poll()
            if rc is not None and not (rc == 0 and name in allow_exit_0):
                err = (self.logdir / f"{name}.err").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {rc}: {err}")

    def wait_for(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            _kill_group(proc)
        self.procs.clear()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
        try:
            proc.wait(timeout=grace)
            # the leader is gone; make sure no child of it lingers in the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _workspace(prefix: str) -> Iterator[tuple[Path, _Processes]]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        procs = _Processes(Path(tmp))
        try:
            yield Path(tmp), procs
        finally:
            procs.close()


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tcp_listening(port: int) -> bool:
    """Whether a socket listens on TCP ``port``, read from /proc without connecting (a server
    with one client, such as ``ffmpeg -listen 1``, would take the probe for its client)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    return True
    return False


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _source(tmp: Path, name: str, duration_s: float, fps: int, size: tuple[int, int], gop: int,
            given: Path | None = None) -> tuple[Path, int]:
    """H.264 without B-frames in MPEG-TS, pts ``n / fps`` from 0, keyframe every ``gop``: the
    pattern video, or ``given`` (made the same way with other pictures, e.g. planted events)."""
    if given is not None:
        return given, round(duration_s * fps)
    path = make_video(tmp / name, duration_s=duration_s, fps=fps, size=size, codec="libx264", gop=gop)
    return path, round(duration_s * fps)


def _ffmpeg_publish(src: Path, *output: str) -> list[str]:
    """ffmpeg sending ``src`` in real time (``-re``), stream copy, timestamps unchanged."""
    return [
        ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-nostdin",
        "-re", "-copyts", "-i", str(src), "-map", "0:v", "-c", "copy", "-muxdelay", "0", "-muxpreload", "0", *output,
    ]  # fmt: skip


# A static file server on 127.0.0.1 (an ephemeral port, printed once bound), with TLS when
# given a certificate. Like ``python -m http.server``: no Range requests.
_HTTP_SERVER = """
import functools, http.server, ssl, sys
directory, cert, key = sys.argv[1:4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
if cert:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("PORT", server.server_address[1], flush=True)
server.serve_forever()
"""


def _serve_http(procs: _Processes, directory: Path, timeout_s: float, tls: bool = False) -> str:
    """Start the file server on ``directory``; returns ``http(s)://127.0.0.1:PORT``."""
    cert = key = ""
    if tls:  # self-signed for 127.0.0.1; FFmpeg does not verify certificates unless told to
        cert, key = str(procs.logdir / "cert.pem"), str(procs.logdir / "key.pem")
        openssl = shutil.which("openssl")
        if openssl is None:
            raise FileNotFoundError("`openssl` not found on PATH (apt-get install openssl)")
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    procs.start("http", [sys.executable, "-u", "-c", _HTTP_SERVER, str(directory), cert, key])
    ports: list[int] = []

    def ready() -> bool:
        found = re.search(r"PORT (\d+)", procs.output("http"))
        if found and _tcp_accepts(int(found.group(1))):
            ports.append(int(found.group(1)))
            return True
        return False

    procs.wait_for("HTTP server", ready, timeout_s)
    return f"{'https' if tls else 'http'}://127.0.0.1:{ports[0]}"


# ---------------------------------------------------------------------------------------------
# The streams
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def hls_live(
    duration_s: float = 30.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    hls_time: int = 1,
    *,
    list_size: int = 6,
    ready_segments: int = 2,
    ready_timeout_s: float = 60.0,
    source: Path | None = None,
) -> Iterator[tuple[LiveUrl, HlsInfo]]:
    """A live HLS stream: yields ``(url, info)``, url ``http://127.0.0.1:PORT/live.m3u8``.

    ffmpeg ``-re`` writes ``hls_time``-second MPEG-TS segments (H.264, a keyframe at each
    segment start) to a sliding ``list_size`` playlist (old segments deleted), served by
    ``python -m http.server``. Ready once the playlist lists ``ready_segments`` segments.
    The playlist gets ``#EXT-X-ENDLIST`` after ``duration_s`` or on ``info.end()``; it stays
    served until exit.

    Time: ``pts_s == n / fps`` (offset 0). FFmpeg's HLS reader joins a live playlist 3
    segments before its end, so the first frame read is a segment start, not frame 0.
    """
    with _workspace("hls-") as (tmp, procs):
        src, count = _source(tmp, "src.ts", duration_s, fps, size, gop=fps * hls_time, given=source)
        www = tmp / "www"
        www.mkdir()
        url = f"{_serve_http(procs, www, ready_timeout_s)}/live.m3u8"
        started = time.monotonic()
        publisher = procs.start(
            "ffmpeg",
            _ffmpeg_publish(
                src, "-f", "hls", "-hls_time", str(hls_time), "-hls_list_size", str(list_size),
                "-hls_flags", "delete_segments+temp_file", "-hls_segment_filename", str(www / "seg%05d.ts"),
                str(www / "live.m3u8"),
            ),
        )  # fmt: skip

        def playlist_ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    return resp.read().decode().count("#EXTINF") >= ready_segments
            except (urllib.error.URLError, OSError):
                return False

        procs.wait_for("HLS playlist", playlist_ready, ready_timeout_s)
        info = HlsInfo(url=url, fps=fps, size=size, num_frames=count, started=started,
                       segments_fetched=lambda: len(re.findall(r'"GET /seg\d+\.ts ', (procs.logdir / "http.err")
                                                               .read_text(errors="replace"))),
                       end=lambda: _end_hls(publisher, www / "live.m3u8"),
                       pause=lambda: os.killpg(publisher.pid, signal.SIGSTOP),
                       resume=lambda: os.killpg(publisher.pid, signal.SIGCONT))
        yield LiveUrl(url, info), info


@dataclass(frozen=True)
class HlsInfo(LiveInfo):
    """:class:`LiveInfo` of :func:`hls_live`, with what lets a test wait on readers rather
    than on the clock: ``segments_fetched()`` counts the media segments readers have fetched
    (the readiness probe reads only the playlist), ``end()`` ends the stream now (the playlist
    gets ``#EXT-X-ENDLIST``), however much of ``duration_s`` is left. ``pause()`` stops the
    publisher (SIGSTOP) and ``resume()`` lets it go on: it then catches up with the wall clock at
    full speed, so pass ``list_size=0`` (no segment deleted) for readers to fetch every one."""

    segments_fetched: Callable[[], int] = lambda: 0
    end: Callable[[], None] = lambda: None
    pause: Callable[[], None] = lambda: None
    resume: Callable[[], None] = lambda: None


def _end_hls(publisher: subprocess.Popen[bytes], playlist: Path) -> None:
    """Stop ffmpeg as Ctrl-C does: it finishes the segment and writes ``#EXT-X-ENDLIST``."""
    if publisher.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(publisher.pid, signal.SIGINT)
        publisher.wait(timeout=60)
    if "#EXT-X-ENDLIST" not in playlist.read_text():
        raise RuntimeError(f"ffmpeg ended without #EXT-X-ENDLIST in {playlist}")


@contextlib.contextmanager
def udp_mpegts(
    duration_s: float = 30.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    *,
    start_delay_s: float = 1.0,
    source: Path | None = None,
) -> Iterator[LiveUrl]:
    """MPEG-TS (H.264, keyframe every second) sent by ffmpeg ``-re`` to ``udp://127.0.0.1:PORT``.

    The reader listens on PORT (``av.open(url + "?" + UDP_QUERY, timeout=...)``). Datagrams
    sent before it binds are lost, so ffmpeg starts sending only ``start_delay_s`` after
    the context is entered; open the reader within that delay to get the stream from frame
    0, or later to join mid-stream (decoding starts at the next keyframe). Nothing can check
    readiness of a UDP sender, so this yields as soon as the processes are started. UDP has
    no end of stream: after ``duration_s`` a reader's read times out (PyAV with ``timeout``:
    ``av.error.ExitError`` "Immediate exit requested"). A reader slower than real time
    without ``overrun_nonfatal=1`` fails with ``OSError`` EIO once the FIFO overflows (the
    default FIFO, 5.4 MB, holds minutes of this ~0.1 Mb/s stream).

    Time: ``pts_s == n / fps`` (offset 0).
    """
    with _workspace("udp-") as (tmp, procs):
        src, count = _source(tmp, "src.ts", duration_s, fps, size, gop=fps, given=source)
        port = _free_port(socket.SOCK_DGRAM)
        url = f"udp://127.0.0.1:{port}"
        cmd = _ffmpeg_publish(src, "-f", "mpegts", f"{url}?pkt_size=1316")
        procs.start("ffmpeg", ["/bin/sh", "-c", f'sleep {start_delay_s:.3f} && exec "$0" "$@"', *cmd])
        info = LiveInfo(url=url, fps=fps, size=size, num_frames=count, started=time.monotonic() + start_delay_s)
        yield LiveUrl(url, info)


@contextlib.contextmanager
def rtsp_server(
    duration_s: float = 30.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    *,
    shared: bool = False,
    ready_timeout_s: float = 30.0,
    source: Path | None = None,
) -> Iterator[LiveUrl]:
    """An RTSP server (GStreamer gst-rtsp-server) at ``rtsp://127.0.0.1:PORT/stream``.

    Serves H.264 (no B-frames, keyframe every second) over RTP; read it over TCP with
    ``av.open(url, options=RTSP_OPTIONS, timeout=...)``. Not ``shared`` (default): every
    client gets its own playback from frame 0, in real time, ending after ``duration_s``
    (RTCP BYE: the reader sees end of stream). ``shared``: the first client starts one
    playback that later clients join live. Ready once the server accepts TCP connections.
    Runs ``tests/rtsp_server.py`` with the system Python (python3-gi).

    Time: ``pts_s == n / fps`` (offset 0), but FFmpeg gives the first packet of a session
    no pts (``frame.pts is None`` for the first frame a client reads).
    ``info.started`` is the server start; with ``shared=False`` each client's frame 0 is
    sent when that client sends PLAY.
    """
    if not Path(SYSTEM_PYTHON).exists():
        raise FileNotFoundError(f"{SYSTEM_PYTHON} not found (the RTSP server needs python3-gi)")
    with _workspace("rtsp-") as (tmp, procs):
        src, count = _source(tmp, "src.ts", duration_s, fps, size, gop=fps, given=source)
        cmd = [SYSTEM_PYTHON, str(RTSP_SCRIPT), str(src), "--port", "0"] + (["--shared"] if shared else [])
        started = time.monotonic()
        procs.start("rtsp", cmd)
        ports: list[int] = []

        def ready() -> bool:
            found = re.search(r"READY (\d+)", procs.output("rtsp"))
            if found and _tcp_accepts(int(found.group(1))):
                ports.append(int(found.group(1)))
                return True
            return False

        procs.wait_for("RTSP server", ready, ready_timeout_s)
        url = f"rtsp://127.0.0.1:{ports[0]}/stream"
        yield LiveUrl(url, LiveInfo(url=url, fps=fps, size=size, num_frames=count, started=started))



@contextlib.contextmanager
def rtmp_server(
    duration_s: float = 30.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    *,
    ready_timeout_s: float = 30.0,
) -> Iterator[LiveUrl]:
    """ffmpeg as an RTMP server for one client: ``rtmp://127.0.0.1:PORT/live/stream``.

    ``ffmpeg -re ... -f flv -listen 1 URL`` waits for a client to connect and play, then sends
    it FLV (H.264, no B-frames, keyframe every second) in real time from frame 0; after
    ``duration_s`` it closes the connection and exits, so a reconnect is refused. Ready once
    the port listens (checked without connecting: the probe would be taken for the client).

    Time: ``pts_s == n / fps`` (offset 0; FLV has millisecond timestamps, exact at 25 fps).
    ``info.started`` is the server start; frame 0 is sent when the client connects.
    """
    with _workspace("rtmp-") as (tmp, procs):
        src, count = _source(tmp, "src.ts", duration_s, fps, size, gop=fps)
        port = _free_port(socket.SOCK_STREAM)
        url = f"rtmp://127.0.0.1:{port}/live/stream"
        started = time.monotonic()
        procs.start("ffmpeg", _ffmpeg_publish(src, "-f", "flv", "-listen", "1", url))
        procs.wait_for("RTMP server", lambda: _tcp_listening(port), ready_timeout_s)
        yield LiveUrl(url, LiveInfo(url=url, fps=fps, size=size, num_frames=count, started=started))


@contextlib.contextmanager
def http_files(directory: str | Path, *, tls: bool = False, ready_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve the files in ``directory`` over HTTP (``tls``: HTTPS with a self-signed
    certificate) on 127.0.0.1; yields the base URL ``http(s)://127.0.0.1:PORT`` (no trailing
    slash). The server answers no Range requests: FFmpeg reads through it as through a stream
    it cannot seek (an MPEG-TS then has no known duration). A missing file answers 404.
    """
    with _workspace("http-") as (_, procs):
        yield _serve_http(procs, Path(directory), ready_timeout_s, tls=tls)
