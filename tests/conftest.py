"""Shared test helpers: waiting with a deadline, socket fill/drain, and the daemon runner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINE_ECHO = [sys.executable, "-m", "reactor.service.cli.line_echo"]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition",
             step: Callable[[], None] | None = None) -> object:
    """Poll ``predicate`` (running ``step`` between polls, if given) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if step is not None:
            step()
        else:
            time.sleep(0.005)


def run_echo(loop, sock: socket.socket, payload: bytes) -> None:
    """Send ``payload`` on a client of an in-process loop, run the loop until as many bytes
    came back (``sock`` is left non-blocking), and check they are the same bytes."""
    sock.sendall(payload)
    sock.setblocking(False)
    got = bytearray()

    def step() -> None:
        loop.run_once(0.01)
        try:
            got.extend(sock.recv(65536))
        except BlockingIOError:
            pass

    wait_for(lambda: len(got) >= len(payload), step=step, what="the echo")
    assert bytes(got) == payload


def recv_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    """Read exactly n bytes (fails on EOF or timeout)."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(1 << 20, n - len(buf)))
        if not data:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes: {bytes(buf[-80:])!r}")
        buf += data
    return bytes(buf)


def tls_exchange(sock, payload: bytes, expect: int, timeout: float = 30.0) -> bytes:
    """Send ``payload`` on a TLS socket while reading what comes back, from ONE thread, until
    ``expect`` bytes came (or EOF, or ``timeout``). OpenSSL does not allow an SSL object's read
    and write from two threads at once: a sendall thread beside a recv loop lost the stream
    now and then (EOF seen by the client, every byte sent by the server)."""
    import select
    import ssl

    sock.setblocking(False)
    got = bytearray()
    sent = 0
    deadline = time.monotonic() + timeout
    while len(got) < expect:
        assert time.monotonic() < deadline, f"timed out: {len(got)} of {expect} bytes back"
        if sent < len(payload):
            try:
                sent += sock.send(payload[sent:sent + (1 << 16)])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
        try:
            data = sock.recv(1 << 20)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            select.select([sock], [sock] if sent < len(payload) else [], [], 0.05)
            continue
        if not data:
            break
        got += data
    return bytes(got)


def recv_until_eof(sock: socket.socket, timeout: float = 10.0, limit: int = 1 << 30) -> bytes:
    """Read until the peer closes. A reset after data counts as the end."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < limit:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not data:
            break
        buf += data
    return bytes(buf)


def fill(sock: socket.socket) -> int:
    """Send into a non-blocking socket until the kernel refuses; return bytes sent."""
    sock.setblocking(False)
    total = 0
    chunk = b"x" * 65536
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


def drain(sock: socket.socket) -> bytes:
    """Read a non-blocking socket until EAGAIN."""
    sock.setblocking(False)
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks (1/100 s)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_bytes(pid: int) -> int:
    """A process's resident set now (VmRSS)."""
    return _proc_status_kib(pid, "VmRSS") * 1024


def reset_peak_rss(pid: int) -> None:
    """Start measuring a process's peak RSS afresh (VmHWM := VmRSS; Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes(pid: int) -> int:
    """The process's peak RSS (VmHWM) since it started or since ``reset_peak_rss``."""
    return _proc_status_kib(pid, "VmHWM") * 1024


def _proc_status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def echo_ok(d: Daemon, payload: bytes = b"ping\n") -> None:
    """The daemon still serves: a fresh connection gets its line back."""
    with d.connect() as s:
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload


def echo_each(socks: list[socket.socket], tag: bytes, lines: int = 1) -> None:
    """Every connection sends ``lines`` lines and gets every byte back."""
    for i, s in enumerate(socks):
        payload = b"".join(b"%s %d line %d\n" % (tag, i, n) for n in range(lines))
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload


def connect_many_expect_refusals(connect: Callable[[], socket.socket], n: int,
                                 refusal: bytes = b"ERR server full\n"
                                 ) -> tuple[list[socket.socket], int]:
    """Open n connections, each sending one line; return (echoed and held, refused count)."""
    held, refused = [], 0
    for i in range(n):
        s = connect()
        s.sendall(b"n%d\n" % i)
        s.settimeout(10)
        data = s.recv(100)
        if data == refusal:
            refused += 1
            s.close()
        else:
            assert data == b"n%d\n" % i
            held.append(s)
    return held, refused


