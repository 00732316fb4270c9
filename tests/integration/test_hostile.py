"""The hostile suite: line-echo attacked over real sockets on 127.0.0.1, black-box.

Each test starts a daemon with a stats socket, attacks it (bad bytes, peers that never read or
vanish, RSTs, connect storms, a 5,000-connection burst, the connection and fd limits), then
asserts what survived: every byte echoed to every peer that stayed (content and order), other
peers served meanwhile, and the daemon's books back to their baseline (``Baseline.check``:
fds, connection table, pool). What test_line_echo.py already covers is extended here, not
repeated; docs/reliability.md ("What the hostile suite tries") lists the scenarios.
"""

from __future__ import annotations

import itertools
import json
import random
import resource
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest

from tests.conftest import (ROOT, Baseline, connect_many_expect_refusals, drain, echo_each,
                            echo_ok, peak_rss_bytes, recv_exactly, recv_until_eof,
                            reset_peak_rss, rss_bytes, wait_for)

MiB = 1 << 20
MAX_LINE = 65536  # line-echo's default --max-line
# What the library queues for one peer before it stops reading from it: the high watermark
# (64 KiB) plus what one read may deliver at once (the read size, 64 KiB): reading stops
# as soon as a read's reply passes the watermark, whatever is left of the turn's budget.
QUEUED_PER_PEER_MAX = 64 * 1024 + 64 * 1024


@pytest.fixture
def echo_daemon(daemon, tmp_path):
    """``echo_daemon(*args)``: line-echo with a stats socket; returns (Daemon, Baseline)."""
    n = itertools.count()

    def start(*args: str, **kw: object):
        path = str(tmp_path / f"stats{next(n)}.sock")
        d = daemon("--stats-socket", path, "--log-level", "warning", *args, **kw)
        return d, Baseline(d, path)

    return start


def rst(sock: socket.socket) -> None:
    """Close with a RST instead of a FIN (SO_LINGER on, 0 seconds)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def close_half_with_rst(socks: list[socket.socket]) -> None:
    """Close every connection: every other one with a RST, the rest with a FIN."""
    for i, s in enumerate(socks):
        if i % 2:
            s.close()
        else:
            rst(s)


def lines(tag: bytes, n: int, width: int = 0) -> bytes:
    """``n`` numbered lines, each unique, padded to ``width`` bytes before the newline."""
    return b"".join(b"%s %08d %s\n" % (tag, i, b"." * max(0, width - len(tag) - 10))
                    for i in range(n))


def push(sock: socket.socket, payload: bytes, sent: int) -> int:
    """Send ``payload[sent:]`` on a non-blocking socket until the kernel refuses; new offset."""
    view = memoryview(payload)
    while sent < len(payload):
        try:
            sent += sock.send(view[sent:sent + MiB])
        except BlockingIOError:
            break
    return sent


def flood_until_paused(base: Baseline, socks: list[socket.socket], payloads: list[bytes]) -> None:
    """Pipeline ``payloads[i]`` on ``socks[i]`` (made non-blocking) and read nothing, until
    the daemon has stopped reading from every one of them: its replies are backed up."""
    sent = [0] * len(socks)
    for s in socks:
        s.setblocking(False)

    def all_paused() -> bool:
        for i, s in enumerate(socks):
            sent[i] = push(s, payloads[i], sent[i])
        return base.stats()["paused_reading"] == len(socks)

    wait_for(all_paused, what=f"the daemon pausing all {len(socks)} peers that do not read",
             step=lambda: time.sleep(0.01))


def run_in_threads(n: int, target: Callable[[int], None], meanwhile: Callable[[], None]) -> None:
    """Run ``target(0)`` to ``target(n - 1)`` in threads at once and ``meanwhile()`` here, then
    wait for the threads and raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    meanwhile()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client thread is stuck"
    if errors:
        raise errors[0]


class Bystanders:
    """Connections opened before an attack; ``check()`` has each echo a fresh multi-line
    payload, every byte compared, so the attack is shown not to have touched them."""

    def __init__(self, d, n: int = 10) -> None:
        self.socks = [d.connect() for _ in range(n)]
        self.rounds = 0
        self.check()

    def check(self) -> None:
        self.rounds += 1
        echo_each(self.socks, b"bystander round %d" % self.rounds, lines=50)

    def close(self) -> None:
        for s in self.socks:
            s.close()


