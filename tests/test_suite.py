"""The suite's own rules: test modules take shared helpers as conftest fixtures, never by
importing conftest (pytest loads it once, as a plugin; an import loads a second copy of it).

    pytest tests/test_suite.py -q     # under a second
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def conftest_imports(path: Path) -> list[str]:
    """`import conftest` / `from conftest import ...` in one file, as `file:line`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        if any(name.split(".")[0] == "conftest" for name in names):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_test_module_imports_conftest():
    found = [hit for path in sorted(TESTS.glob("*.py")) for hit in conftest_imports(path)]
    assert not found, "take these as fixtures (tests/conftest.py):\n" + "\n".join(found)


def test_the_check_finds_an_import(tmp_path):
    """The check above is not vacuous: it catches both spellings."""
    sample = tmp_path / "test_sample.py"
    sample.write_text("from conftest import ROOT\nimport conftest\n")
    assert conftest_imports(sample) == ["test_sample.py:1", "test_sample.py:2"]
