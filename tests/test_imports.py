"""The import graph of app/ and execution_history/, read with ``ast``: no cycle, the tracker
reaches no index module and no SQLite, and imports sit at the top of their module.

Every import counts, inside functions too; only ``if TYPE_CHECKING:`` blocks (never run)
are left out. ``from pkg import name`` is an edge to ``pkg.name`` where that is a module,
else to ``pkg`` itself (a name its ``__init__`` defines or re-exports). Importing
``a.b.c`` also runs the packages ``a`` and ``a.b`` first: an edge to each, except to the
importer's own packages (already running when it runs, so a package that imports its own
modules is no cycle). So ``execution_history.pseudonyms`` importing
``execution_history.exporters.info`` depends on ``execution_history/exporters/__init__.py``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import PROJECT

PACKAGES = ("app", "execution_history")

#: The imports allowed inside a function body, each with why it cannot sit at the top:
#: (importing module, imported module) -> reason.
LAZY_ALLOWED = {
    ("execution_history.stores", "execution_history.s3store"):
        "boto3 is loaded only by those who use S3: pipeline code on a local folder never imports it",
    ("execution_history.media_sources", "execution_history.s3media"):
        "boto3 is loaded only by those who use S3: an app serving local media never imports it",
}


@dataclass
class Module:
    """One module of the graph: what it imports, and which of those imports sit in a function."""

    name: str
    path: Path
    imports: set[str] = field(default_factory=set)           # project modules
    external: set[str] = field(default_factory=set)          # top-level names of everything else
    lazy: list[tuple[str, int]] = field(default_factory=list)  # (imported module, line) inside a function


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _iter_imports(node: ast.AST, in_function: bool = False):
    """(import node, whether it is inside a function body), skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        elif _is_type_checking(child):
            for other in child.orelse:
                yield from _iter_imports(ast.Module(body=[other], type_ignores=[]), in_function)
        else:
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _iter_imports(child, inner)


def _packages_of(name: str) -> list[str]:
    """The packages Python runs before the module *name*: ``a.b.c`` -> ``a``, ``a.b``."""
    return [name.rsplit(".", depth)[0] for depth in range(name.count("."), 0, -1)]


def build_graph(root: Path = PROJECT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Module]:
    """Every module of *packages* (folders in *root*) with its imports."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[_module_name(path, root)] = Module(_module_name(path, root), path)

    def resolve(name: str) -> str:
        while name not in modules and "." in name:  # ``import a.b.attr`` style: the module part
            name = name.rsplit(".", 1)[0]
        return name

    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
        for node, in_function in _iter_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target.split(".")[0] in packages:
                    found = resolve(target)
                    assert found in modules, f"{module.name} imports {target}, which is not a module here"
                    # ``a.b.c`` runs ``a`` and ``a.b`` first: an edge to each that is not
                    # the importer's own package (those are running already, whatever they import)
                    ancestors = {module.name.rsplit(".", d)[0] for d in range(1, module.name.count(".") + 1)}
                    module.imports |= {p for p in _packages_of(found) if p not in ancestors and p != module.name}
                    if found != module.name:
                        module.imports.add(found)
                    if in_function:
                        module.lazy.append((found, node.lineno))
                else:
                    module.external.add(target.split(".")[0])
                    if in_function:
                        module.lazy.append((target, node.lineno))
    return modules


def find_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # Tarjan's algorithm, iteratively
        work = [(start, iter(sorted(modules[start].imports)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(modules[child].imports))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return [_a_cycle(modules, set(group)) for group in groups]


def _a_cycle(modules: dict[str, Module], group: set[str]) -> list[str]:
    """A shortest way from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(modules[node].imports & group):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    raise AssertionError(f"no cycle in {group}")


def loaded_by(modules: dict[str, Module], start: str) -> tuple[set[str], set[str]]:
    """(project modules, external top-level names) that importing *start* may load: its
    imports, theirs, and the parent packages of each (which Python runs first)."""
    seen: set[str] = set()
    external: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        external |= modules[name].external
        parents = [name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)]
        todo.extend(modules[name].imports | set(parents))
    return seen, external


# ---------------------------------------------------------------- the graph builder itself


def test_the_graph_sees_every_kind_of_import():
    modules = build_graph()
    assert {"app", "app.api", "execution_history", "execution_history.tracker"} <= set(modules)
    assert "execution_history.exporters" in modules["app.api"].imports       # from x.y import z
    assert "app.extensions" in modules["app.api"].imports                    # from .x import y
    assert "execution_history.tracker" in modules["execution_history"].imports  # from .tracker import ...
    assert "flask" in modules["app.api"].external
    assert "execution_history" not in modules["execution_history.tracker"].imports  # its own package


def test_a_package_run_before_its_module_is_an_edge(tmp_path):
    # p/a.py imports p.sub.info, whose package p/sub/__init__.py imports p.a back: a cycle
    # Python trips over (a partially initialised module), though no file names the other.
    for name, text in {"p/__init__.py": "", "p/a.py": "from .sub.info import X\n",
                       "p/sub/__init__.py": "from ..a import Y\n", "p/sub/info.py": "X = 1\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = build_graph(tmp_path, ("p",))
    assert modules["p.a"].imports == {"p.sub", "p.sub.info"}
    assert modules["p.sub.info"].imports == set()
    assert find_cycles(modules) == [["p.a", "p.sub", "p.a"]]


def test_a_cycle_and_a_lazy_import_are_found(tmp_path, monkeypatch):
    # The checks below would pass vacuously if the builder missed these: a graph with both.
    modules = {name: Module(name, tmp_path / name) for name in ("p", "p.a", "p.b", "p.c")}
    modules["p.a"].imports = {"p.b"}
    modules["p.b"].imports = {"p.c"}
    modules["p.c"].imports = {"p.a"}
    assert find_cycles(modules) == [["p.a", "p.b", "p.c", "p.a"]]
    assert loaded_by(modules, "p.b")[0] == {"p", "p.a", "p.b", "p.c"}

    source = tmp_path / "lazy.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sqlite3\n"
                      "def f():\n    import json\n")
    found = list(_iter_imports(ast.parse(source.read_text())))
    assert [(type(n).__name__, lazy) for n, lazy in found] == [("ImportFrom", False), ("Import", True)]


# ---------------------------------------------------------------- the rules


def test_no_import_cycle():
    cycles = find_cycles(build_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_tracker_loads_no_index_module_and_no_sqlite():
    modules, external = loaded_by(build_graph(), "execution_history.tracker")
    index_modules = sorted(m for m in modules  # the index package and its parts, and the S3 index
                           if m.startswith("execution_history.index") or m.startswith("execution_history.s3index"))
    assert not index_modules, f"execution_history.tracker reaches {index_modules}"
    assert "sqlite3" not in external, "execution_history.tracker reaches sqlite3"


def test_no_import_inside_a_function_but_the_allowed_ones():
    modules = build_graph()
    found = {(m.name, target): line for m in modules.values() for target, line in m.lazy}
    unexpected = sorted(f"{name}:{line} imports {target}" for (name, target), line in found.items()
                        if (name, target) not in LAZY_ALLOWED)
    assert not unexpected, "imports inside a function body (move them up, or allow them with a reason):\n" + \
        "\n".join(unexpected)
    assert set(LAZY_ALLOWED) <= set(found), "allowed lazy imports that are gone: drop them from LAZY_ALLOWED"
