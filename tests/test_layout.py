"""The package's shape: modules import each other without cycles, in data-path order."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reranker"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (relative imports, at any depth)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
        graph[path.stem] = deps - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return []


def test_the_package_has_no_import_cycles():
    """Fault seen failing: `from .service import Metrics` added to reranker/scheduler.py."""
    assert find_cycle(import_graph()) == []


def test_the_math_layers_know_nothing_of_serving():
    """model, attention, engine, scheduler and the request path never import the serving or
    deployment modules (the road runs one way: service -> api -> scheduler -> engine -> model).
    """
    graph = import_graph()
    serving = {"service", "api", "cli", "weights", "loading", "placement"}
    for low in ("model", "attention", "packing", "engine", "scheduler", "batching", "request"):
        seen, todo = set(), [low]
        while todo:
            for d in graph[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        assert not seen & serving, (low, seen & serving)
