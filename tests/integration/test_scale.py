"""tools/scale.py, black-box, at a few hundred connections: against line-echo (with workers,
with heartbeats, with a per-address cap that only source-address spreading gets under), and
against servers that break the contract on purpose, which it must catch by kind and exit 1.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

sys.path.insert(0, str(ROOT / "tools"))
from scalelib import netns  # noqa: E402

SCALE = ROOT / "tools" / "scale.py"

# Breaks the contract on purpose, by accept order n: n % 10 == 3 gets its first line back with
# a byte changed, 5 is reset before any echo, 7 gets its first line back and is then closed.
BROKEN_ECHO = r"""
import socket, struct, sys, threading

def serve(conn, n):
    buf = b""
    with conn:
        while True:
            while b"\n" not in buf:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
            line, buf = buf.split(b"\n", 1)
            if n % 10 == 5:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            conn.sendall(line[:-1] + b"#\n" if n % 10 == 3 else line + b"\n")
            if n % 10 == 7:
                return

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1024)
srv.settimeout(float(sys.argv[1]))  # stops by itself
print(srv.getsockname()[1], flush=True)
n = 0
while True:
    conn, _ = srv.accept()
    conn.settimeout(None)
    threading.Thread(target=serve, args=(conn, n), daemon=True).start()
    n += 1
"""


def run_scale(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], dict]:
    done = subprocess.run([sys.executable, str(SCALE), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done, json.loads(lines[-1])


def test_every_connection_is_verified_against_line_echo_with_workers(daemon):
    d = daemon("--workers", "2")
    done, r = run_scale("--port", str(d.address[1]), "--conns", "300", "--procs", "2",
                        "--hold", "1", "--pid", str(d.pid))
    assert done.returncode == 0, done.stderr[-2000:]
    assert r["conns"] == r["established"] == r["verified"] == 300
    assert not any(r["failures"].values()) and r["procs"] == 2 and r["procs_lost"] == 0
    assert r["source_addresses"] == 1 and not r["timed_out"]
    assert 0 < r["t_establish_s"] < r["t_final_s"] and r["t_final_s"] >= 1.0  # the hold
    assert r["server_procs"] == 3  # the supervisor and its two workers
    assert r["server_rss_bytes"] > r["server_rss_baseline_bytes"] > 0
    assert r["rss_per_conn_bytes"] == round(r["server_rss_bytes"] / 300)
    assert r["rss_per_conn_delta_bytes"] > 0
    assert r["kernel"]["tcp_inuse"] >= 600  # both ends of the 300, during the hold
    assert "established 300/300" in done.stderr and "scale: PASS" in done.stderr


def test_heartbeats_during_the_hold_are_counted_not_failed(daemon):
    d = daemon("--heartbeat", "0.2")
    done, r = run_scale("--port", str(d.address[1]), "--conns", "200", "--procs", "2",
                        "--hold", "1", "--quiet")
    assert done.returncode == 0, r["failures"]
    assert r["verified"] == 200 and r["pings"] >= 200  # ~5 per connection
    assert done.stderr == ""


def test_deferred_heartbeats_are_read_and_counted_with_the_second_echo(daemon):
    d = daemon("--heartbeat", "0.2")
    done, r = run_scale("--port", str(d.address[1]), "--conns", "200", "--procs", "2",
                        "--hold", "1", "--quiet", "--defer-pings")
    assert done.returncode == 0, r["failures"]
    assert r["verified"] == 200 and r["pings"] >= 200


def test_source_addresses_spread_under_a_per_address_cap(daemon):
    """line-echo admits 100 connections per client address: 300 fit only from 3 addresses."""
    d = daemon("--max-conns-per-ip", "100")
    baseline = d.fd_count()
    port = str(d.address[1])
    done, r = run_scale("--port", port, "--conns", "300", "--procs", "2", "--hold", "0.5",
                        "--per-source", "100", "--quiet")
    assert done.returncode == 0, r["failures"]
    assert r["verified"] == 300 and r["source_addresses"] == 3 and r["per_source"] == 100
    wait_for(lambda: d.fd_count() == baseline, what="the daemon to close all 300")
    done, r = run_scale("--port", port, "--conns", "300", "--procs", "2", "--hold", "0.5",
                        "--per-source", "300", "--quiet")
    assert done.returncode == 1
    assert r["verified"] == 100 and r["source_addresses"] == 1
    assert r["failures"]["err_line"] == 200


@pytest.fixture
def broken_echo():
    server = subprocess.Popen([sys.executable, "-c", BROKEN_ECHO, "60"], stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    yield server.stdout.readline().strip()
    server.kill()
    server.wait()
    server.stdout.close()


def test_a_broken_echo_fails_by_kind_and_exits_1(broken_echo):
    done, r = run_scale("--port", broken_echo, "--conns", "100", "--procs", "2", "--hold",
                        "0.5", "--quiet")
    assert done.returncode == 1
    f = r["failures"]
    assert (f["mismatch"], f["reset"], f["closed_early"]) == (10, 10, 10), f
    assert r["verified"] == 70 and r["established"] == 80
    assert r["verified"] + sum(f.values()) == 100
    assert r["errnos"] == {"ECONNRESET": 10}
    sample = r["mismatch_samples"][0]
    assert sample["got"].endswith("#\n") and sample["expected"].startswith("scale ")


def test_connects_that_never_complete_and_echoes_that_never_come_time_out():
    """A listener that never accepts: its queue takes two, and drops the other SYNs."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        done, r = run_scale("--port", str(srv.getsockname()[1]), "--conns", "6", "--procs", "1",
                            "--hold", "0", "--connect-timeout", "1", "--echo-timeout", "1",
                            "--quiet", timeout=30)
    assert done.returncode == 1 and r["established"] == 0
    f = r["failures"]
    assert f["connect_timeout"] >= 1 and f["timeout"] >= 1, f
    assert f["connect_timeout"] + f["timeout"] == 6
    assert r["t_establish_s"] < 5


