"""Alerts as Parquet rows under `IndexRoot.alerts_dir`, one file per monitor commit.

An alert has two rows: "open" when its event is confirmed (the moment to tell someone), "closed"
when the event has ended and its clip is cut. Readers take the latest row per alert id. Only the
files that the monitor state (state.json) lists are committed; anything else is a crash's leftover."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, fields

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from indexer.monitor.state import MonitorState, read_state
from indexer.store.files import write_atomic
from indexer.store.root import IndexRoot


@dataclass
class Alert:
    alert_id: str
    query_id: str
    kind: str                    # condition | black | frozen | signal_lost
    condition: str               # the condition text, or the rule's name
    stream_id: str
    status: str                  # open | closed
    start_s: float               # media time
    end_s: float | None          # None while open (and for a signal lost for good)
    wall_start: float | None     # unix seconds (live sources)
    wall_end: float | None
    frame_id: int | None         # the frame that shows it best (the thumbnail); None for a lost signal
    score: float | None
    answer: str                  # the verifying answer, or what the rule measured
    thumbnail: bytes | None      # JPEG
    clip: str | None = None      # path of the clip, relative to the index root
    clip_start_s: float | None = None
    clip_end_s: float | None = None
    clip_covered: bool | None = None   # the clip spans the event and its pre/post roll
    raised_at: float = 0.0       # unix time this row was written

    def to_json(self) -> dict:
        """JSON-able (webhooks, the HTTP API): the thumbnail as base64 JPEG."""
        data = asdict(self)
        data["thumbnail"] = base64.b64encode(self.thumbnail).decode() if self.thumbnail else None
        return data


SCHEMA = pa.schema([
    ("alert_id", pa.string()), ("query_id", pa.string()), ("kind", pa.string()), ("condition", pa.string()),
    ("stream_id", pa.string()), ("status", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("wall_start", pa.float64()), ("wall_end", pa.float64()), ("frame_id", pa.int64()), ("score", pa.float64()),
    ("answer", pa.string()), ("thumbnail", pa.binary()), ("clip", pa.string()), ("clip_start_s", pa.float64()),
    ("clip_end_s", pa.float64()), ("clip_covered", pa.bool_()), ("raised_at", pa.float64()),
])
assert SCHEMA.names == [f.name for f in fields(Alert)]


def write_alerts(root: IndexRoot, generation: int, alerts: list[Alert]) -> str:
    """One commit's alert rows; returns the file name relative to the monitor folder (as state.json lists it)."""
    name = IndexRoot.alerts_file(generation)
    table = pa.Table.from_pylist([asdict(a) for a in alerts], schema=SCHEMA)
    write_atomic(root.monitor_dir / name, lambda f: pq.write_table(table, f, compression="zstd"))
    return name


class AlertLog:
    """A read-only view of the committed alerts."""

    def __init__(self, root: IndexRoot):
        self.root = root
        self.state: MonitorState = read_state(self.root)

    @property
    def generation(self) -> int:
        return self.state.generation

    def commits(self, after_generation: int) -> list[tuple[int, list[Alert]]]:
        """Each committed generation after `after_generation` that wrote alert rows, oldest first,
        with its rows (opening and closing) in the order written."""
        files = [(gen, f) for gen, f in self.state.alert_files if gen > after_generation]
        if not files:
            return []
        monitor_dir = self.root.monitor_dir
        dataset = ds.dataset([str(monitor_dir / f) for _, f in files], schema=SCHEMA, format="parquet")
        # one scan of every file; __fragment_index: the row's file, by its place in the list
        table = dataset.to_table(columns=[*SCHEMA.names, "__fragment_index"])
        rows: list[list[Alert]] = [[] for _ in files]
        for row in table.to_pylist():
            rows[row.pop("__fragment_index")].append(Alert(**row))
        return [(gen, file_rows) for (gen, _), file_rows in zip(files, rows, strict=True)]

    def rows(self, after_generation: int = -1) -> list[Alert]:
        """Every committed row (opening and closing) of commits after `after_generation`, oldest first."""
        return [row for _, rows in self.commits(after_generation) for row in rows]

    def alerts(self, stream_id: str | None = None, query_id: str | None = None,
               limit: int | None = None) -> list[Alert]:
        """The latest row of each alert, newest first."""
        latest: dict[str, Alert] = {}
        for row in self.rows():
            latest[row.alert_id] = row
        out = [a for a in latest.values() if (stream_id is None or a.stream_id == stream_id)
               and (query_id is None or a.query_id == query_id)]
        out.sort(key=lambda a: (a.wall_start or a.raised_at, a.start_s), reverse=True)
        return out[:limit] if limit else out

    def get(self, alert_id: str) -> Alert:
        found = [row for row in self.rows() if row.alert_id == alert_id]
        if not found:
            raise KeyError(f"no alert {alert_id!r} in {self.root}")
        return found[-1]


def alert_line(alert: Alert) -> str:
    """One line per alert row, as `vidx monitor` and `vidx watch alerts` print them."""
    from indexer.query.prompt import clock  # lazy, not a loop: the query side loads the tokenizers

    when = clock(alert.start_s) + (f"-{clock(alert.end_s)}" if alert.end_s is not None else "")
    head = "ALERT" if alert.status == "open" else "ENDED"
    clip = f" clip={alert.clip}" if alert.clip else ""
    answer = alert.answer.replace("\n", " ")[:120]
    return f"{head} {alert.alert_id} [{alert.stream_id} {when}] {alert.query_id}: {alert.condition} | {answer}{clip}"


__all__ = ["SCHEMA", "Alert", "AlertLog", "alert_line", "write_alerts"]
