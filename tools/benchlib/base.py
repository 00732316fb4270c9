"""Constants, the plans, and the processes of a run: servers, the generator, the machine."""

from __future__ import annotations

import json
import os
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

from childproc import child_setup, fd_count
from childproc import status_kb as proc_status_kb

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH_DIR = ROOT / "tools" / "bench"
SERVERS = ("line-echo", "py-et", "asyncio-lines", "asyncio", "uvloop", "c-echo")
# tools/bench/aio_echo.py's --loop and --style for each asyncio peer.
AIO_PEERS = {"asyncio-lines": ("asyncio", "lines"), "asyncio": ("asyncio", "batch"),
             "uvloop": ("uvloop", "batch")}
RATIO_PEERS = ("py-et", "asyncio-lines", "asyncio", "uvloop")  # the ÷ columns of the tables
# The ÷ columns of the flood, open-loop and tcpkali tables: the pure-Python ceiling, the
# fastest asyncio, the physical limit.
FLOOD_PEERS = ("py-et", "asyncio", "c-echo")
PY_ET_PEER = "py-et"  # the flood and open-loop targets are against this
TARGET_PEER = "asyncio-lines"  # the "asyncio Protocol": its targets are against this
BATCH_PEER = "asyncio"         # shown beside every target against TARGET_PEER
WORKLOADS = ("firehose", "closed", "idle", "accept", "timers", "flood", "open", "tcpkali", "tls",
             "handshake")
# The TLS workloads (tools/bench/tlsload.c) and the servers that speak TLS: line-echo
# --tls-cert/--tls-key and aio_echo.py's batched peer on asyncio and on uvloop (py-et,
# the per-line peer and the C echo have none; the targets are against batched asyncio).
TLS_WORKLOADS = ("tls", "handshake")
TLS_SERVERS = ("line-echo", "asyncio", "uvloop")
TLS_PEERS = ("asyncio", "uvloop")  # the ÷ columns of the TLS tables
CERT_DIR = ROOT / "tests" / "certs"  # server.pem (localhost, 127.0.0.1), server.key, ca.pem
# py_et_echo.py (+ _common.py): the shared stdlib edge-triggered echo, beside the clone
PY_ET_DEFAULT = ROOT.parent / "shared" / "bench" / "py_et_echo.py"
PY_ET_ENV = "BENCH_PY_ET"  # overrides PY_ET_DEFAULT; so does --py-et PATH
TCPKALI_DEFAULT = Path.home() / ".cache" / "tcpkali" / "bin" / "tcpkali"
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
    # The no-window flood (and the tcpkali cross-check, with --tcpkali) at these sizes,
    # connecting at connect_rate per second; line-echo's stats sampled every stats_interval.
    flood_conns: tuple[int, ...] = ()
    # The open loop: (connections, lines per second each), measured for open_duration s.
    open_loads: tuple[tuple[int, int], ...] = ()
    open_duration: float = 5.0
    connect_rate: int = 10000
    stats_interval: float = 0.5
    # tcpkali's -T: its ramp-up counts in it, and it gives up (exit 1) if it cannot open
    # every connection within it; 4 s was not enough for 10,000 beside a busy server
    tcpkali_seconds: float = 10.0
    # TLS (tlsload.c): the firehose inside TLS at these connection counts, and the
    # handshake loop as (concurrent clients, handshakes/s offered over all of them; 0 =
    # unpaced, as fast as they go), each measured for ``duration``.
    tls_conns: tuple[int, ...] = ()
    handshake_loads: tuple[tuple[int, int], ...] = ()

    def measures(self, server: str, workload: str, args: tuple[Any, ...]) -> bool:
        steps = dict(self.only_at).get(server)
        return steps is None or f"{workload}:{'x'.join(map(str, args))}" in steps


FULL = Plan(repeat=3, duration=3.0, warmup=1.0, firehose_conns=(1, 100, 1000, 10000),
            closed=((100, 1), (100, 16), (10000, 1), (10000, 16)), idle_conns=10000,
            accept_conns=1000, accept_extra=1000, accept_open_s=5.0, accept_window_s=10.0,
            timer_count=10000, timer_rounds=20, flood_conns=(1000, 10000),
            open_loads=((1000, 20), (10000, 2)), open_duration=5.0,
            tls_conns=(100, 1000), handshake_loads=((50, 0), (50, 1000)))
SMOKE = Plan(repeat=1, duration=0.5, warmup=0.2, firehose_conns=(1, 100),
             closed=((100, 1), (100, 16)), idle_conns=500, accept_conns=50, accept_extra=50,
             accept_open_s=0.5, accept_window_s=10.0, timer_count=1000, timer_rounds=5,
             # Both byte-checked stream paths of the per-line peer: ~1.6 s, where every
             # step would add ~5.5 s to a run CI makes at every `make test`.
             only_at=(("asyncio-lines", ("firehose:100", "closed:100x16")),
                      ("py-et", ("flood:100", "tcpkali:100", "open:100x20"))),
             flood_conns=(100,), open_loads=((100, 20),), open_duration=1.0,
             tcpkali_seconds=2.0, tls_conns=(20,), handshake_loads=((5, 0), (5, 200)))


