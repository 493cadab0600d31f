"""The package's layout: no import circles between tv_lens modules, and every module declares its public names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tv_lens"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """tv_lens modules ``path`` imports, at module level or inside functions (not under ``TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tv_lens":
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
            found |= {node.module} if node.module in MODULES else set()
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    graph = {name: imported_modules(path) for name, path in MODULES.items()}
    assert circles(graph) == [], "modules that import each other, directly or through others (deferred imports count)"


def test_every_implementation_module_declares_its_public_names():
    missing = [name for name, path in MODULES.items() if "__all__" not in path.read_text()]
    assert not missing, f"add __all__ to {missing}"


def test_the_library_never_imports_the_application():
    importers = {
        name: sorted(m for m in imported_modules(path) if m.startswith("tv_lens.app"))
        for name, path in MODULES.items()
        if not name.startswith("tv_lens.app")
    }
    assert not {name: found for name, found in importers.items() if found}


def test_the_top_level_names_are_listed_with_a_reason_in_the_api_reference():
    import re

    import tv_lens

    page = (PACKAGE.parent / "docs" / "api" / "index.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| [`")]
    listed = {name for row in rows for name in re.findall(r"\[`(\w+)`\]", row.split(" | ")[0])}
    assert listed == set(tv_lens.__all__)
    assert all(row.rstrip(" |").split(" | ")[-1].strip() for row in rows)
