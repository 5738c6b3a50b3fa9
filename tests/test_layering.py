"""The house's floors: `indexer` is importable without `actors`, and no import runs upwards (no
package imports a sibling that imports it back, no module loop hidden behind TYPE_CHECKING)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "indexer"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def imported_modules(path: Path, in_functions: bool) -> set[str]:
    """The project modules `path` imports at module level, TYPE_CHECKING blocks included (and, with
    `in_functions`, inside functions too)."""
    found = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and not in_functions:
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{a.name}" for a in child.names]
                found.update([n for n in names if n in MODULES] or [child.module])
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def floor(module: str) -> str:
    """A subpackage's modules share its floor; a ground-floor module (indexer/x.py) is its own."""
    parts = module.split(".")
    return ".".join(parts[:2]) if (REPO / parts[0] / parts[1]).is_dir() else module


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def import_graph(key) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for target in imported_modules(path, in_functions=True):
            if target in MODULES and key(target) != key(name):
                edges.setdefault(key(name), set()).add(key(target))
    return edges


def test_no_module_under_indexer_imports_actors():
    offenders = [name for name, path in MODULES.items()
                 if any(t == "actors" or t.startswith("actors.") for t in imported_modules(path, in_functions=True))]
    assert not offenders, f"indexer is the library; these import actors: {offenders}"


def test_every_library_module_imports_with_actors_unimportable():
    """Each module of indexer/ imported in a fresh interpreter where `import actors` fails."""
    code = f"""
import importlib, sys
class NoActors:
    def find_spec(self, name, path=None, target=None):
        if name == "actors" or name.startswith("actors."):
            raise ImportError(f"{{name}}: indexer must not import actors")
        return None
sys.meta_path.insert(0, NoActors())
for name in {sorted(MODULES)!r}:
    importlib.import_module(name)
assert not any(m == "actors" or m.startswith("actors.") for m in sys.modules), sorted(sys.modules)
print("imported", len({sorted(MODULES)!r}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"imported {len(MODULES)}"


def test_no_package_imports_a_sibling_that_imports_it_back():
    """Every import (module level, TYPE_CHECKING blocks and lazy ones inside functions): the floors of
    indexer/ form no loop."""
    assert not loops(import_graph(floor)), "import loops between floors"


def test_no_module_loop_hides_behind_type_checking():
    assert not loops(import_graph(lambda name: name)), "import loops between modules"
