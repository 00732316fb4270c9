"""One client process: opens its share of the connections, paced, and verifies both rounds.

Started by the parent as ``scale.py --child CONFIG_JSON``. It talks JSON lines on stdout
(``up``, ``progress`` about twice a second, ``established`` once round one has settled,
``done`` with the totals) and takes ``start``, ``go`` (send the second lines) and ``stop``
on stdin; EOF on stdin is ``stop``. Per connection it keeps a socket in a list, one state
byte, one float (when its current phase began) and, rarely, a partial line in a dict: the
lines themselves are made again from (process, index, round) when they are needed.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import select
import signal
import socket
import time
from array import array
from typing import Any

from childproc import die_with_parent, raise_nofile

from .verify import PING, Failure, Scan, failure_of_errno, line, mismatch_kind, scan

# A connection's states, plain ints so that a bytearray holds them (one byte a connection);
# FAILED and DONE are final.
NEW, CONNECTING, AWAIT_FIRST, HELD, AWAIT_SECOND, DONE, FAILED = range(7)
STATE_NAMES = ("new", "connecting", "await_first", "held", "await_second", "done", "failed")
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
BATCH = 256            # connects started per loop turn at most, so reads are not starved
PROGRESS_S = 0.5
MAX_SAMPLES = 3        # mismatch samples kept per process


class Client:
    """The connections of one process and their verification; ``run()`` is its loop."""

    def __init__(self, cfg: dict[str, Any], commands_fd: int = 0, reports_fd: int = 1) -> None:
        self.commands_fd, self.reports_fd = commands_fd, reports_fd
        self.proc = cfg["index"]
        self.first = cfg["first"]
        self.n = n = cfg["count"]
        self.dest = (cfg["host"], cfg["port"])
        self.rate = float(cfg["rate"])              # connects per second, 0 = unpaced
        self.max_pending = cfg["max_pending"]       # connecting or awaiting the first echo
        self.connect_timeout_s = cfg["connect_timeout_s"]
        self.echo_timeout_s = cfg["echo_timeout_s"]
        # Held connections are not read (their epoll interest is none, so only an error or a
        # hang-up wakes the process) until their second line: heartbeats wait in the kernel.
        self.defer_pings = bool(cfg.get("defer_pings"))
        self.segments = collections.deque(tuple(s) for s in cfg["sources"])
        self.sources_used: list[str] = []  # the addresses this process bound to, in order
        self.socks: list[socket.socket | None] = [None] * n
        self.state = bytearray(n)                    # NEW, CONNECTING, ...
        self.in_state = [n, 0, 0, 0, 0, 0, 0]        # how many connections are in each state
        self.since = array("d", bytes(8 * n))        # when its current phase began
        self.by_fd: dict[int, int] = {}
        self.partial: dict[int, bytes] = {}          # a partial line received, rarely any
        # Started in order with one timeout each, so their deadlines come in order too.
        self.connect_q: collections.deque[int] = collections.deque()
        self.echo_q: collections.deque[int] = collections.deque()
        self.failures: collections.Counter[str] = collections.Counter()
        self.errnos: collections.Counter[str] = collections.Counter()
        self.samples: list[dict[str, Any]] = []
        self.next_i = 0
        self.go_i = 0  # the next connection to send its second line (the "final" phase)
        self.t_go = 0.0
        self.established = self.verified = self.pings = 0
        self.t_start = self.t_established = self.t_done = 0.0
        self.phase = "wait"  # -> ramp -> hold (round one settled) -> final (after go)
        self.pending_cmd = b""
        self.ep = select.epoll()

    # -- reporting

    def emit(self, event: str, **kw: Any) -> None:
        os.write(self.reports_fd, (json.dumps({"event": event, **kw}) + "\n").encode())

    def totals(self) -> dict[str, Any]:
        return {"proc": self.proc, "started": self.next_i, "established": self.established,
                "verified": self.verified, "pings": self.pings,
                "failures": dict(self.failures)}

    def final(self) -> dict[str, Any]:
        return {**self.totals(), "errnos": dict(self.errnos), "samples": self.samples,
                "sources_used": self.sources_used, "t_established": self.t_established,
                "t_done": self.t_done}

    # -- state

    def move(self, i: int, new: int) -> None:
        self.in_state[self.state[i]] -= 1
        self.in_state[new] += 1
        self.state[i] = new

    def fail(self, i: int, kind: Failure, err: int | None = None) -> None:
        s = self.socks[i]
        if s is not None:
            self.by_fd.pop(s.fileno(), None)
            s.close()  # also takes it out of the epoll set
            self.socks[i] = None
        self.partial.pop(i, None)
        self.move(i, FAILED)
        self.failures[kind] += 1
        if err is not None:
            self.errnos[errno.errorcode.get(err, str(err))] += 1

    def sample(self, i: int, expected: bytes | None, got: bytes) -> None:
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append({"conn": self.first + i, "state": STATE_NAMES[self.state[i]],
                                 "expected": expected.decode("latin-1") if expected else None,
                                 "got": got[:80].decode("latin-1")})

    # -- connecting

    def source(self) -> str:
        """The source address of the next connection, by the plan's segments."""
        addr, left = self.segments[0]
        if left == 1:
            self.segments.popleft()
        else:
            self.segments[0] = (addr, left - 1)
        if not self.sources_used or self.sources_used[-1] != addr:
            self.sources_used.append(addr)
        return addr

    def open_one(self, i: int, now: float) -> None:
        addr = self.source()
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self.fail(i, failure_of_errno(exc.errno, True), exc.errno)
            return
        try:
            s.setblocking(False)
            if addr:
                # The port is chosen at connect, per destination: ~28,000 per (source,
                # destination) instead of ~28,000 per source for every bind((src, 0)).
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((addr, 0))
            err = s.connect_ex(self.dest)
        except OSError as exc:
            s.close()
            self.fail(i, failure_of_errno(exc.errno, True), exc.errno)
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.fail(i, failure_of_errno(err, True), err)
            return
        fd = s.fileno()
        self.socks[i] = s
        self.by_fd[fd] = i
        self.move(i, CONNECTING)
        self.since[i] = now
        self.connect_q.append(i)
        self.ep.register(fd, select.EPOLLOUT)

    def connected(self, i: int, s: socket.socket, now: float) -> None:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(i, failure_of_errno(err, True), err)
            return
        self.ep.modify(s.fileno(), select.EPOLLIN)
        self.send_line(i, s, 0, AWAIT_FIRST, now)

    def send_line(self, i: int, s: socket.socket, round_: int, new: int, now: float) -> None:
        data = line(self.proc, self.first + i, round_)
        if round_ and self.defer_pings:
            self.ep.modify(s.fileno(), select.EPOLLIN)  # the PINGs held back come first
        try:
            sent = s.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(i, failure_of_errno(exc.errno, False), exc.errno)
            return
        if sent != len(data):
            # A few dozen bytes into an empty send buffer: a short send means something is
            # badly wrong on this machine; not worth a write queue.
            self.fail(i, Failure.OTHER)
            return
        self.move(i, new)
        self.since[i] = now
        self.echo_q.append(i)

    # -- reading

    def readable(self, i: int, s: socket.socket, now: float) -> None:
        try:
            data = s.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(i, failure_of_errno(exc.errno, False), exc.errno)
            return
        if not data:
            self.fail(i, Failure.CLOSED_EARLY)
            return
        st = self.state[i]
        if i in self.partial:
            data = self.partial.pop(i) + data
        if st == HELD:
            expected = None
            if data == PING:
                self.pings += 1
                return
        else:
            expected = line(self.proc, self.first + i, 0 if st == AWAIT_FIRST else 1)
            if data == expected:
                self.echoed(i, s, st, now)
                return
        verdict, pings, rest = scan(data, expected)
        self.pings += pings
        if verdict is Scan.MATCHED:
            # Round one: what follows may only be heartbeats. Round two: the same, and then
            # the connection is done, so whatever else came in this read is judged now.
            verdict, pings, rest = scan(rest, None)
            self.pings += pings
            if verdict is Scan.MISMATCH:
                self.sample(i, None, rest)
                self.fail(i, mismatch_kind(rest))
                return
            if rest and st == AWAIT_SECOND:  # a partial line after the last echo
                self.sample(i, None, rest)
                self.fail(i, Failure.MISMATCH)
                return
            if rest:
                self.partial[i] = rest
            self.echoed(i, s, st, now)
        elif verdict is Scan.MISMATCH:
            self.sample(i, expected, rest)
            self.fail(i, mismatch_kind(rest))
        elif rest:
            self.partial[i] = rest

    def echoed(self, i: int, s: socket.socket, st: int, now: float) -> None:
        if st == AWAIT_FIRST:
            self.established += 1
            self.t_established = now
            self.move(i, HELD)
            if self.defer_pings:
                self.ep.modify(s.fileno(), 0)
            return
        self.verified += 1
        self.move(i, DONE)
        self.by_fd.pop(s.fileno(), None)
        s.close()
        self.socks[i] = None

    # -- time

    def expire(self, now: float) -> None:
        self._expire(self.connect_q, (CONNECTING,), now - self.connect_timeout_s,
                     Failure.CONNECT_TIMEOUT)
        self._expire(self.echo_q, (AWAIT_FIRST, AWAIT_SECOND), now - self.echo_timeout_s,
                     Failure.TIMEOUT)

    def _expire(self, q: collections.deque[int], waiting: tuple[int, ...], limit: float,
                kind: Failure) -> None:
        """Fail the connections at the head of ``q`` still ``waiting`` since before
        ``limit``; drop those that moved on. The first still waiting in time ends it."""
        state, since = self.state, self.since
        while q:
            i = q[0]
            late = state[i] in waiting
            if late and since[i] > limit:
                return
            q.popleft()
            if late:
                self.fail(i, kind)

    def open_more(self, now: float) -> float:
        """Start the connects the pacer allows; return how long until the next is due."""
        room = self.max_pending - self.in_state[CONNECTING] - self.in_state[AWAIT_FIRST]
        due = self.n - self.next_i
        if self.rate:  # connection k is due at t_start + k / rate
            due = min(due, int((now - self.t_start) * self.rate) + 1 - self.next_i)
        k = max(0, min(due, room, BATCH))
        for _ in range(k):
            self.open_one(self.next_i, now)
            self.next_i += 1
        if self.next_i >= self.n or k == room:
            return 0.1  # all started, or no slot free: an event will come
        if k == BATCH or not self.rate:
            return 0.0
        return max(0.0, self.t_start + self.next_i / self.rate - now)

    def go(self, now: float) -> None:
        """The hold is over: the connections still held send their second lines, paced like
        the connects (``send_more``): a million lines at once would measure a thundering herd
        against the echo timeout, not the connections."""
        self.echo_q.clear()  # round one has settled: every entry is stale
        self.t_go, self.go_i = now, 0
        self.send_more(now)

    def send_more(self, now: float) -> float:
        """Send the second lines the pacer allows (at most ``max_pending`` awaiting their
        echo); return how long until the next is due."""
        room = self.max_pending - self.in_state[AWAIT_SECOND]
        due = self.n - self.go_i
        if self.rate:
            due = min(due, int((now - self.t_go) * self.rate) + 1 - self.go_i)
        k = max(0, min(due, room, BATCH))
        state, socks = self.state, self.socks
        while k > 0 and self.go_i < self.n:
            i = self.go_i
            self.go_i += 1
            if state[i] == HELD:
                s = socks[i]
                assert s is not None
                self.send_line(i, s, 1, AWAIT_SECOND, now)
                k -= 1
        if self.go_i >= self.n or not self.rate:
            return 0.0 if self.go_i < self.n else 0.1
        return max(0.0, self.t_go + self.go_i / self.rate - now)

    def stop(self) -> None:
        """The run's deadline: every connection without a verdict is a timeout."""
        for i in range(self.n):
            if self.state[i] not in (DONE, FAILED):
                self.fail(i, Failure.TIMEOUT)

    # -- the loop

    def read_commands(self) -> list[bytes]:
        """The whole command lines that came from the parent; EOF means ``stop``."""
        data = os.read(self.commands_fd, 4096)
        if not data:  # the parent is gone, or wants everything to end now
            self.ep.unregister(self.commands_fd)
            data = b"\nstop\n"
        *words, self.pending_cmd = (self.pending_cmd + data).split(b"\n")
        return words

    def command(self, word: bytes) -> bool:
        """Act on one command; True once the process is done (``stop``)."""
        if word == b"start" and self.phase == "wait":
            self.phase, self.t_start = "ramp", time.monotonic()
        elif word == b"go" and self.phase == "hold":
            self.phase = "final"
            self.go(time.monotonic())
        elif word == b"stop":
            self.stop()
            self.t_done = time.monotonic()
            self.emit("done", **self.final())
            return True
        return False

    def run(self) -> int:
        """Until ``done``: pace the connects, read, expire, report. Returns the exit status."""
        cmd_fd = self.commands_fd
        os.set_blocking(cmd_fd, False)
        self.ep.register(cmd_fd, select.EPOLLIN)
        self.emit("up", proc=self.proc)
        next_report = 0.0
        by_fd, socks, state, in_state = self.by_fd, self.socks, self.state, self.in_state
        while True:
            now = time.monotonic()
            timeout = 0.2
            if self.phase == "ramp" and self.next_i < self.n:
                timeout = min(timeout, self.open_more(now))
            elif self.phase == "final" and self.go_i < self.n:
                timeout = min(timeout, self.send_more(now))
            for fd, _mask in self.ep.poll(timeout, 1024):
                i = by_fd.get(fd)
                if i is not None:
                    s = socks[i]
                    assert s is not None
                    if state[i] == CONNECTING:
                        self.connected(i, s, now)
                    else:
                        self.readable(i, s, now)
                elif fd == cmd_fd and any(self.command(w) for w in self.read_commands()):
                    return 0
            now = time.monotonic()
            self.expire(now)
            if self.phase == "ramp" and self.next_i >= self.n and not (
                    in_state[CONNECTING] or in_state[AWAIT_FIRST]):
                self.phase = "hold"
                self.emit("established", t=now, **self.totals())
            if self.phase == "final" and self.go_i >= self.n and not in_state[AWAIT_SECOND]:
                self.t_done = now
                self.emit("done", **self.final())
                return 0
            if now >= next_report:
                next_report = now + PROGRESS_S
                self.emit("progress", **self.totals())


def child_main(cfg: dict[str, Any]) -> int:
    """The entry of ``scale.py --child``: dies with the parent, takes the whole fd
    allowance, and exits by itself if the parent's deadline passed long ago."""
    die_with_parent()
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    signal.alarm(int(cfg["max_seconds"]) + 30)
    return Client(cfg).run()
