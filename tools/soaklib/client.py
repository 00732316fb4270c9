"""A soak client process: its share of the connections, their scripts and faults, every byte checked."""

from __future__ import annotations

import collections
import errno
import json
import math
import os
import random
import select
import signal
import socket
import sys
import time
from typing import Any

from childproc import raise_nofile

from .common import FAULTS, FAULT_WEIGHTS, HOST, MAX_CONNECTING, PING, _IP_BIND_ADDRESS_NO_PORT, _LINGER_RST


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
