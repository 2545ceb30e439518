"""The import graph: imports only point down (model code never reaches into tasks or data), and there are no loops.

Every ``import`` statement counts, also those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("lit_linearizer", "datamodules")
# The layers, from the top; a package may import only from layers below its own.
_COMMANDS = ("lit_linearizer.tasks", "lit_linearizer.cli", "lit_linearizer.checkpoints")
_CORE = ("lit_linearizer.flows", "lit_linearizer.operators", "lit_linearizer.linearizer", "lit_linearizer.sampling")
_ABOVE_CORE = (
    "lit_linearizer.metrics", "lit_linearizer.callbacks", "lit_linearizer.loggers", "lit_linearizer.modules",
    "lit_linearizer.applications",
)
_BOTTOM = tuple(f"lit_linearizer.{m}" for m in ("errors", "images", "randomness", "schedules", "config", "downloads"))
# Package -> what it must not import. Model code never reaches up into the commands or into data code.
FORBIDDEN = {
    "lit_linearizer.applications": (*_COMMANDS, "datamodules"),
    "lit_linearizer.modules": (*_COMMANDS, "datamodules", "lit_linearizer.applications"),
    "lit_linearizer.callbacks": (*_COMMANDS, "datamodules", "lit_linearizer.applications", "lit_linearizer.modules"),
    "lit_linearizer.metrics": (*_COMMANDS, "datamodules", "lit_linearizer.applications", "lit_linearizer.modules"),
    "lit_linearizer.loggers": (*_COMMANDS, "datamodules", "lit_linearizer.applications", "lit_linearizer.modules"),
    **{core: (*_COMMANDS, "datamodules", *_ABOVE_CORE) for core in _CORE},
    "lit_linearizer.analysis": (*_COMMANDS, "datamodules", *_ABOVE_CORE),
    "datamodules": (*_COMMANDS, *_CORE, *_ABOVE_CORE),
    **{bottom: (*_COMMANDS, "datamodules", *_CORE, *_ABOVE_CORE) for bottom in _BOTTOM},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    files = {_module_name(p): p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_import_cycles():
    graph = import_graph()
    assert "lit_linearizer.operators.base" in graph and graph["lit_linearizer.modules.base"]  # the scan saw the code
    assert cycles(graph) == []


def test_imports_only_point_down():
    graph = import_graph()
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for layer, banned in FORBIDDEN.items()
        if _inside(module, layer)
        for target in targets
        if any(_inside(target, b) for b in banned)
    ]
    assert wrong == []
