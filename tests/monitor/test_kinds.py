"""Rule kinds: a new kind is one class, registered by name, which the standing-query model, the
API schema and the monitor's lanes take without a change to them; and no code outside kinds.py
asks which kind a query is."""

from __future__ import annotations

import ast

import numpy as np
import pytest
from pydantic import ValidationError

from indexer.monitor.alerts import AlertLog
from indexer.monitor.kinds import KINDS, NewFrames, PictureRule, RuleKind, register_kind, rule_kind
from indexer.monitor.monitor import Monitor
from indexer.monitor.queries import QueryStore, StandingQuery
from indexer.server.schemas import WatchRequest
from indexer.store.root import IndexRoot
from tests.actors.jobs import REPO
from tests.monitor.colour import orange_share
from tests.monitor.test_monitor import SCENES, encoded, feed  # noqa: F401  (encoded: the fixture)


class OrangePicture(PictureRule):
    """A test-only kind: most of the picture is the planted orange (tests.monitor.scenes)."""

    name = "orange"
    default_min_duration_s = 1.5

    def measure(self, new: NewFrames) -> np.ndarray:
        return np.array([1.0 - orange_share(new.frames.image(i)) for i in range(len(new.frames))], np.float32)

    def limit(self) -> float:
        return 1.0 - (0.8 - 0.6 * self.sensitivity)   # sensitivity 0.5: at least half of it orange

    def explain(self, value: float, limit: float) -> str:
        return f"orange picture: {1 - value:.0%} of it orange"


@pytest.fixture
def orange_kind():
    register_kind(OrangePicture)
    try:
        yield OrangePicture
    finally:
        del KINDS[OrangePicture.name]


def test_a_kind_written_as_one_class_is_validated_and_in_the_api_schema(orange_kind):
    query = StandingQuery(id="o", kind="orange")
    assert query.min_duration_s == 1.5 and query.describe() == "orange"
    assert isinstance(query.rule(), OrangePicture) and query.rule().sensitivity == 0.5
    with pytest.raises(ValidationError, match="orange rule takes no condition text"):
        StandingQuery(id="o", kind="orange", condition="a red car")
    assert WatchRequest.model_validate({"kind": "orange"}).kind == "orange"
    schema = WatchRequest.model_json_schema()
    assert "orange" in schema["properties"]["kind"]["enum"]
    assert "orange" in schema["anyOf"][1]["properties"]["kind"]["enum"]   # a rule: no condition text


def test_unregistered_kinds_are_refused_by_name():
    assert "orange" not in KINDS
    with pytest.raises(ValidationError, match="Input should be 'condition', 'black', 'frozen' or 'signal_lost'"):
        StandingQuery(id="o", kind="orange")
    with pytest.raises(KeyError, match="no rule kind 'orange'; have: condition, black"):
        rule_kind("orange")


def test_register_kind_refuses_a_taken_name_and_an_unknown_lane():
    class Black(PictureRule):
        name = "black"

    class Elsewhere(RuleKind):
        name = "elsewhere"
        lane = "gpu"

    class Unnamed(RuleKind):
        pass

    with pytest.raises(ValueError, match="'black' is already BlackPicture"):
        register_kind(Black)
    with pytest.raises(ValueError, match="lane must be one of rules, conditions, got 'gpu'"):
        register_kind(Elsewhere)
    with pytest.raises(ValueError, match="name must be an identifier"):
        register_kind(Unnamed)
    assert "elsewhere" not in KINDS and KINDS["black"].__name__ == "BlackPicture"


def test_a_new_kind_raises_its_alerts_through_the_monitor_unchanged(tmp_path, encoded, orange_kind):  # noqa: F811
    """The planted picture (an orange field, 6-10 s) is found by the test-only kind in the rules
    lane, one alert with its thumbnail and clip, and nothing else."""
    root = tmp_path / "index"
    root.mkdir()
    QueryStore(IndexRoot.at(root)).create(id="orange", kind="orange", cooldown_s=0.0)
    with Monitor(IndexRoot.at(root), encoded[0]) as monitor:
        writer = feed(root, encoded, slice(None), on_commit=monitor.poll)
        writer.finish_stream("cam")
        writer.close()
        monitor.poll()
        monitor.drain(10.0)
    [alert] = AlertLog(IndexRoot.at(root)).alerts()
    start, end = SCENES["planted"]
    assert (alert.kind, alert.condition, alert.status) == ("orange", "orange", "closed")
    assert abs(alert.start_s - start) <= 1.0 and abs(alert.end_s - end) <= 1.0, (alert.start_s, alert.end_s)
    assert alert.answer.startswith("orange picture:") and alert.thumbnail[:2] == b"\xff\xd8"
    assert alert.clip is not None and (root / alert.clip).stat().st_size > 0
    assert set(monitor.state.lanes["rules"].trackers) == {"orange/cam"}   # evaluated in the kind's lane
    assert monitor.stats["frames"] == 0   # and never by the condition evaluator


def kind_comparisons(source: str) -> list[str]:
    """`x.kind == ...`, `kind != ...`, `query.kind in (...)`: code that asks which kind something is."""
    return [f"{node.lineno}: {ast.unparse(node)}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Compare)
            and "kind" in [getattr(o, "id", None) or getattr(o, "attr", None) for o in [node.left, *node.comparators]]]


def kind_names(source: str) -> list[str]:
    """A model-free kind's name written as a string in code (docstrings aside)."""
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr)}
    return [f"{n.lineno}: {n.value!r}" for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and n.value in ("black", "frozen", "signal_lost") and id(n) not in docstrings]


def test_the_dispatch_check_finds_what_it_looks_for():
    assert kind_comparisons('if q.kind == "black":\n    pass\nelif kind != "x" or a.kind in RULES:\n    pass\n') == [
        "1: q.kind == 'black'", "3: kind != 'x'", "3: a.kind in RULES"]
    assert kind_names('"""black frozen"""\nRULES = ("black", "frozen")\n') == ["2: 'black'", "2: 'frozen'"]
    assert kind_comparisons("if rule_kind(q.kind).lane == self.name:\n    pass\n") == []


def test_no_code_outside_kinds_py_asks_which_kind_a_query_is():
    """The monitor, its lanes, the HTTP API and the monitor job (the page's script and the CLI's
    argument parsing aside) leave every kind-specific decision to the kinds' classes."""
    files = [*(REPO / "indexer" / "monitor").glob("*.py"), *(REPO / "indexer" / "server").glob("*.py"),
             REPO / "actors" / "monitor.py"]
    files = sorted(f for f in files if f.name != "kinds.py")
    assert len(files) > 15 and REPO / "indexer" / "monitor" / "lanes.py" in files
    found = [f"{f.relative_to(REPO)}:{hit}" for f in files
             for hit in kind_comparisons(f.read_text()) + kind_names(f.read_text())]
    assert found == []
