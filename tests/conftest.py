"""Fixtures shared by the test modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def script() -> ModuleType:
    """The repository's test.py, loaded from its file: `import test` could find the standard library's package."""
    spec = importlib.util.spec_from_file_location("wsag_test_script", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
