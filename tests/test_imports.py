"""Layout: the modules of ocrfleet, flows/ and tasks/ import one another without a cycle, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ocrfleet": ROOT / "ocrfleet", "ocrfleet.flows": ROOT / "flows", "ocrfleet.tasks": ROOT / "tasks"}


def modules() -> dict[str, Path]:
    """Every module by its installed name (flows/ and tasks/ install as ocrfleet.flows / ocrfleet.tasks)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ocrfleet modules `name` imports anywhere in its body: at the top, inside functions, under `if`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {module for module in found if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycle_among_ocrfleet_flows_and_tasks_modules():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "ocrfleet.flows.ocr_flow" in graph and "ocrfleet.inputs.listing" in graph
    assert "ocrfleet.inputs.locations" in graph["ocrfleet.inputs.listing"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    (tmp_path / "a.py").write_text("import ocrfleet.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from ocrfleet import c\n")
    (tmp_path / "c.py").write_text("from ocrfleet.a import x\n")
    known = {f"ocrfleet.{name}": tmp_path / f"{name}.py" for name in "abc"}
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert cycles(graph) == [["ocrfleet.a", "ocrfleet.b", "ocrfleet.c"]]
