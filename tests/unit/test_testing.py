"""reactor.testing: the in-memory Harness over the real Connection, and fault injection
(FaultySocket, Faults, kick) on a real loop with real sockets."""

from __future__ import annotations

import errno
import socket

import pytest

from handlers.echo import ERR_SERVER_FULL, LineEchoHandler
from handlers.line import LineCodec
from reactor import CloseReason, Handler, Loop
from reactor.selector import OUT
from reactor.testing import Faults, FaultySocket, Harness, MemorySocket, kick
from tests.conftest import recv_until_eof, wait_for


class Recorder(LineEchoHandler):
    """LineEchoHandler that records flow control and close callbacks."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def on_paused(self, conn):
        self.events.append("paused")

    def on_writable(self, conn):
        self.events.append("writable")

    def on_close(self, conn, reason):
        self.events.append(reason)


# ------------------------------------------------------------------ MemorySocket

def test_memory_socket_reads_windows_and_shutdown():
    s = MemorySocket()
    buf = bytearray(4)
    with pytest.raises(BlockingIOError):
        s.recv_into(buf)
    s.inbound += b"abcdef"
    assert s.recv_into(buf, 3) == 3 and bytes(buf[:3]) == b"abc"
    assert s.recv_into(buf) == 3 and bytes(buf[:3]) == b"def"
    s.eof = True
    assert s.recv_into(buf) == 0
    s.window = 2
    assert s.sendmsg([b"xy", b"z"]) == 2 and s.window == 0
    with pytest.raises(BlockingIOError):
        s.send(b"z")
    s.window = None
    assert s.send(b"z") == 1 and bytes(s.sent) == b"xyz"
    s.shutdown(socket.SHUT_WR)
    assert s.fin_sent
    with pytest.raises(BrokenPipeError):
        s.send(b"late")
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and s.fileno() == -1
    s.close()
    with pytest.raises(OSError):
        s.recv_into(buf)


# ----------------------------------------------------------------------- Harness

def test_harness_counts_the_connection_and_releases_it_on_close():
    h = Harness(Recorder(), LineCodec())
    # Not polled, but listed: shutdown drains it and Loop.close aborts it.
    assert h.loop.connection_count == 1 and h.loop.connections() == [h.conn]
    h.close()
    assert h.closed and h.close_reason is CloseReason.SHUTDOWN
    assert h.handler.events == [CloseReason.SHUTDOWN]  # on_close delivered by close()
    assert h.sock.reset_sent  # an abort: SO_LINGER 0


@pytest.mark.parametrize("selector", ["edge", "level"])
def test_harness_backpressure_pauses_then_delivers_everything_in_order(selector):
    with Harness(Recorder(), LineCodec(), selector=selector, high_water=1024,
                 low_water=256) as h:
        h.set_window(0)  # the peer reads nothing
        lines = [b"line %04d %s\n" % (i, b"x" * 40) for i in range(100)]
        for line in lines[:40]:
            h.feed(line)
        assert h.take() == b""
        assert h.handler.events == ["paused"] and not h.conn.writable
        assert h.conn.paused and not h.conn.reading
        held = h.conn.send_buffered
        # LineEchoHandler takes the echo path: it reads no more once a reply is blocked, so
        # one line is held, not the 1 KiB watermark's worth (a ring-copied backlog).
        assert held == len(lines[0])
        for line in lines[40:]:  # reading is paused: these stay in the "kernel"
            h.feed(line)
        assert h.conn.send_buffered == held and len(h.sock.inbound) > 0
        h.set_window(None)  # the peer reads everything
        assert h.take() == b"".join(lines)
        # Resumed reading may fill the ring past the watermark again: pairs, in order.
        ev = h.handler.events
        assert ev[:2] == ["paused", "writable"] and ev == ["paused", "writable"] * (len(ev) // 2)
        assert h.conn.writable
        assert not h.sock.inbound and h.conn.send_buffered == 0


@pytest.mark.parametrize("selector", ["edge", "level"])
def test_harness_window_trickle_keeps_every_byte(selector):
    with Harness(Recorder(), LineCodec(), selector=selector) as h:
        h.set_window(0)
        payload = b"".join(b"%d\n" % i for i in range(500))
        h.feed(payload)
        got = b""
        while len(got) < len(payload):
            h.set_window(7)
            piece = h.take()
            assert 0 < len(piece) <= 7
            got += piece
        assert got == payload


def test_harness_steps_through_each_timer_deadline():
    with Harness(Recorder(), LineCodec(), heartbeat_s=2.0) as h:
        h.advance(10.0)  # one PING per period, not one for the whole jump
        assert h.take() == b"PING\n" * 5


def test_harness_feed_reset_closes_with_peer_reset():
    with Harness(Recorder(), LineCodec()) as h:
        h.feed(b"a\n")
        h.feed_reset()
        assert h.take() == b"a\n"
        assert h.closed and h.close_reason is CloseReason.PEER_RESET
        assert h.handler.events == [CloseReason.PEER_RESET]


class HeartbeatHandler(Handler):
    """Pings a quiet peer; a peer that leaves ``max_unanswered`` pings unanswered is closed."""

    def __init__(self, max_unanswered: int = 3) -> None:
        self.max_unanswered = max_unanswered
        self.reasons: list[CloseReason] = []

    def on_connect(self, conn):
        conn.user_data = 0  # pings sent and not answered

    def on_message(self, conn, line):
        if line == b"PONG":
            conn.user_data = 0
        else:
            conn.send(b"ECHO " + line)

    def on_heartbeat(self, conn):
        if conn.user_data >= self.max_unanswered:
            conn.close(CloseReason.IDLE_TIMEOUT)
            return
        conn.user_data += 1
        conn.send(b"PING")

    def on_close(self, conn, reason):
        self.reasons.append(reason)


def test_heartbeat_handler_closes_after_unanswered_pings():
    with Harness(HeartbeatHandler(3), LineCodec(), heartbeat_s=1.0) as h:
        h.advance(0.9)
        assert h.take() == b""
        h.advance(0.1)
        assert h.take() == b"PING\n"
        h.feed(b"PONG\n")  # answered: the count starts again
        h.advance(3.0)
        assert h.take() == b"PING\n" * 3 and not h.fin_sent
        h.advance(1.0)  # a fourth period with three unanswered: closed
        assert h.take() == b"" and h.fin_sent
        assert h.close_reason is CloseReason.IDLE_TIMEOUT
        h.feed_eof()  # the peer's FIN ends the linger
        assert h.closed and h.handler.reasons == [CloseReason.IDLE_TIMEOUT]


def test_heartbeat_handler_answers_messages_and_pongs_keep_it_open():
    with Harness(HeartbeatHandler(2), LineCodec(), heartbeat_s=1.0) as h:
        for i in range(10):
            h.advance(1.0)
            assert h.take() == b"PING\n"
            h.feed(b"PONG\nhi %d\n" % i)
            assert h.take() == b"ECHO hi %d\n" % i
        assert not h.fin_sent and h.close_reason is None


# ---------------------------------------------------------------- Faults plan

def test_faults_plan_counts_after_then_times_in_order():
    f = Faults().fail("send", errno.EAGAIN, times=2, after=1).fail("send", errno.EPIPE)
    f.check("send")  # the one call let through
    for exc in (BlockingIOError, BlockingIOError, BrokenPipeError):
        with pytest.raises(exc):
            f.check("send")
    f.check("send")
    assert f.injected["send"] == 3 and f.pending() == 0
    with pytest.raises(ValueError, match="frobnicate"):
        f.fail("frobnicate", errno.EIO)
    with pytest.raises(TypeError):
        f.fail("send", "EPIPE")


# -------------------------------------------------- fault injection on a real loop

def step(loop: Loop):
    return lambda: loop.run_once(0.01)


class Peer:
    """The client end of a socketpair, read without blocking."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.got = bytearray()

    def pump(self) -> bytes:
        try:
            self.got += self.sock.recv(65536)
        except BlockingIOError:
            pass
        return bytes(self.got)