# --------------------------------------------------------------------------- bad bytes

def test_every_byte_value_and_lone_cr_in_random_cuts_with_a_trailing_partial_line(echo_daemon):
    """test_line_echo sends NUL, invalid UTF-8 and ``\\r\\n`` in one send; here every byte value
    but ``\\n``, lone ``\\r`` anywhere and a ``\\r`` with no newline at all, cut at random (1 byte
    to 4 KiB per send), end with a half-close: everything comes back as it went."""
    d, base = echo_daemon()
    all_bytes = bytes(b for b in range(256) if b != 0x0A)
    body = [all_bytes, all_bytes[::-1], b"\r", b"a\rb", b"\r\r\r", b"\x00" * 100, b"\xff" * 300,
            b"\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \x80\xbf",  # overlong, surrogate, > U+10FFFF
            b"\xe2\x82", b"\r\x00\r", b""]
    payload = b"".join(line + b"\n" for line in body * 40) + b"tail\r"  # no newline after
    rng = random.Random(7)
    with d.connect() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(recv_until_eof(s, 20)))
        reader.start()
        pos = 0
        while pos < len(payload):
            n = rng.choice((1, 1, 2, 3, rng.randint(1, 4096)))
            s.sendall(payload[pos:pos + n])
            pos += n
        s.shutdown(socket.SHUT_WR)
        reader.join(20)
        assert bytes(got) == payload
    base.check()


