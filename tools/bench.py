#!/usr/bin/env python3
"""Benchmark line-echo against two asyncio peers, uvloop and a C epoll echo, all in one run.

    .venv/bin/python tools/bench.py                  # full run: --repeat 3, about 15 min
    .venv/bin/python tools/bench.py --smoke          # CI: 1 repeat, small sizes, < 1 min
    .venv/bin/python tools/bench.py --only firehose --servers line-echo,asyncio --json out.jsonl

(``make bench`` installs the ``bench`` extra, uvloop, then runs this.) Every server gets
the same contract (echo every ``\\n``-terminated line byte for byte, keep a partial line,
stop reading when writes back up) and the same load, and each table compares the servers
measured in that same run, as medians of the repeats and ratios to the peers: the
machines are shared and noisy, so absolute figures alone mean little. The asyncio peers
are ``tools/bench/aio_echo.py`` in two styles: ``asyncio-lines`` handles each line as a
line (the issue's "asyncio Protocol", which the targets are measured against) and
``asyncio`` writes everything up to the last newline at once (the fastest asyncio echo);
``uvloop`` is the latter on uvloop.

Placement: the server runs pinned to one CPU, the load generator (``tools/bench/load.c``,
compiled here with the system ``cc``: one epoll process that measures its own CPU and is
reported "load-bound" when it saturates its core) pinned to another; everything goes to
127.0.0.1 only; every process is bounded in time (``--max-seconds``, SIGALRM, subprocess
timeouts, and PR_SET_PDEATHSIG so nothing outlives this script). Each measurement starts
a fresh server so peak RSS belongs to that one workload.

Every workload checks what it counts: the firehose and the closed loop verify that the
bytes that come back are whole ``ping\\n`` lines in order and that every connection was
served, the idle run checks the server holds all N connections (its fd count) and echoes
one line on each, the accept run counts the probes that got their own line back. The
exit status is 1 if the harness itself failed (a server that did not start, a generator
that crashed or timed out, a wrong byte), else 0; a server that starves or drops
connections is flagged in its row and its record says ``"verified": false``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import hashlib
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "tools" / "bench"
SERVERS = ("line-echo", "asyncio-lines", "asyncio", "uvloop", "c-echo")
# tools/bench/aio_echo.py's --loop and --style for each asyncio peer.
AIO_PEERS = {"asyncio-lines": ("asyncio", "lines"), "asyncio": ("asyncio", "batch"),
             "uvloop": ("uvloop", "batch")}
RATIO_PEERS = ("asyncio-lines", "asyncio", "uvloop")  # the ÷ columns of the tables
TARGET_PEER = "asyncio-lines"  # the "asyncio Protocol": its targets are against this
BATCH_PEER = "asyncio"         # shown beside every target against TARGET_PEER
WORKLOADS = ("firehose", "closed", "idle", "accept", "timers")
LOAD_BOUND_PCT = 95.0      # generator CPU at or above this: the figure may be the generator's
NOISY_PCT = 15.0           # other tasks (or steal) on the pinned cores above this: a warning
SERVER_LIFETIME_S = 180.0  # peers stop by themselves after this, whatever happens here


# -- sizes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What one run measures: sizes and durations of every workload."""

    repeat: int
    duration: float                      # measured seconds per firehose / closed-loop run
    warmup: float                        # seconds of load before the window opens
    firehose_conns: tuple[int, ...]
    closed: tuple[tuple[int, int], ...]  # (connections, lines in flight each)
    idle_conns: int
    accept_conns: int                    # firehosing while the probes arrive
    accept_extra: int                    # probes opened at a steady rate
    accept_open_s: float
    accept_window_s: float
    timer_count: int
    timer_rounds: int
    # (server, steps): that server is measured at these steps only, named "workload:config"
    # ("closed:100x16"; the accept step is "accept:"); every other server at every step.
    only_at: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def measures(self, server: str, workload: str, args: tuple[Any, ...]) -> bool:
        steps = dict(self.only_at).get(server)
        return steps is None or f"{workload}:{'x'.join(map(str, args))}" in steps


FULL = Plan(repeat=3, duration=3.0, warmup=1.0, firehose_conns=(1, 100, 1000, 10000),
            closed=((100, 1), (100, 16), (10000, 1), (10000, 16)), idle_conns=10000,
            accept_conns=1000, accept_extra=1000, accept_open_s=5.0, accept_window_s=10.0,
            timer_count=10000, timer_rounds=20)
SMOKE = Plan(repeat=1, duration=0.5, warmup=0.2, firehose_conns=(1, 100),
             closed=((100, 1), (100, 16)), idle_conns=500, accept_conns=50, accept_extra=50,
             accept_open_s=0.5, accept_window_s=10.0, timer_count=1000, timer_rounds=5,
             # Both byte-checked stream paths of the per-line peer: ~1.6 s, where every
             # step would add ~5.5 s to a run CI makes at every `make test`.
             only_at=(("asyncio-lines", ("firehose:100", "closed:100x16")),))


