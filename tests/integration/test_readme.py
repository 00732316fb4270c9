"""The README's embedding example runs exactly as written."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, recv_exactly


def test_readme_embedding_example_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Embedding", 1)[1]
    code = re.search(r"```py\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        line = proc.stdout.readline()
        port = int(line.rsplit(" ", 1)[1])
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"hello\nwor")
            s.sendall(b"ld\n")
            assert recv_exactly(s, 12) == b"HELLO\nWORLD\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