def test_ten_mib_lines_without_newline_cost_bounded_memory(echo_daemon):
    """Extends test_line_echo's single 10 MiB line: four at once, while bystanders are served,
    each refused after its good line, with the daemon's peak RSS measured (VmHWM) over the
    whole attack. A refused line costs at most --max-line (64 KiB) while it arrives (measured:
    the peak grew by 8 KiB), so 2 MiB leaves room for the allocator and is far below the
    growth of buffering even one of the 10 MiB lines."""
    d, base = echo_daemon()
    bystanders = Bystanders(d)
    blob = bytes(b for b in range(256) if b != 0x0A) * (10 * MiB // 255 + 1)
    reset_peak_rss(d.pid)
    rss_before = rss_bytes(d.pid)
    attackers = [d.connect() for _ in range(4)]
    got = [bytearray() for _ in attackers]

    def attack(i: int) -> None:
        s = attackers[i]
        reader = threading.Thread(target=lambda: got[i].extend(recv_until_eof(s, 30)))
        reader.start()
        try:
            s.sendall(b"good line %d\n" % i + blob[:10 * MiB])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may close before all 10 MiB went out
        reader.join(30)

    run_in_threads(len(attackers), attack, meanwhile=bystanders.check)
    for i, g in enumerate(got):
        assert bytes(g) == b"good line %d\nERR line too long\n" % i
    growth = peak_rss_bytes(d.pid) - rss_before
    assert growth < 2 * MiB, f"peak RSS grew by {growth} bytes"
    bystanders.check()
    for s in attackers:
        s.close()
    bystanders.close()
    doc = base.check()
    assert doc["closed"]["line_too_long"] == 4


def _send_with_pauses(base: Baseline, s: socket.socket, payload: bytes, pauses: list[int]) -> None:
    """Send ``payload``, stopping at each offset in ``pauses`` until the daemon has read
    every byte so far (its ``bytes_in``): each piece reaches it as a read of its own."""
    pos = 0
    for cut in [*pauses, len(payload)]:
        s.sendall(payload[pos:cut])
        pos = cut
        if pos < len(payload):
            wait_for(lambda: base.stats()["bytes_in"] == pos, what=f"the daemon read {pos} bytes",
                     step=lambda: time.sleep(0.01))


# Where the daemon keeps a partial line changes with its size (up to 1 KiB as bytes, more in
# pooled 16 KiB chunks), so the limit is approached across those boundaries.
CUTS = {"one send": [], "newline alone": [MAX_LINE - 1], "one byte, then all": [1, MAX_LINE - 1],
        "small to ring": [1024, 1025, MAX_LINE - 1],
        "chunk by chunk": [16384, 32768, 49152, MAX_LINE - 1]}


@pytest.mark.parametrize("pauses", CUTS.values(), ids=CUTS.keys())
def test_a_line_of_exactly_max_line_bytes_is_accepted_however_it_arrives(echo_daemon, pauses):
    """test_line_echo checks the boundary with --max-line 100 in one send; here the default
    65,536 (newline included), the line after a short one, arriving in reads that cross the
    daemon's internal boundaries: every byte comes back."""
    d, base = echo_daemon()
    first = b"short\n"
    line = bytes(b for b in range(256) if b != 0x0A) * 258
    payload = first + line[:MAX_LINE - 1] + b"\n"
    with d.connect() as s:
        _send_with_pauses(base, s, payload, [len(first) + p for p in pauses])
        assert recv_exactly(s, len(payload)) == payload
        s.shutdown(socket.SHUT_WR)
        assert recv_until_eof(s) == b""
    base.check()


@pytest.mark.parametrize("pauses", [[], [MAX_LINE - 1], [1024, 1025, MAX_LINE - 1]],
                         ids=["one send", "last byte alone", "small to ring"])
def test_one_byte_over_max_line_is_refused_before_its_newline_is_sent(echo_daemon, pauses):
    """65,536 bytes with no newline yet are one too many: the refusal comes at once, without
    waiting for the newline (which is never sent), after the good line before it."""
    d, base = echo_daemon()
    first = b"short\n"
    payload = first + b"x" * MAX_LINE
    with d.connect() as s:
        _send_with_pauses(base, s, payload, [len(first) + p for p in pauses])
        assert recv_until_eof(s) == first + b"ERR line too long\n"
    doc = base.check()
    assert doc["closed"]["line_too_long"] == 1


@pytest.mark.parametrize("max_line", ["65536", "1"])
def test_hundred_thousand_empty_lines_in_one_send(echo_daemon, max_line):
    """100,000 ``\\n`` in one send are 100,000 lines, all echoed; with --max-line 1 an empty
    line is exactly at the limit, and the daemon must find 100,000 line ends one at a time."""
    d, base = echo_daemon("--max-line", max_line)
    payload = b"\n" * 100_000
    with d.connect() as s:
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
        s.sendall(b"\n")  # and the connection still serves after them
        assert recv_exactly(s, 1) == b"\n"
    assert base.check()["bytes_in"] == 100_001


# ------------------------------------------------------------------ slow and silent peers

class RoundTrips(threading.Thread):
    """A client doing round trips, one line at a time, until stopped: every echo is checked
    and the slowest round trip kept."""

    def __init__(self, d) -> None:
        super().__init__()
        self.sock = d.connect()
        self.stopping = threading.Event()
        self.count = 0
        self.slowest_s = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                line = b"round trip %d\n" % self.count
                start = time.monotonic()
                self.sock.sendall(line)
                assert recv_exactly(self.sock, len(line)) == line
                self.slowest_s = max(self.slowest_s, time.monotonic() - start)
                self.count += 1
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.sock.close()
        assert self.error is None, self.error


def test_peers_that_never_read_are_held_in_bounded_memory_then_closed_by_idle_timeout(
        echo_daemon):
    """Eight peers pipeline 8 MB each and never read. The daemon stops reading from each
    (backpressure) with at most the high watermark plus one read queued, so its memory stays
    flat and the 4 MiB hard send limit is never reached (line-echo has no way to queue that
    much: see docs/reliability.md); another client's round trips keep completing meanwhile.
    --idle-timeout then closes them (nothing was received since the pause); each gets back
    exactly the complete lines the daemon read, in order, then EOF."""
    d, base = echo_daemon("--idle-timeout", "1.5")
    payloads = [lines(b"never reads %d" % i, 200_000, width=40) for i in range(8)]
    bad = [d.connect() for _ in payloads]
    reset_peak_rss(d.pid)
    rss_before = rss_bytes(d.pid)
    prober = RoundTrips(d)
    prober.start()
    try:
        flood_until_paused(base, bad, payloads)
        held = base.stats()
        assert held["connections"] == len(bad) + 1 and held["closed_total"] == 0
        assert 0 < held["tx_bytes"] <= len(bad) * QUEUED_PER_PEER_MAX, held["tx_bytes"]
        seen = prober.count
        wait_for(lambda: prober.count >= seen + 100 or prober.error, what="100 more round trips")
    finally:
        prober.stop()
    # The round trips went on while the eight were filled; 0.5 s is generous (they take
    # well under 10 ms on loopback) and would still catch a loop stalled by the flood.
    assert prober.slowest_s < 0.5, prober.slowest_s
    # What the design lets it queue (8 x 128 KiB) plus room for the allocator; measured: the
    # peak grew by 1.6 MiB with 1.3 MB queued.
    growth = peak_rss_bytes(d.pid) - rss_before
    assert growth < 4 * MiB, f"peak RSS grew by {growth} bytes"
    # 1.5 s after the pause the idle timeout closes each one: "closing" (flushing first).
    wait_for(lambda: [c["state"] for c in base.stats()["top"]] == ["closing"] * len(bad),
             timeout=10, what="the idle timeout closing the eight", step=lambda: time.sleep(0.05))
    for i, s in enumerate(bad):
        got = recv_until_eof(s, 10)
        assert got.endswith(b"\n") and payloads[i].startswith(got), (i, len(got))
        assert len(got) > 64 * 1024  # more than the high watermark was read and echoed
        s.close()
    assert base.check()["closed"]["idle_timeout"] == len(bad)


def test_silent_peers_that_vanish_are_reclaimed_by_idle_timeout_despite_heartbeats(
        echo_daemon):
    """A peer that disappears without a FIN sends nothing, reads nothing, and will never send
    its FIN. Simulated by 200 peers that do just that (loopback acknowledges for them): the
    heartbeats sent to them do not count as activity, --idle-timeout closes each on time, and
    after the daemon's linger (2 s waiting for a FIN that never comes) its fds are back."""
    d, base = echo_daemon("--heartbeat", "0.2", "--idle-timeout", "1")
    start = time.monotonic()
    silent = [d.connect() for _ in range(200)]
    sel = selectors.DefaultSelector()
    got = {}
    for s in silent:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        got[s] = bytearray()
    ended = {}
    deadline = time.monotonic() + 10
    while len(ended) < len(silent) and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):  # reading sends nothing: the daemon cannot tell
            data = key.fileobj.recv(4096)
            if data:
                got[key.fileobj] += data
            else:
                ended[key.fileobj] = time.monotonic() - start
                sel.unregister(key.fileobj)
    sel.close()
    assert len(ended) == len(silent), f"{len(silent) - len(ended)} never closed"
    assert 0.9 <= min(ended.values()) and max(ended.values()) < 3.0, sorted(ended.values())
    for s in silent:  # heartbeats only, at least three of them, before the close
        assert got[s] == b"PING\n" * (len(got[s]) // 5) and len(got[s]) >= 15, bytes(got[s])
    # The peers never send their FIN: the daemon's linger gives up and releases the fds.
    doc = base.check(timeout=10)
    assert doc["closed"]["idle_timeout"] == len(silent)
    for s in silent:
        s.close()


# -------------------------------------------------------------------------- abrupt peers

def test_rst_in_the_middle_of_a_pipeline(echo_daemon):
    """Ten peers pipeline 1 MB each and reset the connection: half of them after reading and
    checking half of the echo (the rest still flowing), half once every complete line came
    back, with a partial line of 2,400 bytes held by the daemon (in pooled chunks). The
    daemon counts ten resets, bystanders echo every byte, and nothing is left behind."""
    d, base = echo_daemon()
    bystanders = Bystanders(d)
    for i in range(10):
        payload = lines(b"rst pipeline %d" % i, 25_000, width=40)
        partial = b"partial " * 300 if i % 2 else b""  # no newline: never echoed
        s = d.connect()
        writer = threading.Thread(target=s.sendall, args=(payload + partial,))
        writer.start()
        upto = len(payload) if partial else len(payload) // 2
        assert recv_exactly(s, upto) == payload[:upto]
        writer.join(10)
        if partial:
            wait_for(lambda: base.stats()["rx_bytes"] == len(partial),
                     what="the partial line held", step=lambda: time.sleep(0.01))
        rst(s)
        bystanders.check()
    bystanders.close()
    assert base.check()["closed"]["reset"] == 10


def test_rst_while_the_daemon_is_blocked_writing_to_that_peer(echo_daemon):
    """Five peers pipeline 8 MB each and do not read, so the daemon blocks writing to them and
    stops reading; each then resets. The daemon notices on the blocked write, counts the
    resets and goes on: bystanders echo every byte and the books come back."""
    d, base = echo_daemon()
    bystanders = Bystanders(d)
    payloads = [lines(b"blocked writer %d" % i, 200_000, width=40) for i in range(5)]
    peers = [d.connect() for _ in payloads]
    flood_until_paused(base, peers, payloads)
    assert base.stats()["tx_bytes"] > 0  # queued in the daemon: the kernel took no more
    for i, s in enumerate(peers):
        got = drain(s)  # what arrived so far is right; then the reset
        assert payloads[i].startswith(got) and len(got) > 0
        rst(s)
    bystanders.check()
    bystanders.close()
    assert base.check()["closed"]["reset"] == len(peers)


def _storm(address: tuple[str, int], worker: int, n: int) -> None:
    """Open ``n`` connections one after the other and end each at once, four ways in turn:
    FIN, RST, RST after a partial line, FIN after a line whose echo is checked."""
    for i in range(n):
        s = socket.create_connection(address, timeout=10)
        kind = i % 4
        if kind == 0:
            s.close()
        elif kind == 1:
            rst(s)
        elif kind == 2:
            s.sendall(b"partial line from %d/%d" % (worker, i))
            rst(s)
        else:
            line = b"storm %d/%d\n" % (worker, i)
            s.sendall(line)
            assert recv_exactly(s, len(line)) == line
            s.close()


def test_connect_and_close_storm_leaves_nothing_behind(echo_daemon):
    """Four threads open and end 10,000 connections as fast as they can (FIN, RST, RST after a
    partial line, FIN after an echoed line). Meanwhile and afterwards bystanders echo every
    byte; the daemon accepted and closed every one of them; its books come back."""
    d, base = echo_daemon()
    bystanders = Bystanders(d)
    run_in_threads(4, lambda w: _storm(d.address, w, 2500), meanwhile=bystanders.check)
    bystanders.check()
    bystanders.close()
    echo_ok(d, b"after the storm\n")
    doc = base.check()
    others = len(bystanders.socks) + 1
    assert doc["accepted"] == doc["closed_total"] == 10_000 + others
    assert (doc["closed"]["peer_closed"], doc["closed"]["reset"]) == (5000 + others, 5000)


def test_burst_of_5000_connects_against_backlog_16(echo_daemon):
    """5,000 connects at once (a helper process: the fds are its own) against --backlog 16 and
    --max-conns 4,000, every connection held to the end: exactly 4,000 are served (each
    line echoed byte for byte) and 1,000 refused with ``ERR server full``, none hangs.

    The first lines go out over 0.5 s, as real clients' first requests would. Sent all in
    the same instant instead, the kernel drops the handshake-completing ACK+data of most
    connections at the full 16-slot queue (the handshakes were SYN cookies), their
    retransmission timers fire together, and each wave gets ~17 in: hundreds were still
    waiting after 60 s, with the daemon idle and its accept queue empty throughout.

    When the client closes its 4,000, the kernel sometimes hands the daemon extra SYN-cookie
    connections (0 to 30 seen, more on a loaded machine) on the addresses of served ones
    whose client side is already in TIME_WAIT: nobody holds them. The daemon accepts them
    like any peer; nothing ever arrives on them, so --idle-timeout reclaims them, as it would
    any silent peer (10 s: longer than the burst, so that no served connection is touched)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 5200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below 5,200")
    d, base = echo_daemon("--backlog", "16", "--max-conns", "4000", "--idle-timeout", "10")
    r = subprocess.run([sys.executable, "-m", "tests.integration.burst_client",
                        "--port", str(d.address[1]), "--conns", "5000", "--jitter", "0.5",
                        "--deadline", "9"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["pending"] == 0 and result["wrong"] == 0, result
    assert (result["served"], result["refused"], result["refused_at_connect"]) == (4000, 1000, 0)
    wait_for(lambda: base.stats()["closed"]["peer_closed"] == 4000,
             what="the 4,000 served ones closed", step=lambda: time.sleep(0.05))
    doc = base.check(timeout=25)
    assert doc["closed"]["server_full"] == 1000
    # Every connection accepted beyond the 4,000 was one nobody held: only the idle timeout
    # ended it, and no other connection was ended that way.
    assert doc["closed"]["idle_timeout"] == doc["accepted"] - 4000, doc["closed"]
    assert doc["closed_total"] == doc["accepted"] + 1000
    echo_ok(d)


# ---------------------------------------------------------------------------------- limits

def test_slots_freed_by_resets_are_given_back_exactly(echo_daemon):
    """test_line_echo frees a --max-conns slot with a graceful close. Here: 50 refusals
    against 20 held connections, then 10 of the held reset; exactly 10 new ones get in, the
    next is refused, and every held connection, old and new, echoes every byte."""
    d, base = echo_daemon("--max-conns", "20")
    held = [d.connect() for _ in range(20)]
    echo_each(held, b"held")
    for _ in range(50):
        with d.connect() as extra:
            assert recv_until_eof(extra) == b"ERR server full\n"
    for s in held[:10]:
        rst(s)
    wait_for(lambda: base.stats()["connections"] == 10, what="ten slots freed by the resets",
             step=lambda: time.sleep(0.01))
    held = held[10:] + [d.connect() for _ in range(10)]
    echo_each(held, b"after the resets", lines=200)
    with d.connect() as extra:
        assert recv_until_eof(extra) == b"ERR server full\n"
    echo_each(held, b"still", lines=200)
    for s in held:
        s.close()
    doc = base.check()
    assert doc["closed"]["server_full"] == doc["listeners"][0]["rejected"] == 51
    assert doc["closed"]["reset"] == 10 and doc["accepted"] == 30


def _limit_fds(n: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return preexec


def test_fd_exhaustion_again_and_again(echo_daemon):
    """test_line_echo runs out of fds once (RLIMIT_NOFILE 40) and checks that the held
    connections still echo a line. Here it happens three times over. Each time: the same
    number of connections is held (no fd leaked or lost to the spare-fd dance), every refusal
    is ``ERR server full``, every held connection echoes 200 lines byte for byte while
    exhausted; then half of them leave (FIN or RST), exactly as many newcomers are served,
    and the rest, old and new, echo 200 lines again; at the end the books are back. At the
    limit the listener waits for the next connection, not for a timer: it counts one
    exhaustion per refused connection, not one per 100 ms spent at the limit."""
    d, base = echo_daemon("--max-conns", "1000", preexec=_limit_fds(40))
    counts, refusals = [], 0
    for cycle in range(3):
        held, refused = connect_many_expect_refusals(d.connect, 45)
        assert refused > 0 and len(held) > 10
        counts.append(len(held))
        echo_each(held, b"cycle %d, exhausted" % cycle, lines=200)
        with d.connect() as extra:  # still exhausted: refused, not hung
            assert recv_until_eof(extra) == b"ERR server full\n"
        refusals += refused + 1
        half = len(held) // 2
        close_half_with_rst(held[:half])
        # (not through the stats socket: at the limit its listener refuses readers too)
        wait_for(lambda: d.fd_count() == base.fds + len(held) - half,
                 what="the daemon closing the half that left")
        held = held[half:] + [d.connect() for _ in range(half)]
        echo_each(held, b"cycle %d, cleared" % cycle, lines=200)
        close_half_with_rst(held)
        base.check()
    assert counts[0] == counts[1] == counts[2], counts
    doc = base.stats()
    assert doc["closed"]["server_full"] == refusals
    assert doc["listeners"][0]["fd_exhausted"] == refusals, (
        "accept() polled by the retry timer while the daemon sat at its fd limit")


# ----------------------------------------------------------------------------------- leaks

@pytest.mark.parametrize("ending", ["fin", "rst"])
def test_rss_after_ten_rounds_of_connect_echo_close_stays_flat(echo_daemon, ending):
    """Ten rounds of 500 connections: connect all, echo 20 lines on each, close them all
    (FIN, or RST). After round 1 everything the daemon grows with connections (fd table, ring
    free list, touched pool pages, allocator arenas) is at its high water; nine more rounds
    may add allocator noise, not per-connection leftovers. The bound, 1 MiB, is 233 bytes for
    each of the 4,500 connections of rounds 2-10: less than any connection object left
    behind. Measured: FIN 32 KiB; RST 2.9-3.7 MiB while conn.error kept its traceback (a
    reference cycle through the connection, freed only by a full GC), under 180 KiB since."""
    d, base = echo_daemon()
    rss = []
    for rnd in range(10):
        socks = [d.connect() for _ in range(500)]
        echo_each(socks, b"round %d" % rnd, lines=20)
        for s in socks:
            if ending == "fin":
                s.close()
            else:
                rst(s)
        base.check()
        rss.append(rss_bytes(d.pid))
    growth = max(rss[1:]) - rss[0]
    assert growth < 1 * MiB, f"RSS grew by {growth} bytes over rounds 2-10: {rss}"
