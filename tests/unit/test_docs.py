"""The docs are true to the code: every page's Python blocks run (their asserts included),
the commands in its shell blocks name real programs, targets and flags, its links lead
somewhere, and docs/api.md is what tools/api_doc.py makes from the docstrings today.

The site built from these pages (mkdocs, ``make docs``) is checked in
tests/integration/test_docs_site.py.
"""

from __future__ import annotations

import ast
import functools
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md", ROOT / "tools" / "README.md"]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(page: Path, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(page.read_text()) if kind == lang]


PY_PAGES = [p for p in PAGES if blocks(p, "python")]


def test_the_tutorial_and_the_testing_kit_have_runnable_examples():
    assert {"docs/testing.md", "docs/tutorial.md"} <= {rel(p) for p in PY_PAGES}


@pytest.mark.parametrize("page", PY_PAGES, ids=rel)
def test_python_blocks_run_and_every_assert_in_them_runs(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace (a tutorial builds on what came
    before), from a scratch directory; every assert written in them must have run."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs", "__ran__": []}
    written = 0
    for i, code in enumerate(blocks(page, "python")):
        tree = ast.parse(code, f"{rel(page)} block {i}")
        written += sum(isinstance(n, ast.Assert) for n in ast.walk(tree))
        _count_asserts(tree)
        exec(compile(tree, f"{rel(page)} block {i}", "exec"), namespace)
    assert written >= 1, "a page whose examples check nothing proves nothing"
    assert len(namespace["__ran__"]) >= written


def _count_asserts(tree: ast.AST) -> None:
    """Put ``__ran__.append(1)`` after every assert, so a skipped one is noticed."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                out = []
                for s in stmts:
                    out.append(s)
                    if isinstance(s, ast.Assert):
                        out.append(ast.parse("__ran__.append(1)").body[0])
                setattr(node, field, out)
    ast.fix_missing_locations(tree)


# ------------------------------------------------------------------ shell blocks

def _program(words: list[str]) -> tuple[str, list[str]] | None:
    """The program a command line runs (a key, and the argv that prints its help)."""
    if not words:
        return None
    head = words[0].rsplit("/", 1)[-1]
    if head in ("line-echo", "fd-stats"):
        return head, [str(Path(sys.executable).parent / head)]
    if re.fullmatch(r"python3?(\.\d+)?", head) and len(words) > 1 and words[1].endswith(".py"):
        script = ROOT / words[1]
        assert script.exists(), f"no such script: {words[1]}"
        return words[1], [sys.executable, str(script)]
    return None


@functools.cache
def _help(key: str, argv: tuple[str, ...]) -> str:
    out = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, f"{key} --help failed: {out.stderr[-300:]}"
    return out.stdout


def _commands(block: str) -> list[list[str]]:
    cmds = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        elif line.startswith(("#", "-", "[")) or not line:
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        cmd: list[str] = []
        for w in words + [";"]:
            if w in ("|", "||", "&&", ";", "&"):
                if cmd:
                    cmds.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return cmds


SH_PAGES = [p for p in PAGES if blocks(p, "sh")]
MAKE_TARGETS = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("page", SH_PAGES, ids=rel)
def test_shell_blocks_name_real_targets_scripts_and_flags(page):
    checked = 0
    for block in blocks(page, "sh"):
        for words in _commands(block):
            while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value cmd
                words = words[1:]
            if words[:1] == ["taskset"]:
                words = words[3:]
            if words[:1] == ["make"]:
                for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
                    assert target in MAKE_TARGETS, f"{rel(page)}: no make target {target!r}"
                checked += 1
                continue
            prog = _program(words)
            if prog is None:
                continue
            key, argv = prog
            text = _help(key, tuple(argv))
            for w in words:
                flag = w.split("=", 1)[0]
                if re.fullmatch(r"--[a-z][\w-]*", flag):
                    assert flag in text, f"{rel(page)}: {key} has no {flag} ({' '.join(words)})"
            checked += 1
    assert checked, f"{rel(page)}: its shell blocks run nothing of ours"


# ------------------------------------------------------------------ links

def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (mkdocs) and GitHub give a heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M)}


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_lead_to_files_and_headings_that_exist(page):
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{rel(page)}: broken link {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{rel(page)}: no heading #{anchor} in {path or 'itself'}"
        if page.is_relative_to(ROOT / "docs") and dest.is_relative_to(ROOT):
            assert dest.is_relative_to(ROOT / "docs"), \
                f"{rel(page)}: {target} leaves docs/, so the site cannot follow it"


def test_api_reference_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "api_doc.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
