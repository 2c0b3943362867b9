"""The benchmarks are not run by the tests (their numbers are measured side by side, by hand), so nothing else
notices when one of them imports a name that moved: every `from piml... / tests... / benchmarks... import
NAME` in benchmarks/ names something its module still defines (read from the source, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


def defined_names(module: str) -> set[str] | None:
    """The top-level names a module of this repository defines (and its submodules, for a package); None if
    there is no such module."""
    base = REPO.joinpath(*module.split("."))
    if base.is_dir():  # a package, or a namespace package (tests/ and benchmarks/ have no __init__.py)
        names, source = {p.stem for p in base.iterdir()}, base / "__init__.py"
        if not source.exists():
            return names
    elif base.with_suffix(".py").exists():
        names, source = set(), base.with_suffix(".py")
    else:
        return None
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_what_a_benchmark_imports_from_the_project_is_there(script):
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("piml", "tests", "benchmarks")
        ):
            names = defined_names(node.module)
            if names is None:
                missing.append(f"module {node.module}")
            else:
                missing += [f"{node.module}.{a.name}" for a in node.names if a.name not in names]
    assert not missing, f"{script.name} imports what is not there: {', '.join(missing)}"
