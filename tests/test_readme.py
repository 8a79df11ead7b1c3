"""The README's table of command-line tools matches the repository: every tool it lists exists, and every module
that runs as a command is listed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _listed_modules() -> set[str]:
    """The ``python -m X`` modules of the README's "Command-line tools" table."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Command-line tools", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `python -m ([\w.]+)", section, flags=re.MULTILINE))


def _command_modules() -> set[str]:
    """Every module of the repository that runs as a command: a ``__main__`` guard or a package ``__main__.py``."""
    found = set()
    for path in REPO.glob("*/**/*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in {"tests", ".venv", "docs"} or rel.parts[0].startswith("."):
            continue
        if path.name == "__main__.py":
            found.add(".".join(rel.parts[:-1]))
        elif 'if __name__ == "__main__"' in path.read_text():
            found.add(".".join(rel.with_suffix("").parts))
    return found


def test_every_listed_tool_exists() -> None:
    listed = _listed_modules()
    assert len(listed) >= 10, f"the README's tool table was not found or is short: {sorted(listed)}"
    missing = sorted(m for m in listed if importlib.util.find_spec(m) is None)
    assert not missing, f"the README lists tools that do not exist: {missing}"


def test_every_command_is_listed() -> None:
    listed = _listed_modules()
    # utils.viz.cam.cli is what `python -m utils.viz.cam` (the package's __main__) runs
    unlisted = sorted(m for m in _command_modules() - listed if m != "utils.viz.cam.cli")
    assert not unlisted, f"modules that run as commands but are missing from the README's tool table: {unlisted}"
