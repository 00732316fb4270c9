"""Constants, the plans, and the processes of a run: servers, the generator, the machine."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent.parent
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

