"""The product code's import graph, read from the source with `ast`: no import loop anywhere, and
the server's wings import only in their allowed directions (docs/architecture.md).

Every import counts, also those inside functions and under TYPE_CHECKING: a loop that only works
because one side imports lazily is still a loop in the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRODUCT_PACKAGES = ("server", "bundle", "export", "training", "benchmarks")

# module prefix -> prefixes it must never import (arrows of docs/architecture.md)
FORBIDDEN = {
    "bundle": ("server", "export", "training", "benchmarks"),
    "server": ("export", "training", "benchmarks"),
    "server.inference": (
        "server.http",
        "server.observability",
        "server.resources",
        "server.app",
        "server.runtime",
        "server.wsgi",
    ),
    "server.observability": ("server.http", "server.resources", "server.app", "server.runtime"),
    "server.http": ("server.observability", "server.resources", "server.app", "server.runtime"),
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """Modules of `known` that the file imports (an imported name that is a module counts as
    that module; `from package import name` otherwise counts as the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    files = {
        module_name(root, path): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
        if "results" not in path.parts
    }
    known = set(files)
    return {module: imported_modules(path, module, known) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_edges(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for prefix, banned in FORBIDDEN.items():
            if not within(module, prefix):
                continue
            for target in sorted(targets):
                if any(within(target, b) for b in banned):
                    problems.append(f"{module} imports {target}")
    return problems


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO, PRODUCT_PACKAGES)


def test_the_graph_sees_the_imports_it_must(graph: dict[str, set[str]]) -> None:
    """Guard against a graph that is empty or blind (then no loop could ever be found)."""
    assert len(graph) > 60
    assert "server.inference.classify" in graph["server.runtime"]
    assert "server.inference.loading" in graph["server.inference.classify"]
    assert "bundle.runtime" in graph["bundle"]  # a relative import in a package __init__


def test_no_import_loop_in_the_product_code(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_the_server_wings_import_only_downwards(graph: dict[str, set[str]]) -> None:
    assert forbidden_edges(graph) == []


def test_a_loop_and_a_wrong_arrow_are_found(tmp_path: Path) -> None:
    """The checks can fail: a lazy import closing a loop, and inference importing http."""
    pkg = tmp_path / "server"
    (pkg / "inference").mkdir(parents=True)
    (pkg / "http").mkdir()
    for init in (pkg, pkg / "inference", pkg / "http"):
        (init / "__init__.py").write_text("")
    (pkg / "inference" / "a.py").write_text("def f():\n    from server.http import b\n")
    (pkg / "http" / "b.py").write_text("from ..inference.a import f\n")
    fake = import_graph(tmp_path, ["server"])
    assert cycles(fake) == [["server.http.b", "server.inference.a"]]
    assert forbidden_edges(fake) == ["server.inference.a imports server.http.b"]