def firehose_window(conns: int) -> int:
    """Unechoed bytes allowed per connection: 64 KiB, less when many share 16 MiB, >= 4 KiB."""
    return max(4096, min(65536, (16 << 20) // max(conns, 1)))


# -- processes --------------------------------------------------------------------------

def _child_setup(cpu: int | None, alarm_s: float = 0) -> Callable[[], None]:
    """preexec_fn: pin to ``cpu``, die with this script, take the whole fd allowance, and
    with ``alarm_s`` die after that long (childproc.child_setup)."""
    return child_setup(None if cpu is None else (cpu,), alarm_s)


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


class HarnessError(Exception):
    """The harness, not the server under test, could not measure."""


class Server:
    """One server process under test, started fresh for one measurement."""

    def __init__(self, name: str, argv: list[str], cpu: int | None, workdir: Path,
                 port: int | None = None, stats_path: Path | None = None) -> None:
        """``port``: the server says nothing and listens there (we wait until it accepts);
        else it prints ``listening on HOST:PORT`` first. ``stats_path``: its stats socket."""
        self.name = name
        self.stats_path = stats_path
        self.stderr_path = workdir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, cwd=ROOT,
                                     preexec_fn=_child_setup(cpu, SERVER_LIFETIME_S if port
                                                             else 0))
        assert self.proc.stdout is not None
        if port is not None:
            self.port = port
            self._wait_accepting(15.0)
            return
        line = read_line(self.proc.stdout.fileno(), 15.0)
        if not line.startswith("listening on "):
            self.stop()
            raise HarnessError(f"{name} did not start: {line!r} {self.stderr_tail()}")
        self.port = int(line.strip().rsplit(":", 1)[1])

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise HarnessError(f"{self.name} exited at start: {self.stderr_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise HarnessError(f"{self.name} not accepting on port {self.port} "
                                       f"after {timeout:.0f} s: {self.stderr_tail()}") from None
            try:  # retry in 50 ms, or at once if it exits meanwhile
                self.proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass

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
    py_et: Path | None = None     # py_et_echo.py, if found
    tcpkali: Path | None = None   # the cross-check generator, with --tcpkali
    tls_bin: Path | None = None   # tlsload, if it compiled (OpenSSL's headers are there)
    tls_skipped: str = ""         # why the TLS workloads are not run, if they were asked for

    def server_argv(self, name: str, tls: bool = False) -> list[str]:
        argv = self._server_argv(name)
        if tls:
            if name not in TLS_SERVERS:
                raise ValueError(f"{name} has no TLS")
            argv += ["--tls-cert", str(CERT_DIR / "server.pem"),
                     "--tls-key", str(CERT_DIR / "server.key")]
        return argv

    def _server_argv(self, name: str) -> list[str]:
        life = str(SERVER_LIFETIME_S)
        if name == "line-echo":
            exe = Path(sys.executable).parent / "line-echo"
            base = [str(exe)] if exe.exists() else [sys.executable, "-m", "reactor.service.cli.line_echo"]
            # --backlog: the peers listen with 4,096 (the kernel's somaxconn here), line-echo
            # defaults to 1,024; the same queue for all, or a connect storm judges the backlog
            return [*base, "--port", "0", "--idle-timeout", "0", "--log-level", "warning",
                    "--backlog", "4096",
                    "--stats-socket", str(self.stats_path(name))]
        if name in AIO_PEERS:
            loop, style = AIO_PEERS[name]
            return [sys.executable, str(BENCH_DIR / "aio_echo.py"), "--port", "0",
                    "--loop", loop, "--style", style, "--max-seconds", life]
        if name == "c-echo":
            assert self.echo_bin is not None
            return [str(self.echo_bin), "--port", "0", "--max-seconds", life]
        raise ValueError(name)

    def stats_path(self, name: str) -> Path:
        return self.workdir / f"{name}.stats.sock"

    def start(self, name: str, tls: bool = False) -> Server:
        if name == "py-et":  # takes a port, prints nothing: give it a free one
            assert self.py_et is not None
            port = free_port()
            return Server(name, [sys.executable, str(self.py_et), str(port)], self.server_cpu,
                          self.workdir, port=port)
        stats = self.stats_path(name) if name == "line-echo" else None
        if stats is not None and stats.exists():
            stats.unlink()
        return Server(name, self.server_argv(name, tls), self.server_cpu, self.workdir,
                      stats_path=stats)

    def run_load(self, args: list[str], timeout: float,
                 binary: Path | None = None) -> dict[str, Any]:
        """Run the generator (load.c, or ``binary``: tlsload.c) to completion; its last
        stdout line is the JSON result."""
        if self.server_cpu is not None:
            # Its own core: it may spin there instead of sleeping (see load.c, wait_events).
            args = [*args, "--cores", f"{self.server_cpu},{self.load_cpu}", "--spin", "1"]
        try:
            done = subprocess.run([str(binary or self.load_bin), *args], capture_output=True,
                                  timeout=timeout, preexec_fn=_child_setup(self.load_cpu))
        except subprocess.TimeoutExpired:
            raise HarnessError(f"load generator timed out after {timeout:.0f} s") from None
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        if done.returncode != 0 or not lines:
            raise HarnessError(f"load generator exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-300:]}")
        return json.loads(lines[-1])


def free_port() -> int:
    """A port nobody listens on now (the peer binds it with SO_REUSEADDR right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_py_et(override: str | None) -> tuple[Path | None, str]:
    """py_et_echo.py from --py-et, $BENCH_PY_ET or beside the clone; else why not."""
    where = override or os.environ.get(PY_ET_ENV)
    path = Path(where) if where else PY_ET_DEFAULT
    if path.is_dir():
        path = path / "py_et_echo.py"
    if not path.is_file():
        how = "--py-et" if override else (f"${PY_ET_ENV}" if where else "the default place")
        return None, (f"py_et_echo.py not found at {path} ({how}; the shared bench peers "
                      f"live in ../shared/bench beside the clone, or set --py-et PATH)")
    if not (path.parent / "_common.py").is_file():
        return None, f"{path.parent / '_common.py'} missing (py_et_echo.py imports it)"
    return path, ""


def compile_c(cc: str, source: Path, out: Path, libs: tuple[str, ...] = ()) -> str | None:
    """Compile ``source`` (linked with ``libs``); None on success, else the complaint.
    load.c and tlsload.c both ``#include "common.h"``, which cc finds beside the source
    (tools/bench/), so no -I is needed."""
    done = subprocess.run([cc, "-O2", "-o", str(out), str(source), *libs], capture_output=True,
                          timeout=120)
    if done.returncode != 0:
        return done.stderr.decode(errors="replace")[-500:]
    return None


def setup_env(wanted: list[str], workdir: Path, py_et: str | None = None,
              tcpkali: str | None = None, tls: bool = False) -> Env:
    """Compile the generators, find the peers. ``tls``: the TLS workloads were asked for,
    so compile tlsload.c over OpenSSL (without its headers they are skipped, with a note)."""
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
    if tcpkali is not None:
        kali = Path(tcpkali) if tcpkali else TCPKALI_DEFAULT
        if os.access(kali, os.X_OK):
            env.tcpkali = kali
        else:
            env.notes.append(f"tcpkali cross-check skipped: {kali} is not an executable "
                             "(build it with ../shared/bench/build-tcpkali.sh)")
    if tls:
        tls_bin = workdir / "tlsload"
        err = compile_c(cc, BENCH_DIR / "tlsload.c", tls_bin, ("-lssl", "-lcrypto"))
        if err:
            first = next((ln for ln in err.splitlines() if "error" in ln), err.splitlines()[0])
            env.tls_skipped = ("TLS workloads skipped: tools/bench/tlsload.c did not compile "
                               f"(OpenSSL's headers and libraries, e.g. libssl-dev): {first}")
            env.notes.append(env.tls_skipped)
        elif not all((CERT_DIR / f).is_file() for f in ("server.pem", "server.key", "ca.pem")):
            env.tls_skipped = f"TLS workloads skipped: the test certificates are not in {CERT_DIR}"
            env.notes.append(env.tls_skipped)
        else:
            env.tls_bin = tls_bin
    for name in wanted:
        if name == "py-et":
            env.py_et, why = find_py_et(py_et)
            if env.py_et is None:
                env.skipped[name] = why
                continue
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


def noise_warnings(out: dict[str, Any]) -> list[str]:
    """A warning if other tasks (or steal) took more than NOISY_PCT of the pinned cores
    during the window (load.c and tlsload.c report both with --cores)."""
    other = max(out.get("other_on_server_core_pct", 0), out.get("other_on_load_core_pct", 0))
    load = other + out.get("steal_pct", 0)
    return [f"noisy: {load:.0f}% other load on the cores"] if load > NOISY_PCT else []


def service_notes(out: dict[str, Any], conns: int) -> list[str]:
    """What a stream's connections went without: kept, served at all, anything echoed."""
    notes = []
    if out["dropped"]:
        notes.append(f"{out['dropped']}/{conns} dropped")
    if out["starved"]:
        notes.append(f"{out['starved']}/{conns} never served")
    if out["lines"] <= 0:
        notes.append("nothing echoed in the window")
    return notes


def stream_checks(out: dict[str, Any], conns: int) -> dict[str, Any]:
    """What the generator saw: bytes, connections, service (notes); other load (warnings)."""
    notes = []
    if out["mismatches"]:
        notes.append(f"BAD BYTES x{out['mismatches']}")
    if out["connect_failed"]:
        notes.append(f"{out['connect_failed']}/{conns} connects failed")
    notes += service_notes(out, conns)
    return {"verified": not notes, "notes": notes, "warnings": noise_warnings(out),
            "bytes_ok": not out["mismatches"]}