def firehose_window(conns: int) -> int:
    """Unechoed bytes allowed per connection: 64 KiB, less when many share 16 MiB, >= 4 KiB."""
    return max(4096, min(65536, (16 << 20) // max(conns, 1)))


# -- processes --------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup(cpu: int | None) -> Callable[[], None]:
    """preexec_fn: pin to ``cpu``, die with this script, and take the whole fd allowance."""

    def setup() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return setup


def read_line(fd: int, timeout: float) -> str:
    """One line from a pipe, waiting at most ``timeout`` s; '' on EOF or timeout."""
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class HarnessError(Exception):
    """The harness, not the server under test, could not measure."""


class Server:
    """One server process under test, started fresh for one measurement."""

    def __init__(self, name: str, argv: list[str], cpu: int | None, workdir: Path) -> None:
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, cwd=ROOT,
                                     preexec_fn=_child_setup(cpu))
        assert self.proc.stdout is not None
        line = read_line(self.proc.stdout.fileno(), 15.0)
        if not line.startswith("listening on "):
            self.stop()
            raise HarnessError(f"{name} did not start: {line!r} {self.stderr_tail()}")
        self.port = int(line.strip().rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, n: int = 400) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def warm(self) -> None:
        """One connection, one line, closed: lazy start-up allocations happen before a baseline."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"warm\n")
            got = b""
            while len(got) < 5:
                data = s.recv(64)
                if not data:
                    break
                got += data
            if got != b"warm\n":
                raise HarnessError(f"{self.name}: warm-up line came back as {got!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


@dataclass
class Env:
    """Where things are: compiled binaries, CPUs, which servers can run and why not."""

    workdir: Path
    load_bin: Path
    echo_bin: Path | None
    server_cpu: int | None
    load_cpu: int | None
    servers: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def server_argv(self, name: str) -> list[str]:
        life = str(SERVER_LIFETIME_S)
        if name == "line-echo":
            exe = Path(sys.executable).parent / "line-echo"
            base = [str(exe)] if exe.exists() else [sys.executable, "-m", "reactor.cli.line_echo"]
            return [*base, "--port", "0", "--idle-timeout", "0", "--log-level", "warning"]
        if name in AIO_PEERS:
            loop, style = AIO_PEERS[name]
            return [sys.executable, str(BENCH_DIR / "aio_echo.py"), "--port", "0",
                    "--loop", loop, "--style", style, "--max-seconds", life]
        if name == "c-echo":
            assert self.echo_bin is not None
            return [str(self.echo_bin), "--port", "0", "--max-seconds", life]
        raise ValueError(name)

    def start(self, name: str) -> Server:
        return Server(name, self.server_argv(name), self.server_cpu, self.workdir)

    def run_load(self, args: list[str], timeout: float) -> dict[str, Any]:
        """Run the generator to completion; its last stdout line is the JSON result."""
        if self.server_cpu is not None:
            # Its own core: it may spin there instead of sleeping (see load.c, wait_events).
            args = [*args, "--cores", f"{self.server_cpu},{self.load_cpu}", "--spin", "1"]
        try:
            done = subprocess.run([str(self.load_bin), *args], capture_output=True,
                                  timeout=timeout, preexec_fn=_child_setup(self.load_cpu))
        except subprocess.TimeoutExpired:
            raise HarnessError(f"load generator timed out after {timeout:.0f} s") from None
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        if done.returncode != 0 or not lines:
            raise HarnessError(f"load generator exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-300:]}")
        return json.loads(lines[-1])


def compile_c(cc: str, source: Path, out: Path) -> str | None:
    """Compile ``source``; None on success, else the compiler's complaint."""
    done = subprocess.run([cc, "-O2", "-o", str(out), str(source)], capture_output=True,
                          timeout=120)
    if done.returncode != 0:
        return done.stderr.decode(errors="replace")[-500:]
    return None


def setup_env(wanted: list[str], workdir: Path) -> Env:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise HarnessError("no C compiler (cc) found: the load generator is C compiled at run "
                           "time; install one (e.g. apt-get install gcc)")
    load_bin = workdir / "load"
    err = compile_c(cc, BENCH_DIR / "load.c", load_bin)
    if err:
        raise HarnessError(f"cannot compile tools/bench/load.c: {err}")
    env = Env(workdir, load_bin, None, None, None, [])
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        env.server_cpu, env.load_cpu = cpus[0], cpus[1]
    else:
        env.notes.append(f"only {len(cpus)} CPU available: server and generator share it, "
                         "so every figure is a lower bound")
    for name in wanted:
        if name == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                env.skipped[name] = "uvloop not installed (pip install -e '.[bench]')"
                continue
        if name == "c-echo":
            echo_bin = workdir / "echo"
            err = compile_c(cc, BENCH_DIR / "echo.c", echo_bin)
            if err:
                env.skipped[name] = f"tools/bench/echo.c did not compile: {err.splitlines()[0]}"
                continue
            env.echo_bin = echo_bin
        env.servers.append(name)
    return env


# -- workloads --------------------------------------------------------------------------

def _connect_budget(conns: int) -> float:
    return 30.0 if conns > 1000 else 10.0


def measure_firehose(env: Env, server: Server, conns: int, plan: Plan) -> dict[str, Any]:
    window = firehose_window(conns)
    ct = _connect_budget(conns)
    out = env.run_load(["--mode", "firehose", "--port", str(server.port), "--conns", str(conns),
                        "--window", str(window), "--duration", str(plan.duration),
                        "--warmup", str(plan.warmup), "--connect-timeout", str(ct),
                        "--server-pid", str(server.pid)],
                       timeout=ct + plan.warmup + plan.duration + 30)
    return {**out, "config": f"{conns}", **_stream_checks(out, conns)}


def measure_closed(env: Env, server: Server, conns: int, depth: int, plan: Plan) -> dict[str, Any]:
    ct = _connect_budget(conns)
    out = env.run_load(["--mode", "closed", "--port", str(server.port), "--conns", str(conns),
                        "--depth", str(depth), "--duration", str(plan.duration),
                        "--warmup", str(plan.warmup), "--connect-timeout", str(ct),
                        "--server-pid", str(server.pid)],
                       timeout=ct + plan.warmup + plan.duration + 30)
    return {**out, "config": f"{conns}x{depth}", **_stream_checks(out, conns)}


def _stream_checks(out: dict[str, Any], conns: int) -> dict[str, Any]:
    """What the generator saw: bytes, connections, service (notes); other load (warnings)."""
    notes, warnings = [], []
    other = max(out.get("other_on_server_core_pct", 0), out.get("other_on_load_core_pct", 0))
    if other + out.get("steal_pct", 0) > NOISY_PCT:
        warnings.append(f"noisy: {other + out.get('steal_pct', 0):.0f}% other load on the cores")
    if out["mismatches"]:
        notes.append(f"BAD BYTES x{out['mismatches']}")
    if out["connect_failed"]:
        notes.append(f"{out['connect_failed']}/{conns} connects failed")
    if out["dropped"]:
        notes.append(f"{out['dropped']}/{conns} dropped")
    if out["starved"]:
        notes.append(f"{out['starved']}/{conns} never served")
    if out["lines"] <= 0:
        notes.append("nothing echoed in the window")
    return {"verified": not notes, "notes": notes, "warnings": warnings,
            "bytes_ok": not out["mismatches"]}


def measure_idle(env: Env, server: Server, conns: int) -> dict[str, Any]:
    """RSS per held connection, silent and after one echoed line each; fds prove they are held."""
    server.warm()
    time.sleep(0.3)
    pid = server.pid
    rss0, fd0 = proc_status_kb(pid, "VmRSS"), fd_count(pid)
    ct = _connect_budget(conns)
    gen = subprocess.Popen([str(env.load_bin), "--mode", "idle", "--port", str(server.port),
                            "--conns", str(conns), "--connect-timeout", str(ct),
                            "--max-seconds", str(ct * 2 + 60)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=_child_setup(env.load_cpu))
    assert gen.stdin and gen.stdout
    try:
        line = read_line(gen.stdout.fileno(), ct + 15)
        if not line:
            raise HarnessError("idle generator said nothing")
        connected = json.loads(line)
        # The client's connect completes before the server accepts: wait for the fds.
        deadline = time.monotonic() + 15
        while fd_count(pid) < fd0 + connected["open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        rss1, fd1 = proc_status_kb(pid, "VmRSS"), fd_count(pid)
        gen.stdin.write(b"echo\n")
        gen.stdin.flush()
        line = read_line(gen.stdout.fileno(), ct + 15)
        if not line:
            raise HarnessError("idle generator did not answer 'echo'")
        echoed = json.loads(line)
        time.sleep(0.5)
        rss2, fd2 = proc_status_kb(pid, "VmRSS"), fd_count(pid)
        gen.stdin.write(b"quit\n")
        gen.stdin.flush()
        gen.wait(30)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
        for f in (gen.stdin, gen.stdout, gen.stderr):
            if f:
                try:
                    f.close()
                except BrokenPipeError:
                    pass
    notes = []
    if connected["open"] < conns:
        notes.append(f"{conns - connected['open']}/{conns} connects failed")
    if fd1 - fd0 < conns:
        notes.append(f"server held {fd1 - fd0}/{conns} silent")
    if fd2 - fd0 < conns:
        notes.append(f"server held {fd2 - fd0}/{conns} after echo")
    if echoed["echoed"] < conns:
        notes.append(f"{echoed['echoed']}/{conns} echoed")
    if echoed["mismatches"]:
        notes.append(f"BAD BYTES x{echoed['mismatches']}")
    return {
        "config": f"{conns}", "conns": conns, "rss_before_kb": rss0, "rss_silent_kb": rss1,
        "rss_echoed_kb": rss2, "fds_before": fd0, "fds_silent": fd1, "fds_echoed": fd2,
        "held_silent": fd1 - fd0, "held_echoed": fd2 - fd0, "echoed": echoed["echoed"],
        "bytes_per_conn_silent": (rss1 - rss0) * 1024 / conns,
        "bytes_per_conn_echoed": (rss2 - rss0) * 1024 / conns,
        "mismatches": echoed["mismatches"], "verified": not notes, "notes": notes,
        "bytes_ok": not echoed["mismatches"],
    }


def measure_accept(env: Env, server: Server, plan: Plan) -> dict[str, Any]:
    conns, extra = plan.accept_conns, plan.accept_extra
    ct = _connect_budget(conns)
    out = env.run_load(["--mode", "accept", "--port", str(server.port), "--conns", str(conns),
                        "--window", str(firehose_window(conns)), "--extra", str(extra),
                        "--open-seconds", str(plan.accept_open_s),
                        "--serve-window", str(plan.accept_window_s), "--warmup", str(plan.warmup),
                        "--connect-timeout", str(ct), "--server-pid", str(server.pid)],
                       timeout=ct + plan.warmup + plan.accept_window_s + 30)
    checks = _stream_checks(out, conns)
    # The probes' count is the measurement, not a check: a busy server that does not accept
    # scores low here, it is not "unverified".
    return {**out, "config": f"{conns}+{extra}", **checks,
            "served_pct": 100.0 * out["probes_served"] / extra if extra else 0.0}


def measure_timers(count: int, rounds: int) -> list[dict[str, Any]]:
    """ns per idle-timer re-arm with ``count`` live timers: reactor TimerWheel vs asyncio."""
    try:
        from reactor import MonotonicClock, TimerWheel
    except ImportError:
        sys.path.insert(0, str(ROOT))
        from reactor import MonotonicClock, TimerWheel

    def cb() -> None:
        pass

    wheel = TimerWheel(MonotonicClock())
    timers = [wheel.call_later(300.0, cb) for _ in range(count)]
    rearm = wheel.rearm
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        for i in range(count):
            rearm(timers[i], 300.0)
    wheel_ns = (time.perf_counter_ns() - t0) / (rounds * count)
    wheel_live = len(wheel)
    wheel_active = sum(t.active for t in timers)

    loop = asyncio.new_event_loop()  # never run: the cost of the calls alone
    try:
        handles = [loop.call_later(300.0, cb) for _ in range(count)]
        call_later = loop.call_later
        t0 = time.perf_counter_ns()
        for _ in range(rounds):
            for i in range(count):
                handles[i].cancel()
                handles[i] = call_later(300.0, cb)
        aio_ns = (time.perf_counter_ns() - t0) / (rounds * count)
        aio_live = len(loop._scheduled)  # type: ignore[attr-defined]
        aio_active = sum(not h.cancelled() for h in handles)
    finally:
        loop.close()
    common = {"config": f"{count}", "timers": count, "rearms": rounds * count}
    wheel_notes = [] if wheel_live == count == wheel_active else [
        f"live {wheel_live}, active {wheel_active}, want {count}"]
    aio_notes = [] if aio_active == count else [f"active {aio_active}, want {count}"]
    return [
        {**common, "server": "line-echo", "impl": "reactor TimerWheel.rearm(t, 300)",
         "ns_per_rearm": wheel_ns, "live_entries": wheel_live, "verified": not wheel_notes,
         "notes": wheel_notes, "bytes_ok": True},
        {**common, "server": "asyncio", "impl": "h.cancel(); loop.call_later(300, cb)",
         "ns_per_rearm": aio_ns, "live_entries": aio_live, "verified": not aio_notes,
         "notes": aio_notes, "bytes_ok": True},
    ]


# -- running ----------------------------------------------------------------------------

def steps(plan: Plan, only: set[str]) -> list[tuple[str, tuple[Any, ...]]]:
    out: list[tuple[str, tuple[Any, ...]]] = []
    if "firehose" in only:
        out += [("firehose", (n,)) for n in plan.firehose_conns]
    if "closed" in only:
        out += [("closed", cd) for cd in plan.closed]
    if "idle" in only:
        out.append(("idle", (plan.idle_conns,)))
    if "accept" in only:
        out.append(("accept", ()))
    return out


def measure(env: Env, workload: str, args: tuple[Any, ...], server_name: str,
            plan: Plan) -> dict[str, Any]:
    server = env.start(server_name)
    try:
        if workload == "firehose":
            rec = measure_firehose(env, server, args[0], plan)
        elif workload == "closed":
            rec = measure_closed(env, server, args[0], args[1], plan)
        elif workload == "idle":
            rec = measure_idle(env, server, args[0])
        else:
            rec = measure_accept(env, server, plan)
        if not server.alive():
            raise HarnessError(f"{server_name} exited during the run: {server.stderr_tail()}")
        return rec
    finally:
        server.stop()


def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "reactor", "handlers"],
                               cwd=ROOT, text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in reactor/ or handlers/" if dirty else "")


def code_state() -> str:
    """A digest of the code under test, to tell whether it changed while we measured."""
    h = hashlib.sha1()
    for path in sorted([*ROOT.glob("reactor/**/*.py"), *ROOT.glob("handlers/*.py")]):
        try:
            h.update(path.name.encode() + path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:12]


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": model or platform.processor(), "cpus": os.cpu_count(),
        "kernel": platform.release(), "python": platform.python_version(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    return info


def run(plan: Plan, env: Env, only: set[str], log: Callable[[str], None],
        emit: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    todo = steps(plan, only)
    for r in range(plan.repeat):
        # Servers interleave inside each configuration, so noise hits them alike.
        for workload, args in todo:
            for name in env.servers:
                if not plan.measures(name, workload, args):
                    continue
                t0 = time.monotonic()
                base = {"kind": "measurement", "workload": workload, "server": name,
                        "repeat": r + 1}
                try:
                    rec = {**base, **measure(env, workload, args, name, plan)}
                except (HarnessError, OSError, ValueError, KeyError) as exc:
                    rec = {**base, "config": "x".join(map(str, args)) or "-", "error": str(exc),
                           "verified": False, "bytes_ok": False, "notes": [f"ERROR {exc}"]}
                rec["seconds"] = round(time.monotonic() - t0, 2)
                if "gen_busy_pct" in rec:
                    rec["load_bound"] = rec["gen_busy_pct"] >= LOAD_BOUND_PCT
                records.append(rec)
                emit(rec)
                log(f"  [{r + 1}/{plan.repeat}] {workload:8} {rec['config']:>9} {name:13} "
                    f"{_summary(rec)}  ({rec['seconds']:.1f} s)")
        if "timers" in only:
            saved = os.sched_getaffinity(0)
            if env.server_cpu is not None:
                os.sched_setaffinity(0, {env.server_cpu})
            try:
                for rec in measure_timers(plan.timer_count, plan.timer_rounds):
                    rec = {"kind": "measurement", "workload": "timers", "repeat": r + 1, **rec}
                    records.append(rec)
                    emit(rec)
                    log(f"  [{r + 1}/{plan.repeat}] timers   {rec['config']:>9} "
                        f"{rec['server']:13} {_summary(rec)}")
            finally:
                os.sched_setaffinity(0, saved)
    return records


def _summary(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"ERROR {rec['error']}"
    parts = []
    if "lines_per_s" in rec:
        parts.append(f"{si(rec['lines_per_s'])} lines/s")
    if "lat_p99_us" in rec:
        parts.append(f"p99 {ms(rec['lat_p99_us'])}")
    if "bytes_per_conn_silent" in rec:
        parts.append(f"{rec['bytes_per_conn_silent']:.0f} B/conn silent, "
                     f"{rec['bytes_per_conn_echoed']:.0f} after echo")
    if "served_pct" in rec:
        parts.append(f"served {rec['probes_served']}/{rec['extra']}")
    if "ns_per_rearm" in rec:
        parts.append(f"{rec['ns_per_rearm']:.0f} ns/re-arm, {rec['live_entries']} live")
    if "gen_busy_pct" in rec:
        parts.append(f"gen {rec['gen_busy_pct']:.0f}%")
    parts.append("ok" if rec["verified"] else "; ".join(rec["notes"]))
    return ", ".join(parts)


# -- tables -----------------------------------------------------------------------------

def si(x: float | None) -> str:
    if x is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {suffix}"
    return f"{x:.0f}"


def ms(us: float | None) -> str:
    if us is None or us < 0:
        return "-"
    if us >= 1000:
        return f"{us / 1000:.1f} ms"
    return f"{us:.0f} µs"


def pct(x: float | None) -> str:
    return "-" if x is None or x < 0 else f"{x:.0f}%"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}×"


RATIO_HEADS = [f"÷{peer}" for peer in RATIO_PEERS]


def ratios(value: float | None, peers: list[float | None]) -> list[str]:
    """The row's ÷ cells, one per RATIO_PEERS entry (``peers`` from ``Results.peer_meds``)."""
    return [ratio(value, theirs) for theirs in peers]


def counted(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs a median is taken over: the verified ones if any, else all that measured."""
    ok = [r for r in recs if r.get("verified") and "error" not in r]
    return ok or [r for r in recs if "error" not in r]


def median_of(recs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in counted(recs) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def render(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (it reads as plain text too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def fmt(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])


def check_cell(recs: list[dict[str, Any]]) -> str:
    """'ok', or what failed in how many runs (figures then come from the runs that passed)."""
    if not recs:
        return "-"
    failed = [r for r in recs if not r.get("verified") or "error" in r]
    kinds: dict[str, list[str]] = {}
    for r in failed:
        for n in r.get("notes", []):
            count, _, what = n.partition(" ")
            got, _, total = count.partition("/")
            if got.isdigit() and total.isdigit():  # "6413/10000 never served"
                kinds.setdefault(f"{what}|{total}", []).append(got)
            else:
                kinds.setdefault(n, [])
    parts = [f"{what.split('|')[0]} {'/'.join(c)} of {what.split('|')[1]}" if c else what
             for what, c in kinds.items()]
    if failed:
        how = f"{len(failed)}/{len(recs)} runs failed" if len(recs) > 1 else "FAILED"
        used = "" if len(failed) == len(recs) else ", figures from the others"
        cell = f"{how}{used}: " + "; ".join(parts)
    else:
        cell = "ok"
    noisy = [r for r in recs if r.get("warnings")]
    if noisy:
        cell += f" ({len(noisy)}/{len(recs)} noisy)"
    return cell


def gen_cell(recs: list[dict[str, Any]]) -> str:
    g = median_of(recs, "gen_busy_pct")
    if g is None:
        return "-"
    return f"{g:.0f}%" + (" LOAD-BOUND" if g >= LOAD_BOUND_PCT else "")


class Results:
    """Records grouped by (workload, config, server), with medians."""

    def __init__(self, records: list[dict[str, Any]], servers: list[str]) -> None:
        self.servers = servers
        self.groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.configs: dict[str, list[str]] = {}
        for rec in records:
            if rec.get("kind") != "measurement":
                continue
            key = (rec["workload"], rec["config"], rec["server"])
            self.groups.setdefault(key, []).append(rec)
            cfgs = self.configs.setdefault(rec["workload"], [])
            if rec["config"] not in cfgs:
                cfgs.append(rec["config"])

    def get(self, workload: str, config: str, server: str) -> list[dict[str, Any]]:
        return self.groups.get((workload, config, server), [])

    def med(self, workload: str, config: str, server: str, key: str) -> float | None:
        return median_of(self.get(workload, config, server), key)

    def peer_meds(self, workload: str, config: str, key: str) -> list[float | None]:
        return [self.med(workload, config, peer, key) for peer in RATIO_PEERS]


def tables(res: Results, repeat: int) -> str:
    out: list[str] = []
    srv = res.servers
    rep = f"median of {repeat}" if repeat > 1 else "1 run"
    if "firehose" in res.configs:
        rows = []
        for cfg in res.configs["firehose"]:
            peers = res.peer_meds("firehose", cfg, "lines_per_s")
            for s in srv:
                recs = res.get("firehose", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "lines_per_s")
                rss = median_of(recs, "server_hwm_kb")
                cpu = median_of(recs, "server_cpu_pct")
                rows.append([cfg, s, si(v), *ratios(v, peers), pct(cpu),
                             f"{rss / 1024:.1f} MiB" if rss else "-", gen_cell(recs),
                             check_cell(recs)])
        out.append(f"### Firehose: lines/s echoed back ({rep})\n\n" + render(
            ["conns", "server", "lines/s", *RATIO_HEADS, "server CPU", "peak RSS", "gen busy",
             "check"], rows))
    if "closed" in res.configs:
        rows = []
        for cfg in res.configs["closed"]:
            peers = res.peer_meds("closed", cfg, "lines_per_s")
            tp = res.med("closed", cfg, TARGET_PEER, "lat_p99_us")
            bp = res.med("closed", cfg, BATCH_PEER, "lat_p99_us")
            for s in srv:
                recs = res.get("closed", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "lines_per_s")
                p99 = median_of(recs, "lat_p99_us")
                rows.append([cfg.replace("x", "×"), s, si(v), *ratios(v, peers),
                             ms(median_of(recs, "lat_p50_us")), ms(p99),
                             ms(median_of(recs, "lat_p999_us")), ratio(p99, tp), ratio(p99, bp),
                             pct(median_of(recs, "server_cpu_pct")), gen_cell(recs),
                             check_cell(recs)])
        out.append(f"### Closed loop: conns × lines in flight ({rep})\n\n" + render(
            ["conns×depth", "server", "lines/s", *RATIO_HEADS, "p50", "p99", "p99.9",
             f"p99 ÷{TARGET_PEER}", f"p99 ÷{BATCH_PEER}", "server CPU", "gen busy", "check"],
            rows))
    if "idle" in res.configs:
        rows = []
        for cfg in res.configs["idle"]:
            peers = res.peer_meds("idle", cfg, "bytes_per_conn_silent")
            for s in srv:
                recs = res.get("idle", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "bytes_per_conn_silent")
                e = median_of(recs, "bytes_per_conn_echoed")
                held = median_of(recs, "held_silent")
                rows.append([cfg, s, f"{held:.0f}" if held is not None else "-",
                             f"{v:.0f} B" if v is not None else "-",
                             f"{e:.0f} B" if e is not None else "-", *ratios(v, peers),
                             check_cell(recs)])
        out.append(f"### Idle memory: server RSS per held connection ({rep})\n\n" + render(
            ["conns", "server", "fds held", "B/conn silent", "B/conn after 1 line",
             *(f"silent {h}" for h in RATIO_HEADS), "check"], rows))
    if "accept" in res.configs:
        rows = []
        for cfg in res.configs["accept"]:
            peers = res.peer_meds("accept", cfg, "lines_per_s")
            for s in srv:
                recs = res.get("accept", cfg, s)
                if not recs:
                    continue
                served = median_of(recs, "probes_served")
                extra = median_of(recs, "extra")
                share = median_of(recs, "served_pct")
                last = median_of(recs, "last_served_s")
                v = median_of(recs, "lines_per_s")
                rows.append([cfg, s, f"{served:.0f}/{extra:.0f}" if served is not None else "-",
                             f"{share:.1f} %" if share is not None else "-",
                             f"{last:.2f} s" if last is not None and last >= 0 else "-",
                             si(v), *ratios(v, peers), gen_cell(recs), check_cell(recs)])
        out.append(f"### Accept under load: firehose + new connections at a steady rate "
                   f"({rep})\n\n" + render(
                       ["firehose+new", "server", "served in window", "served", "last served at",
                        "firehose lines/s", *RATIO_HEADS, "gen busy", "check"], rows))
    if "timers" in res.configs:
        rows = []
        for cfg in res.configs["timers"]:
            a = res.med("timers", cfg, "asyncio", "ns_per_rearm")
            for s in ("line-echo", "asyncio"):
                recs = res.get("timers", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "ns_per_rearm")
                live = median_of(recs, "live_entries")
                rows.append([cfg, recs[0]["impl"], f"{v:.0f} ns" if v is not None else "-",
                             ratio(a, v) if s != "asyncio" else "1.00×",
                             f"{live:.0f}" if live is not None else "-", check_cell(recs)])
        out.append(f"### Idle-timer re-arm with N live timers ({rep})\n\n" + render(
            ["timers", "implementation", "per re-arm", "faster than asyncio",
             "live entries after", "check"], rows))
    return "\n\n".join(out)


def verdict(value: float, goal: float, higher: bool) -> str:
    """'met', or 'NOT met' and by how much."""
    if value >= goal if higher else value <= goal:
        return "met"
    if higher:
        return f"NOT met: {1 - value / goal:.0%} short" if goal else "NOT met"
    return f"NOT met: {value / goal - 1:.1%} over the limit"


def targets(res: Results) -> str:
    """The issue's targets, each met or not, by how much.

    A goal stated against asyncio is judged against TARGET_PEER (the per-line Protocol the
    issue's table calls "asyncio Protocol"); the last column applies the same goal to
    BATCH_PEER, so that both readings stay in view, and gives the idle ratios as context.
    """
    rows: list[list[str]] = []

    def add(what: str, value: float | None, goal: float, higher: bool, unit: str = "×",
            why: str = "", beside: str = "-") -> None:
        if value is None:
            rows.append([what, "not measured in this run", "-", beside])
            return
        shown = f"{value:.3f}{unit}" if unit == "×" else f"{value:.0f}{unit}"
        rows.append([what, shown + (f" ({why})" if why else ""), verdict(value, goal, higher),
                     beside])

    def r(workload: str, cfg: str, key: str, other: str, inverse: bool = False) -> float | None:
        mine = res.med(workload, cfg, "line-echo", key)
        theirs = res.med(workload, cfg, other, key)
        if mine is None or theirs is None or (theirs == 0 and not inverse) or (inverse and mine == 0):
            return None
        return theirs / mine if inverse else mine / theirs

    def add_vs_asyncio(what: str, workload: str, cfg: str, key: str, goal: float,
                       higher: bool) -> None:
        batched = r(workload, cfg, key, BATCH_PEER)
        beside = "-" if batched is None else f"{batched:.3f}× ({verdict(batched, goal, higher)})"
        add(what, r(workload, cfg, key, TARGET_PEER), goal, higher, beside=beside)

    for n in ("1000", "10000"):
        add_vs_asyncio(f"firehose {n} conns ≥ 4× {TARGET_PEER}", "firehose", n, "lines_per_s",
                       4, True)
        add(f"firehose {n} conns ≥ C echo", r("firehose", n, "lines_per_s", "c-echo"), 1, True)
    add_vs_asyncio(f"closed loop 10000×16 ≥ 1.1× {TARGET_PEER}", "closed", "10000x16",
                   "lines_per_s", 1.1, True)
    add_vs_asyncio(f"closed loop 10000×1 ≥ {TARGET_PEER}", "closed", "10000x1", "lines_per_s",
                   1, True)
    add_vs_asyncio(f"p99 closed loop 10000×1 ≤ 0.8× {TARGET_PEER}", "closed", "10000x1",
                   "lat_p99_us", 0.8, False)
    for cfg in res.configs.get("idle", []):
        for key, after in (("bytes_per_conn_silent", "silent"),
                           ("bytes_per_conn_echoed", "after one line")):
            # An absolute goal: the peers' ratios are context, not part of the verdict.
            vs = r("idle", cfg, key, TARGET_PEER)
            batched = r("idle", cfg, key, BATCH_PEER)
            add(f"idle bytes/conn {after} ≤ 400 B ({cfg} conns)",
                res.med("idle", cfg, "line-echo", key), 400, False, " B",
                why="" if vs is None else f"{vs:.2f}× {TARGET_PEER}",
                beside="-" if batched is None else f"{batched:.3f}× (the goal is in bytes)")
    for cfg in res.configs.get("accept", []):
        add(f"accept under load ({cfg}) 100 %",
            res.med("accept", cfg, "line-echo", "served_pct"), 100, True, " %")
    for cfg in res.configs.get("timers", []):
        speed = r("timers", cfg, "ns_per_rearm", "asyncio", inverse=True)
        add(f"timer re-arm ≥ 10× faster than asyncio ({cfg} timers)", speed, 10, True)
        live = res.med("timers", cfg, "line-echo", "live_entries")
        if live is not None:
            rows.append([f"no growth in live timer entries ({cfg} timers)", f"{live:.0f}",
                         "met" if live == int(cfg) else "NOT met", "-"])
    return ("### Targets (line-echo against its peers, from the medians above)\n\n" + render(
        ["target", "measured", "verdict", f"against batched {BATCH_PEER}"], rows)
        + f"\n\nGoals against asyncio are judged against `{TARGET_PEER}`, the per-line Protocol "
        f"the issue's table calls \"asyncio Protocol\"; the last column holds the same goals "
        f"against `{BATCH_PEER}`, which echoes up to the last newline in one write.")


def report(run_rec: dict[str, Any], records: list[dict[str, Any]],
           elapsed: float | None = None) -> str:
    """The whole printed report of one run: where and how it ran, the tables, the targets."""
    info = run_rec["machine"]
    plan = run_rec["plan"]
    took = f", {elapsed:.0f} s" if elapsed is not None else ""
    argv = " ".join(run_rec["argv"])
    head = [
        f"## Benchmark run {run_rec['run']} ({'smoke' if run_rec['smoke'] else 'full'}{took})",
        "",
        f"- command: `tools/bench.py{' ' + argv if argv else ''}`",
        f"- commit: {run_rec['commit']}",
        f"- machine: {info['cpu']}, {info['cpus']} CPUs, Linux {info['kernel']}, "
        f"Python {info['python']}, uvloop {info['uvloop'] or 'absent'}; server pinned to CPU "
        f"{run_rec['server_cpu']}, load generator to CPU {run_rec['load_cpu']}",
    ]
    for name, why in run_rec["skipped"].items():
        head.append(f"- skipped {name}: {why}")
    for note in run_rec.get("notes", []):
        head.append(f"- note: {note}")
    res = Results(records, run_rec["servers"])
    return "\n".join(head) + "\n\n" + tables(res, plan["repeat"]) + "\n\n" + targets(res)


def report_from_file(path: str) -> int:
    """Print the report of the last run recorded in a --json file."""
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    runs = [r for r in recs if r.get("kind") == "run"]
    if not runs:
        print(f"bench: no run recorded in {path}", file=sys.stderr)
        return 1
    last = runs[-1]
    mine = [r for r in recs if r.get("run") == last["run"]]
    ends = [r for r in mine if r.get("kind") == "end"]
    if ends:
        last = {**last, "notes": [*last.get("notes", []), *ends[-1]["notes"]]}
    print(report(last, mine, ends[-1]["seconds"] if ends else None))
    return 0


# -- main -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="1 repeat, ~0.5 s per run and small sizes: checks the harness, not speed")
    p.add_argument("--repeat", type=int, help="repeats per measurement (default 3, smoke 1)")
    p.add_argument("--duration", type=float, help="measured seconds per firehose/closed run")
    p.add_argument("--only", default=",".join(WORKLOADS),
                   help=f"comma-separated workloads (default all: {','.join(WORKLOADS)})")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma-separated servers (default all: {','.join(SERVERS)})")
    p.add_argument("--json", metavar="PATH", help="append one JSON object per measurement")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--report", metavar="PATH",
                   help="measure nothing: print the tables of the last run saved in PATH")
    a = p.parse_args(argv)
    if a.report:
        return report_from_file(a.report)
    plan = SMOKE if a.smoke else FULL
    if a.repeat is not None or a.duration is not None:
        plan = Plan(**{**plan.__dict__, "repeat": a.repeat or plan.repeat,
                       "duration": a.duration or plan.duration})
    only = {w.strip() for w in a.only.split(",") if w.strip()}
    wanted = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = (only - set(WORKLOADS)) | (set(wanted) - set(SERVERS))
    if bad or plan.repeat < 1:
        p.error(f"unknown workload or server: {', '.join(sorted(bad))}" if bad
                else "--repeat must be at least 1")
    log = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    json_file = open(a.json, "a") if a.json else None
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = git_describe()
    code_at_start = code_state()
    info = machine()

    def emit(rec: dict[str, Any]) -> None:
        if json_file:
            json_file.write(json.dumps({"run": run_id, "commit": commit, **rec}) + "\n")
            json_file.flush()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        try:
            env = setup_env(wanted, Path(tmp))
        except HarnessError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        run_rec = {"kind": "run", "argv": sys.argv[1:] if argv is None else list(argv),
                   "smoke": a.smoke, "plan": plan.__dict__, "machine": info,
                   "servers": env.servers, "skipped": env.skipped, "notes": env.notes,
                   "aio_peers": {name: {"loop": loop, "style": style}
                                 for name, (loop, style) in AIO_PEERS.items()},
                   "server_cpu": env.server_cpu, "load_cpu": env.load_cpu}
        emit(run_rec)
        run_rec = {"run": run_id, "commit": commit, **run_rec}
        for name, why in env.skipped.items():
            emit({"kind": "skip", "server": name, "reason": why})
        if env.load_cpu is not None:  # this script waits on the generator's core
            os.sched_setaffinity(0, {env.load_cpu})
        log(f"bench: servers {', '.join(env.servers)}; server on CPU {env.server_cpu}, "
            f"generator on CPU {env.load_cpu}; {plan.repeat} repeat(s)")
        records = run(plan, env, only, log, emit)
    elapsed = time.monotonic() - started
    end = {"kind": "end", "seconds": round(elapsed, 1), "notes": []}
    if code_state() != code_at_start:
        end["notes"].append("the code under test (reactor/, handlers/) changed during this "
                            "run: its figures mix versions")
    emit(end)
    run_rec["notes"] = [*run_rec["notes"], *end["notes"]]
    print(report(run_rec, records, elapsed))
    if json_file:
        json_file.close()
    failed = [r for r in records if "error" in r or not r.get("bytes_ok", True)]
    if failed:
        print(f"\nbench: {len(failed)} measurement(s) failed; see the check column",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