class EchoProber:
    """A thread doing round trips of a few lines on one connection, checking every byte,
    until :meth:`stop`: proof that a daemon keeps serving while something else goes on.

    ``answered`` holds the monotonic time each round trip completed; :meth:`stop` joins
    the thread and raises if a round trip failed (wrong bytes, EOF, or no answer
    within ``timeout``). Rounds are paced ``pause_s`` apart so the prober does not
    itself load the daemon."""

    def __init__(self, sock: socket.socket, tag: bytes, timeout: float = 5.0,
                 pause_s: float = 0.005) -> None:
        self.sock, self.tag, self.timeout, self.pause_s = sock, tag, timeout, pause_s
        self.answered: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            n = 0
            while not self._stop.is_set():
                payload = b"".join(b"%s round %d line %d\n" % (self.tag, n, i) for i in range(8))
                self.sock.sendall(payload)
                got = recv_exactly(self.sock, len(payload), self.timeout)
                assert got == payload, f"round {n}: sent {payload[:60]!r}..., got {got[:60]!r}..."
                self.answered.append(time.monotonic())
                n += 1
                self._stop.wait(self.pause_s)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def wait_rounds(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` more round trips have been answered."""
        target = len(self.answered) + n
        wait_for(lambda: len(self.answered) >= target or self.error, timeout,
                 f"{n} more round trips on {self.tag!r}")
        if self.error is not None:
            raise AssertionError(f"{self.tag!r}: {self.error}") from self.error

    def assert_answered_throughout(self, start: float, end: float,
                                   max_gap_s: float = 1.0) -> None:
        """Round trips never stopped for ``max_gap_s`` from ``start`` to ``end``: the gaps
        between answers, from the last one before ``start`` to the first one after
        ``end`` (waited for), are all shorter."""
        wait_for(lambda: (self.answered and self.answered[-1] > end) or self.error,
                 what=f"a round trip on {self.tag!r}")
        if self.error is not None:
            raise AssertionError(f"{self.tag!r}: {self.error}") from self.error
        before = [t for t in self.answered if t <= start][-1:] or [start]
        inside = [t for t in self.answered if start < t <= end]
        after = next(t for t in self.answered if t > end)
        marks = [*before, *inside, after]
        gap = max(b - a for a, b in zip(marks, marks[1:]))
        assert gap < max_gap_s, f"{self.tag!r}: {gap:.2f} s without an answer"

    def stop(self) -> int:
        """Stop; return how many round trips were answered (all checked byte for byte)."""
        self._stop.set()
        self._thread.join(self.timeout + 5)
        if self.error is not None:
            raise AssertionError(f"{self.tag!r}: {self.error}") from self.error
        return len(self.answered)


def parse_address(where: str) -> tuple[str, int] | str:
    """What a server prints after ``listening on``: ``HOST:PORT``, or ``unix:PATH`` (a str)."""
    where = where.strip()
    if where.startswith("unix:"):
        return where[5:]
    host, port = where.rsplit(":", 1)
    return (host, int(port))


def connect_to(address: tuple[str, int] | str, timeout: float = 10.0) -> socket.socket:
    """A client socket connected to a TCP address or a Unix socket path."""
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(address)
        return s
    return socket.create_connection(address, timeout=timeout)


def terminate(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM a process if it still runs and wait for it, SIGKILL if it outlasts ``timeout``;
    its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class Daemon:
    """A line-echo subprocess, started and waited for by its ``listening on`` line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [*LINE_ECHO, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, preexec_fn=preexec, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.proc.kill()
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"daemon did not start: {line!r} {err}")
        self.first_line = line
        self.address = parse_address(line[len("listening on "):])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return connect_to(self.address, timeout)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        terminate(self.proc, 20)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


class Baseline:
    """A daemon's books at rest, taken before any client: its open fds, and (from its stats
    socket) an empty connection table and buffer pool. ``check()`` waits, with a deadline, for
    them to come back after a scenario: every connection forgotten, every chunk returned,
    every fd closed (and none lost: the count must come back exactly)."""

    def __init__(self, d: Daemon, stats_path: str) -> None:
        self.d = d
        self.stats_path = stats_path
        self.fds = d.fd_count()  # before the first stats read, whose connection takes an fd
        self.check(timeout=5.0)

    def stats(self) -> dict:
        from reactor import read_stats

        return read_stats(self.stats_path)

    def check(self, timeout: float = 15.0) -> dict:
        """Wait for the baseline; return the stats document that showed it."""
        def at_rest() -> dict | None:
            doc = self.stats()
            pool = doc["chunks"]
            rest = (doc["connections"], doc["rx_bytes"], doc["tx_bytes"], doc["paused_reading"],
                    pool["chunks_in_use"], pool["overflow_in_use"], len(doc["top"]))
            return doc if rest == (0, 0, 0, 0, 0, 0, 0) else None

        doc = wait_for(at_rest, timeout, "an empty connection table and pool",
                       step=lambda: time.sleep(0.02))
        # Polled without reading the stats again: each read is a connection, an fd for a moment.
        wait_for(lambda: self.d.fd_count() == self.fds, timeout,
                 f"the daemon's fd count back to {self.fds}")
        return doc  # type: ignore[return-value]


@pytest.fixture
def daemon() -> Iterator[Callable[..., Daemon]]:
    """``daemon(*args)`` starts line-echo on an ephemeral port; all are stopped at the end."""
    started: list[Daemon] = []

    def start(*args: str, **kw: object) -> Daemon:
        argv = list(args)
        if "--port" not in argv and "--unix" not in argv:
            argv = ["--port", "0", *argv]
        d = Daemon(argv, **kw)  # type: ignore[arg-type]
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
