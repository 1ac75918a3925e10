"""The shape of the code (DESIGN.md, Layout), held by tests so it survives every change.

    pytest tests/test_shape.py

- the import contracts in pyproject.toml (`lint-imports`: layers, commands never imported by
  the library, trainables never importing search, no import cycles);
- no module in search/ or trainables/ over 400 lines, no function over 60;
- only the kind classes (trainables/kinds/) compare against a kind's name;
- test modules never import each other (shared helpers live in conftest.py).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.kinds import KIND_NAMES

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted([*ROOT.glob("search/**/*.py"), *ROOT.glob("trainables/**/*.py")])
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
KIND_HOME = ROOT / "trainables" / "kinds"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout


@pytest.mark.parametrize("path", LIBRARY, ids=_rel)
def test_module_is_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{_rel(path)} has {lines} lines; split it by concern"


def _long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{_rel(path)}:{node.lineno} {node.name}() is {length} lines")
    return out


def test_functions_are_short():
    long = [line for path in LIBRARY for line in _long_functions(path)]
    assert not long, "\n".join(long)


def _kind_comparisons(path: Path) -> list[str]:
    """Places that compare something with a kind's name (`kind == "binary"`, `in (...)`)."""
    found = []
    for node in ast.walk(_tree(path)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        consts = [c for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)]
        if any(c.value in KIND_NAMES for c in consts):
            found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_kind_classes_branch_on_a_kind():
    outside = [p for p in LIBRARY if KIND_HOME not in p.parents]
    branches = [line for path in outside for line in _kind_comparisons(path)]
    assert not branches, "ask the kind object (trainables.kinds) instead:\n" + "\n".join(branches)


def test_the_kind_check_finds_a_branch(tmp_path):
    """The check above is not vacuous: it catches the pattern it forbids."""
    sample = tmp_path / "sample.py"
    sample.write_text('def f(kind):\n    return 1 if kind == "multilabel" else 0\n')
    assert len(_kind_comparisons(sample)) == 1


def test_test_modules_do_not_import_each_other():
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{path.name}:{node.lineno} imports {n}" for n in names if n in tests]
    assert not bad, "move shared helpers into tests/conftest.py:\n" + "\n".join(bad)
