"""Rule kinds: what each kind of standing query asks, one small class per kind, found by name.

A `RuleKind` says what its queries must hold (condition text or none, the default minimum
duration), which lane evaluates it, and how its events open and close: from each stream's new
frames (`on_frames`), an outage recorded as a gap row (`on_gap`), a source that has stopped
giving frames (`on_waiting`) and the end of a stream (`on_stream_end`). The base class answers
each the common way (frames judged one by one into events, gaps and waiting ignored, an open
event ended at the stream's end), so the lanes call every kind alike and never ask which it is.
A query's rule is its kind built with its condition text and sensitivity (`StandingQuery.rule`).

    @register_kind
    class Snow(PictureRule):           # one class is a new kind: queries.json, the lanes and
        name = "snow"                  # the HTTP API take it by its name
        ...

`KINDS` maps each name to its class; the standing-query model, the lanes and the HTTP API's
schema all read it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field, PlainValidator
from pydantic_core import PydanticCustomError

from indexer.batches import Gap
from indexer.monitor import conditions
from indexer.monitor.conditions import ConditionEvaluator, Verdict
from indexer.monitor.events import Closed, EventTracker, FrameRef, Opened
from indexer.monitor.frames import Frames
from indexer.settings import MonitorSettings
from indexer.store.manifest import StreamEntry

LANES = ("rules", "conditions")   # model-free rules (microseconds a frame); conditions the models verify
DEFAULT_KIND = "condition"         # a standing query that names no kind


@dataclass
class NewFrames:
    """One stream's frames committed since the lane's last step, with the recent ones before them."""

    frames: Frames
    context: Frames              # the recent frames, then `frames`
    offset: int                  # frames[i] is context[offset + i]
    measured: dict[str, np.ndarray] = field(default_factory=dict)   # by kind: one measure for all its queries


@dataclass
class LaneContext:
    """What a lane lends the kinds it evaluates."""

    evaluator: Callable[[], ConditionEvaluator]   # the condition evaluator, loaded on first call
    settings: MonitorSettings
    stats: dict[str, int]        # natural-language conditions: frames, candidates, verifications


@dataclass
class Judgement:
    """What a kind decided about new frames, as `EventTracker.step` takes it."""

    scores: np.ndarray                              # float [n]: higher is stronger (the alert's frame)
    positive: np.ndarray                            # bool [n]: the frame shows it
    verify: Callable[[int], Verdict] | None         # the verdict on the window ending at frame i; None: none
    describe: Callable[[int], str]                  # the answer of an event that frame i opens unverified
    starts: list[FrameRef] | None = None            # where an event that frame i begins really started


class RuleKind:
    """One kind of standing query. Class attributes say what its queries hold; an instance is one
    query's rule (its condition text and sensitivity), and its methods turn what the lane read
    into events through the query's `EventTracker` on one stream."""

    name: ClassVar[str]                          # as queries.json, the API and alert rows spell it
    lane: ClassVar[str] = "rules"                # one of LANES
    takes_condition: ClassVar[bool] = False      # the query needs its condition text (else takes none)
    default_min_duration_s: ClassVar[float] = 0.0

    def __init__(self, condition: str | None = None, sensitivity: float = 0.5):
        self.condition, self.sensitivity = condition, sensitivity

    @classmethod
    def check(cls, condition: str | None) -> None:
        """ValueError when a query of this kind cannot have this condition text."""
        if cls.takes_condition and not (condition and condition.strip()):
            raise ValueError(f"a {cls.name} query needs the condition text")
        if not cls.takes_condition and condition:
            raise ValueError(f"a {cls.name} rule takes no condition text")

    @classmethod
    def describe(cls, condition: str | None) -> str:
        """What the query watches for, in words (alert rows, `vidx watch list`)."""
        return condition if cls.takes_condition else cls.name.replace("_", " ")

    def on_frames(self, tracker: EventTracker, new: NewFrames, lane: LaneContext) -> list[Opened | Closed]:
        judged = self.judge(new, lane)
        return tracker.step(new.frames, judged.scores, judged.positive, judged.verify, judged.describe,
                            judged.starts)

    def judge(self, new: NewFrames, lane: LaneContext) -> Judgement:
        """Each new frame judged (a kind whose events come from its frames says how)."""
        raise NotImplementedError(f"rule kind {self.name!r} ({type(self).__name__}) judges no frames: "
                                  "define judge() or on_frames()")

    def on_gap(self, tracker: EventTracker, gap: Gap) -> list[Opened | Closed]:
        """A gap row: the source gave no frames from gap.start_s to gap.end_s."""
        return []

    def on_waiting(self, tracker: EventTracker, entry: StreamEntry, lane: LaneContext) -> list[Opened]:
        """The live source of `entry` gives no frames now (its reader waits, by `entry.liveness`)."""
        return []

    def on_stream_end(self, tracker: EventTracker) -> list[Closed]:
        """The stream ended (or failed): an open event ends at its last frame."""
        return tracker.finish()


