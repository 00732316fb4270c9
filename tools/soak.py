#!/usr/bin/env python3
"""Soak line-echo: hold N connections with random pipelined traffic, RSTs, half-closes and
reconnects for a given time, check every echoed byte, and report what was lost or corrupted.

    .venv/bin/python tools/soak.py                            # 10,000 connections, 600 s
    .venv/bin/python tools/soak.py --conns 2000 --duration 60 --json soak.json
    .venv/bin/python tools/soak.py --port 9000 --stats-socket /tmp/echo.sock  # a running daemon

Without ``--port`` it starts its own line-echo (the console script of this venv, ``--port 0``,
a stats socket in a temporary directory), pinned to the first CPU, with the clients on the
others. ``--procs`` client processes (epoll, non-blocking sockets) each hold their share of
the connections; every connection runs a random script (pipelined lines of 1 byte to ~60 KB,
random bytes with NUL and invalid UTF-8, written in random-sized chunks that split lines)
and ends in one fault chosen at random: an RST in the middle of its pipeline, a half-close
(possibly after a trailing partial line) read to EOF, or a plain close after every echo came
back. A new connection replaces each one that ends, from source addresses spread over
127.0.0.2 and up so that TIME_WAIT does not exhaust the ephemeral ports.

Received bytes must always be a prefix of the bytes sent (checked as they arrive; only the
bytes not yet echoed are kept). A connection that ends gracefully must get everything back:
whatever is missing is *lost*. An RST discards by definition, so there only wrong bytes
(*corrupted*) count. When the time is up every connection half-closes and is read to EOF.

Exit status 0 only if nothing was lost or corrupted, the run completed (the N connections
were held, every client finished, the daemon stayed up) and the daemon's fd count came back
to its baseline; 1 otherwise; 2 for bad arguments. Everything stays on 127.0.0.0/8 and is
bounded in time: SIGALRM here, deadlines and PR_SET_PDEATHSIG in the children.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import errno
import json
import math
import os
import random
import resource
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from childproc import child_setup, fd_count, raise_nofile, status_kb
from reactor.stats import StatsError, read_stats

ROOT = Path(__file__).resolve().parent.parent

HOST = "127.0.0.1"
INFLIGHT_BYTES = 16 << 20  # unechoed bytes all clients together may have queued or in flight
MAX_CONNECTING = 256       # connects in progress per client process (the backlog is 1024)
DRAIN_S = 30.0             # after the run: how long the final half-closes may take
SETTLE_S = 30.0            # waits on the daemon (N held, back to baseline)
FAULTS = ("rst", "half_close", "reconnect")
PING = b"PING\n"  # line-echo's heartbeat (--heartbeat): it comes between whole lines
FAULT_WEIGHTS = (0.3, 0.35, 0.35)

_LINGER_RST = struct.pack("ii", 1, 0)
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    """preexec_fn: die with this script, run on ``cpus``, take the whole fd allowance."""
    return child_setup(cpus)


# ------------------------------------------------------------------------- client

CONNECTING, IDLE, RUNNING, HALF = range(4)


class _Conn:
    """One client connection and its script. ``buf`` holds the bytes sent and not yet echoed
    (``buf[:sent]``) followed by the bytes queued and not yet sent."""

    __slots__ = ("sock", "fd", "serial", "fault", "state", "buf", "sent", "lines_left",
                 "lines_begun", "rst_line", "trailing", "window", "echoed", "in_sendq",
                 "waiting", "write_blocked", "final", "boundary", "ping_got")

    def __init__(self, sock: socket.socket, serial: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.serial = serial
        self.state = CONNECTING
        self.buf = bytearray()
        self.sent = self.lines_begun = self.echoed = 0
        self.lines_left = self.rst_line = self.trailing = self.window = 0
        self.fault = ""
        self.in_sendq = self.waiting = self.write_blocked = self.final = False
        self.boundary = True  # the last byte received ended a line: a PING may come here
        self.ping_got = 0     # bytes of a PING received so far


def _common_prefix(data: bytes, i: int, buf: bytearray, limit: int) -> int:
    """How many bytes of ``data[i:]`` equal the start of ``buf``, at most ``limit``."""
    if data[i:i + limit] == buf[:limit]:
        return limit
    lo, hi = 0, limit  # prefix equality is monotone: binary search for the first difference
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if data[i:i + mid] == buf[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Client:
    """One client process: holds its share of the connections and runs their scripts.

    Talks to the parent with JSON lines on stdout (``ready``, ``progress``, ``done``) and
    takes ``go`` and ``stop DRAIN_S`` on stdin; EOF on stdin means stop now.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.port = cfg["port"]
        self.target = cfg["conns"]
        self.max_line = cfg["max_line"]
        self.budget = cfg["inflight"]
        self.sources = cfg["sources"]
        self.rng = random.Random(cfg["seed"])
        blob = self.rng.randbytes((1 << 20) + 65536).replace(b"\n", b"\x0b")
        self.blob = memoryview(blob)
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.sendq: collections.deque[_Conn] = collections.deque()
        self.blocked: collections.deque[_Conn] = collections.deque()
        self.scratch = bytearray(65536)
        self.scratch_view = memoryview(self.scratch)
        self.queued = 0          # bytes in every buf: unechoed + unsent
        self.connecting = 0
        self.held = 0            # connected and not yet ended
        self.serial = 0
        self.phase = "ramp"      # ramp -> run -> drain
        self.drain_deadline = math.inf
        self.n = collections.Counter()
        self.faults = collections.Counter()
        self.samples: list[dict[str, Any]] = []
        self.connect_errors = collections.Counter()

    # -- messages

    def emit(self, event: str, **kw: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **kw}) + "\n")
        sys.stdout.flush()

    def totals(self) -> dict[str, Any]:
        return {"held": self.held, "counters": dict(self.n), "faults": dict(self.faults),
                "connect_errors": dict(self.connect_errors), "mismatch_samples": self.samples}

    # -- opening

    def open_more(self) -> None:
        while (self.phase != "drain" and self.held + self.connecting < self.target
               and self.connecting < MAX_CONNECTING):
            self.serial += 1
            src = self.sources[self.serial % len(self.sources)]
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((src, 0))
            err = s.connect_ex((HOST, self.port))
            if err not in (0, errno.EINPROGRESS):
                self.connect_failed(s, err)
                if self.n["connect_failed"] > 100 * self.target + 1000:
                    raise RuntimeError(f"connects keep failing: {dict(self.connect_errors)}")
                return
            c = _Conn(s, self.serial)
            self.conns[c.fd] = c
            self.connecting += 1
            self.ep.register(c.fd, select.EPOLLOUT)

    def connect_failed(self, s: socket.socket, err: int) -> None:
        self.n["connect_failed"] += 1
        self.connect_errors[errno.errorcode.get(err, str(err))] += 1
        s.close()

    def connected(self, c: _Conn) -> None:
        self.connecting -= 1
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            del self.conns[c.fd]
            self.connect_failed(c.sock, err)
            return
        self.ep.modify(c.fd, select.EPOLLIN)
        self.n["opened"] += 1
        self.held += 1
        c.state = IDLE
        if self.phase == "run":
            self.start(c)
        elif self.phase == "drain":
            self.finish_up(c)

    def start(self, c: _Conn) -> None:
        """Give ``c`` its script: how many lines, how it ends, how much it may have in flight."""
        rng = self.rng
        c.state = RUNNING
        c.fault = rng.choices(FAULTS, FAULT_WEIGHTS)[0]
        c.lines_left = rng.randint(1, 40) if rng.random() < 0.9 else rng.randint(40, 1000)
        c.window = int(2 ** rng.uniform(10, 18))
        if c.fault == "rst":
            c.rst_line = rng.randint(1, c.lines_left)
        elif c.fault == "half_close" and rng.random() < 0.6:
            c.trailing = max(1, self.line_len() - 1)
        self.schedule(c)

    def line_len(self) -> int:
        """A line's length, newline included: mostly short, sometimes up to ~60 KB."""
        rng = self.rng
        r = rng.random()
        if r < 0.55:
            n = rng.randint(1, 128)
        elif r < 0.90:
            n = rng.randint(129, 4096)
        elif r < 0.99:
            n = rng.randint(4097, 16384)
        else:
            n = rng.randint(16385, 61440)
        return min(n, self.max_line)

    def chunk_len(self) -> int:
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            return rng.randint(1, 512)
        if r < 0.85:
            return rng.randint(513, 16384)
        return rng.randint(16385, 65536)

    def random_bytes(self, n: int) -> memoryview:
        """n random bytes without a newline; never starting with the P of a heartbeat."""
        blob = self.blob
        at = self.rng.randrange(0, len(blob) - n - 4096)
        while blob[at] == 0x50:
            at += 1
        return blob[at:at + n]

    # -- writing

    def schedule(self, c: _Conn) -> None:
        if not c.in_sendq and not c.write_blocked:
            c.in_sendq = True
            self.sendq.append(c)

    def send_pass(self) -> None:
        """One turn (one send of a random size) for each connection queued when the pass began."""
        for _ in range(min(len(self.sendq), 4096)):
            c = self.sendq.popleft()
            c.in_sendq = False
            if c.fd in self.conns and self.conns[c.fd] is c and c.state == RUNNING:
                self.turn(c)

    def turn(self, c: _Conn) -> None:
        want = self.chunk_len()
        buf = c.buf
        while len(buf) - c.sent < want and c.lines_left:
            if len(buf) >= c.window:
                c.waiting = True  # an echo on this connection wakes it
                break
            if self.queued >= self.budget:
                c.waiting = True
                self.blocked.append(c)
                break
            n = self.line_len()
            before = len(buf)
            buf += self.random_bytes(n - 1)
            buf += b"\n"
            self.queued += len(buf) - before
            c.lines_left -= 1
            c.lines_begun += 1
            if not c.lines_left and c.trailing:
                buf += self.random_bytes(c.trailing)
                self.queued += c.trailing
                self.n["trailing_partial_bytes"] += c.trailing
        unsent = len(buf) - c.sent
        if unsent:
            k = min(want, unsent)
            try:
                n = c.sock.send(buf[c.sent:c.sent + k])
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self.unexpected(c, "server_reset" if exc.errno in (errno.ECONNRESET, errno.EPIPE)
                                else "send_error")
                return
            c.sent += n
            self.n["bytes_sent"] += n
            if n < k:
                c.write_blocked = True
                self.ep.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)
                return
        if c.fault == "rst" and not c.final and c.lines_begun >= c.rst_line:
            self.faults["rst"] += 1
            self.n["bytes_discarded_by_rst"] += c.sent
            self.end(c, rst=True)
            return
        if c.sent == len(buf) and not c.lines_left:
            self.script_done(c)
        elif c.sent < len(buf) or not c.waiting:
            self.schedule(c)

    def script_done(self, c: _Conn) -> None:
        """Everything is sent: half-close, or wait for the last echo and close."""
        if c.fault == "reconnect" and not c.final:
            if not c.buf:
                self.faults["reconnect"] += 1
                self.end(c)
            return  # the last echo ends it
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.unexpected(c, "server_reset")
            return
        c.state = HALF
        if not c.final:
            self.faults["half_close"] += 1
            if c.trailing:
                self.faults["half_close_partial"] += 1

    def writable(self, c: _Conn) -> None:
        c.write_blocked = False
        self.ep.modify(c.fd, select.EPOLLIN)
        self.schedule(c)

    # -- reading

    def readable(self, c: _Conn) -> None:
        try:
            n = c.sock.recv_into(self.scratch)
        except BlockingIOError:
            return
        except OSError as exc:
            self.unexpected(c, "server_reset" if exc.errno == errno.ECONNRESET else "recv_error")
            return
        if not n:
            self.eof(c)
            return
        data = self.scratch_view[:n]
        if n <= c.sent and not c.ping_got and c.buf.startswith(data):
            self.verified(c, n)
            c.boundary = self.scratch[n - 1] == 10
        elif not self.verify_slowly(c, bytes(data)):
            return
        if c.waiting:
            c.waiting = False
            self.schedule(c)
        if (c.state == RUNNING and not c.buf and not c.lines_left and c.fault == "reconnect"
                and not c.final):
            self.faults["reconnect"] += 1
            self.end(c)

    def verified(self, c: _Conn, n: int) -> None:
        del c.buf[:n]
        c.sent -= n
        c.echoed += n
        self.queued -= n
        self.n["bytes_verified"] += n

    def verify_slowly(self, c: _Conn, data: bytes) -> bool:
        """Echoes with heartbeats among them (``PING\\n`` comes only where a line ended, and no
        line we send starts with P), or wrong bytes. False if the connection was aborted."""
        i, n = 0, len(data)
        while i < n:
            if c.ping_got:
                k = min(len(PING) - c.ping_got, n - i)
                if data[i:i + k] != PING[c.ping_got:c.ping_got + k]:
                    self.mismatch(c, data, i)
                    return False
                c.ping_got += k
                i += k
                if c.ping_got == len(PING):
                    c.ping_got = 0
                    self.n["pings"] += 1
                continue
            m = _common_prefix(data, i, c.buf, min(n - i, c.sent))
            if m:
                self.verified(c, m)
                i += m
                c.boundary = data[i - 1] == 10
            elif c.boundary and data[i] == PING[0]:
                c.ping_got = 1
                i += 1
            else:
                self.mismatch(c, data, i)
                return False
        return True

    def mismatch(self, c: _Conn, data: bytes, at: int) -> None:
        """Wrong bytes from ``data[at]`` on: count them, keep a sample, abort."""
        self.n["bytes_corrupted"] += len(data) - at
        self.n["bytes_abandoned"] += c.sent  # sent, not yet checked: neither lost nor verified
        self.n["mismatches"] += 1
        if data[at:].startswith(b"ERR "):
            self.n["err_lines"] += 1
        if len(self.samples) < 5:
            self.samples.append({
                "conn": c.serial, "offset": c.echoed, "sent_unechoed": c.sent,
                "expected": bytes(c.buf[:24]).hex(), "got": data[at:at + 48].hex(),
                "got_text": data[at:at + 48].decode("latin-1")})
        self.end(c, rst=True)

    def eof(self, c: _Conn) -> None:
        if c.state != HALF:
            self.unexpected(c, "server_closed")
            return
        if c.buf:
            self.n["bytes_lost"] += len(c.buf)
            self.n["short_at_eof"] += 1
        self.n["closed_at_end" if c.final else "graceful_eof"] += 1
        self.end(c)

    def unexpected(self, c: _Conn, what: str) -> None:
        """The server closed or reset a connection we did not end: what it had not echoed is lost."""
        self.n[what] += 1
        self.n["bytes_lost"] += c.sent
        self.end(c, rst=True)

    # -- ending

    def end(self, c: _Conn, rst: bool = False) -> None:
        if rst:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        del self.conns[c.fd]
        c.sock.close()  # also takes it out of the epoll set
        self.queued -= len(c.buf)
        c.buf = bytearray()
        self.held -= 1

    def finish_up(self, c: _Conn) -> None:
        """Drain phase: no more lines and no more faults; send what is queued, then half-close."""
        c.final = True
        c.lines_left = 0
        c.trailing = 0
        if c.state == IDLE:
            c.state = RUNNING
        if c.state == RUNNING:
            if c.sent == len(c.buf):
                self.script_done(c)
            else:
                self.schedule(c)

    def drain(self, seconds: float) -> None:
        self.phase = "drain"
        self.drain_deadline = time.monotonic() + seconds
        self.blocked.clear()
        for c in list(self.conns.values()):
            if c.state == CONNECTING:
                self.connecting -= 1
                del self.conns[c.fd]
                c.sock.close()
            else:
                self.finish_up(c)

    # -- the loop

    def command(self, line: str) -> None:
        words = line.split()
        if not words or words[0] == "stop":
            if self.phase != "drain":
                self.drain(float(words[1]) if len(words) > 1 else 0.0)
        elif words[0] == "go" and self.phase == "ramp":
            self.phase = "run"
            for c in list(self.conns.values()):
                if c.state == IDLE:
                    self.start(c)

    def run(self) -> int:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.ep.register(stdin, select.EPOLLIN)
        pending_cmd = b""
        ready_sent = False
        next_report = time.monotonic() + 1.0
        conns = self.conns
        EPOLLOUT, EPOLLIN = select.EPOLLOUT, select.EPOLLIN
        while True:
            events = self.ep.poll(0 if self.sendq else 0.05, 4096)
            for fd, ev in events:
                c = conns.get(fd)
                if c is None:
                    if fd == stdin:
                        data = os.read(stdin, 4096)
                        if not data:
                            self.ep.unregister(stdin)
                            data = b"stop\n"
                        pending_cmd += data
                        while b"\n" in pending_cmd:
                            line, pending_cmd = pending_cmd.split(b"\n", 1)
                            self.command(line.decode())
                    continue
                if c.state == CONNECTING:
                    self.connected(c)
                    continue
                if ev & ~EPOLLOUT:
                    self.readable(c)
                if ev & EPOLLOUT and c.write_blocked and conns.get(fd) is c:
                    self.writable(c)
            while self.blocked and self.queued < self.budget:
                c = self.blocked.popleft()
                c.waiting = False
                self.schedule(c)
            self.send_pass()
            self.open_more()
            if not ready_sent and self.held >= self.target:
                ready_sent = True
                self.emit("ready", held=self.held)
            now = time.monotonic()
            if now >= next_report:
                next_report = now + 1.0
                self.emit("progress", **self.totals())
            if self.phase == "drain" and (not conns or now > self.drain_deadline):
                for c in list(conns.values()):
                    self.n["drain_timeouts"] += 1
                    self.n["bytes_lost"] += c.sent
                    self.end(c, rst=True)
                self.emit("done", **self.totals())
                return 0


