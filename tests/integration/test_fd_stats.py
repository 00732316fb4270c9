"""fd-stats against real processes: the line-echo daemon under load, its workers, and the
error paths. Every figure is checked against what the test created or what /proc says."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import ROOT, recv_exactly, wait_for

FD_STATS = [sys.executable, "-m", "reactor.service.cli.fd_stats"]


def fd_stats(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*FD_STATS, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("fd-stats: "), lines
    assert "Traceback" not in r.stderr


def hold_echoed(d, n: int) -> list[socket.socket]:
    """Open n connections to daemon d, each echoing one line exactly; return them open."""
    socks = []
    for i in range(n):
        s = d.connect()
        line = b"c%d\n" % i
        s.sendall(line)
        assert recv_exactly(s, len(line)) == line
        socks.append(s)
    return socks


@pytest.fixture
def loaded(daemon, tmp_path):
    """line-echo with a stats socket and 300 open connections, each having echoed a line."""
    path = str(tmp_path / "echo.sock")
    d = daemon("--stats-socket", path)
    socks = hold_echoed(d, 300)
    yield d, path, socks
    for s in socks:
        s.close()


def test_json_sample_agrees_with_proc_and_with_what_we_opened(loaded):
    d, path, socks = loaded
    r = fd_stats(str(d.pid), "--json", "--stats-socket", path)
    assert r.returncode == 0, r.stderr
    sample = json.loads(r.stdout)
    assert sample["version"] == 1 and sample["pid"] == d.pid
    p = sample["process"]
    assert p["fds"]["total"] == len(os.listdir(f"/proc/{d.pid}/fd"))
    assert sum(v for k, v in p["fds"].items() if k != "total") == p["fds"]["total"]
    assert p["fds"]["tcp"] == 301  # 300 connections + the listener
    # the stats socket's listener and the loop's signal-wakeup socketpair (our reader is gone)
    assert p["fds"]["unix"] == 3
    assert p["tcp_states"] == {"ESTABLISHED": 300, "LISTEN": 1}
    host, port = d.address
    assert f"{host}:{port}" in p["listening"] and f"unix:{path}" in p["listening"]
    lim = p["rlimit_nofile"]
    assert lim["used"] == p["fds"]["total"] and lim["headroom"] == lim["soft"] - lim["used"]
    r_ = sample["reactor"]
    assert r_["pid"] == d.pid and r_["connections"] == 300 and r_["accepted"] == 300
    assert r_["bytes_in"] == r_["bytes_out"] == sum(len(b"c%d\n" % i) for i in range(300))
    assert r_["timers"]["entries"] >= 300  # one idle timer per connection
    assert r_["chunks"]["chunks_in_use"] == 0  # idle connections hold no chunk
    for key in ("connections", "accepted", "closed", "chunks", "timers", "iterations",
                "events_per_s", "lag", "bytes_in", "bytes_out"):
        assert key in r_
    assert set(sample["rates"]) == {"accepts_per_s", "closes_per_s", "bytes_in_per_s",
                                    "bytes_out_per_s", "events_per_s", "iterations_per_s",
                                    "pool_refused_per_s"}


def test_the_advertised_socket_is_found_without_the_flag(loaded):
    d, path, _ = loaded
    r = fd_stats(str(d.pid), "--json")
    assert r.returncode == 0, r.stderr
    sample = json.loads(r.stdout)
    assert sample["stats_socket"] is not None and sample["reactor"]["connections"] == 300


def test_human_view_is_aligned_and_names_each_figure(loaded):
    d, path, _ = loaded
    r = fd_stats(str(d.pid), "--stats-socket", path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for label in ("fds", "by kind", "tcp", "unowned", "listening", "reactor", "pool", "paused",
                  "memory", "timers", "closed"):
        assert any(line.lstrip().startswith(label) for line in out.splitlines()), label
    assert "ESTABLISHED 300" in out and "connections 300" in out
    lines = [line for line in out.splitlines() if not line.startswith("WARNING")]
    width = len("listening")  # the longest label
    assert all(line[width:width + 2] == "  " and line[width + 2] != " " for line in lines
               if line.strip() and not line.startswith(" " * (width + 2))), out


def test_watch_counts_and_rates_follow_the_load(loaded):
    d, path, socks = loaded
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            for s in socks[:20]:
                s.sendall(b"x\n")
                recv_exactly(s, 2)

    t = threading.Thread(target=chatter)
    t.start()
    try:
        r = fd_stats(str(d.pid), "--json", "--watch", "0.3", "--count", "3",
                     "--stats-socket", path)
    finally:
        stop.set()
        t.join(10)
    assert r.returncode == 0, r.stderr
    samples = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(samples) == 3
    assert samples[-1]["rates"]["bytes_in_per_s"] > 0
    assert samples[-1]["reactor"]["bytes_in"] > samples[0]["reactor"]["bytes_in"]


def test_workers_show_the_sum_and_each_worker(daemon, tmp_path):
    path = str(tmp_path / "w.sock")
    d = daemon("--workers", "2", "--stats-socket", path)
    socks = hold_echoed(d, 40)
    r = fd_stats(str(d.pid), "--json", "--stats-socket", path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["reactor"]
    assert rep["role"] == "supervisor" and rep["pid"] == d.pid
    workers = rep["workers"]
    assert len(workers) == 2 and all("error" not in w for w in workers)
    assert {w["pid"] for w in workers} == set(
        int(x) for x in open(f"/proc/{d.pid}/task/{d.pid}/children").read().split())
    assert rep["connections"] == sum(w["connections"] for w in workers) == 40
    assert rep["accepted"] == 40
    human = fd_stats(str(d.pid), "--stats-socket", path).stdout
    assert "worker 0" in human and "worker 1" in human
    for s in socks:
        s.close()


def _children(pid: int) -> set[int]:
    return {int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()}


def _statm_rss(pid: int) -> int:
    return int(open(f"/proc/{pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_the_fleet_is_found_unasked_and_shows_each_worker_and_the_total(daemon):
    """No --stats-socket anywhere: the supervisor and each worker advertise their own, and
    fd-stats on the supervisor shows every worker, the total, and a restarted worker."""
    from reactor.service.stats_socket import advertised_path

    d = daemon("--workers", "3")
    wait_for(lambda: len(_children(d.pid)) == 3, 10, "three workers")
    socks = hold_echoed(d, 60)
    r = fd_stats(str(d.pid), "--json")
    assert r.returncode == 0, r.stderr
    sample = json.loads(r.stdout)
    assert sample["stats_socket"] == advertised_path(d.pid)
    workers, total = sample["workers"], sample["total"]
    pids = _children(d.pid)
    assert {w["pid"] for w in workers} == pids and [w["index"] for w in workers] == [0, 1, 2]
    assert sum(w["connections"] for w in workers) == total["connections"] == 60
    assert total["accepted"] == 60 and total["workers"] == total["workers_answered"] == 3
    sent = sum(len(b"c%d\n" % i) for i in range(60))
    assert total["bytes_in"] == total["bytes_out"] == sent
    for w in workers:
        # The worker's own figure, read from /proc/self/statm a moment before ours.
        assert abs(w["rss_bytes"] - _statm_rss(w["pid"])) < 4 << 20, w
        assert w["closed_total"] == 0 and w["lag_p99_s"] is not None
    assert total["rss_bytes"] == sample["process"]["rss_bytes"] + sum(
        w["rss_bytes"] for w in workers)
    # Each worker's own stats socket answers fd-stats on that worker's pid.
    one = workers[0]
    r = fd_stats(str(one["pid"]), "--json")
    assert r.returncode == 0, r.stderr
    own = json.loads(r.stdout)
    assert own["reactor"]["pid"] == one["pid"] and own["workers"] == []
    assert own["total"]["connections"] == one["connections"]
    # A worker killed outright: its advertisement goes, its successor is in the next view.
    os.kill(one["pid"], signal.SIGKILL)
    wait_for(lambda: not os.path.lexists(advertised_path(one["pid"])), 10,
             "the dead worker's advertisement removed")

    def refilled() -> dict | None:
        r = fd_stats(str(d.pid), "--json")
        s = json.loads(r.stdout) if r.returncode == 0 else None
        ok = (s and s["total"]["workers_answered"] == 3
              and one["pid"] not in {w["pid"] for w in s["workers"]})
        return s if ok else None

    after = wait_for(refilled, 20, "a restarted worker answering")
    assert {w["pid"] for w in after["workers"]} == _children(d.pid)
    assert after["reactor"]["restarts"] == 1
    human = fd_stats(str(d.pid)).stdout
    assert "rss" in human and human.count("  worker ") == 3 and "3 of 3 answered" in human
    for s in socks:
        s.close()


def test_no_stats_socket_serves_none(daemon):
    from reactor.service.stats_socket import advertised_path

    d = daemon("--no-stats-socket")
    assert not os.path.lexists(advertised_path(d.pid))
    r = fd_stats(str(d.pid), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["reactor"] is None
    assert json.loads(r.stdout)["total"] is None


def test_unknown_pid_is_one_line_exit_1():
    pid = 4_000_000  # above pid_max's default range
    one_line_error(fd_stats(str(pid)), str(pid))


def test_missing_stale_garbage_and_foreign_stats_sockets(daemon, tmp_path):
    d = daemon()
    one_line_error(fd_stats(str(d.pid), "--stats-socket", str(tmp_path / "nope.sock")),
                   "does not exist")
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    one_line_error(fd_stats(str(d.pid), "--stats-socket", stale), "stale")
    garbage = str(tmp_path / "garbage.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(garbage)
    srv.listen(4)

    def answer():
        for _ in range(1):
            c, _ = srv.accept()
            c.sendall(b"\x00\xffnot json at all")
            c.close()

    t = threading.Thread(target=answer)
    t.start()
    one_line_error(fd_stats(str(d.pid), "--stats-socket", garbage), "stats document")
    t.join(5)
    srv.close()
    other_path = str(tmp_path / "other.sock")
    other = daemon("--stats-socket", other_path)
    one_line_error(fd_stats(str(d.pid), "--stats-socket", other_path), str(other.pid))


def test_process_exiting_mid_watch_ends_with_one_line(daemon):
    d = daemon()
    proc = subprocess.Popen([*FD_STATS, str(d.pid), "--watch", "0.2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    first = proc.stdout.readline()
    assert json.loads(first)["pid"] == d.pid
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [f"fd-stats: process {d.pid} exited"]
    for line in out.splitlines():
        json.loads(line)  # stdout stays pure JSON


@pytest.mark.parametrize("args", [["abc"], ["123", "--watch", "0"], ["123", "--count", "-1"],
                                  [], ["123", "--bogus"]])
def test_bad_arguments_exit_2(args):
    r = fd_stats(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fd-stats: error:")


SCHEMA = {
    "version": int, "pid": int, "time": float, "stats_socket": (str, type(None)),
    "process": {
        "pid": int, "name": str, "cmdline": str, "time": float,
        "fds": {k: int for k in ("total", "tcp", "tcp6", "udp", "udp6", "unix", "pipe", "file",
                                 "other")},
        "tcp_states": dict, "unowned": dict, "listening": list,
        "rlimit_nofile": {"soft": int, "hard": int, "used": int, "headroom": int,
                          "used_pct": (int, float), "warning": bool},
        "rss_bytes": int, "rss_growth_bytes": int, "cpu_percent": (int, float),
        "cpu_interval_s": (int, float), "threads": int,
    },
    "reactor": {
        "version": int, "pid": int, "role": str, "selector": str, "edge_triggered": bool,
        "uptime_s": (int, float), "connections": int, "accepted": int, "closed": dict,
        "closed_total": int, "iterations": int, "events": int, "bytes_in": int,
        "bytes_out": int, "iterations_per_s": (int, float), "events_per_s": (int, float),
        "accepted_per_s": (int, float), "closed_total_per_s": (int, float),
        "bytes_in_per_s": (int, float), "bytes_out_per_s": (int, float),
        "paused_reading": int, "broadcast_skipped": int, "rx_bytes": int, "tx_bytes": int,
        "chunks": {k: int for k in ("chunk_size", "chunks_total", "chunks_in_use", "chunks_free",
                                    "high_water", "exhausted_total", "overflow_in_use",
                                    "overflow_total")},
        "timers": {k: int for k in ("entries", "expired", "scheduled", "cancelled")},
        "lag": {"p50_s": (int, float), "p99_s": (int, float)},
        "listeners": list, "shutting_down": bool, "top": list, "rss_bytes": int,
    },
    "workers": list,
    "total": {k: int for k in ("workers", "workers_answered", "connections", "accepted",
                               "closed_total", "bytes_in", "bytes_out", "rss_bytes")},
    "rates": {**{k: (int, float) for k in ("accepts_per_s", "closes_per_s", "bytes_in_per_s",
                                           "bytes_out_per_s", "events_per_s",
                                           "iterations_per_s")},
              "pool_refused_per_s": (int, float, type(None))},   # None: the reactor has no count
}


def check_schema(value, schema, where="sample"):
    if isinstance(schema, dict):
        assert isinstance(value, dict), where
        missing = set(schema) - set(value)
        assert not missing, f"{where}: missing {missing}"
        for k, sub in schema.items():
            check_schema(value[k], sub, f"{where}.{k}")
    else:
        assert isinstance(value, schema), f"{where}: {type(value).__name__}"


def test_json_schema_version_1(loaded):
    d, path, socks = loaded
    socks[0].sendall(b"partial line held by the server")
    r = fd_stats(str(d.pid), "--json", "--stats-socket", path)
    sample = json.loads(r.stdout)
    check_schema(sample, SCHEMA)
    top = sample["reactor"]["top"]
    assert len(top) == 1 and top[0]["rx_bytes"] == len(b"partial line held by the server")
    assert set(top[0]) >= {"peer", "rx_bytes", "tx_bytes", "age_s", "idle_s"}
    assert top[0]["peer"] == "127.0.0.1:%d" % socks[0].getsockname()[1]
    assert set(sample["reactor"]["closed"]) >= {"peer_closed", "reset", "idle_timeout",
                                                "line_too_long", "slow_consumer", "server_full",
                                                "shutdown"}


def test_no_permission_is_one_line_exit_1(daemon):
    """Run fd-stats as an unprivileged user against the root daemon (in a forked child:
    the venv's interpreter lives where that user cannot start it)."""
    if os.getuid() != 0:
        pytest.skip("needs root to become another user")
    import reactor.service.fdstats  # noqa: F401 - import before dropping privileges: the unprivileged
    from reactor.service.cli import fd_stats  # user cannot read this interpreter's stdlib

    d = daemon()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(r)
            sys.stderr = os.fdopen(w, "w", buffering=1)
            os.setgid(65534)
            os.setuid(65534)
            code = fd_stats.main([str(d.pid)])
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fd-stats: permission denied"), err
