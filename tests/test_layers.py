"""The package's import contract: layers import one way (pyproject.toml [tool.importlinter]),
and no alignlab module imports itself through others (no cycle). grimp reads the source, so an
import inside a function counts as much as one at the top of a module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())")

pytest.importorskip("importlinter")
grimp = pytest.importorskip("grimp")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package and pyproject.toml in ``root`` (found there first)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--no-logo"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def test_layers_contract_is_kept() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_layers_contract_breaks_on_an_upward_import(tmp_path: Path) -> None:
    """The contract can fail: one upward import (the bottom layer importing the CLI) in a copy of
    the package breaks it, and the report names that import."""
    shutil.copytree(ROOT / "alignlab", tmp_path / "alignlab",
                    ignore=shutil.ignore_patterns("__pycache__", "assets", "conf"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "alignlab" / "errors.py"
    errors.write_text(errors.read_text() + "\n\nimport alignlab.cli  # noqa: E402,F401\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "0 kept, 1 broken" in proc.stdout
    assert "alignlab.errors -> alignlab.cli" in proc.stdout


def _cycles(graph: object, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(
                        graph.find_modules_directly_imported_by(target) & modules))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=importer, imported=imported)
    assert _cycles(graph, set(graph.modules)) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("alignlab", cache_dir=None)
    modules = {m for m in graph.modules if m == "alignlab" or m.startswith("alignlab.")}
    assert {"alignlab.cli", "alignlab.config", "alignlab.errors"} <= modules
    assert _cycles(graph, modules) == []


ASKS_THE_ROW = (*sorted(str(p.relative_to(ROOT / "alignlab"))
                        for p in (ROOT / "alignlab" / "report").glob("*.py")),
                "console.py", "validation.py", "toy_start.py", "stage.py", "pipeline.py",
                "training.py")


def _method_branches(source: str, names: set[str]) -> list[str]:
    """Comparisons of a method's name with a method's name (``method == "ppo"``, ``info.name in
    ("cai", "judge")``): a module that branches on the name instead of asking the method's row.
    (A metric key that is also a method's name, eval.json's ``reward``, is not a method.)"""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        for side in (node.left, *node.comparators):
            consts = [side] if isinstance(side, ast.Constant) else \
                list(side.elts) if isinstance(side, ast.Tuple | ast.List | ast.Set) else []
            hits = [c.value for c in consts if isinstance(c, ast.Constant) and c.value in names]
            if hits and ("method" in ast.unparse(node) or "name" in ast.unparse(node)):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_report_console_validation_name_no_method() -> None:
    """What a method is lives in its registry row (alignlab.methods.spec.Method): the modules
    that show or check stages ask the row, and never compare a name with a method's."""
    from alignlab import methods

    names = set(methods.names())
    assert "report/pages.py" in ASKS_THE_ROW
    for module in ASKS_THE_ROW:
        found = _method_branches((ROOT / "alignlab" / module).read_text(), names)
        assert not found, (module, found)
    # The check finds what it forbids.
    assert _method_branches('if method in ("dpo", "kto"):\n    pass\n', names)
    assert _method_branches('x = cfg.method.name == "ppo"\n', names)
