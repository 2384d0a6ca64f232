"""The package's import graph is a tree (a DAG): no module imports, even for type checking only,
a module that imports it back. A circle makes import order matter and hides a layer in the wrong
place (a registry that imports the config naming it)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args, get_type_hints

from pipeline.prep.config import FORMAT_KEYS, InputConfig
from pipeline.prep.inputs import FORMATS

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the pipeline modules it imports}; ``from pipeline.a import b`` names pipeline.a.b
    when that is a module, else pipeline.a."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                edges |= subs or ({node.module} & modules.keys())
        graph[name] = edges - {name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as [a, b, ..., a], or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return []


def test_find_circle_finds_one_and_only_one():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_package_imports_as_a_tree():
    graph = import_graph()
    assert "pipeline.prep.config" in graph["pipeline.prep.inputs"]
    assert find_circle(graph) == [], " → ".join(find_circle(graph))


def test_every_input_format_has_its_keys_and_its_reader():
    assert set(FORMAT_KEYS) == set(FORMATS) == set(get_args(get_type_hints(InputConfig)["format"]))