def echo_through(loop: Loop, peer: Peer, payload: bytes) -> None:
    start = len(peer.got)
    peer.sock.sendall(payload)
    wait_for(lambda: len(peer.pump()) >= start + len(payload), step=step(loop), what="echo")
    assert bytes(peer.got[start:]) == payload


@pytest.fixture
def loop():
    lp = Loop(raise_fd_limit=False)
    yield lp
    lp.close()


def pair(loop: Loop, faults: Faults | None = None, handler: Handler | None = None):
    a, b = socket.socketpair()
    sock = FaultySocket(a, faults) if faults is not None else a
    conn = loop.adopt(sock, handler or Recorder(), LineCodec())
    return conn, Peer(b)


@pytest.mark.parametrize("method,error", [("recv_into", errno.ECONNRESET),
                                          ("send", errno.EPIPE)])
def test_injected_reset_closes_the_victim_while_a_bystander_echoes(loop, method, error):
    faults = Faults()
    victim_handler = Recorder()
    victim, vpeer = pair(loop, faults, victim_handler)
    bystander, bpeer = pair(loop)
    echo_through(loop, bpeer, b"before\n")
    faults.fail(method, error)
    vpeer.sock.sendall(b"doomed\n")
    wait_for(lambda: victim_handler.events, step=step(loop), what="the victim's on_close")
    assert victim.close_reason is CloseReason.PEER_RESET
    assert isinstance(victim.error, ConnectionError) and victim.error.errno == error
    assert victim_handler.events == [CloseReason.PEER_RESET] and faults.injected[method] == 1
    vpeer.sock.setblocking(True)
    assert recv_until_eof(vpeer.sock, timeout=5) == b""  # nothing was echoed to it
    payload = b"".join(b"bystander %d\n" % i for i in range(200))
    echo_through(loop, bpeer, payload)
    assert not bystander.closed and loop.connection_count == 1


