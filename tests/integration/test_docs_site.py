"""The docs site builds from docs/ with no warning: MkDocs --strict fails on a link to a
missing page or anchor, a page left out of the nav, or a nav entry with no page. The same
command as ``make docs``, into a scratch directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_site_builds_strict_with_every_page(tmp_path):
    out = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict",
                          "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    pages = sorted((ROOT / "docs").rglob("*.md"))
    for page in pages:
        rel = page.relative_to(ROOT / "docs").with_suffix("")
        html = tmp_path / "site" / (str(rel.parent) if rel.name == "index" else str(rel)) / "index.html"
        assert html.exists(), f"no page built for docs/{page.relative_to(ROOT / 'docs')}"
    index = (tmp_path / "site" / "index.html").read_text()
    assert re.search(r'href="tutorial/"', index), "the home page links the tutorial"
