"""tools/bench.py --smoke: the benchmark harness runs end to end and verifies what it counts.

No speed is asserted here: CI machines are shared and noisy. What is asserted is that every
server that can run on this machine ran every workload (the per-line asyncio peer only at
the steps the smoke plan names, which must include a firehose and a closed loop), that the
bytes and connections were verified, and that the harness exits 0. uvloop is optional (the
``bench`` extra): without it that peer is skipped with a note, and that is a pass. The asyncio
peer's two styles are also checked directly on a line split across sends and a partial line
at EOF, which the generator never sends.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCH = ROOT / "tools" / "bench.py"
WORKLOADS = {"firehose", "closed", "idle", "accept", "timers"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the benchmark's load generator is C compiled at run time")
    out = tmp_path_factory.mktemp("bench") / "records.jsonl"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--quiet", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return done, records


ALL_SERVERS = {"line-echo", "asyncio-lines", "asyncio", "uvloop", "c-echo"}


def expected_servers() -> set[str]:
    want = {"line-echo", "asyncio-lines", "asyncio", "c-echo"}
    if importlib.util.find_spec("uvloop") is not None:
        want.add("uvloop")
    return want


def test_smoke_exits_zero_and_prints_one_table_per_workload(smoke):
    done, _ = smoke
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for title in ("### Firehose", "### Closed loop", "### Idle memory", "### Accept under load",
                  "### Idle-timer re-arm", "### Targets"):
        assert title in done.stdout


def test_every_server_that_can_run_ran_every_workload(smoke):
    _, records = smoke
    run = [r for r in records if r["kind"] == "run"]
    assert len(run) == 1
    assert set(run[0]["servers"]) == expected_servers()
    skipped = {r["server"] for r in records if r["kind"] == "skip"}
    assert skipped == ALL_SERVERS - expected_servers()
    only_at = {server: set(steps) for server, steps in run[0]["plan"]["only_at"]}
    steps = {(r["workload"], r["config"], r["server"])
             for r in records if r["kind"] == "measurement"}
    measured = {(w, s) for w, _, s in steps}
    for workload in WORKLOADS - {"timers"}:
        for server in expected_servers() - set(only_at):
            assert (workload, server) in measured
    for server, named in only_at.items():
        assert {f"{w}:{c}" for w, c, s in steps if s == server} == named
    assert {("timers", "line-echo"), ("timers", "asyncio")} <= measured


def test_every_measurement_verified_its_bytes_and_connections(smoke):
    _, records = smoke
    measurements = [r for r in records if r["kind"] == "measurement"]
    assert measurements
    for r in measurements:
        assert "error" not in r, r
        assert r["verified"] is True, (r["workload"], r["server"], r["notes"])
    streams = [r for r in measurements if r["workload"] in ("firehose", "closed", "accept")]
    assert all(r["bytes_verified"] > 0 and r["mismatches"] == 0 for r in streams)
    per_line = {r["workload"] for r in streams if r["server"] == "asyncio-lines"}
    assert per_line >= {"firehose", "closed"}  # its bytes were checked, as every peer's
    for r in measurements:
        if r["workload"] == "idle":
            assert r["held_silent"] >= r["conns"] and r["echoed"] == r["conns"]
        if r["workload"] == "accept":
            assert r["probes_opened"] == r["extra"]


@pytest.mark.parametrize("style", ["batch", "lines"])
def test_asyncio_peer_echoes_split_lines_and_the_partial_line_at_eof(style):
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "bench" / "aio_echo.py"),
                             "--port", "0", "--style", style, "--max-seconds", "30"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        sent, got = b"", b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for piece in (b"ab", b"c\nde", b"f\n\n\ng", b"h", b"\nij"):
                s.sendall(piece)
                sent += piece
                while len(got) < sent.rfind(b"\n") + 1:  # every complete line, before more
                    data = s.recv(4096)
                    assert data, (sent, got)
                    got += data
            s.shutdown(socket.SHUT_WR)
            while data := s.recv(4096):
                got += data
        assert got == sent
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
