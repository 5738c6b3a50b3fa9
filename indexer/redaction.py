"""Credentials kept out of what is shown: URLs and messages with their passwords, user names and
secret query parameters replaced by ***. On the ground floor: the store, the monitor, the server
and the media readers all show source URLs."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"
# query parameters whose values are credentials (AWS/GCS signed URLs, API keys, bearer tokens, passwords)
SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|sig|auth|cred|session", re.IGNORECASE)
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")  # not the final ":" of "URL: why"


def redact_uri(uri: str) -> str:
    """`uri` as it may be shown (API replies, logs, the CLI): its password, a bare user name (often
    a token) and the values of secret-looking query parameters replaced by ***.

    The stored URI keeps them (reconnects need them); a local path comes back unchanged.
        rtsp://admin:pw@cam/live?token=abc&ch=1 -> rtsp://admin:***@cam/live?token=***&ch=1"""
    parts = urlsplit(uri)
    if len(parts.scheme) < 2 or not parts.netloc and not parts.query:  # a path (or a Windows drive letter)
        return uri
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, query=redact_query(parts.query)))


def redact_query(query: str) -> str:
    """A URL's query string (`a=1&token=T`) with the values of secret-looking parameters replaced by ***."""
    return "&".join(_redact_parameter(p) for p in query.split("&")) if query else query


def _redact_parameter(parameter: str) -> str:
    name, equals, _ = parameter.partition("=")
    return f"{name}={REDACTED}" if equals and SECRET_PARAMETER.search(unquote(name)) else parameter


def redact_text(text: str) -> str:
    """`text` (an error message, a log line) with every URL in it passed through `redact_uri`."""
    return URL_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)


__all__ = ["REDACTED", "redact_query", "redact_text", "redact_uri"]
