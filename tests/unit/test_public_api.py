"""The public surface is what reactor/__init__.py exports, and the core is stdlib-only."""

from __future__ import annotations

import subprocess
import sys

import reactor


def test_import_reactor_loads_no_third_party_module():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import reactor, handlers.line, handlers.length_prefixed, handlers.echo\n"
        "bad = []\n"
        "for name in set(sys.modules) - before:\n"
        "    top = name.split('.')[0]\n"
        "    if top in ('reactor', 'handlers') or top.lstrip('_') in sys.stdlib_module_names"
        " or top in sys.stdlib_module_names:\n"
        "        continue\n"
        "    bad.append(name)\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_exports_exist_and_are_documented():
    for name in reactor.__all__:
        obj = getattr(reactor, name)
        assert obj.__doc__, f"{name} has no docstring"
    assert not [n for n in reactor.__all__ if n.startswith("_")]
