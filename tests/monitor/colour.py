"""A deterministic `ConditionEvaluator` for tests: no model weights exist on these machines, so
the planted picture (tests.indexes.planted_image: an orange field with a blue disc) is found by
its colours. It plugs in through `monitor.evaluator: tests.monitor.colour:ColourDetector`, where
the retrieval prefilter and LLaMA-VID verifier sit with real weights."""

from __future__ import annotations

import numpy as np

from indexer.monitor.conditions import Verdict
from indexer.monitor.frames import Frames

ORANGE = np.array([240, 140, 20], np.float32)


def orange_share(image: np.ndarray) -> float:
    """Share of pixels within JPEG/H.264 error of the planted orange."""
    return float((np.abs(image.astype(np.float32) - ORANGE).max(axis=-1) < 40).mean())


class ColourDetector:
    def __init__(self, root=None, settings=None):
        self.verified: list[tuple[int, ...]] = []   # frame ids of each verified window

    def threshold(self, sensitivity: float) -> float:
        return 0.6 - 0.4 * sensitivity

    def scores(self, condition: str, frames: Frames) -> np.ndarray:
        return np.array([orange_share(frames.image(i)) for i in range(len(frames))], np.float32)

    def verify(self, condition: str, frames: Frames) -> Verdict:
        self.verified.append(tuple(int(f) for f in frames.frame_ids))
        share = orange_share(frames.image(len(frames) - 1))
        positive = share > 0.3
        return Verdict(positive, f"{'yes' if positive else 'no'}: {share:.0%} of the last frame is orange")
