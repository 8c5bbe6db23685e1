"""Issue #21: the import graph. Arrows point one way between layers (server -> index -> model,
training -> model, and training -> index for the evaluation, which searches an index as the
server does; nothing imports sugar_cli), no module takes part in a circle of imports
(imports inside functions included: a circle hidden in a function is still one), and no
package imports back from a subpackage that imports it (collapsing each subpackage to one
node leaves the graph without circles). Imports under `if TYPE_CHECKING:` are annotations only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "index", "server", "training", "sugar_cli")
# which top-level packages each may import (besides itself)
ALLOWED = {"model": set(), "index": {"model"}, "server": {"index", "model"}, "training": {"model", "index"},
           "sugar_cli": {"index", "model", "server", "training"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                # "from pkg import mod" names a module when one exists
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _collapse(graph: dict[str, set[str]], sub: str) -> dict[str, set[str]]:
    def node(m: str) -> str:
        return sub if m == sub or m.startswith(sub + ".") else m

    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(node(m), set()).update(node(d) for d in deps if node(d) != node(m))
    return out


def test_layers_point_one_way():
    bad = [(m, d) for m, deps in import_graph().items() for d in deps
           if d.split(".")[0] != m.split(".")[0] and d.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert bad == []


def test_no_circle_of_imports():
    assert _cycles(import_graph()) == []


def test_no_arrow_back_up_from_a_subpackage():
    graph = import_graph()
    subpackages = sorted({m for m in graph if (ROOT / m.replace(".", "/") / "__init__.py").is_file()
                          and "." in m})
    assert "index.ingest" in subpackages and "server.protocol" in subpackages
    assert {s: _cycles(_collapse(graph, s)) for s in subpackages} == {s: [] for s in subpackages}


def test_the_graph_sees_imports_inside_functions():
    """The checker itself: a function-level import is an edge (the tiny model's builder)."""
    graph = import_graph()
    assert "model.tiny" in graph["model.sugar"]  # build_tiny_model imports it in its body
    assert "index.ingest" in graph["index.embedding"]  # add_samples imports it in its body


def test_the_wire_models_are_a_leaf_of_plain_pydantic():
    """Issue #32: server/protocol/ imports nothing from the service, the engines, the serving
    layer or the index — type-checking imports included (no circle hidden behind them)."""
    banned = ("server.service", "server.engine", "server.serving", "server.streaming", "index")
    found = []
    for path in sorted((ROOT / "server" / "protocol").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):  # every import, TYPE_CHECKING ones too
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative to server/protocol/
                    parent = ["server", "protocol"][: 3 - node.level]
                    base = ".".join(parent + ([base] if base else []))
                names = [base]
            found += [f"{path.name}: {n}" for n in names if n.startswith(banned)]
    assert found == []
