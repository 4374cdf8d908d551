"""The import graph of ``nnn/``: no cycle, and no module imports one from a layer above it.

Edges come from every ``import`` statement of a module, function-level (lazy) ones included,
read with ``ast`` (nothing is imported). ``from nnn.a import b`` is an edge to ``nnn.a.b`` when
that is a module, else to ``nnn.a`` (relative imports are resolved first); a package's
``__init__`` is a module of its own (importing ``nnn.a.b`` runs it, but that is Python's doing,
not an edge the code chose).

The layers, bottom first, are README's "Layout": the data flow config -> pipeline ->
data/encoders -> cache -> embed -> methods -> task/metrics -> tuning/analyses -> results ->
reporting, read from the top. A module may import its own layer and the layers below it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nnn"

#: (layer, module-name prefixes), bottom first; a prefix "nnn.data" covers nnn.data and nnn.data.*
#: ("nnn", the package's own __init__, covers only itself)
LAYERS = (
    (0, ("nnn", "nnn._arrays", "nnn._atomic", "nnn._index_io", "nnn._threads", "nnn._timing",
         "nnn.errors", "nnn.config_dir")),
    (1, ("nnn.data", "nnn.encoders")),
    (2, ("nnn.cache",)),
    (3, ("nnn.embed",)),
    (4, ("nnn.methods",)),
    (5, ("nnn.task", "nnn.metrics", "nnn.index")),
    (6, ("nnn.tuning", "nnn.ablations", "nnn.gender_bias")),
    (7, ("nnn.evaluation", "nnn.results", "nnn.plots", "nnn.loggers", "nnn.wandb_worker")),
    (8, ("nnn.reporting", "nnn.hydra_callbacks", "nnn.paper")),
    (9, ("nnn.pipeline", "nnn.settings", "nnn.index_cli")),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _absolute(node: ast.ImportFrom, path: Path) -> str | None:
    """The absolute module of a ``from`` import in ``path`` (relative ones resolved)."""
    if node.level == 0:
        return node.module
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path, known: set[str]) -> set[str]:
    """The ``nnn`` modules that ``path`` imports anywhere in its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "nnn")
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            if module and module.split(".")[0] == "nnn":
                subs = {f"{module}.{a.name}" for a in node.names} & known
                out.update(subs or {module})
    return out


def test_relative_imports_are_resolved():
    init = PACKAGE / "methods" / "__init__.py"
    nnn_py = PACKAGE / "methods" / "nnn.py"
    known = set(modules())
    for source, path, want in (("from . import grids", init, {"nnn.methods.grids"}),
                               ("from .base import X", nnn_py, {"nnn.methods.base"}),
                               ("from ..index import X", nnn_py, {"nnn.index"})):
        node = ast.parse(source).body[0]
        module = _absolute(node, path)
        subs = {f"{module}.{a.name}" for a in node.names} & known
        assert (subs or {module}) == want, source


@functools.cache
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def layer(name: str) -> int | None:
    """The layer of module ``name``: that of its longest matching prefix."""
    best = None
    for number, prefixes in LAYERS:
        for prefix in prefixes:
            covers = name == prefix or (prefix != "nnn" and name.startswith(prefix + "."))
            if covers and \
                    (best is None or len(prefix) > len(best[1])):
                best = (number, prefix)
    return None if best is None else best[0]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_and_resolves_submodules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    known = set(modules())
    assert "nnn.methods.nnn" in imports(PACKAGE / "methods" / "__init__.py", known)


def test_no_import_cycle_in_nnn():
    assert cycles(graph()) == []


def test_every_module_has_a_layer():
    assert [name for name in modules() if layer(name) is None] == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_imports_from_a_layer_above(name):
    mine = layer(name)
    assert mine is not None, f"{name} has no layer: add it to LAYERS and README's layout"
    upward = sorted(dep for dep in graph()[name] if (layer(dep) or 0) > mine)
    assert upward == [], f"{name} (layer {mine}) imports from higher layers: {upward}"
