"""fd-stats' cpu_percent is the CPU used over the sample interval, not the process's lifetime.

A child burns CPU, then sleeps; fd-stats must report the sleep as ~0 % even though the child's
lifetime average (read from /proc here) is still high. A lifetime average would fail both tests.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from typing import Iterator

import pytest

from reactor.service.procview import CPU_INTERVAL_S
from tests.conftest import ROOT, cpu_ticks

FD_STATS = [sys.executable, "-m", "reactor.service.cli.fd_stats"]
# Spins (burning CPU, checking stdin every 10 ms of CPU) until it has used at least argv[1] CPU
# seconds *and* a line came on stdin; then says "sleeping" and blocks on stdin until EOF.
BURNER = r"""
import select, sys, time
min_cpu_s = float(sys.argv[1])
print("spinning", flush=True)
while True:
    until = time.process_time() + 0.01
    while time.process_time() < until:
        pass
    if time.process_time() >= min_cpu_s and select.select([sys.stdin], [], [], 0)[0]:
        break
sys.stdin.readline()
print("sleeping", flush=True)
sys.stdin.read()
"""
SLEEPING_MAX_PCT = 8.0   # two clock ticks over 0.25 s: the sleeper uses none, allow rounding
BUSY_MIN_PCT = 30.0      # one core spinning; leave room for a machine shared with other work
LIFETIME_MIN_PCT = 15.0  # >= 1 s of CPU in a life of a few seconds


def readline(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from {proc.args[:3]} within {timeout} s"
    line = proc.stdout.readline()
    assert line, f"{proc.args[:3]} closed its stdout (exit {proc.poll()})"
    return line


@pytest.fixture
def burner() -> Iterator[subprocess.Popen]:
    procs: list[subprocess.Popen] = []

    def start(min_cpu_s: float) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", BURNER, str(min_cpu_s)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert readline(p) == "spinning\n"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()


def put_to_sleep(p: subprocess.Popen) -> float:
    """Tell the burner to stop spinning; return the wall time it had said it sleeps."""
    p.stdin.write("stop\n")
    p.stdin.flush()
    assert readline(p) == "sleeping\n"
    return time.time()


def lifetime_percent(pid: int) -> float:
    """What cpu_percent used to be for a single snapshot: CPU since start over the age."""
    with open(f"/proc/{pid}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime_s = float(f.read().split()[0])
    return 100.0 * cpu_ticks(pid) / (uptime_s * 100 - start_ticks)


def test_a_single_snapshot_measures_a_short_interval_not_the_lifetime(burner):
    p = burner(1.0)
    put_to_sleep(p)
    r = subprocess.run([*FD_STATS, str(p.pid), "--json"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    proc = json.loads(r.stdout)["process"]
    lifetime = lifetime_percent(p.pid)
    assert proc["cpu_percent"] <= SLEEPING_MAX_PCT, proc
    assert CPU_INTERVAL_S <= proc["cpu_interval_s"] < 10
    assert lifetime >= LIFETIME_MIN_PCT, lifetime   # what a lifetime average would have shown


def test_watch_shows_the_spin_then_the_stall(burner):
    p = burner(1.0)
    watch = subprocess.Popen([*FD_STATS, str(p.pid), "--json", "--watch", "0.3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        busy = json.loads(readline(watch))["process"]
        assert busy["cpu_percent"] >= BUSY_MIN_PCT, busy
        asleep_at = put_to_sleep(p)
        # The first sample whose interval began after the burner slept: its predecessor's
        # "time" is taken before its CPU reading, which is where the next interval starts.
        prev = busy
        deadline = time.monotonic() + 30
        while prev["time"] <= asleep_at:
            assert time.monotonic() < deadline, "no sample after the burner slept"
            prev = json.loads(readline(watch))["process"]
        cur = json.loads(readline(watch))["process"]
        lifetime = lifetime_percent(p.pid)
    finally:
        watch.kill()
        watch.communicate()
    assert cur["cpu_percent"] <= SLEEPING_MAX_PCT, cur
    assert 0.25 <= cur["cpu_interval_s"] < 10, cur
    assert lifetime >= LIFETIME_MIN_PCT, lifetime