def test_injected_eagain_on_send_is_delivered_after_a_kick(loop):
    faults = Faults()
    conn, peer = pair(loop, faults)
    echo_through(loop, peer, b"warm\n")
    # Two: the flush after the read, and the retry for the OUT bit that Linux reports with
    # the same edge (epoll gives the whole ready mask), so no flush is left to run.
    faults.fail("send", errno.EAGAIN, times=2)
    peer.sock.sendall(b"held back\n")
    wait_for(lambda: conn.bytes_in == len(b"warm\nheld back\n"), step=step(loop), what="read")
    for _ in range(5):
        loop.run_once(0)
    assert peer.pump() == b"warm\n"  # no edge came: the reply waits
    assert conn.send_buffered == len(b"held back\n") and faults.injected["send"] == 2
    kick(conn, OUT)  # the edge the kernel never raised
    wait_for(lambda: len(peer.pump()) >= 15, step=step(loop), what="the held reply")
    assert peer.pump() == b"warm\nheld back\n" and conn.send_buffered == 0


def _listen(loop: Loop, faults: Faults):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return loop.listen(("127.0.0.1", 0), Recorder, LineCodec, sock=FaultySocket(s, faults),
                       reject_message=ERR_SERVER_FULL)


def _client(listener) -> socket.socket:
    return socket.create_connection(listener.address, timeout=5)


def test_emfile_on_accept_refuses_with_the_spare_fd_then_serves(loop):
    """One EMFILE: the spare fd is given up, the waiting peer is accepted into its slot,
    told ERR server full and closed; the next peer is served."""
    faults = Faults().fail("_accept", errno.EMFILE)
    listener = _listen(loop, faults)
    refused = _client(listener)
    wait_for(lambda: listener.fd_exhausted_total, step=step(loop), what="the EMFILE")
    assert recv_until_eof(refused) == ERR_SERVER_FULL
    assert listener.rejected_total == 1 and faults.injected["_accept"] == 1
    with _client(listener) as c:
        wait_for(lambda: loop.connection_count == 1, step=step(loop), what="accept")
        peer = Peer(c)
        echo_through(loop, peer, b"served\n")
    refused.close()
    assert listener.fd_exhausted_total == 1 and listener.accepted_total == 1


def test_emfile_twice_pauses_accepting_then_the_retry_serves_the_peer(loop):
    """EMFILE on the spare fd's accept as well: nobody can be answered, so accepting
    pauses (a ~0.1 s retry timer) and the retry accepts the same peer."""
    faults = Faults().fail("_accept", errno.EMFILE, times=2)
    listener = _listen(loop, faults)
    with _client(listener) as c:
        peer = Peer(c)
        wait_for(lambda: loop.connection_count == 1, step=step(loop), what="the retry")
        echo_through(loop, peer, b"after the retry\n")
    assert listener.fd_exhausted_total == 1 and listener.rejected_total == 0
    assert faults.injected["_accept"] == 2 and listener.accepted_total == 1
