"""The house's rules, read from the import graph of the package.

* no module imports one that imports it back (directly or round a cycle), not even only
  for type checking;
* admission (the fair queue) imports nothing from pool;
* only store/ imports pymongo (and bson);
* only splice.py touches aiohttp's private contracts (splice.py's docstring lists them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import olbproxy

ROOT = Path(olbproxy.__file__).parent


def module_name(path: Path) -> str:
    parts = ["olbproxy", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports(name: str) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, only for type checking) for every import in ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    typing_only = type_checking_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, node.lineno in typing_only
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # ``from package import module`` imports that module.
                target = f"{node.module}.{alias.name}"
                found = target if target in MODULES else node.module
                yield found, node.lineno, node.lineno in typing_only


def cycles(include_typing: bool) -> list[list[str]]:
    graph = {
        name: {
            t for t, _, typing in imports(name) if t in MODULES and (include_typing or not typing)
        }
        for name in MODULES
    }
    # Tarjan's strongly connected components.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(include_typing=True) == []


def test_the_fair_queue_imports_nothing_from_the_pool() -> None:
    assert [t for t, _, _ in imports("olbproxy.admission") if t == "olbproxy.pool"] == []


def test_only_the_store_knows_mongodb() -> None:
    outside = [
        (name, target, line)
        for name in MODULES
        if not name.startswith("olbproxy.store")
        for target, line, _ in imports(name)
        if target.split(".")[0] in ("pymongo", "bson", "motor")
    ]
    assert outside == []


# Names only aiohttp's internals have; splice.py's docstring lists the contracts.
PRIVATE = {"set_parser", "pause_reading", "resume_reading", "total_bytes", "client_proto"}
# The same two names are asyncio's documented ReadTransport API: the lane's connections
# (connection.py) pause their own sockets with them (splice.Splice asks them to, as it
# asks aiohttp's ResponseHandler).
ASYNCIO_FLOW = {"pause_reading", "resume_reading"}


def test_only_the_splice_touches_aiohttp_internals() -> None:
    found = []
    for name, path in MODULES.items():
        if name == "olbproxy.splice" or name.startswith("olbproxy.simulator"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                if name == "olbproxy.connection" and node.attr in ASYNCIO_FLOW:
                    continue  # asyncio's own transports there, no aiohttp object
                found.append((name, node.attr, node.lineno))
            if isinstance(node, ast.ImportFrom) and node.module and "client_proto" in node.module:
                found.append((name, node.module, node.lineno))
            if isinstance(node, ast.keyword) and node.arg == "request_class":
                found.append((name, "request_class", node.value.lineno))
    assert found == []
