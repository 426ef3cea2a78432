"""The package's shape: every module imports on its own, and no two import each other."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "relay"


def module_name(path: Path) -> str:
    """``relay/ingress/handler.py`` -> ``relay.ingress.handler``; a package is its folder."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of the package that ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from relay.tools import send` imports the module relay.tools.send
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & known


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports."""
    known = set(MODULES)
    graph = {module_name(path): imports(path, known) for path in PACKAGE.rglob("*.py")}
    for name in graph:
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as the list of its modules, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_no_module_of_the_package_is_in_an_import_cycle() -> None:
    """Walking relay/ with ast, no chain of imports leads from a module back to itself."""
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The walk above can fail: a two-module and a three-module circle are both reported."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    """``python -c "import relay.X"`` succeeds for every module, each in an interpreter of its own.

    A few at a time (one per core): each interpreter imports aiohttp and the rest anew.
    """
    failed = {}
    width = os.cpu_count() or 1
    for start in range(0, len(MODULES), width):
        batch = MODULES[start : start + width]
        running = {
            module: subprocess.Popen(
                [sys.executable, "-c", f"import {module}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for module in batch
        }
        for module, process in running.items():
            _, stderr = process.communicate(timeout=120)
            if process.returncode != 0:
                failed[module] = stderr.strip().splitlines()[-1:]
    assert failed == {}
    assert "relay.spool.spooler" in MODULES  # the walk found the subpackages


def test_no_test_module_imports_another_test_module() -> None:
    """Shared helpers live in helper modules (relayutil, relayproc, ...), never in a test_*."""
    tests = Path(__file__).resolve().parent
    offenders = {}
    for path in sorted(tests.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        imported = sorted(n for n in names if n.split(".")[-1].startswith("test_"))
        if imported:
            offenders[path.name] = imported
    assert offenders == {}