def client_main(cfg: dict[str, Any]) -> int:
    raise_nofile()
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    signal.alarm(int(cfg["max_seconds"]) + 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    return Client(cfg).run()


# ------------------------------------------------------------------------- parent

class SoakError(Exception):
    """The run could not go on; ``str(exc)`` says why in one line."""


class _Timeout(BaseException):
    pass


def _proc_fds(pids: list[int]) -> int | None:
    if not pids:
        return None
    try:
        return sum(fd_count(p) for p in pids)
    except OSError:
        return None


def _proc_rss(pids: list[int]) -> int | None:
    if not pids:
        return None
    total = 0
    try:
        for p in pids:
            total += status_kb(p, "VmRSS")
    except (OSError, KeyError):
        return None
    return total * 1024


def _wait_until(predicate: Callable[[], Any], timeout: float, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(poll_s)


class _ClientProc:
    def __init__(self, index: int, cfg: dict[str, Any], cpus: set[int] | None) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--client", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
            preexec_fn=_child_setup(cpus))
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.partial = b""
        self.ready = False
        self.eof = False
        self.last: dict[str, Any] = {"held": 0, "counters": {}, "faults": {}}
        self.done: dict[str, Any] | None = None

    def read(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        self.partial += data
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if msg["event"] == "ready":
                self.ready = True
            elif msg["event"] in ("progress", "done"):
                self.last = msg
                if msg["event"] == "done":
                    self.done = msg

    def tell(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f:
                    f.close()
            except BrokenPipeError:
                pass


class Soak:
    """One soak run: the daemon, the client processes, the samples and the result."""

    def __init__(self, a: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> None:
        self.a = a
        self.workdir = workdir
        self.log = log
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_stderr: Path | None = None
        self.port = a.port
        self.stats_path = a.stats_socket
        self.clients: list[_ClientProc] = []
        self.failures: list[str] = []
        self.held_samples: list[int] = []
        self.daemon_samples: list[int] = []
        self.lag_samples: list[float] = []
        self.timeline: list[list[Any]] = []  # [s since go, held, daemon conns, lag p99, rss, fds]
        self.t_go = 0.0
        self.stats_errors = 0
        self.docs: dict[str, dict[str, Any] | None] = {"baseline": None, "start": None,
                                                        "end_of_traffic": None, "end": None}
        self.fds: dict[str, int | None] = {"baseline": None, "start": None, "end": None}
        self.rss: dict[str, int | None] = {"baseline": None, "start": None, "end": None}
        self.pids: list[int] = []
        self.completed = False
        self.traffic_s = 0.0
        self.started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        cpus = sorted(os.sched_getaffinity(0))
        pin = a.port is None and a.workers == 1 and len(cpus) >= 2
        self.daemon_cpus = {cpus[0]} if pin else None
        self.client_cpus = set(cpus[1:]) if pin else None

    # -- the daemon

    def stats(self) -> dict[str, Any] | None:
        if not self.stats_path:
            return None
        try:
            return read_stats(self.stats_path, timeout_s=2.0)
        except StatsError as exc:
            self.stats_errors += 1
            self.log(f"soak: {exc}")
            return None

    def start_daemon(self) -> None:
        exe = Path(sys.executable).parent / "line-echo"
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "reactor.cli.line_echo"]
        self.stats_path = str(self.workdir / "stats.sock")
        self.daemon_stderr = self.workdir / "line-echo.stderr"
        argv = [*base, "--port", "0", "--stats-socket", self.stats_path, "--log-level", "warning",
                "--workers", str(self.a.workers), "--max-line", str(self.a.max_line),
                "--heartbeat", str(self.a.heartbeat)]
        with open(self.daemon_stderr, "wb") as err:
            self.daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                           stdin=subprocess.DEVNULL, cwd=ROOT,
                                           preexec_fn=_child_setup(self.daemon_cpus))
        assert self.daemon.stdout is not None
        fd = self.daemon.stdout.fileno()
        line = b""
        deadline = time.monotonic() + 15
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(fd, 1)
                if not chunk:
                    break
                line += chunk
        text = line.decode(errors="replace").strip()
        if not text.startswith("listening on "):
            raise SoakError(f"line-echo did not start: {text!r} {self.daemon_tail()}")
        self.port = int(text.rsplit(":", 1)[1])

    def daemon_tail(self, n: int = 600) -> str:
        try:
            return self.daemon_stderr.read_text(errors="replace")[-n:].strip()  # type: ignore[union-attr]
        except (OSError, AttributeError):
            return ""

    def daemon_warnings(self) -> list[str]:
        lines = self.daemon_tail(1 << 20).splitlines()
        return [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]

    def daemon_alive(self) -> bool:
        return self.daemon is None or self.daemon.poll() is None

    def stop_daemon(self) -> None:
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                self.failures.append("line-echo did not exit within 20 s of SIGTERM")
                self.daemon.kill()
                self.daemon.wait()
        if self.daemon.stdout:
            self.daemon.stdout.close()

    def warm(self) -> None:
        """One line, then FIN, read to EOF: the daemon answers, and its lazy allocations happen
        before the baseline."""
        sent = b"soak warm-up\n"
        try:
            with socket.create_connection((HOST, self.port), timeout=10) as s:
                s.sendall(sent)
                s.shutdown(socket.SHUT_WR)
                got = b"".join(iter(lambda: s.recv(4096), b""))
        except OSError as exc:
            raise SoakError(f"cannot talk to line-echo on {HOST}:{self.port}: {exc}") from None
        if got != sent:
            raise SoakError(f"the warm-up exchange came back as {got!r}")

    def find_pids(self, doc: dict[str, Any] | None) -> list[int]:
        if doc is None:
            return [self.daemon.pid] if self.daemon else []
        return [doc["pid"], *(w["pid"] for w in doc.get("workers", []) if w.get("pid"))]

    def daemon_connections(self) -> int | None:
        doc = self.stats()
        return None if doc is None else doc.get("connections")

    def settled_fds(self) -> int | None:
        """The daemon's fd count once it stops changing (a stats reader's fd closes just after)."""
        last = _proc_fds(self.pids)
        deadline = time.monotonic() + 5
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = _proc_fds(self.pids)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= 0.3:
                break
        return last

    # -- phases

    def baseline(self) -> None:
        self.warm()
        _wait_until(lambda: self.daemon_connections() in (0, None), 10)
        doc = self.stats()
        self.docs["baseline"] = doc
        self.pids = self.find_pids(doc)
        self.fds["baseline"] = self.settled_fds()
        self.rss["baseline"] = _proc_rss(self.pids)

    def spawn_clients(self, max_seconds: float) -> None:
        a = self.a
        per = [a.conns // a.procs + (i < a.conns % a.procs) for i in range(a.procs)]
        budget = max(1 << 20, INFLIGHT_BYTES // a.procs)
        for i, n in enumerate(per):
            sources = [f"127.0.0.{2 + i * a.src_addrs + j}" for j in range(a.src_addrs)]
            cfg = {"index": i, "port": self.port, "conns": n, "max_line": a.max_line,
                   "seed": a.seed * 1000 + i, "sources": sources, "inflight": budget,
                   "max_seconds": max_seconds}
            self.clients.append(_ClientProc(i, cfg, self.client_cpus))

    def pump(self, timeout: float) -> None:
        """Read what the clients said, waiting at most ``timeout``; a client that dies fails the run."""
        fds = {c.fd: c for c in self.clients if not c.eof}
        if not fds:
            time.sleep(timeout)
            return
        for fd in select.select(list(fds), [], [], max(0.0, timeout))[0]:
            fds[fd].read()
        for c in self.clients:
            if c.eof and c.done is None:
                raise SoakError(f"client {c.index} exited ({c.proc.wait()}) before it finished")

    def ramp(self, timeout: float) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not all(c.ready for c in self.clients):
            if time.monotonic() > deadline:
                held = sum(c.last["held"] for c in self.clients)
                raise SoakError(f"only {held} of {self.a.conns} connections established "
                                f"within {timeout:.0f} s")
            self.pump(0.2)
        if self.stats_path:
            got = _wait_until(lambda: (self.daemon_connections() or 0) >= self.a.conns,
                              SETTLE_S, 0.2)
            if not got:
                raise SoakError(f"the daemon holds {self.daemon_connections()} of "
                                f"{self.a.conns} connections after {SETTLE_S:.0f} s")
        self.log(f"soak: {self.a.conns} connections held after {time.monotonic() - t0:.1f} s")
        self.docs["start"] = self.stats()
        self.fds["start"] = _proc_fds(self.pids)
        self.rss["start"] = _proc_rss(self.pids)

    def traffic(self) -> None:
        for c in self.clients:
            c.tell("go")
        t0 = self.t_go = time.monotonic()
        end = t0 + self.a.duration
        next_sample = t0 + 1.0
        next_log = t0 + 10.0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            self.pump(min(next_sample, end) - now)
            if not self.daemon_alive():
                raise SoakError(f"line-echo exited ({self.daemon.returncode}) during the run: "  # type: ignore[union-attr]
                                f"{self.daemon_tail()}")
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + 1.0
                self.sample()
            if now >= next_log:
                next_log = now + 10.0
                self.log(self.progress_line(now - t0))
        self.traffic_s = time.monotonic() - t0
        self.docs["end_of_traffic"] = self.stats()

    def sample(self) -> None:
        held = sum(c.last["held"] for c in self.clients)
        self.held_samples.append(held)
        doc = self.stats()
        if doc is not None:
            self.daemon_samples.append(doc["connections"])
            self.lag_samples.append(doc["lag"]["p99_s"])
        self.timeline.append([round(time.monotonic() - self.t_go, 1), held,
                              doc and doc["connections"], doc and doc["lag"]["p99_s"],
                              _proc_rss(self.pids), _proc_fds(self.pids)])

    def progress_line(self, elapsed: float) -> str:
        t = self.client_totals()
        n, f = t["counters"], t["faults"]
        return (f"soak: {elapsed:.0f}/{self.a.duration:g} s  held {t['held']}  "
                f"verified {_size(n.get('bytes_verified', 0))}  "
                f"rst {f.get('rst', 0)} half_close {f.get('half_close', 0)} "
                f"reconnect {f.get('reconnect', 0)}  lost {n.get('bytes_lost', 0)} "
                f"corrupted {n.get('bytes_corrupted', 0)}")

    def drain(self) -> None:
        for c in self.clients:
            c.tell(f"stop {DRAIN_S}")
        deadline = time.monotonic() + DRAIN_S + 15
        while not all(c.done for c in self.clients):
            if time.monotonic() > deadline:
                raise SoakError("the clients did not finish their final half-closes in time")
            self.pump(0.2)
        for c in self.clients:
            try:
                c.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def back_to_baseline(self) -> None:
        if self.stats_path:
            if not _wait_until(lambda: self.daemon_connections() == 0, SETTLE_S, 0.1):
                left = self.daemon_connections()
                self.failures.append(
                    f"the daemon still holds {left} connections {SETTLE_S:.0f} s after the "
                    "clients left" if left is not None else "the stats socket stopped answering")
        base = self.fds["baseline"]
        if base is not None:
            _wait_until(lambda: (_proc_fds(self.pids) or 0) <= base, SETTLE_S)
        self.docs["end"] = self.stats()
        self.fds["end"] = self.settled_fds() if base is not None else None
        self.rss["end"] = _proc_rss(self.pids)

    def run(self, ramp_s: float, max_seconds: float) -> None:
        try:
            if self.port is None:
                self.start_daemon()
            self.baseline()
            self.log(f"soak: line-echo on {HOST}:{self.port} (pids {self.pids}); opening "
                     f"{self.a.conns} connections from {self.a.procs} client processes")
            self.spawn_clients(max_seconds)
            self.ramp(ramp_s)
            self.traffic()
            self.drain()
            self.back_to_baseline()
            self.completed = True
        except SoakError as exc:
            self.failures.append(str(exc))
        except _Timeout:
            self.failures.append(f"the whole run exceeded its bound of {max_seconds:.0f} s")
        except KeyboardInterrupt:
            self.failures.append("interrupted")
        finally:
            for c in self.clients:
                if c.done is None and not c.eof:
                    try:
                        c.read()
                    except (OSError, ValueError):
                        pass
                c.kill()
            if not self.daemon_alive():
                self.completed = False
                self.failures.append(f"line-echo exited ({self.daemon.returncode}) before "  # type: ignore[union-attr]
                                     f"the end: {self.daemon_tail()}")
            self.stop_daemon()

    # -- the result

    def client_totals(self) -> dict[str, Any]:
        counters: collections.Counter[str] = collections.Counter()
        faults: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        samples: list[Any] = []
        held = 0
        for c in self.clients:
            msg = c.done or c.last
            counters.update(msg.get("counters", {}))
            faults.update(msg.get("faults", {}))
            errors.update(msg.get("connect_errors", {}))
            samples += msg.get("mismatch_samples", [])
            held += msg.get("held", 0)
        return {"held": held, "counters": dict(counters), "faults": dict(faults),
                "connect_errors": dict(errors), "mismatch_samples": samples}

    def result(self, argv: list[str]) -> dict[str, Any]:
        a = self.a
        t = self.client_totals()
        n, f = t["counters"], t["faults"]
        lost = n.get("bytes_lost", 0)
        corrupted = n.get("bytes_corrupted", 0)
        base_fd, end_fd = self.fds["baseline"], self.fds["end"]
        fd_back = None if base_fd is None or end_fd is None else end_fd <= base_fd
        failures = list(self.failures)
        if lost:
            failures.append(f"{lost} bytes lost")
        if corrupted:
            failures.append(f"{corrupted} bytes corrupted")
        discarded, abandoned = n.get("bytes_discarded_by_rst", 0), n.get("bytes_abandoned", 0)
        accounted = n.get("bytes_sent", 0) == (n.get("bytes_verified", 0) + lost + discarded
                                              + abandoned)
        if self.completed and not accounted:
            failures.append("bytes sent != verified + lost + discarded by RSTs + abandoned "
                            "(a bookkeeping bug in the soak)")
        if self.completed and fd_back is False:
            failures.append(f"the daemon's fds did not come back to baseline ({end_fd} > {base_fd})")
        first, last = self.docs["start"], self.docs["end_of_traffic"]
        timers_fired = (last["timers"]["expired"] - first["timers"]["expired"]
                        if first and last else None)
        end_doc = self.docs["end"] or last
        base_doc = self.docs["baseline"]
        closed = None
        if end_doc and base_doc:
            closed = {k: v - base_doc["closed"].get(k, 0) for k, v in end_doc["closed"].items()
                      if v - base_doc["closed"].get(k, 0)}

        def stat(xs: list[Any], fn: Callable[[list[Any]], Any]) -> Any:
            return fn(xs) if xs else None

        return {
            "tool": "soak", "version": 1, "argv": argv,
            "date": self.started,
            "config": {"conns": a.conns, "duration_s": a.duration, "procs": a.procs,
                       "seed": a.seed, "workers": a.workers, "max_line": a.max_line,
                       "heartbeat_s": a.heartbeat if self.daemon is not None else None,
                       "src_addrs": a.src_addrs, "port": self.port,
                       "own_daemon": self.daemon is not None,
                       "daemon_cpus": sorted(self.daemon_cpus or []),
                       "client_cpus": sorted(self.client_cpus or [])},
            "completed": self.completed, "passed": not failures, "failures": failures,
            "traffic_s": round(self.traffic_s, 1),
            "connections": {
                "target": a.conns,
                "held_min": stat(self.held_samples, min),
                "held_avg": stat(self.held_samples, lambda x: round(statistics.fmean(x), 1)),
                "daemon_min": stat(self.daemon_samples, min),
                "daemon_avg": stat(self.daemon_samples, lambda x: round(statistics.fmean(x), 1)),
                "samples": len(self.held_samples),
                "opened_total": n.get("opened", 0),
                "connect_failed": n.get("connect_failed", 0),
                "connect_errors": t["connect_errors"],
            },
            "bytes": {"sent": n.get("bytes_sent", 0), "verified": n.get("bytes_verified", 0),
                      "lost": lost, "corrupted": corrupted, "discarded_by_rst": discarded,
                      "abandoned_after_mismatch": abandoned, "accounted": accounted,
                      "trailing_partial": n.get("trailing_partial_bytes", 0)},
            "faults": {k: f.get(k, 0) for k in (*FAULTS, "half_close_partial")},
            "unexpected": {k: n.get(k, 0) for k in (
                "server_closed", "server_reset", "send_error", "recv_error", "mismatches",
                "err_lines", "short_at_eof", "drain_timeouts")},
            "pings": n.get("pings", 0),
            "closed_at_end": n.get("closed_at_end", 0),
            "mismatch_samples": t["mismatch_samples"],
            "daemon": {
                "pids": self.pids, "fds": self.fds,
                "rss_bytes": {**self.rss, "max_during_traffic": stat(
                    [x[4] for x in self.timeline if x[4] is not None], max)},
                "fd_back_to_baseline": fd_back,
                "lag_p99_s": {"max": stat(self.lag_samples, max),
                              "median": stat(self.lag_samples, statistics.median),
                              "end_of_traffic": last["lag"]["p99_s"] if last else None,
                              "samples": len(self.lag_samples)},
                "timers_fired_during_traffic": timers_fired,
                "closed_by_reason": closed,
                "pool": end_doc["chunks"] if end_doc else None,
                "stats_errors": self.stats_errors,
                "warnings": self.daemon_warnings()[:10],
            },
            "timeline": {"columns": ["s", "held", "daemon_connections", "lag_p99_s", "rss_bytes",
                                     "fds"], "rows": self.timeline},
        }


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _na(x: Any) -> Any:
    return "n/a" if x is None else x


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1000:.1f} ms"


def report(r: dict[str, Any]) -> str:
    c, b, f, u, d = r["connections"], r["bytes"], r["faults"], r["unexpected"], r["daemon"]
    cfg = r["config"]
    fds, rss, lag = d["fds"], d["rss_bytes"], d["lag_p99_s"]
    back = {True: "back to baseline", False: "NOT back to baseline", None: "n/a"}
    if not lag["samples"]:
        lag_line = "n/a: no stats socket"
    elif d["timers_fired_during_traffic"] == 0:
        lag_line = ("n/a: no timer fired during the traffic, so the stats document's lag has "
                    "no samples (start line-echo with --heartbeat)")
    else:
        lag_line = (f"max {_ms(lag['max'])}  median {_ms(lag['median'])}  end of traffic "
                    f"{_ms(lag['end_of_traffic'])}  ({lag['samples']} samples, 1/s, each over "
                    f"the last 1,024 timer fires; {_na(d['timers_fired_during_traffic'])} fired)")
    lines = [
        f"soak {r['date']}: line-echo {HOST}:{cfg['port']} ("
        f"{'started here' if cfg['own_daemon'] else 'already running'}, pids "
        f"{d['pids'] or 'unknown'}), {cfg['conns']} connections from {cfg['procs']} client "
        f"processes, {r['traffic_s']:g} s of traffic, seed {cfg['seed']}",
        f"connections held    target {c['target']}  clients min {_na(c['held_min'])} avg "
        f"{_na(c['held_avg'])}  daemon min {_na(c['daemon_min'])} avg {_na(c['daemon_avg'])}  "
        f"({c['samples']} samples, 1/s)",
        f"connections opened  {c['opened_total']} in total  connect failures "
        f"{c['connect_failed']} {c['connect_errors'] or ''}".rstrip(),
        f"bytes sent          {b['sent']} ({_size(b['sent'])}): verified + lost + "
        f"{b['discarded_by_rst']} discarded by RSTs + {b['abandoned_after_mismatch']} abandoned "
        f"after mismatches {'= sent' if b['accounted'] else '!= sent (a soak bug)'}",
        f"bytes verified      {b['verified']} ({_size(b['verified'])}) echoed and checked, "
        f"{_size(b['verified'] / max(r['traffic_s'], 0.1))}/s",
        f"faults injected     rst {f['rst']}  half_close {f['half_close']} (with a trailing "
        f"partial line {f['half_close_partial']})  reconnect {f['reconnect']}",
        f"lost bytes          {b['lost']}",
        f"corrupted bytes     {b['corrupted']}",
        f"unexpected          server closes {u['server_closed']}  server resets "
        f"{u['server_reset']}  mismatches {u['mismatches']}  ERR lines {u['err_lines']}  "
        f"drain timeouts {u['drain_timeouts']}  (heartbeats received {r['pings']})",
        f"daemon fds          baseline {_na(fds['baseline'])}  start {_na(fds['start'])}  "
        f"end {_na(fds['end'])} "
        f"({back[d['fd_back_to_baseline']]})",
        f"daemon rss          baseline {_size(rss['baseline'])}  start {_size(rss['start'])}  "
        f"max during traffic {_size(rss['max_during_traffic'])}  end {_size(rss['end'])}",
        f"loop lag p99        {lag_line}",
    ]
    if d["closed_by_reason"]:
        lines.append("daemon closes       " + "  ".join(
            f"{k} {v}" for k, v in sorted(d["closed_by_reason"].items())))
    if d["pool"]:
        p = d["pool"]
        lines.append(f"daemon pool         high water {p['high_water']} of {p['chunks_total']} "
                     f"chunks  exhausted {p['exhausted_total']}  overflow {p['overflow_total']}  "
                     f"in use at end {p['chunks_in_use']}")
    for w in d["warnings"]:
        lines.append(f"daemon log          {w[:160]}")
    for s in r["mismatch_samples"]:
        lines.append(f"mismatch            conn {s['conn']} at byte {s['offset']}: expected "
                     f"{s['expected'][:32]}... got {s['got_text'][:40]!r}")
    lines.append("verdict             " + ("PASS" if r["passed"] else
                                           "FAIL: " + "; ".join(r["failures"])))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=10000, help="connections held (default 10000)")
    p.add_argument("--duration", type=float, default=600.0,
                   help="seconds of traffic once they are held (default 600)")
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="line-echo --workers for the daemon started here (default 1)")
    p.add_argument("--max-line", type=int, default=65536,
                   help="the daemon's --max-line; lines stay under it (default 65536)")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="SEC",
                   help="line-echo --heartbeat for the daemon started here: its timers are what "
                        "the loop lag is measured on; 0 = off (default 1)")
    p.add_argument("--port", type=int,
                   help="soak a line-echo already running on 127.0.0.1:PORT instead")
    p.add_argument("--stats-socket", metavar="PATH",
                   help="with --port: its stats socket (daemon pid, fds, RSS, loop lag)")
    p.add_argument("--src-addrs", type=int, default=8,
                   help="source addresses per client process, from 127.0.0.2 up (default 8)")
    p.add_argument("--json", metavar="PATH", help="write the result as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if a.conns < 1 or a.procs < 1 or a.procs > a.conns:
        p.error("--conns and --procs must be at least 1, with --procs <= --conns")
    if math.ceil(a.conns / a.procs) > hard - 64:
        p.error(f"{math.ceil(a.conns / a.procs)} connections per client process exceed the fd "
                f"limit {hard}: use more --procs")
    if not 0 < a.duration < 86400 or a.workers < 1 or a.max_line < 2 or a.heartbeat < 0:
        p.error("--duration must be in (0, 86400), --workers >= 1, --max-line >= 2, "
                "--heartbeat >= 0")
    if a.src_addrs < 1 or a.procs * a.src_addrs > 250:
        p.error("--src-addrs must be >= 1 and --procs x --src-addrs <= 250 (127.0.0.2-251)")
    if a.port is not None and not 0 < a.port < 65536:
        p.error("--port must be in 1..65535")
    if a.stats_socket and a.port is None:
        p.error("--stats-socket goes with --port (a daemon started here has its own)")
    return a


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--client":
        return client_main(json.loads(sys.argv[2]))
    a = parse_args(argv)
    raise_nofile()
    log = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    ramp_s = 30.0 + a.conns / 200
    max_seconds = 60 + ramp_s + SETTLE_S + a.duration + DRAIN_S + 15 + SETTLE_S + 30

    def timed_out(*_: Any) -> None:
        raise _Timeout()

    signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(int(max_seconds))
    soak: Soak | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            soak = Soak(a, Path(tmp), log)
            if soak.client_cpus:
                os.sched_setaffinity(0, soak.client_cpus)
            soak.run(ramp_s, max_seconds)
            result = soak.result(sys.argv[1:] if argv is None else list(argv))
    finally:
        signal.alarm(0)
    print(report(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
