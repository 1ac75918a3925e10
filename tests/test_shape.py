"""The shape of the code (DESIGN.md, Layout), held by tests so it survives every change.

    pytest tests/test_shape.py

- the import contracts in pyproject.toml (`lint-imports`: layers, commands never imported by
  the library, trainables never importing search, no import cycles);
- no module in search/ or trainables/ over 400 lines, no function over 60;
- only the kind classes (trainables/kinds/) compare against a kind's name or branch on a kind's
  boolean attributes (`Kind.exclusive`): everything else asks the kind object a question;
- `ruff format --check` and `ruff check` pass over search/, trainables/ and tests/, with at
  most `MAX_FMT_SKIPS` `# fmt: skip` markers (data tables only);
- test modules never import each other (shared helpers live in conftest.py).
"""

from __future__ import annotations

import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from trainables.kinds import KIND_NAMES, KINDS

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted([*ROOT.glob("search/**/*.py"), *ROOT.glob("trainables/**/*.py")])
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
KIND_HOME = ROOT / "trainables" / "kinds"
FORMATTED = ("search", "trainables", "tests")
"""The folders CI holds to `ruff format` and `ruff check`."""
MAX_FMT_SKIPS = 10
KIND_FLAGS = {
    name
    for kind in KINDS.values()
    for cls in type(kind).__mro__
    for name, value in vars(cls).items()
    if isinstance(value, bool)
} | {"dense"}  # segmentation's former flag, replaced by `Kind.for_labels`
"""The boolean attributes of the kind classes: a branch on one belongs in a kind's method."""


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _venv_tool(name: str) -> str:
    """A console script of this interpreter's environment (where pytest runs from)."""
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


def test_import_contracts_hold():
    out = subprocess.run(
        [_venv_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
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


def _flag_reads(node: ast.AST) -> list[ast.Attribute]:
    """The reads of a kind's boolean attribute (`x.exclusive`) anywhere inside `node`."""
    return [a for a in ast.walk(node) if isinstance(a, ast.Attribute) and a.attr in KIND_FLAGS]


def _conditions(tree: ast.Module):
    """Every expression a branch tests (if, ternary, while, assert, comprehension filter,
    match guard, and/or/not), and every value bound to a name straight from an attribute
    (`exclusive = kind.exclusive`, then tested under another name)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert):
            yield node.test
        elif isinstance(node, ast.comprehension):
            yield from node.ifs
        elif isinstance(node, ast.match_case) and node.guard is not None:
            yield node.guard
        elif isinstance(node, ast.BoolOp) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
        ):
            yield node
        elif isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(
            node.value, ast.Attribute
        ):
            yield node.value


def _flag_branches(path: Path) -> list[str]:
    """Places that branch on a kind's boolean attribute (`if kind.exclusive:`)."""
    found = set()
    for test in _conditions(_tree(path)):
        for read in _flag_reads(test):
            found.add(f"{_rel(path)}:{read.lineno}: {ast.unparse(test)}")
    return sorted(found)


def test_only_the_kind_classes_branch_on_a_kind_attribute():
    outside = [p for p in LIBRARY if KIND_HOME not in p.parents]
    branches = [line for path in outside for line in _flag_branches(path)]
    assert not branches, (
        "give the kind classes (trainables/kinds/) a method that answers, instead of testing "
        "a kind's attribute here:\n" + "\n".join(branches)
    )


def test_the_kind_attribute_check_finds_a_branch(tmp_path):
    """The check above is not vacuous: each way of branching on a kind's attribute is found,
    and reading one without branching (a method call) is not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(kind, labels):\n"
        "    if kind.dense:\n"
        "        return 0\n"
        "    flag = kind.exclusive\n"
        "    rows = [r for r in labels if not kind.exclusive]\n"
        "    return 1 if kind.exclusive and rows else kind.for_labels(images=2, masks=3)\n"
    )
    assert [line.split(":")[1] for line in _flag_branches(sample)] == ["2", "4", "5", "6"]
    assert KIND_FLAGS >= {"exclusive", "dense"}


def _fmt_skips(path: Path) -> int:
    """Comments in `path` that keep `ruff format` off code: `# fmt: skip` (also after another
    pragma) and `# fmt: off` (comments only: a string holding the words is none)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    comments = [t.string.replace(" ", "") for t in tokens if t.type == tokenize.COMMENT]
    return sum("#fmt:skip" in c or "#fmt:off" in c for c in comments)


def test_fmt_skip_is_for_data_tables_only():
    counts = {
        _rel(p): n
        for folder in FORMATTED
        for p in (ROOT / folder).rglob("*.py")
        if (n := _fmt_skips(p))
    }
    assert sum(counts.values()) <= MAX_FMT_SKIPS, (
        f"{sum(counts.values())} '# fmt: skip' markers (at most {MAX_FMT_SKIPS}, data tables "
        f"only): split long functions into named steps instead; {counts}"
    )


def test_the_fmt_skip_count_reads_comments_only(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "TABLE = [1,  2]  # fmt: skip\n"
        'TEXT = "# fmt: skip"\n'
        "ROW = [3,  4]  # noqa: E241 # fmt:skip\n"
    )
    assert _fmt_skips(sample) == 2


@pytest.mark.parametrize("command", [("format", "--check"), ("check",)], ids=" ".join)
def test_ruff_passes(command):
    """What CI enforces: `ruff format --check` and `ruff check` over `FORMATTED`."""
    out = subprocess.run(
        [_venv_tool("ruff"), *command, *FORMATTED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"ruff {' '.join(command)}:\n{out.stdout[-4000:]}{out.stderr}"


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


def _namespace_uses(path: Path) -> list[str]:
    """Imports of argparse, every `Namespace` name, and annotations naming one (quoted too)."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        named = (isinstance(node, ast.Name) and node.id == "Namespace") or (
            isinstance(node, ast.Attribute) and node.attr == "Namespace"
        )
        notes = [getattr(node, k, None) for k in ("annotation", "returns")]
        quoted = [n for n in notes if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        in_note = any(re.search(r"(?<![A-Za-z_])Namespace\b", n.value) for n in quoted)
        if named or in_note or any(m.split(".")[0] == "argparse" for m in modules):
            found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(node)[:60]}")
    return found


def test_only_the_commands_and_the_options_module_know_argparse(tmp_path):
    """The library takes typed settings (search.driver.settings), never a Namespace."""
    allowed = {*ROOT.glob("search/*.py"), ROOT / "search" / "driver" / "options.py"}
    uses = [line for p in LIBRARY if p not in allowed for line in _namespace_uses(p)]
    assert not uses, "take typed settings instead of argparse:\n" + "\n".join(uses)
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from argparse import Namespace\nimport argparse as ap\n"
        "def f(a: 'argparse.Namespace', b: SimpleNamespace) -> ap.Namespace:\n    return a\n"
    )
    assert len(_namespace_uses(sample)) == 4  # the check is not vacuous
