"""tools/soak.py, briefly: a few seconds of the soak against line-echo, and against a broken echo.

The first run must pass: every fault kind injected, bytes verified, nothing lost or corrupted,
the daemon back to its baseline fd count. The second soaks a server that corrupts one line in
a few thousand and drops the trailing partial line after a half-close: the soak must see both
and exit 1, or its checks prove nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

SOAK = ROOT / "tools" / "soak.py"

# An echo server that breaks the contract on purpose: every 2,000th line comes back with one
# bit flipped, and a partial line left at the peer's FIN is never echoed.
BROKEN_ECHO = r"""
import asyncio, sys

lines = 0

async def serve(reader, writer):
    global lines
    try:
        while True:
            line = await reader.readuntil(b"\n")
            lines += 1
            if lines % 2000 == 0 and len(line) > 1:
                line = bytes([line[0] ^ 1]) + line[1:]
            writer.write(line)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=1 << 17, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))

asyncio.run(main())
"""


def run_soak(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, str(SOAK), *args, "--quiet", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    return done, json.loads(out.read_text())


def test_a_short_soak_passes_with_every_fault_and_nothing_lost(tmp_path):
    done, r = run_soak(tmp_path, "--conns", "200", "--duration", "4", "--procs", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert r["completed"] and r["passed"], r["failures"]
    assert all(r["faults"][kind] >= 1 for kind in ("rst", "half_close", "reconnect",
                                                   "half_close_partial")), r["faults"]
    assert r["bytes"]["verified"] > 0
    assert r["bytes"]["lost"] == 0 and r["bytes"]["corrupted"] == 0
    assert r["bytes"]["accounted"] and r["bytes"]["discarded_by_rst"] > 0
    assert r["unexpected"]["mismatches"] == 0
    assert r["connections"]["daemon_min"] is not None
    fds = r["daemon"]["fds"]
    assert fds["start"] >= fds["baseline"] + 200
    assert fds["end"] == fds["baseline"] and r["daemon"]["fd_back_to_baseline"] is True
    assert "verdict             PASS" in done.stdout


def test_the_soak_catches_corrupted_and_lost_bytes(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", BROKEN_ECHO, "60"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        done, r = run_soak(tmp_path, "--port", port, "--conns", "50", "--duration", "2",
                           "--procs", "1")
    finally:
        server.kill()
        server.wait()
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert not r["passed"]
    assert r["bytes"]["corrupted"] > 0 and r["unexpected"]["mismatches"] > 0
    assert r["bytes"]["lost"] > 0 and r["unexpected"]["short_at_eof"] > 0
    assert r["bytes"]["verified"] > 0 and r["bytes"]["accounted"]
    assert "FAIL" in done.stdout
