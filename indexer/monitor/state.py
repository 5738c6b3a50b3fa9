"""The monitor state (`IndexRoot.monitor_state`): what the monitor has evaluated and raised. A monitor commit writes the
new alert rows first and then replaces this file: it is the one place that says which alert files
count, how far each lane evaluated each stream, and every open event, so a restart resumes
exactly here."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field, ValidationError

from indexer.monitor.events import TrackerState
from indexer.store.files import write_atomic_json
from indexer.store.root import IndexRoot


class StreamCursor(BaseModel):
    generation: int = -1       # index commits up to this one are evaluated
    next_index: int = 0        # first sample index not evaluated


class PendingClose(BaseModel):
    """An event has ended; its closing row waits for the clip (the live recording must cover the post-roll)."""

    alert_id: str
    stream_id: str
    end_s: float
    wall_end: float | None
    deadline: float            # unix time: cut what the recording has by then


class LaneState(BaseModel):
    """One lane's progress (see lanes.py): how far it evaluated each stream, its queries' events."""

    streams: dict[str, StreamCursor] = Field(default_factory=dict)
    trackers: dict[str, TrackerState] = Field(default_factory=dict)   # "<query id>/<stream id>"


class MonitorState(BaseModel):
    generation: int = 0
    lanes: dict[str, LaneState] = Field(default_factory=dict)         # by lane name
    alert_files: list[tuple[int, str]] = Field(default_factory=list)   # (generation, path under monitor/)
    submitted_through: int = 0   # webhooks of alert files up to this generation are in the outbox
    pending: list[PendingClose] = Field(default_factory=list)


def read_state(root: IndexRoot) -> MonitorState:
    path = root.monitor_state
    if not path.exists():
        return MonitorState()
    try:
        return MonitorState.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise ValueError(f"{path}: not a readable monitor state: {exc}") from exc


def write_state(root: IndexRoot, state: MonitorState) -> None:
    write_atomic_json(root.monitor_state, state.model_dump(mode="json"))


__all__ = ["LaneState", "MonitorState", "PendingClose", "StreamCursor", "read_state", "write_state"]