KINDS: dict[str, type[RuleKind]] = {}


def register_kind(kind: type[RuleKind]) -> type[RuleKind]:
    """Class decorator: `kind` becomes a standing query's kind under `kind.name`."""
    name = getattr(kind, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"rule kind {kind.__name__}: name must be an identifier, got {name!r}")
    if name in KINDS:
        raise ValueError(f"rule kind {name!r} is already {KINDS[name].__name__}; pick another name")
    if kind.lane not in LANES:
        raise ValueError(f"rule kind {name!r}: lane must be one of {', '.join(LANES)}, got {kind.lane!r}")
    KINDS[name] = kind
    return kind


def rule_kind(name: str) -> type[RuleKind]:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"no rule kind {name!r}; have: {', '.join(KINDS)}") from None


def _known_kind(value: object) -> str:
    if isinstance(value, str) and value in KINDS:
        return value
    names = [repr(name) for name in KINDS]
    expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    # worded as pydantic words a Literal's error, which the kinds were before they were classes
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


def _kind_schema(schema: dict) -> None:
    schema.update(type="string", enum=list(KINDS))   # the kinds registered when the schema is made


# a field holding a kind's name: validated against KINDS when read, listed in JSON schemas
KindName = Annotated[str, PlainValidator(_known_kind, json_schema_input_type=str),
                     Field(json_schema_extra=_kind_schema)]


# -- the kinds -------------------------------------------------------------------------------------
@register_kind
class Condition(RuleKind):
    """A natural-language condition: the evaluator's prefilter on every frame, its verifier (LLaMA-VID)
    on the window ending at a candidate, and again every window while the event lasts."""

    name = DEFAULT_KIND
    lane = "conditions"
    takes_condition = True

    def judge(self, new: NewFrames, lane: LaneContext) -> Judgement:
        evaluator = lane.evaluator()
        scores = np.asarray(evaluator.scores(self.condition, new.frames), np.float32)
        positive = scores >= evaluator.threshold(self.sensitivity)
        lane.stats["frames"] += len(new.frames)
        lane.stats["candidates"] += int(positive.sum())
        window = lane.settings.window_frames

        def verify(i: int) -> Verdict:
            end = new.offset + i + 1
            lane.stats["verifications"] += 1
            return evaluator.verify(self.condition, new.context[max(0, end - window):end])

        return Judgement(scores, positive, verify, lambda i: "")


class PictureRule(RuleKind):
    """A model-free rule on each frame's thumbnail: a frame shows it when its measure is at most the
    limit the sensitivity sets. The measure is taken once per commit for every query of the kind."""

    def measure(self, new: NewFrames) -> np.ndarray:
        """float [n], one value per new frame."""
        raise NotImplementedError

    def limit(self) -> float:
        raise NotImplementedError

    def explain(self, value: float, limit: float) -> str:
        """The alert's answer: what the rule measured."""
        raise NotImplementedError

    def starts(self, new: NewFrames) -> list[FrameRef] | None:
        return None

    def judge(self, new: NewFrames, lane: LaneContext) -> Judgement:
        if self.name not in new.measured:
            new.measured[self.name] = self.measure(new)
        measured, limit = new.measured[self.name], self.limit()
        return Judgement(-measured, measured <= limit, None, lambda i: self.explain(measured[i], limit),
                         self.starts(new))


