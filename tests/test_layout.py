"""The package's shape: modules import each other without cycles, and the folders are layers
in data-path order, each importing only the ones above it (reranker/__init__.py draws them)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reranker"

# Low to high. A module imports modules of its own folder or of lower layers only; the
# entries of one layer know nothing of each other.
LAYERS = [
    {"config"},
    {"validation"},
    {"text"},
    {"request", "model"},
    {"runtime", "loading"},
    {"api"},
    {"service"},
    {"serve"},
    {"cli"},
    {"__main__"},
]

# Top-level packages of this project that sit beside reranker/ and build on it: the runtime
# never imports them (tools/__init__.py).
OUTSIDE = {"tools"}


def module_name(path: Path) -> str:
    """``reranker/runtime/scheduler.py`` -> ``runtime.scheduler`` (a package: its folder)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (relative imports, at any depth, resolved)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if name != "__init__" else []
        base = here if path.name == "__init__.py" else here[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                anchor = base[: len(base) - (node.level - 1)]
                target = anchor + (node.module.split(".") if node.module else [])
                candidates = [".".join([*target, a.name]) for a in node.names]
                for full in [*candidates, ".".join(target)]:
                    if full in modules:
                        deps.add(full)
                        break
        graph[name] = deps - {name}
    return graph


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


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
    """Fault seen failing: `from ..service import Metrics` added to runtime/scheduler.py."""
    assert find_cycle(import_graph()) == []


def test_every_folder_is_a_layer():
    """Fault seen failing: a new folder (reranker/extra/) that no layer names."""
    tops = {name.split(".")[0] for name in import_graph()} - {"__init__"}
    assert tops <= set().union(*LAYERS), tops - set().union(*LAYERS)


def test_imports_only_go_up_the_layers():
    """Each import reaches its own folder or a lower layer: the road runs one way (front ends
    -> api/service -> runtime -> model/request -> text -> config). Faults seen failing:
    model/engine.py importing runtime.batching; request/prepare.py importing
    model.engine (siblings of one layer)."""
    bad = []
    for module, deps in import_graph().items():
        if module == "__init__":  # the package's lazy exports name every layer
            continue
        for dep in deps:
            same_folder = module.split(".")[0] == dep.split(".")[0]
            if not same_folder and layer_of(dep) >= layer_of(module):
                bad.append(f"{module} -> {dep}")
    assert not bad, bad


def test_the_math_layers_know_nothing_of_serving():
    """model, runtime, text and the request path never import the serving or deployment
    modules, directly or through another module."""
    graph = import_graph()
    serving = {"service", "api", "loading", "cli", "serve"}
    for low in [m for m in graph if m.split(".")[0] in {"model", "runtime", "text", "request"}]:
        seen, todo = set(), [low]
        while todo:
            for d in graph[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        assert not {d.split(".")[0] for d in seen} & serving, (low, seen)


def outside_imports(path: Path) -> list[str]:
    """The imports in ``path`` that reach a package of OUTSIDE: ``import tools.drift``,
    ``from tools.drift import x``, ``from tools import drift``, and
    ``importlib.import_module("tools...")`` / ``__import__("tools...")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [
            f"{path.relative_to(PACKAGE)}:{node.lineno} {n}"
            for n in names
            if n.split(".")[0] in OUTSIDE
        ]
    return found


def test_the_runtime_never_imports_the_tools():
    """No module under reranker/ imports tools/ (commands built on the package, such as
    ``python -m tools.drift``), whichever way it is spelled. Faults seen failing: ``from
    tools.drift.command import main`` inside cli/main.py's main (a `rerank drift`);
    ``importlib.import_module("tools.drift")`` in serve/app.py."""
    bad = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in outside_imports(path)]
    assert not bad, bad
    assert (PACKAGE.parent / "tools" / "__init__.py").is_file()  # the rule guards a real package
