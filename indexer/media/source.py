"""What a source is (a path or URL) and how FFmpeg is told to open it. What it turned out to be
(`SourceInfo`) is in indexer.batches, how it is read (`ReaderOptions`) in indexer.settings."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from indexer.redaction import redact_text, redact_uri
from indexer.settings import ReaderOptions

Protocol = Literal["file", "http", "hls", "rtsp", "rtmp", "udp", "srt"]
LIVE_PROTOCOLS = {"rtsp", "rtmp", "udp", "srt"}


class SourceError(Exception):
    """A source that cannot be read: the message names the source and says why."""

    def __init__(self, uri: str, reason: str):
        reason = redact_text(reason)  # FFmpeg's messages may quote the URL with its password
        super().__init__(f"{redact_uri(uri)}: {reason}")
        self.uri = uri
        self.reason = reason


@dataclass(frozen=True)
class Source:
    uri: str
    stream_id: str
    protocol: Protocol

    @property
    def maybe_live(self) -> bool:
        """Live by protocol; HLS is live unless its playlist is complete (known once opened)."""
        return self.protocol in LIVE_PROTOCOLS or self.protocol == "hls"


def parse_source(uri: str, stream_id: str | None = None) -> Source:
    """A path or URL -> Source. `NAME=URI` names the stream; otherwise the name comes from the URI."""
    if stream_id is None and "=" in uri.split("://")[0] and not Path(uri).exists():
        stream_id, uri = uri.split("=", 1)
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:  # a path (a Windows drive letter counts as one)
        path = Path(urlsplit(uri).path if scheme == "file" else uri).expanduser().resolve()
        uri, protocol = str(path), "file"
    elif scheme in ("http", "https"):
        protocol = "hls" if urlsplit(uri).path.endswith(".m3u8") else "http"
    elif scheme in ("rtsp", "rtsps"):
        protocol = "rtsp"
    elif scheme in ("rtmp", "rtmps"):
        protocol = "rtmp"
    elif scheme in ("udp", "srt"):
        protocol = scheme
    else:
        raise SourceError(uri, f"unsupported scheme {scheme!r}; use a path or file, http(s), rtsp, rtmp, udp or "
                               "srt URL")
    return Source(uri, stream_id or default_stream_id(uri), protocol)


def default_stream_id(uri: str) -> str:
    """A stable, filesystem-safe id: the readable tail of the URI plus a short hash of all of it."""
    parts = urlsplit(uri)  # the host name, never the netloc: it may hold user:password
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(parts.path).name or parts.hostname or "").strip("-.")
    # hashed as shown: a short hash of a password is a guessing aid, and a new password keeps the id
    return f"{tail[:40] or 'stream'}-{hashlib.sha1(redact_uri(uri).encode()).hexdigest()[:8]}"


def check_stream_id(stream_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", stream_id):
        raise ValueError(f"stream id {stream_id!r} must be 1-100 letters, digits, '_', '.' or '-'")
    return stream_id


def open_arguments(source: Source, options: ReaderOptions) -> tuple[str, dict[str, str]]:
    """The URL and FFmpeg AVOptions that open `source` with a timeout on every network read."""
    io_timeout_us = str(int(options.read_timeout_s * 1e6))
    uri = source.uri
    av_options: dict[str, str] = {}
    if source.protocol == "rtsp":
        av_options = {"rtsp_transport": options.rtsp_transport, "timeout": io_timeout_us}
    elif source.protocol in ("http", "hls"):
        av_options = {"rw_timeout": io_timeout_us, "reconnect": "1", "reconnect_streamed": "1",
                      "reconnect_delay_max": str(int(options.reconnect_max_s))}
    elif source.protocol == "udp":
        # a listening socket: a bigger FIFO and overruns tolerated, or a busy reader loses the stream
        parts = urlsplit(uri)
        query = dict(parse_qsl(parts.query))
        query.setdefault("fifo_size", "212766")  # in 188-byte packets: ~40 MB
        query.setdefault("overrun_nonfatal", "1")
        query.setdefault("timeout", io_timeout_us)
        uri = urlunsplit(parts._replace(query=urlencode(query)))
    elif source.protocol in ("rtmp", "srt"):
        av_options = {"rw_timeout": io_timeout_us}
    return uri, av_options


__all__ = ["LIVE_PROTOCOLS", "Source", "SourceError", "check_stream_id", "default_stream_id", "open_arguments",
           "parse_source"]
