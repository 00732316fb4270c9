"""Faults inside the daemon, black-box: a worker killed outright, SIGTERM in the middle of a
connection storm and in the middle of a 100 MiB transfer, a link that goes down under a write
deadline. Each test checks what survived, byte for byte, and that nothing the daemon had taken
in was lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from reactor import read_stats
from reactor.service.stats_socket import advertised_path
from tests.conftest import EchoProber, recv_until_eof, wait_for
from tests.integration.test_fd_stats import hold_echoed


def worker_pids(path: str) -> list[int]:
    """The workers' pids, from the supervisor's stats document, once every one answers."""
    def answered():
        workers = read_stats(path)["workers"]
        return all("error" not in w for w in workers) and [w["pid"] for w in workers]

    return wait_for(answered, what="every worker answering")  # type: ignore[return-value]


def owners(socks: list[socket.socket], pids: list[int]) -> dict[int, list[socket.socket]]:
    """Which worker holds each client connection (by the client's port, from psutil)."""
    by_port = {}
    for pid in pids:
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.raddr:
                by_port[c.raddr.port] = pid
    held: dict[int, list[socket.socket]] = {pid: [] for pid in pids}
    for s in socks:
        held[by_port[s.getsockname()[1]]].append(s)
    return held


def test_sigkilled_worker_is_restarted_while_the_other_serves_on(daemon, tmp_path):
    path = str(tmp_path / "stats.sock")
    d = daemon("--workers", "2", "--stats-socket", path)
    pids = worker_pids(path)
    socks = hold_echoed(d, 40)  # SO_REUSEPORT spreads them over both workers
    held = owners(socks, pids)
    doomed_pid, survivor_pid = pids
    doomed, survivors = held[doomed_pid], held[survivor_pid]
    assert doomed and survivors, {pid: len(v) for pid, v in held.items()}
    assert os.readlink(advertised_path(doomed_pid)) == path + ".worker0"
    probers = [EchoProber(s, b"survivor %d" % i) for i, s in enumerate(survivors[:8])]
    for p in probers:
        p.wait_rounds(3)
    killed_at = time.monotonic()
    os.kill(doomed_pid, signal.SIGKILL)
    for s in doomed:  # gone with their worker: closed, nothing stray delivered
        assert recv_until_eof(s, 10) == b""
    for p in probers:
        p.wait_rounds(5)
    new_pid = wait_for(lambda: set(worker_pids(path)) - {survivor_pid} - {doomed_pid},
                       what="a new worker").pop()  # type: ignore[union-attr]
    for p in probers:
        p.wait_rounds(5)
        p.assert_answered_throughout(killed_at, time.monotonic())
    assert survivor_pid in worker_pids(path) and read_stats(path)["restarts"] == 1
    assert not os.path.lexists(advertised_path(doomed_pid))  # the dead one's is cleared away
    fresh = hold_echoed(d, 30)  # each echoes a line exactly
    on = owners(fresh, [survivor_pid, new_pid])
    assert on[new_pid], "the restarted worker serves new connections"
    for p in probers:
        assert p.stop() >= 13
    for s in socks + fresh:
        s.close()
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_in_a_connection_storm_echoes_each_client_all_or_nothing(daemon, workers):
    """Clients connect, send five lines in one segment and read, over and over, from 16
    threads (up to 128 connections in flight) while SIGTERM arrives. Every client must
    get all its lines back or be refused cleanly: no partial echo, no wrong byte."""
    drain_s = 5.0
    d = daemon("--drain-timeout", str(drain_s), "--workers", workers)
    outcomes: list[tuple[str, float, float]] = []  # (what, connected at, finished at)
    errors: list[BaseException] = []

    def one(script: bytes, conns: list) -> bool:
        """Connect and send; False once the daemon refuses (it has stopped listening)."""
        try:
            s = socket.create_connection(d.address, timeout=10)
        except ConnectionError:  # refused, or reset in the backlog when the listener closed
            outcomes.append(("refused", time.monotonic(), time.monotonic()))
            return False
        try:
            s.sendall(script)
        except ConnectionError:
            pass  # the answer, if any, still tells
        conns.append((s, script, time.monotonic()))
        return True

    def finish(s: socket.socket, script: bytes, t0: float) -> None:
        got = bytearray()
        s.settimeout(10)
        try:
            while len(got) < len(script):
                data = s.recv(4096)
                if not data:
                    break
                got += data
        except ConnectionResetError:
            pass
        s.close()
        what = ("echoed" if got == script else "closed empty" if not got
                else f"PARTIAL {bytes(got)!r} of {script!r}")
        outcomes.append((what, t0, time.monotonic()))

    def storm(t: int) -> None:
        try:
            k, listening = 0, True
            while listening:
                conns: list = []
                for _ in range(8):
                    listening = one(b"".join(b"t%d c%d line %d\n" % (t, k, i)
                                             for i in range(5)), conns) and listening
                    k += 1
                for c in conns:
                    finish(*c)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=storm, args=(t,), daemon=True) for t in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: len(outcomes) >= 400, what="the storm under way")
    signalled = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(drain_s + 5) == 0
    assert time.monotonic() - signalled < drain_s
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    kinds = {what for what, _, _ in outcomes}
    assert kinds <= {"echoed", "closed empty", "refused"}, sorted(kinds)[:3]
    in_flight = [what for what, t0, t1 in outcomes if t0 < signalled < t1]
    assert "echoed" in in_flight, "no connection open at the signal was drained"
    assert any(what == "refused" and t0 > signalled for what, t0, _ in outcomes)
    assert "drain timeout" not in d.stderr_text()  # nothing had to be dropped


