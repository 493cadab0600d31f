"""Every Python example in README.md and docs/ runs, and the demos run top to bottom."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_in_docs_run(path):
    blocks = python_blocks(path)
    namespace: dict = {}
    for block in blocks:  # blocks of one page share a namespace, like a reader pasting them in order
        exec(compile(block, str(path), "exec"), namespace)


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"<!-- (main|test)-command -->\n```bash\n(.+?)\n```", readme)
    assert [kind for kind, _ in commands] == ["main", "test"]
    assert all("pip install torch==2.13.0" in command for _, command in commands)
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("demo", sorted((ROOT / "demos").glob("*.py")), ids=lambda p: p.name)
def test_demo_scripts_run(demo, capsys):
    runpy.run_path(str(demo), run_name="__main__")
    assert capsys.readouterr().out.strip()
