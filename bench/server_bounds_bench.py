"""How long one request may hold the server's model lock, and what refused hostile requests cost:
the API (`create_app`) over a real QueryEngine, each request sent through FastAPI's TestClient.

    python bench/server_bounds_bench.py INDEX      # an index root (its own ingest-config.yaml)
    python bench/server_bounds_bench.py            # builds the tiny test index first (Ray, ~1 min)

The lock is held by `engine.ask` / `engine.search` (and a refresh): their time is measured around
the engine's own calls. The worst cases are the bounds of `indexer/server/schemas.py`: the longest
question with the longest history (refused by the engine once tokenized, if it overflows the
model's context: that is the worst an accepted body costs), and the largest image (decoded outside
the lock, embedded inside it). One figure per line: `<figure>: <value> <unit>`.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tiny index and media makers

from indexer.query.engine import QueryEngine
from indexer.server import create_app
from indexer.server.schemas import (
    MAX_ANSWER_CHARS,
    MAX_HISTORY_TURNS,
    MAX_IMAGE_PIXELS,
    MAX_QUESTION_CHARS,
)
from indexer.store.root import IndexRoot
from tests.mediagen import png_bomb


def held(engine: QueryEngine) -> list[float]:
    """Wraps the engine's model calls; returns the list their durations are appended to."""
    times: list[float] = []
    for name in ("ask", "search"):
        call = getattr(engine, name)

        def timed(*args, _call=call, **kwargs):
            started = time.perf_counter()
            try:
                return _call(*args, **kwargs)
            finally:
                times.append(time.perf_counter() - started)

        setattr(engine, name, timed)
    return times


def largest_image() -> bytes:
    """A JPEG of MAX_IMAGE_PIXELS noisy pixels (the most the server decodes)."""
    side = int(MAX_IMAGE_PIXELS ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=75)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", nargs="?", help="index root (default: build the tiny test index)")
    args = parser.parse_args()
    if args.index is None:
        from tests.indexes import build_tiny_index

        args.index = build_tiny_index(Path(tempfile.mkdtemp(prefix="server-bench-"))).root
    engine = QueryEngine.open(IndexRoot.at(args.index))
    times = held(engine)
    with TestClient(create_app(engine), base_url="http://127.0.0.1") as client:
        def lock(request) -> tuple[float, int]:
            times.clear()
            response = request()
            return max(times, default=0.0), response.status_code

        lock(lambda: client.post("/api/ask", json={"question": "What happens?"}))  # warm-up
        typical, status = lock(lambda: client.post("/api/ask", json={"question": "What happens?"}))
        print(f"model lock, a short question: {typical:.3f} s (HTTP {status})")
        turn = {"question": "q " * (MAX_QUESTION_CHARS // 2), "answer": "a " * (MAX_ANSWER_CHARS // 2)}
        worst, status = lock(lambda: client.post("/api/ask", json={"question": "q " * (MAX_QUESTION_CHARS // 2),
                                                                     "history": [turn] * MAX_HISTORY_TURNS}))
        print(f"model lock, the longest question and history allowed ({MAX_QUESTION_CHARS} + {MAX_HISTORY_TURNS} x "
              f"({MAX_QUESTION_CHARS} + {MAX_ANSWER_CHARS}) chars): {worst:.3f} s (HTTP {status})")
        image = largest_image()
        started = time.perf_counter()
        search, status = lock(lambda: client.post("/api/search", files={"image": ("big.jpg", image, "image/jpeg")}))
        print(f"model lock, a search by the largest image allowed ({MAX_IMAGE_PIXELS:,} px, "
              f"{len(image) / 2**20:.1f} MiB JPEG): {search:.3f} s (HTTP {status}; "
              f"{time.perf_counter() - started:.3f} s in all, the decoding outside the lock)")

        started = time.perf_counter()
        status = client.post("/api/ask", content=b"x" * (100 * 2**20),
                             headers={"Content-Type": "application/json"}).status_code
        print(f"a 100 MiB question refused: {time.perf_counter() - started:.3f} s (HTTP {status}; the client's copy "
              "of the body included)")
        bomb = png_bomb(30_000)
        started = time.perf_counter()
        status = client.post("/api/search", json={"image_base64": base64.b64encode(bomb).decode()}).status_code
        print(f"a PNG decompression bomb ({len(bomb) / 2**10:.0f} KiB, 900 Mpx) refused: "
              f"{time.perf_counter() - started:.3f} s (HTTP {status})")
    engine.close()


if __name__ == "__main__":
    main()
