#!/usr/bin/env python3
"""resp_kv.py against redis-server, under the same redis-benchmark, side by side.

    .venv/bin/python tools/bench_resp.py                      # 3 repeats of 200,000 requests
    .venv/bin/python tools/bench_resp.py --repeat 5 --pipeline 1 --clients 10

Starts docs/examples/resp_kv.py and a real ``redis-server`` (no persistence) on free
loopback ports, then runs ``redis-benchmark --csv`` against each in turn with the same
arguments, the order alternating between repeats so that neither always runs first on a
machine that warms up or gets busier. Prints each test's median rate over the repeats
for both servers and their ratio (resp_kv / redis-server), and every run's figure; and the
server's CPU time per request (from /proc, over each whole run), whose ratio is given the
same way round (redis-server's / resp_kv's, so that higher is better for resp_kv too).

On a machine with two CPUs or more, the servers are pinned to CPU 0 and redis-benchmark to
CPU 1 (``--no-pin`` to leave them to the scheduler): both servers are single-threaded, and
a benchmark client sharing the server's core would measure the scheduler.

Stops by itself: every redis-benchmark run has a deadline (``--timeout``), both servers are
stopped (SIGTERM, then SIGKILL) whatever happens, Ctrl-C included, and every child dies with
the tool even if it is killed (``childproc.child_setup``).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from childproc import child_setup, cpu_seconds  # tools/: what the tools' children share

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "resp_kv.py"


def setup(cpu: int | None) -> Callable[[], None]:
    """A preexec_fn: the child dies with this tool (whatever ends it) and runs on ``cpu``."""
    return child_setup(None if cpu is None else [cpu])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ping(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Wait until the server on ``port`` answers PING with +PONG (it may still be binding)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16) == b"+PONG\r\n":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"no server answered on port {port} within {timeout:g} s")


def start_resp_kv(cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    """resp_kv.py on a port of its choosing, read from its "listening on" line."""
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            preexec_fn=setup(cpu))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15.0)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("listening on "):
        stop(proc)
        raise SystemExit(f"resp_kv.py did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    wait_ping(port, proc)
    return proc, port


def start_redis(binary: str, cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=setup(cpu))
    wait_ping(port, proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_benchmark(port: int, args: argparse.Namespace, cpu: int | None) -> dict[str, float]:
    """One redis-benchmark run: test name -> requests per second."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-P", str(args.pipeline),
           "-c", str(args.clients), "-n", str(args.requests), "-t", args.tests, "--csv"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=args.timeout,
                              preexec_fn=setup(cpu))
    except subprocess.TimeoutExpired:
        raise SystemExit(f"redis-benchmark took over {args.timeout:g} s on port {port}") from None
    out = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise SystemExit(f"redis-benchmark failed ({done.returncode}): {done.stderr.decode()}")
    rates = {}
    for row in csv.reader(io.StringIO(out)):
        if len(row) >= 2 and row[0] != "test":
            rates[row[0]] = float(row[1])
    if not rates:
        raise SystemExit(f"no rates in redis-benchmark's output: {out!r}")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="redis-benchmark against resp_kv.py and "
                                     "redis-server, side by side (median of repeats).")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server (3)")
    parser.add_argument("--requests", type=int, default=200_000, help="-n (200000)")
    parser.add_argument("--pipeline", type=int, default=16, help="-P (16)")
    parser.add_argument("--clients", type=int, default=50, help="-c (50)")
    parser.add_argument("--tests", default="ping,set,get,incr", help="-t (ping,set,get,incr)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="deadline of one redis-benchmark run, in seconds (300)")
    parser.add_argument("--redis-server", default=shutil.which("redis-server"),
                        help="the redis-server binary (default: from PATH; absent: "
                        "resp_kv.py alone)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.requests < 1 or args.pipeline < 1 or args.clients < 1:
        parser.error("--repeat, --requests, --pipeline and --clients must be at least 1")
    if shutil.which("redis-benchmark") is None:
        parser.error("redis-benchmark is not installed (Debian: apt-get install redis-tools)")
    two = (os.cpu_count() or 1) >= 2 and not args.no_pin
    server_cpu, client_cpu = (0, 1) if two else (None, None)

    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        servers["resp_kv"] = start_resp_kv(server_cpu)
        if args.redis_server:
            servers["redis-server"] = start_redis(args.redis_server, server_cpu)
        names = list(servers)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        print(f"redis-benchmark -P {args.pipeline} -c {args.clients} -n {args.requests} "
              f"-t {args.tests}, {args.repeat} repeat(s)"
              + (", servers on CPU 0, redis-benchmark on CPU 1" if two else ""), flush=True)
        cpu: dict[str, list[float]] = {name: [] for name in names}  # server CPU us / request
        for r in range(args.repeat):
            for name in (names if r % 2 == 0 else names[::-1]):
                proc, port = servers[name]
                before = cpu_seconds(proc.pid)
                rates = run_benchmark(port, args, client_cpu)
                used = cpu_seconds(proc.pid) - before
                cpu[name].append(used * 1e6 / (args.requests * len(rates)))
                runs[name].append(rates)
                shown = "  ".join(f"{t} {v:,.0f}" for t, v in rates.items())
                print(f"  run {r + 1} {name:12s} {shown}  ({cpu[name][-1]:.2f} us CPU/request)",
                      flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        for proc, _ in servers.values():
            stop(proc)

    tests = list(runs[names[0]][0])
    print()
    header = f"{'test':14s}" + "".join(f"{n + ' rps':>18s}" for n in names)
    if len(names) == 2:
        header += f"{'ratio':>8s}"
    print(header)
    for test in tests:
        medians = [statistics.median(run.get(test, 0.0) for run in runs[n]) for n in names]
        line = f"{test:14s}" + "".join(f"{m:18,.0f}" for m in medians)
        if len(names) == 2 and medians[1]:
            line += f"{medians[0] / medians[1]:8.2f}"
        print(line)
    # CPU time per request is steadier than the rate on a busy machine: it does not count
    # the time the server waited for a core, only the work it did.
    line = f"{'CPU us/request':14s}" + "".join(f"{statistics.median(cpu[n]):18.2f}" for n in names)
    if len(names) == 2:
        line += f"{statistics.median(cpu[names[1]]) / statistics.median(cpu[names[0]]):8.2f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
