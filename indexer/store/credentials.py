"""Source URIs with their secrets, kept out of what is shown.

The manifest (world-readable, served as `GET /api/streams`, printed by `vidx info`) and the
timeline hold each stream's URI as `redact_uri` shows it: `rtsp://admin:***@cam/live`. The URI
with its password or token, which a monitor needs to cut clips from the source, is kept in
a file beside the manifest (`IndexRoot.source_uris`), mode 0600, and only for streams whose URI has a secret.
"""

from __future__ import annotations

import json
import os

from indexer.redaction import redact_uri
from indexer.store.files import write_atomic
from indexer.store.manifest import StreamEntry
from indexer.store.root import IndexRoot


def save_source_uri(root: IndexRoot, stream_id: str, uri: str) -> None:
    """Remember `uri` for `stream_id` if it holds a secret (a new password replaces the old one)."""
    uris = _read(root)
    if redact_uri(uri) == uri and stream_id not in uris:
        return
    if redact_uri(uri) == uri:
        del uris[stream_id]
    else:
        uris[stream_id] = uri
    data = json.dumps(uris, indent=1, sort_keys=True).encode()
    write_atomic(root.source_uris, lambda f: f.write(data), mode=0o600)


def source_uri(root: IndexRoot, entry: StreamEntry) -> str:
    """The URI to open the stream's source with: the stored one with its secrets, else the shown one."""
    return _read(root).get(entry.stream_id, entry.uri)


def _read(root: IndexRoot) -> dict[str, str]:
    path = root.source_uris
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:  # someone widened it: narrow it again
                os.chmod(path, 0o600)
            return json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable ({exc}); delete it and run the ingest again") from exc


__all__ = ["save_source_uri", "source_uri"]