class LineStream:
    """A deterministic stream of numbered lines, in blocks of ~360 KiB; the reader
    regenerates it to check every echoed byte without keeping 100 MiB. Most lines are
    short; every 16th is up to 9 KB, so partial lines are kept both as bytes and in
    pooled rings between reads."""

    def __init__(self) -> None:
        # Block i is the 1,024 suffixes, each after the block's 8-digit number.
        self._suffixes = [b""] + [b" %04d %s\n" % (j, b"z" * (j * 37 % 90 if j % 16 else
                                                                j * 373 % 9000))
                                  for j in range(1024)]
        self.block_bytes = len(self.block(0))

    def block(self, i: int) -> bytes:
        return (b"%08d" % i).join(self._suffixes)

    def complete_lines_in(self, n: int) -> int:
        """Where the last complete line within the first ``n`` bytes ends."""
        i, off = divmod(n, self.block_bytes)
        return i * self.block_bytes + self.block(i).rfind(b"\n", 0, off) + 1


class PrefixChecker:
    """Compares what arrives with the stream, byte for byte, from its start."""

    def __init__(self, stream: LineStream) -> None:
        self.stream = stream
        self.total = 0
        self._block = b""
        self._index = 0
        self._pos = 0

    def feed(self, data: bytes) -> None:
        mv = memoryview(data)
        while mv:
            if self._pos == len(self._block):
                self._block, self._pos = self.stream.block(self._index), 0
                self._index += 1
            n = min(len(mv), len(self._block) - self._pos)
            if mv[:n] != self._block[self._pos:self._pos + n]:
                raise AssertionError(f"the echo differs from what was sent near byte "
                                     f"{self.total}: {bytes(mv[:40])!r}")
            mv, self._pos, self.total = mv[n:], self._pos + n, self.total + n


def test_sigterm_in_the_middle_of_a_100_mib_transfer_echoes_exactly_the_lines_read(
        daemon, tmp_path):
    drain_s = 5.0
    path = str(tmp_path / "stats.sock")
    d = daemon("--drain-timeout", str(drain_s), "--stats-socket", path)
    stream = LineStream()
    blocks = -(-(100 << 20) // stream.block_bytes)
    s = d.connect()
    # Loopback buffers grow to tens of MB (tcp_rmem): fixed client buffers keep what is in
    # flight small, so the daemon has read well short of 100 MiB when the signal comes.
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, 256 << 10)
    sent = [0]

    def writer() -> None:
        try:
            for i in range(blocks):
                s.sendall(stream.block(i))
                sent[0] += stream.block_bytes
        except OSError:
            pass  # the daemon closed: it stopped reading

    w = threading.Thread(target=writer)
    w.start()
    check = PrefixChecker(stream)
    signalled = None
    s.settimeout(10)
    while True:
        data = s.recv(1 << 20)
        if not data:
            break
        check.feed(data)
        if signalled is None and check.total >= 30 << 20:
            signalled = time.monotonic()
            d.signal(signal.SIGTERM)
    assert signalled is not None, f"EOF after {check.total} bytes, before the signal"
    # Our connection lingers until our FIN: the daemon still answers on its stats socket.
    doc = read_stats(path)
    s.shutdown(socket.SHUT_WR)
    w.join(30)
    assert d.wait(drain_s) == 0 and time.monotonic() - signalled < drain_s
    read_in = doc["bytes_in"]  # what the daemon read before it stopped reading
    assert 30 << 20 <= read_in < blocks * stream.block_bytes, (read_in, sent[0])
    assert check.total == stream.complete_lines_in(read_in) == doc["bytes_out"]
    s.close()


def test_a_reader_behind_a_lossy_link_is_not_closed_as_a_slow_consumer():
    """The write deadline (1 s, plus its 1 s grace) passes while the loopback is down for
    4 s: the reader's bytes are in flight and being retransmitted, not refused by a closed
    window, so it is kept, and gets the whole stream intact once the link is back; the peer
    that reads nothing is still closed as a slow consumer (tests/integration/lossy_link.py,
    in a network namespace of its own)."""
    script = os.path.join(os.path.dirname(__file__), "lossy_link.py")
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["served_before"] > 0 and out["got_during_outage"] == 0  # the link was down
    assert out["reader_reason"] is None, out
    assert out["intact"] and out["got"] == out["expected"], out
    assert out["stalled_reason"] == "slow_consumer", out