@register_kind
class BlackPicture(PictureRule):
    name = "black"
    default_min_duration_s = 2.0   # a single black frame is a cut, not an outage

    def measure(self, new: NewFrames) -> np.ndarray:
        return conditions.black_scores(new.frames)

    def limit(self) -> float:
        return conditions.black_threshold(self.sensitivity)

    def explain(self, value: float, limit: float) -> str:
        return f"black picture: 99th-percentile luma {value:.0f} <= {limit:.0f}"


@register_kind
class FrozenPicture(PictureRule):
    name = "frozen"
    default_min_duration_s = 3.0   # a still shot, not a stuck encoder

    def measure(self, new: NewFrames) -> np.ndarray:
        previous = conditions.luma(new.context.image(new.offset - 1)) if new.offset else None
        return conditions.frozen_scores(new.frames, previous)

    def limit(self) -> float:
        return conditions.frozen_threshold(self.sensitivity)

    def explain(self, value: float, limit: float) -> str:
        return f"frozen picture: mean luma change {value:.2f} <= {limit:.2f} between frames"

    def starts(self, new: NewFrames) -> list[FrameRef]:
        # the picture froze on the frame before the first repeat
        return [FrameRef.of(new.context, new.offset + i - 1) if new.offset + i > 0 else FrameRef.of(new.frames, i)
                for i in range(len(new.frames))]


@register_kind
class SignalLost(RuleKind):
    """A live source that gives no frames. It opens while the source is down (its reader has waited
    `monitor.signal_lost_after_s`, and the query's min_duration_s), or from a gap row when that
    outage was not seen while it lasted; it ends at the first frame the source gives after it.
    Its events show no frame: no thumbnail, no clip."""

    name = "signal_lost"

    def on_gap(self, tracker: EventTracker, gap: Gap) -> list[Opened | Closed]:
        if gap.reason.startswith("timestamp discontinuity"):
            return []   # the clock jumped, the picture did not stop
        lasted = gap.end_s - gap.start_s if gap.end_s is not None else math.inf
        if lasted < tracker.min_duration_s:
            return []
        start = FrameRef(frame_id=-1, index=round(gap.start_s * 1000), pts_s=gap.start_s, wall_time=gap.wall_start)
        events: list[Opened | Closed] = [*tracker.open_at(start, f"signal lost: {gap.reason}")]
        if events and gap.end_s is not None:
            events += tracker.close_at(gap.end_s, gap.wall_end)
        return events

    def on_waiting(self, tracker: EventTracker, entry: StreamEntry, lane: LaneContext) -> list[Opened]:
        """The event opens now; frames from the source end it (`on_frames`), and the gap row written
        when the outage ends is this event, not another."""
        liveness = entry.liveness
        if liveness.waited_s < max(lane.settings.signal_lost_after_s, tracker.min_duration_s):
            return []
        # named by when the frames stopped: the same outage gets the same id after a restart
        start = FrameRef(frame_id=-1, index=round(liveness.waiting_since * 1000), pts_s=entry.watermark_s or 0.0,
                         wall_time=liveness.waiting_since)
        return tracker.open_at(start, f"signal lost: no frame for {liveness.waited_s:.0f} s")

    def on_frames(self, tracker: EventTracker, new: NewFrames, lane: LaneContext) -> list[Opened | Closed]:
        """It ends at the first frame the source gave after it began: by the wall clock when both have
        one (frames held back in the reader from before the outage are committed after it began),
        else by media time (an outage recorded as given up, ended in a later run)."""
        event, frames = tracker.state.open, new.frames
        if event is None:
            return []
        if event.start.wall_time is not None and not np.isnan(frames.wall_time).all():
            after = np.flatnonzero(frames.wall_time > event.start.wall_time)
        else:
            after = np.flatnonzero(frames.pts_s > event.start.pts_s)
        if not len(after):
            return []
        i = int(after[0])
        return [*tracker.close_at(float(frames.pts_s[i]), frames.wall(i))]

    def on_stream_end(self, tracker: EventTracker) -> list[Closed]:
        return []   # a source that ended while down stays lost: nothing says when it came back


__all__ = ["DEFAULT_KIND", "KINDS", "LANES", "BlackPicture", "Condition", "FrozenPicture", "Judgement", "KindName",
           "LaneContext", "NewFrames", "PictureRule", "RuleKind", "SignalLost", "register_kind", "rule_kind"]
