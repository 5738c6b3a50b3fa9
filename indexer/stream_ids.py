"""Stream ids as users type them: a unique prefix names a stream ("clip.mp4" for
"clip.mp4-9ad3726c"). Reads the manifest as plain JSON, so `vidx ask` checks its arguments
before torch, pyarrow or FAISS load."""

from __future__ import annotations

import json
from collections.abc import Iterable

from indexer.store.root import IndexRoot  # indexer.store.manifest is not imported: that package loads FAISS


def index_stream_ids(root: IndexRoot) -> list[str] | None:
    """The stream ids an index root holds; None when it has no manifest yet."""
    path = root.manifest
    try:
        return sorted(json.loads(path.read_text()).get("streams", {}))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable llamavid-indexer manifest: {exc}") from exc


def match_stream_id(given: str, known: Iterable[str]) -> str | None:
    """`given` itself or the one id it is a prefix of; None when it matches none; an error
    listing the candidates when it is the prefix of several."""
    known = sorted(set(known))
    if given in known:
        return given
    candidates = [sid for sid in known if sid.startswith(given)]
    if len(candidates) > 1:
        raise ValueError(f"stream {given!r} is ambiguous: it begins {', '.join(candidates)}; give more of the id")
    return candidates[0] if candidates else None


def resolve_stream_ids(given: list[str], root: IndexRoot) -> list[str]:
    """Each of `given` as the full id of a stream of the index at `root`; an unknown one is an
    error that lists the streams there."""
    known = index_stream_ids(root) or []
    resolved = []
    for name in given:
        match = match_stream_id(name, known)
        if match is None:
            listed = ", ".join(known) if known else "none yet"
            raise ValueError(f"no stream {name!r} in {root} (streams: {listed})")
        resolved.append(match)
    return resolved


__all__ = ["index_stream_ids", "match_stream_id", "resolve_stream_ids"]
