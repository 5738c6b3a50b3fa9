"""How a standing query's frames are judged.

A natural-language condition goes through two stages: a prefilter on every frame (the retrieval
embedding's text-image cosine against a threshold set by the sensitivity), then verification of
the candidate window by LLaMA-VID (a yes/no question over the window's context tokens). Both
stages sit behind `ConditionEvaluator`, so a deterministic evaluator (tests: a colour detector)
plugs in where the models would, and everything around it stays the same.

Black and frozen pictures need no model: `black_scores` and `frozen_scores` measure each frame's
thumbnail."""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from indexer.monitor.frames import Frames
from indexer.settings import Settings
from indexer.store.root import IndexRoot

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    positive: bool
    answer: str          # why: the verifying model's answer, or what the rule measured


class ConditionEvaluator(Protocol):
    def threshold(self, sensitivity: float) -> float:
        """The prefilter score a frame needs at this sensitivity (0..1, higher lets more through)."""

    def scores(self, condition: str, frames: Frames) -> np.ndarray:
        """Prefilter: one score per frame, float [n]; cheap, runs on every frame."""

    def verify(self, condition: str, frames: Frames) -> Verdict:
        """Verification of a candidate window (the frames ending at the candidate)."""


def verification_question(condition: str) -> str:
    return (f"Does the video show this: {condition.strip().rstrip('.?')}? "
            "Answer yes or no first, then explain in one short sentence.")


def is_yes(answer: str) -> bool:
    words = answer.strip().lower().split(maxsplit=1)
    return bool(words) and words[0].strip(".,!:;\"'*") == "yes"


class ModelEvaluator:
    """The retrieval embedding as prefilter, LLaMA-VID over the index's stored features as verifier.
    Models load on first use: a monitor with only model-free rules never loads them."""

    def __init__(self, root: IndexRoot, settings: Settings):
        self.root = root
        self.settings = settings
        self._lock = threading.Lock()
        self._engine = None
        self._texts: dict[str, np.ndarray] = {}

    @property
    def engine(self):
        with self._lock:
            if self._engine is None:
                from indexer.query.engine import QueryEngine

                self._engine = QueryEngine.open(self.root, self.settings)
            return self._engine

    def threshold(self, sensitivity: float) -> float:
        low, high = self.settings.monitor.score_range
        return high - sensitivity * (high - low)

    def scores(self, condition: str, frames: Frames) -> np.ndarray:
        if condition not in self._texts:
            self._texts[condition] = self.engine.embedder.embed_texts([condition])[0]
        return frames.embeddings @ self._texts[condition]   # [n, E] @ [E] -> [n] cosines

    def verify(self, condition: str, frames: Frames) -> Verdict:
        from indexer.query.search import SearchFilter

        engine = self.engine
        engine.refresh()
        where = SearchFilter(streams=(frames.stream_id,), start_s=float(frames.pts_s[0]),
                             end_s=float(frames.pts_s[-1]))
        answer = engine.ask(verification_question(condition), where=where)
        return Verdict(is_yes(answer.text), answer.text.strip())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def load_evaluator(spec: str, root: IndexRoot, settings: Settings) -> ConditionEvaluator:
    """`monitor.evaluator`: "model", or "package.module:factory" called as factory(root=, settings=)."""
    if spec == "model":
        return ModelEvaluator(root, settings)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"monitor.evaluator must be 'model' or 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"monitor.evaluator {spec!r}: {exc}") from exc
    return factory(root=root, settings=settings)


# -- model-free rules ------------------------------------------------------------------------------
def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB [h, w, 3] -> float32 [h, w] (0..255)."""
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def black_threshold(sensitivity: float) -> float:
    # the 99th-percentile luma of a black frame: 0-16 (full/limited range) plus JPEG ringing;
    # a dark scene with any light in it is far above 64
    return 16.0 + 48.0 * sensitivity


def frozen_threshold(sensitivity: float) -> float:
    # mean absolute luma change between consecutive thumbnails: a still picture re-encoded
    # changes by under 1 level, a static camera with sensor noise by 2-3
    return 0.5 + 3.0 * sensitivity


def black_scores(frames: Frames) -> np.ndarray:
    """99th-percentile luma per frame: low for a black picture."""
    return np.array([np.percentile(luma(frames.image(i)), 99) for i in range(len(frames))], np.float32)


def frozen_scores(frames: Frames, previous: np.ndarray | None) -> np.ndarray:
    """Mean absolute luma change from the frame before (the first frame compares with `previous`,
    the last image of the batch before; inf when there is none, and for a black frame)."""
    out = np.full(len(frames), np.inf, np.float32)
    before = previous
    for i in range(len(frames)):
        current = luma(frames.image(i))
        black = np.percentile(current, 99) <= black_threshold(0.5)   # the black rule's event, not a freeze
        if before is not None and before.shape == current.shape and not black:
            out[i] = float(np.abs(current - before).mean())
        before = current
    return out


__all__ = ["ConditionEvaluator", "ModelEvaluator", "Verdict", "black_scores", "black_threshold", "frozen_scores",
           "frozen_threshold", "is_yes", "load_evaluator", "luma", "verification_question"]
