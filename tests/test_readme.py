"""README.md is run, not only read: its quick start verbatim (from a copy of the repository's root
and from an unrelated folder), and its two set-up commands are the ones .ci/run runs."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    """The text under the `## title` heading, up to the next heading of that level."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert found, f"README.md has no '## {title}' section"
    return found.group(1)


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.DOTALL)


def commands(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_set_up_commands_are_the_ones_ci_runs():
    setup = commands(shell_blocks(section("Set-up: two commands"))[0])
    assert len(setup) == 2
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci if line in setup] == setup  # both, in order
    assert "vidx demo" in setup[0] and "scripts/test-deps.sh" in setup[1] and "pytest" in setup[1]


@pytest.mark.timeout(900)  # several commands, each loading torch and the models: minutes on a busy machine
@pytest.mark.parametrize("where", ["repository root", "another folder"])
def test_the_quick_start_runs_verbatim(where, tmp_path):
    blocks = shell_blocks(section("Quick start"))
    assert blocks, "no shell block in the quick start"
    if where == "repository root":  # a copy, so the checkout stays clean
        cwd = tmp_path / "repo"
        shutil.copytree(REPO, cwd, ignore=shutil.ignore_patterns(".git", ".venv", "out", "runs", "golden",
                                                                 "__pycache__", "*.egg-info"))
    else:
        cwd = tmp_path / "elsewhere" / "work"
        cwd.mkdir(parents=True)
    outputs = []
    for block in blocks:
        result = subprocess.run(["bash", "-e", "-c", block], cwd=cwd, capture_output=True, text=True,
                                timeout=600, check=False)
        assert result.returncode == 0, f"from the {where}:\n{block}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    out = "\n".join(outputs)
    # what the block promises: models and settings written, the clip indexed, a cited answer, the index described
    assert (cwd / "out" / "tiny" / "settings.yaml").is_file()
    sample = re.search(r"^  (sample\.mp4-\w+): .* (\d+) frames at 1 fps", out, re.MULTILINE)
    assert sample and sample.group(2) == "20", out
    cited = rf"^  \[{re.escape(sample.group(1))} \d+:\d\d-\d+:\d\d\] frames \d+\.\.\d+"
    assert re.search(cited, out, re.MULTILINE), out
