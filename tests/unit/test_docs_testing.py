"""docs/testing.md's code blocks run as written, every assert in them included."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "testing.md").read_text(), re.S)


def test_the_doc_has_its_examples():
    assert len(BLOCKS) == 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_code_block_runs_and_asserts(code):
    tree = ast.parse(code)
    asserts = sum(isinstance(n, ast.Assert) for n in ast.walk(tree))
    assert asserts >= 1, "an example that checks nothing proves nothing"
    # Count the asserts that ran: each one is followed by a counter bump.
    ran = []
    for node in ast.walk(tree):
        for field in ("body", "orelse"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                out = []
                for s in stmts:
                    out.append(s)
                    if isinstance(s, ast.Assert):
                        out.append(ast.parse("__ran__.append(1)").body[0])
                setattr(node, field, out)
    ast.fix_missing_locations(tree)
    exec(compile(tree, "docs/testing.md", "exec"), {"__ran__": ran, "__name__": "docs"})
    assert len(ran) == asserts