def test_the_runs_deadline_stops_every_client_and_counts_the_rest_as_timeouts():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        t = time.monotonic()
        done, r = run_scale("--port", str(srv.getsockname()[1]), "--conns", "6", "--procs", "2",
                            "--timeout", "1.5", "--quiet", timeout=30)
        took = time.monotonic() - t
    assert done.returncode == 1 and r["timed_out"] and not r["interrupted"]
    assert r["failures"]["timeout"] == 6 and r["verified"] == 0 and r["procs_lost"] == 0
    assert r["t_establish_s"] >= 1.0 and took < 10


def test_nothing_listening_is_connect_refused_at_once():
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done, r = run_scale("--port", str(port), "--conns", "50", "--procs", "2", "--quiet")
    assert done.returncode == 1 and r["failures"]["connect_refused"] == 50
    assert r["errnos"] == {"ECONNREFUSED": 50}


def test_a_client_out_of_fds_counts_fd_limit_and_goes_on(daemon):
    """One client process (scale.py --child) under a hard fd limit of 40, asked for 60."""
    d = daemon()
    cfg = {"index": 0, "first": 0, "count": 60, "sources": [["127.0.0.2", 60]],
           "host": "127.0.0.1", "port": d.address[1], "rate": 0, "max_pending": 512,
           "connect_timeout_s": 10, "echo_timeout_s": 10, "max_seconds": 30}
    child = subprocess.Popen(
        [sys.executable, str(SCALE), "--child", json.dumps(cfg)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)))
    try:
        def until(event: str) -> dict:
            while True:
                msg = json.loads(child.stdout.readline())
                if msg["event"] == event:
                    return msg

        until("up")
        child.stdin.write("start\n")
        child.stdin.flush()
        est = until("established")
        child.stdin.write("go\n")
        child.stdin.flush()
        final = until("done")
        assert child.wait(10) == 0
        assert "Traceback" not in child.stderr.read()
    finally:
        child.kill()
        child.wait()
        for f in (child.stdin, child.stdout, child.stderr):
            f.close()
    fd_limit = final["failures"].get("fd_limit", 0)
    assert fd_limit > 0 and final["verified"] + fd_limit == 60, final
    assert est["established"] == final["verified"] and final["errnos"] == {"EMFILE": fd_limit}
    assert final["sources_used"] == ["127.0.0.2"]


SCALE_RUN = ROOT / "tools" / "scale_run.py"


def run_scale_run(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], dict]:
    r = subprocess.run([sys.executable, str(SCALE_RUN), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    return r, json.loads(r.stdout.splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scale_run_holds_every_connection_with_heartbeats_and_reports_the_hold():
    r, out = run_scale_run("--conns", "400", "--workers", "2", "--hold", "3", "--heartbeat",
                           "0.5", "--sample-every", "0.5", "--client-nice", "5",
                           "--port", str(_free_port()))
    assert r.returncode == 0, r.stderr[-2000:]
    assert out["ok"] and out["scale"]["verified"] == 400 and out["scale"]["pings"] >= 400
    assert out["client_nice"] == 5 and out["scale"]["nice"] == os.nice(0) + 5
    assert out["hold_samples"] >= 2 and out["lag_p99_max_ms"] < 1000
    seen = out["lag_p99_fdstats_ms"]  # what fd-stats' answers showed, beside the resident read
    assert len(seen) == out["hold_samples"] and all(0 <= v < 1000 for v in seen)
    assert out["worker_cpu_pct_max"] >= out["worker_cpu_pct_mean"] >= 0
    assert out["bytes_out_per_s"] > 0  # the PINGs are what the fleet sends during the hold
    assert out["scale"]["server_procs"] == 3


def test_scale_run_restart_loses_exactly_the_killed_workers_connections():
    r, out = run_scale_run("--conns", "600", "--workers", "3", "--hold", "4", "--heartbeat",
                           "1", "--sample-every", "0.3", "--restart", "--restart-after", "0.5",
                           "--port", str(_free_port()))
    assert r.returncode == 0, r.stderr[-2000:]
    rs = out["restart"]
    assert rs["killed_connections"] > 0
    assert out["scale"]["conns"] - out["scale"]["verified"] == rs["killed_connections"]
    assert 0 <= rs["reaped_s"] <= rs["forked_s"] <= rs["serving_s"] < 60
    assert rs["new_pid"] != rs["killed_pid"]


def test_scale_run_in_its_own_network_namespace_gets_a_hash_sized_for_it():
    """--netns: the run happens in a new namespace (its own loopback; a port busy outside is
    free inside) whose established hash has ehash_entries(N) buckets; the knob is restored."""
    knob = Path(netns.CHILD_EHASH)
    before = knob.read_text()
    with socket.socket() as busy:  # taken in this namespace, not in the run's
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r, out = run_scale_run("--conns", "300", "--workers", "1", "--hold", "1",
                               "--heartbeat", "0.5", "--sample-every", "0.5", "--netns",
                               "--port", str(busy.getsockname()[1]))
    assert r.returncode == 0, r.stderr[-2000:]
    assert out["ok"] and out["scale"]["verified"] == 300
    assert out["tcp_ehash_entries"] == netns.ehash_entries(300) == 65536
    assert knob.read_text() == before
    assert "network namespace with 65,536 established-hash buckets" in r.stderr
