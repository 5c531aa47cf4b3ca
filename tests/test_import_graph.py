"""The package's modules import each other without a cycle, counting imports made inside
functions (a cycle hidden in a function works until someone moves the import to the top).

The graph is built from the source with `ast`, independently of what Python has imported: an edge
a -> b for every `import b` / `from b import x` in module a (x too when it is a submodule), at any
depth, except under `if TYPE_CHECKING:`. A package's own `__init__` is a node like any module;
importing a submodule does not add an edge to its package (that edge exists for every module and
says nothing about the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

import explorer

ROOT = Path(explorer.__file__).parent


def module_names() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for body in node.body for n in ast.walk(body)}
    return skip


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module `name` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & set(modules)
            found |= subs
            if len(subs) < len(node.names):     # some names are the module's own attributes
                found.add(target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (a list of modules, first == last), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions():
    # heal() imports the text stage inside the function; `from . import methods` is an edge to
    # explorer.plan, not to the package it is written in
    graph = import_graph()
    assert "explorer.probe.text" in graph["explorer.heal.registry"]
    assert "explorer.plan" in graph["explorer"]
    assert "explorer" not in graph["explorer.ui.compare_tab"]
    # and a cycle made of such edges is found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_ui_reaches_the_model_only_through_its_jobs():
    """Only explorer/ui/jobs.py (and the caches it uses) may load or fetch the resident model:
    the tabs ask a job, so the same code runs in-process or in a ZeroGPU worker."""
    import re

    ui = Path(__file__).resolve().parents[1] / "explorer" / "ui"
    reach = re.compile(r"\b(ensure_model|model_for|get_model|load_model)\(")
    found = {p.name: reach.findall(p.read_text(encoding="utf-8"))
             for p in ui.glob("*.py") if p.name not in ("jobs.py", "caches.py")}
    assert not {name: calls for name, calls in found.items() if calls}
    assert reach.search((ui / "jobs.py").read_text(encoding="utf-8"))   # the pattern matches
