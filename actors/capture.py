"""Live sources opened as the ingest starts, before Ray: `start_captures` starts them in a capture
process (indexer/media/capture_process.py); `feeds_reader` decides which readers they feed
(actors/feed.py). Imports neither Ray nor the actors, so it runs a second after the command starts."""

from __future__ import annotations

from indexer.media.capture_process import (
    CaptureProcess,
    CaptureRequest,
    RemoteCapture,
    RingSettings,
)
from indexer.media.source import Source, SourceError
from indexer.settings import Settings
from indexer.store.manifest import Manifest
from indexer.store.root import IndexRoot


def start_captures(sources: list[Source], root: IndexRoot, settings: Settings,
                   manifest: Manifest | None) -> CaptureProcess | None:
    """A capture per source that may be live, started now in a child process (None: no such
    source), resuming where the index's manifest says the stream was committed; the stream's
    packets go to its recording (index.retention) for clips, playback and recomputation."""
    requests = []
    for source in sources:
        if not source.maybe_live:
            continue
        entry = manifest.streams.get(source.stream_id) if manifest else None
        retention, ring = settings.index.retention.for_stream(source.stream_id), None
        if retention.records:
            ring = RingSettings(str(root.recording_dir(source.stream_id)), retention.recording_s,
                                retention.recording_segment_s, retention.recording_bytes)
        requests.append(CaptureRequest(source, settings.reader, entry.next_index if entry else 0,
                                       entry.watermark_s if entry else None, ring))
    return CaptureProcess(requests) if requests else None


def feeds_reader(capture: RemoteCapture | None) -> bool:
    """Whether the source's reader takes its samples from `capture`: when the source is live, or
    failed to open (the reader reports that as it would its own failure). A source that turned
    out not to be live is closed here: its reader reads it from the start."""
    if capture is None:
        return False
    try:
        if capture.wait_opened().live:
            return True
    except SourceError:
        return True
    capture.close()
    return False


__all__ = ["feeds_reader", "start_captures"]
