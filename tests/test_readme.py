"""The README's Python examples run as written, and its test command is the one CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_python_examples_run():
    # Examples that read a trained run (runs/...) are exercised by the evaluation tests.
    blocks = [block for block in _blocks("python") if "runs/" not in block]
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    test_commands = [
        line for block in _blocks("bash") for line in block.splitlines() if "pytest" in line
    ]
    assert test_commands
    assert test_commands[0] in (ROOT / ".ci" / "run").read_text()
