import os
import sys
from pathlib import Path

import pytest

from tests.indexes import tiny_index  # noqa: F401  (a session fixture: a real index of two videos)

REPO = Path(__file__).resolve().parents[1]

# The console scripts of this environment (ray, vidx) for the tests' subprocesses, also when the
# suite runs as `.venv/bin/python -m pytest` with the virtualenv not activated (README command 2)
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def golden_roots() -> list[Path]:
    """Golden sets made with the official code, committed under tests/golden/ (set A, then the
    extra sets B and C: see tests/golden/README.md)."""
    return sorted(p for p in (REPO / "tests" / "golden").glob("llamavid-*") if (p / "expected").is_dir())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from indexer.llamavid.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from indexer.llamavid import LlamaVid

    return LlamaVid.from_pretrained(tiny_model_dir)
