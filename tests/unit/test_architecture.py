"""The house rules of docs/architecture.md, read from the source: the import graph of
reactor/ and handlers/ is acyclic (TYPE_CHECKING imports counted), the core imports
nothing of the service, and nobody but loop.py and listener.py touches their privates."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The core: what an embedding service runs (docs/architecture.md, "The core").
CORE = ("address", "broadcast", "clock", "connection", "connstate", "errors", "hub",
        "lifecycle", "listener", "loop", "options", "pool", "protocols", "preamble", "proxy_protocol", "reading", "ring",
        "selector", "sockets", "stats", "tls", "wakeup", "wheel")
#: The testing kit (reactor/testing.py, docs/testing.md): not run by a service, but held to
#: the core's rules (no service, no handlers, no privates of Loop or Listener).
KIT = ("testing",)


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for pkg in ("reactor", "handlers"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The known modules ``name`` imports anywhere in its file, TYPE_CHECKING blocks and
    function bodies included (``from .x import y`` counts ``x``, and ``x.y`` if a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends at the same node, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_of_counts_type_checking_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .b import X\nfrom . import c\n")
    known = {"pkg.a", "pkg.b", "pkg.c"}
    assert imports_of("pkg.a", pkg / "a.py", known) == {"pkg.b", "pkg.c"}


def test_the_import_graph_is_acyclic():
    known = set(MODULES)
    # The package facades re-export; what matters is what the modules import of each other.
    graph = {n: {m for m in imports_of(n, p, known) if m not in ("reactor", "handlers")}
             for n, p in MODULES.items()}
    assert find_cycle(graph) is None


@pytest.mark.parametrize("name", CORE + KIT)
def test_the_core_imports_nothing_of_the_service_or_the_codecs(name):
    path = MODULES[f"reactor.{name}"]
    bad = {m for m in imports_of(f"reactor.{name}", path, set(MODULES))
           if m.startswith(("reactor.service", "handlers")) or m == "reactor"}
    assert not bad, f"reactor/{name}.py imports {sorted(bad)}"


def test_every_core_module_is_listed():
    """A new module in reactor/ must be placed: core (CORE), the testing kit (KIT) or
    service (reactor/service/)."""
    top = {p.stem for p in (ROOT / "reactor").glob("*.py")} - {"__init__"}
    assert top == set(CORE) | set(KIT)
    assert not set(CORE) & set(KIT)


#: The largest a core module may grow (issue 12): past it, a module holds two rooms.
MAX_CORE_LINES = 600


def test_no_core_module_is_over_600_lines():
    sizes = {name: len(MODULES[f"reactor.{name}"].read_text().splitlines())
             for name in CORE + KIT}
    over = {name: n for name, n in sizes.items() if n > MAX_CORE_LINES}
    assert not over, f"over {MAX_CORE_LINES} lines: {over}"


# What names a Loop or a Listener in this code base: `loop`, `self._loop`, `lp`, `hub.loop`;
# `listener`, `lst`, `self._listener`.
_LOOPISH = re.compile(r"(^|_)(loop|lp)$")
_LISTENERISH = re.compile(r"(^|_)(listener|lst)$")


def _interface() -> set[str]:
    """The private names the loop and what it drives may call on each other: those that
    reactor/hub.py's Driven and Driver protocols declare."""
    tree = ast.parse((ROOT / "reactor" / "hub.py").read_text())
    names = set()
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name in ("Driven", "Driver"):
            for item in cls.body:
                if isinstance(item, ast.FunctionDef):
                    names.add(item.name)
    return names


def test_the_interface_is_read_from_hub_py():
    assert {"_on_events", "_on_ready", "_flush_due", "_opened"} <= _interface()


def _private_uses(path: pathlib.Path, receiver: re.Pattern[str]) -> list[str]:
    allowed = _interface()
    uses = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and node.attr not in allowed):
            continue
        value = node.value
        name = (value.id if isinstance(value, ast.Name)
                else value.attr if isinstance(value, ast.Attribute) else None)
        if name is not None and receiver.search(name):
            uses.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}.{node.attr}")
    return uses


def _code_files() -> list[pathlib.Path]:
    return sorted(p for d in ("reactor", "handlers", "tools") for p in (ROOT / d).rglob("*.py"))


def test_private_use_finder_sees_both_spellings(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("loop._now\nself._loop._wheel\nloop.time()\nlst._opts\n")
    f = f.rename(ROOT / "tests" / "unit" / "_arch_probe.py")
    try:
        assert [u.split()[1] for u in _private_uses(f, _LOOPISH)] == ["loop._now", "_loop._wheel"]
        assert [u.split()[1] for u in _private_uses(f, _LISTENERISH)] == ["lst._opts"]
    finally:
        f.unlink()


def test_no_module_but_loop_py_touches_a_private_of_loop():
    uses = [u for p in _code_files() if p != ROOT / "reactor" / "loop.py"
            for u in _private_uses(p, _LOOPISH)]
    assert uses == []


def test_no_module_but_listener_py_touches_a_private_of_listener():
    uses = [u for p in _code_files() if p != ROOT / "reactor" / "listener.py"
            for u in _private_uses(p, _LISTENERISH)]
    assert uses == []
