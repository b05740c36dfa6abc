"""The import graph of ``src/urpo``: no module may reach itself through imports, and only the commands import the
LightningModule.

Every ``import`` statement counts, wherever it stands: at the top, inside a function, or under ``TYPE_CHECKING``
(a type-only import is still a dependency a reader has to follow). A cycle is named module by module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import urpo

PACKAGE_ROOT = Path(urpo.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, name: str) -> set[str]:
    """Absolute names of every urpo module ``path`` imports (``from a import b`` names ``a.b`` if it is a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the urpo modules it imports (only edges between modules of the package)."""
    paths = {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}
    return {name: {n for n in imported_names(path, name) if n in paths and n != name} for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    arrows = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return f"{len(component)} modules: " + "; ".join(arrows)


def test_the_graph_reads_every_kind_of_import():
    graph = import_graph()
    assert "urpo.module" in graph and "urpo.objective" in graph["urpo.module"]  # a top-level import
    assert "urpo.rewards.base" in graph["urpo.rewards.preference"]  # a package's submodule
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_commands_import_the_lightning_module():
    """Rewards, the update, sharding, export and data take plain values or a small typed context, never the module."""
    importers = {name for name, targets in import_graph().items() if "urpo.module" in targets}
    assert importers <= {"urpo.cli", "urpo.inspect_data"}, sorted(importers)


def test_src_urpo_has_no_import_cycle():
    graph = import_graph()
    found = [describe(c, graph) for c in cycles(graph)]
    assert not found, "import cycles in src/urpo (imports under TYPE_CHECKING count too):\n" + "\n".join(found)
