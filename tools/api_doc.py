"""Write docs/api.md from the public API's docstrings, or check that it is current.

    python tools/api_doc.py            # rewrite docs/api.md
    python tools/api_doc.py --check    # exit 1 (and say which lines differ) if it is stale

The public API is what each documented module exports in ``__all__``: the reactor facade,
the testing kit and the handlers. A class lists its public methods and properties, its own
and those it inherits from the library (not from ``object`` or the standard library);
``tests/unit/test_docs.py`` runs ``--check``, so a changed signature or docstring without
the regenerated page fails the suite.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"

#: (module, what it is for), in reading order.
MODULES = (
    ("reactor", "the core: the loop, connections, handlers' and codecs' protocols, "
                "buffers, timers, broadcast, stats"),
    ("reactor.testing", "the testing kit: an in-memory harness and fault injection "
                        "([testing.md](testing.md))"),
    ("handlers.line", "newline-delimited frames"),
    ("handlers.length_prefixed", "frames behind a 4-byte big-endian length"),
    ("handlers.echo", "the line-echo daemon's handler"),
    ("handlers.resp", "RESP2, the Redis protocol ([examples/resp_kv.md](examples/resp_kv.md))"),
    ("handlers.websocket", "WebSocket over wsproto ([examples/ws_chat.md](examples/ws_chat.md))"),
)

HEADER = """# API reference

Generated from the docstrings by `tools/api_doc.py` (do not edit by hand: run
`python tools/api_doc.py` after changing a public signature or docstring; the suite checks
that this page is current). What a module exports in `__all__` is its public API; everything
else, and every name starting with `_`, may change without notice.
"""


def _signature(obj: Any) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    # Addresses of default objects (``<object at 0x...>``) change every run; annotations
    # are strings under ``from __future__ import annotations``: shown without quotes.
    sig = re.sub(r" at 0x[0-9a-f]+", "", sig)
    sig = re.sub(r"ForwardRef\('([^']*)'\)", r"\1", sig)
    return re.sub(r"(: |-> )'([^']*)'", r"\1\2", sig)


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__) if isinstance(obj.__doc__, str) else ""


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("reactor", "handlers")


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public attributes defined by the library on ``cls`` or its library bases."""
    seen: dict[str, Any] = {}
    for base in reversed([b for b in cls.__mro__ if _ours(b)]):
        for name, value in vars(base).items():
            if name.startswith("_") or name in seen and base is not cls and name in vars(cls):
                continue
            seen[name] = value
    out = []
    for name in sorted(seen):
        value = seen[name]
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if callable(value) or isinstance(value, property):
            out.append((name, value))
    return out


def _member_lines(name: str, value: Any) -> list[str]:
    if isinstance(value, property):
        head = f"- `{name}` *(property)*"
    else:
        head = f"- `{name}{_signature(value)}`"
    doc = _doc(value.fget if isinstance(value, property) else value)
    if not doc:
        return [head]
    body = doc.split("\n\n")[0].replace("\n", " ")
    return [f"{head}: {body}"]


def _public_names() -> set[str]:
    names: set[str] = set()
    for modname, _what in MODULES:
        try:
            names.update(importlib.import_module(modname).__all__)
        except ImportError:
            pass
    return names


def _render_class(name: str, cls: type) -> list[str]:
    protocol = getattr(cls, "_is_protocol", False)
    kind = "enum" if issubclass(cls, enum.Enum) else "protocol" if protocol else "class"
    bare = kind != "class" or issubclass(cls, BaseException)
    sig = "" if bare else _signature(cls)
    bases = [b.__name__ for b in cls.__bases__ if b.__name__ in _public_names()]
    lines = [f"### `{name}{sig}`", "", f"*{kind}*" + (
        f", a subclass of {', '.join(f'`{b}`' for b in bases)}" if bases else ""), ""]
    doc = _doc(cls)
    if doc:
        lines += [doc, ""]
    if kind == "enum":
        lines += ["Members: " + ", ".join(f"`{m.name}`" for m in cls), ""]  # type: ignore[var-annotated]
        return lines
    members = _members(cls) if not issubclass(cls, BaseException) else []
    if members:
        for mname, value in members:
            lines += _member_lines(mname, value)
        lines.append("")
    return lines


def _render_object(name: str, obj: Any) -> list[str]:
    if inspect.isclass(obj):
        return _render_class(name, obj)
    if callable(obj):
        lines = [f"### `{name}{_signature(obj)}`", "", "*function*", ""]
        doc = _doc(obj)
        return lines + ([doc, ""] if doc else [])
    return [f"### `{name}`", "", f"*constant*: `{obj!r}`", ""]


def render() -> str:
    out = [HEADER]
    for modname, what in MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:  # an optional module whose dependency is missing
            continue
        out += [f"## `{modname}`", "", f"{what[0].upper()}{what[1:]}.", ""]
        doc = _doc(mod)
        if doc:
            out += [doc, ""]
        for name in mod.__all__:
            out += _render_object(name, getattr(mod, name))
    text = "\n".join(out).rstrip() + "\n"
    # Docstrings use reST's double backticks; markdown wants single ones.
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="compare with docs/api.md instead of writing it; exit 1 if stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "docs/api.md",
                                    "generated", lineterm="", n=0)
        print("docs/api.md is stale: run python tools/api_doc.py\n" + "\n".join(list(diff)[:40]))
        return 1
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
