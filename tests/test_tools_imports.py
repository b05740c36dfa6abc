"""House rules for tools/: no tool imports the tests, and tools.evidence's modules import each other one way."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (absolute imports: the project uses no others)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_no_tool_imports_the_tests():
    offenders = {
        module_name(path): sorted(m for m in imported_modules(path) if m == "tests" or m.startswith("tests."))
        for path in sorted((ROOT / "tools").rglob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_the_evidence_modules_import_each_other_without_a_cycle():
    graph = {
        module_name(path): {m for m in imported_modules(path) if m.startswith("tools.evidence.")}
        for path in sorted((ROOT / "tools" / "evidence").glob("*.py"))
    }
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, "import cycle: " + " -> ".join((*trail[trail.index(name) :], name))
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, (*trail, name))
        done.add(name)

    assert "tools.evidence.report" in graph and "tools.evidence.plots" in graph
    for name in sorted(graph):
        visit(name, ())
