"""`vidx`, the console script: actors/cli.py, the library's commands plus the Ray jobs."""

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["info", "repair", "prune", "tiny", "ask", "export-llm", "watch", "serve",   # the library's (indexer/cli.py)
            "ingest", "monitor", "demo"]                                                # Ray jobs (actors/cli.py)


def test_the_console_script_is_the_actors_entry_module():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"vidx": "actors.cli:main"}


def test_vidx_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "actors.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
    assert "{" + ",".join(COMMANDS) + "}" in done.stdout.replace("\n", "").replace(" ", "")
    for command in COMMANDS:
        assert f"\n    {command} " in done.stdout, command


def test_the_library_parser_leaves_the_ray_jobs_out():
    """`python -c 'from indexer.cli import main'` works without actors, with the library's commands."""
    code = ("import sys; from indexer.cli import build_parser; "
            "print(sorted(build_parser()._subparsers._group_actions[0].choices)); "
            "print(any(m.split('.')[0] == 'actors' for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.split("\n")[:2] == [str(sorted(COMMANDS[:8])), "False"]
