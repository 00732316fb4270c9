"""Connection and loop together on real sockets, in both selector modes.

The loop runs in the test's thread (``run_until``); clients are plain sockets,
or a thread when a transfer must overlap with the loop.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import types

import pytest

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import (BufferPool, CloseReason, Connection, FakeClock, Handler, Loop,
                     broadcast)
from reactor.pool import MIN_SHARE
from tests.conftest import wait_for

MODES = ["edge", "level"]


def run_until(loop: Loop, predicate, timeout: float = 10.0, what: str = "condition"):
    return wait_for(predicate, timeout, what, step=lambda: loop.run_once(0.01))


class Recorder(Handler):
    """Records every callback; echoes if asked."""

    def __init__(self, echo: bool = False, sndbuf: int = 0) -> None:
        self.echo = echo
        self.sndbuf = sndbuf
        self.conns: list[Connection] = []
        self.messages: list[bytes] = []
        self.events: list[str] = []
        self.closed: list[CloseReason] = []

    def on_connect(self, conn):
        if self.sndbuf:  # a small kernel buffer makes backpressure reach the rings quickly
            conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        self.conns.append(conn)
        self.events.append("connect")

    def on_message(self, conn, msg):
        self.messages.append(msg)
        if self.echo:
            conn.send(msg)

    def on_paused(self, conn):
        self.events.append("paused")

    def on_writable(self, conn):
        self.events.append("writable")

    def on_close(self, conn, reason):
        self.closed.append(reason)


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


class Collect:
    """Calling it runs the loop once, then reads what the client socket has (``<EOF>`` at the end)."""

    def __init__(self, loop: Loop, sock: socket.socket, timeout: float = 0.005) -> None:
        self.loop, self.sock, self.timeout = loop, sock, timeout
        self.got = bytearray()
        sock.setblocking(False)

    def __call__(self) -> None:
        self.loop.run_once(self.timeout)
        if self.got.endswith(b"<EOF>"):
            return
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        self.got.extend(data if data else b"<EOF>")

    def until_eof(self, timeout: float = 10.0) -> bytes:
        wait_for(lambda: self.got.endswith(b"<EOF>"), timeout, "EOF at the client", step=self)
        return bytes(self.got[:-5])


def serve(loop: Loop, handler: Handler, max_line: int = 65536, **kw):
    lst = loop.listen(("127.0.0.1", 0), lambda: handler, lambda: LineCodec(max_line), **kw)
    return lst.address


def client(addr) -> socket.socket:
    return socket.create_connection(addr, timeout=10)


def test_echo_round_trip(mode):
    loop = Loop(selector=mode)
    try:
        h = LineEchoHandler()
        addr = serve(loop, h)
        c = client(addr)
        c.sendall(b"one\ntwo\r\n\x00\xff\n")
        col = Collect(loop, c)
        wait_for(lambda: len(col.got) >= 12, what="echo", step=col)
        assert bytes(col.got) == b"one\ntwo\r\n\x00\xff\n"
        c.close()
        run_until(loop, lambda: loop.connection_count == 0, what="close")
        assert loop.pool.chunks_in_use == 0
    finally:
        loop.close()


def test_adopt_serves_a_socket_made_elsewhere(mode):
    loop = Loop(selector=mode)
    try:
        ours, theirs = socket.socketpair()
        conn = loop.adopt(ours, LineEchoHandler(), LineCodec(1024))
        assert loop.connection_count == 1 and loop.stats()["accepted"] == 0
        assert loop.connections() == [conn]
        theirs.sendall(b"adopted\nand echoed\n")
        col = Collect(loop, theirs)
        wait_for(lambda: len(col.got) >= 19, what="echo", step=col)
        assert bytes(col.got) == b"adopted\nand echoed\n"
        theirs.close()
        run_until(loop, lambda: loop.connection_count == 0, what="close")
        assert conn.close_reason is CloseReason.PEER_CLOSED
    finally:
        loop.close()


def test_get_extra_info_gives_the_socket_and_addresses_until_closed():
    loop = Loop()
    try:
        rec = Recorder()
        addr = serve(loop, rec)
        c = client(addr)
        run_until(loop, lambda: rec.conns, what="accept")
        conn = rec.conns[0]
        assert conn.get_extra_info("socket").fileno() == conn.fileno()
        assert conn.get_extra_info("peername") == c.getsockname()
        assert conn.get_extra_info("sockname") == addr
        assert conn.get_extra_info("cipher", "none") == "none"
        conn.abort()
        assert conn.get_extra_info("socket", "gone") == "gone"
        c.close()
    finally:
        loop.close()


def test_burst_larger_than_read_budget_is_read_without_new_edges(mode):
    """The classic ET stall: more bytes than one turn may read, and no further writes."""
    loop = Loop(selector=mode, read_budget=4096)
    try:
        rec = Recorder()
        addr = serve(loop, rec)
        c = client(addr)
        lines = [b"%06d" % i for i in range(30000)]  # 210,000 bytes >> 4096
        payload = b"".join(line + b"\n" for line in lines)
        run_until(loop, lambda: rec.conns, what="accept")
        c.sendall(payload)  # the kernel holds it all (socket buffers are large on loopback)
        # From here on the client is silent: every byte must still arrive.
        run_until(loop, lambda: len(rec.messages) == len(lines), what="all lines")
        assert rec.messages == lines
        assert rec.conns[0].bytes_in == len(payload)
        c.close()
    finally:
        loop.close()


def test_pipelined_megabyte_with_concurrent_reader(mode):
    loop = Loop(selector=mode)
    try:
        addr = serve(loop, LineEchoHandler())
        c = client(addr)
        payload = b"".join(b"line %d of the megabyte\n" % i for i in range(45000))
        assert len(payload) > 1 << 20
        got = bytearray()

        def reader():
            while len(got) < len(payload):
                data = c.recv(1 << 20)
                if not data:
                    return
                got.extend(data)

        t = threading.Thread(target=reader)
        t.start()
        c.sendall(payload)
        run_until(loop, lambda: len(got) >= len(payload), what="echo of 1 MiB")
        t.join(5)
        assert bytes(got) == payload
    finally:
        loop.close()


def test_backpressure_pauses_reading_and_resumes_without_loss(mode):
    loop = Loop(selector=mode)
    try:
        rec = Recorder(echo=True, sndbuf=16384)
        addr = serve(loop, rec, high_water=32 * 1024, low_water=8 * 1024)
        c = client(addr)
        # (A tiny SO_RCVBUF on the client would stall loopback TCP itself: window
        # updates below one MSS are withheld and the sender waits on persist timers.)
        stream = memoryview(b"".join(b"%07d" % i + b"y" * 992 + b"\n" for i in range(8192)))
        total = len(stream)  # 8,192,000 bytes
        sent = 0
        c.setblocking(False)

        def send_more() -> None:
            nonlocal sent
            if sent < total:
                try:
                    sent += c.send(stream[sent:sent + 65536])
                except BlockingIOError:
                    pass

        # The client writes but does not read: the server must pause, not buffer.
        def step():
            loop.run_once(0.005)
            send_more()

        wait_for(lambda: "paused" in rec.events and sent > 0, what="pause", step=step)
        conn = rec.conns[0]
        for _ in range(200):
            step()
        assert not conn.reading
        assert conn.send_buffered <= 32 * 1024 + loop.hub.read_budget + 64 * 1024
        assert loop.pool.chunks_in_use < 40  # bounded, not 8 MB worth
        assert sent < total  # and the client is blocked: the kernel buffers are full too
        # Now read everything back: nothing may be lost or reordered.
        got = bytearray()

        def step2():
            loop.run_once(0.005)
            try:
                got.extend(c.recv(1 << 20))
            except BlockingIOError:
                pass
            send_more()

        wait_for(lambda: len(got) >= total, timeout=60, what="echo", step=step2)
        assert "writable" in rec.events
        assert bytes(got) == stream.tobytes()
    finally:
        loop.close()


def test_slow_consumer_is_aborted_at_hard_limit(mode):
    class Pusher(Handler):
        def on_connect(self, conn):
            self.conn = conn
            for _ in range(100):
                conn.write(b"z" * 65536)

        def on_close(self, conn, reason):
            self.reason = reason

    loop = Loop(selector=mode)
    try:
        p = Pusher()
        addr = serve(loop, p, max_send_buffer=1 << 20, high_water=65536, low_water=1024)
        c = client(addr)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        run_until(loop, lambda: getattr(p, "reason", None), what="close")
        assert p.reason is CloseReason.SLOW_CONSUMER
        assert loop.pool.chunks_in_use == 0
        assert loop.stats()["closed"]["slow_consumer"] == 1
        c.close()
    finally:
        loop.close()


def test_handler_exception_closes_only_that_connection(mode, caplog):
    class Picky(Recorder):
        def on_message(self, conn, msg):
            if msg == b"boom":
                raise RuntimeError("kaboom")
            conn.send(msg)

    loop = Loop(selector=mode)
    try:
        h = Picky()
        addr = serve(loop, h)
        bad, good = client(addr), client(addr)
        run_until(loop, lambda: len(h.conns) == 2)
        with caplog.at_level(logging.ERROR, logger="reactor"):
            bad.sendall(b"ok\nboom\nnever\n")
            run_until(loop, lambda: h.closed, what="bad closed")
        assert h.closed == [CloseReason.HANDLER_ERROR]
        assert sum("kaboom" in r.getMessage() for r in caplog.records) == 1
        bad.settimeout(5)
        assert bad.recv(100) == b"ok\n"  # what was queued before the error is flushed
        good.sendall(b"still here\n")
        col = Collect(loop, good)
        wait_for(lambda: col.got == b"still here\n", step=col, what="good echo")
    finally:
        loop.close()


def test_line_too_long_delivers_earlier_lines_then_closes(mode):
    loop = Loop(selector=mode)
    try:
        addr = serve(loop, LineEchoHandler(), max_line=16)
        c = client(addr)
        c.sendall(b"short\n" + b"x" * 40 + b"\n")
        assert Collect(loop, c).until_eof() == b"short\nERR line too long\n"
        c.close()  # our FIN ends the server's linger
        run_until(loop, lambda: loop.connection_count == 0, what="server side closed")
        assert loop.stats()["closed"]["line_too_long"] == 1
    finally:
        loop.close()


def test_half_close_echoes_lines_then_remainder_then_closes(mode):
    loop = Loop(selector=mode)
    try:
        addr = serve(loop, LineEchoHandler())
        c = client(addr)
        c.sendall(b"a\nb\ntail")
        c.shutdown(socket.SHUT_WR)
        assert Collect(loop, c).until_eof() == b"a\nb\ntail"
        assert loop.stats()["closed"]["peer_closed"] == 1
    finally:
        loop.close()


def test_a_connections_timers_land_on_the_loops_grain():
    """Loop(timer_grain_s=0.05, timer_phase_s=0.02): the heartbeat due at 1002.0013 fires
    on the first grid point after it, 1002.02, not before; a user timer is not rounded."""
    clock = FakeClock(1000.0013)
    loop = Loop(clock=clock, timer_grain_s=0.05, timer_phase_s=0.02)
    try:
        class H(Recorder):
            def on_heartbeat(self, conn):
                self.events.append(("heartbeat", clock.now()))

        h = H()
        addr = serve(loop, h, heartbeat_s=2.0)
        c = client(addr)
        run_until(loop, lambda: h.conns)
        user = loop.call_later(2.0, lambda: None)
        assert user.when == pytest.approx(1002.0013)
        assert h.conns[0]._deadline == 1002020  # ticks of 1 ms: 1002.02
        clock.advance(2.0)  # 1002.0013: the exact deadline, not yet the grid's
        for _ in range(3):
            loop.run_once(0)
        assert h.events == ["connect"]
        clock.advance(1002.02 - clock.now())
        run_until(loop, lambda: len(h.events) > 1, what="heartbeat")
        assert h.events == ["connect", ("heartbeat", pytest.approx(1002.02))]
        c.close()
    finally:
        loop.close()


def test_idle_timeout_and_heartbeat_follow_the_fake_clock(mode):
    clock = FakeClock(1000.0)
    loop = Loop(selector=mode, clock=clock)
    try:
        class H(Recorder):
            def on_heartbeat(self, conn):
                self.events.append("heartbeat")
                conn.write(b"PING\n")

        h = H()
        addr = serve(loop, h, idle_timeout_s=5.0, heartbeat_s=2.0)
        c = client(addr)
        run_until(loop, lambda: h.conns)
        clock.advance(1.5)
        loop.run_once(0)
        assert "heartbeat" not in h.events
        clock.advance(0.6)
        run_until(loop, lambda: "heartbeat" in h.events, what="heartbeat")
        c.sendall(b"alive\n")
        run_until(loop, lambda: h.messages, what="message")
        clock.advance(4.0)  # 4 s after the last byte: not idle yet
        for _ in range(5):
            loop.run_once(0)
        assert h.closed == []
        clock.advance(1.1)
        conn = h.conns[0]
        run_until(loop, lambda: conn.close_reason, what="idle close")
        assert conn.close_reason is CloseReason.IDLE_TIMEOUT
        assert Collect(loop, c).until_eof() == b"PING\n" * h.events.count("heartbeat")
        c.close()
        run_until(loop, lambda: h.closed, what="on_close")
        assert h.closed == [CloseReason.IDLE_TIMEOUT]
    finally:
        loop.close()


def test_a_pool_smaller_than_the_shares_is_backpressure_bounded_then_recovery(mode):
    class SmallKernelBuffers(Handler):
        """Per line (send() encodes into the send ring), so the backlog is in pool chunks."""

        def on_connect(self, conn):  # so the replies back up into the rings, not the kernel
            conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        def on_message(self, conn, line):
            conn.send(line)

    pool = BufferPool(chunk_size=1024, chunks=16)  # 16 KiB in all, fixed: far below 8 shares
    loop = Loop(selector=mode, pool=pool, read_reserve=4, read_budget=64 * 1024)
    try:
        addr = serve(loop, SmallKernelBuffers(), max_line=512, high_water=4096, low_water=1024)
        clients = [client(addr) for _ in range(8)]
        payloads = [b"".join(b"c%d-%06d\n" % (i, n) for n in range(20000)) for i in range(8)]
        writers = [threading.Thread(target=c.sendall, args=(p,)) for c, p in zip(clients, payloads)]
        for t in writers:
            t.start()
        # Nobody reads yet: the replies pile up, which must turn into backpressure on
        # every connection, each within its fair share (heap chunks past the pool's cap),
        # not into unbounded memory or a crash.
        run_until(loop, lambda: len(loop.connections()) == 8
                  and all(not c.reading for c in loop.connections()),
                  what="every connection stops reading")
        share = loop.buffer_share
        assert share == MIN_SHARE
        for c in loop.connections():  # the backlog that paused it, plus one read's reply
            assert c.send_buffered <= 2 * share, (c.send_buffered, share)
        s = pool.stats()
        assert s.chunks_in_use == 16 and s.overflow_in_use > 0  # the pool ran dry
        assert (s.chunks_in_use + s.overflow_in_use) * 1024 <= 8 * (2 * share + 1024)
        got = [bytearray() for _ in clients]
        readers = []
        for c, p, g in zip(clients, payloads, got):
            def reader(c=c, p=p, g=g):
                while len(g) < len(p):
                    data = c.recv(65536)
                    if not data:
                        return
                    g.extend(data)
            readers.append(threading.Thread(target=reader))
        for t in readers:
            t.start()
        run_until(loop, lambda: all(len(g) >= len(p) for g, p in zip(got, payloads)),
                  timeout=60, what="all echoes")
        for t in writers + readers:
            t.join(5)
        assert [bytes(g) for g in got] == payloads
        for c in clients:
            c.close()
        run_until(loop, lambda: loop.connection_count == 0)
        assert pool.chunks_in_use == 0 and pool.stats().overflow_in_use == 0
    finally:
        loop.close()


def test_pause_and_resume_reading(mode):
    loop = Loop(selector=mode)
    try:
        rec = Recorder()
        addr = serve(loop, rec)
        c = client(addr)
        run_until(loop, lambda: rec.conns)
        conn = rec.conns[0]
        conn.pause_reading()
        c.sendall(b"1\n2\n")
        for _ in range(20):
            loop.run_once(0.005)
        assert rec.messages == []
        conn.resume_reading()
        run_until(loop, lambda: rec.messages == [b"1", b"2"], what="resume")
    finally:
        loop.close()


def test_outgoing_connect_and_failure(mode):
    loop = Loop(selector=mode)
    try:
        addr = serve(loop, LineEchoHandler())
        out = Recorder()
        conn = loop.connect(addr, lambda: out, LineCodec)
        conn.send(b"queued before connect")
        run_until(loop, lambda: out.messages, what="echo over outgoing connection")
        assert out.messages == [b"queued before connect"]
        conn.close()
        run_until(loop, lambda: out.closed)
        # A port nobody listens on.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        failed = Recorder()
        conn2 = loop.connect(("127.0.0.1", port), lambda: failed, LineCodec)
        run_until(loop, lambda: failed.closed, what="connect failure")
        assert failed.closed == [CloseReason.CONNECT_FAILED]
        assert isinstance(conn2.error, OSError)
        assert "connect" not in failed.events
    finally:
        loop.close()


def test_broadcast_skips_peers_above_their_watermark(mode):
    loop = Loop(selector=mode)
    try:
        rec = Recorder(sndbuf=8192)
        addr = serve(loop, rec, high_water=16 * 1024, low_water=4096)
        slow, fast = client(addr), client(addr)
        # The slow peer never reads; a small receive buffer keeps its kernel from absorbing
        # the broadcast as its window autotunes (which made it writable again at times).
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        run_until(loop, lambda: len(rec.conns) == 2)
        by_port = {c.peer[1]: c for c in rec.conns}
        slow_conn = by_port[slow.getsockname()[1]]
        fast_conn = by_port[fast.getsockname()[1]]
        step = Collect(loop, fast, timeout=0.001)
        received = step.got
        skipped_total = 0
        fast_expected = 0
        msg = b"m" * 4095 + b"\n"

        for _ in range(400):
            fast_expected += fast_conn.writable
            res = broadcast(rec.conns, msg)
            skipped_total += res.skipped
            step()
        assert skipped_total > 0 and not slow_conn.writable
        assert slow_conn.send_buffered <= 16 * 1024 + len(msg)  # skipped, not queued for
        assert loop.stats()["broadcast_skipped"] == skipped_total
        wait_for(lambda: len(received) >= fast_expected * len(msg), step=step, what="fast peer")
        assert bytes(received) == msg * fast_expected
        assert fast_expected >= 390  # the slow peer did not hold the fast one back
    finally:
        loop.close()


def test_a_reader_that_keeps_up_is_not_a_laggard_when_one_burst_is_fanned_out(mode):
    """One sender's burst, read in one turn and broadcast line by line, queues more than
    the high watermark for every other peer before the iteration's flush: the kernel is
    tried first, so a peer that reads is neither skipped nor paused."""

    class Fanout(Recorder):
        def on_message(self, conn, msg):
            broadcast([c for c in self.conns if c is not conn], msg + b"\n")

    loop = Loop(selector=mode)
    try:
        rec = Fanout()
        addr = serve(loop, rec, high_water=16 * 1024, low_water=4096)
        reader, sender = client(addr), client(addr)
        run_until(loop, lambda: len(rec.conns) == 2)
        data = b"".join(b"line %08d\n" % i for i in range(20000))  # 280,000 bytes
        threading.Thread(target=sender.sendall, args=(data,), daemon=True).start()
        step = Collect(loop, reader, timeout=0.001)
        wait_for(lambda: len(step.got) >= len(data), step=step, what="every line")
        assert bytes(step.got) == data
        assert loop.stats()["broadcast_skipped"] == 0
    finally:
        loop.close()


def test_graceful_close_lingers_so_replies_are_not_reset(mode):
    """Server closes while the client is still sending: the reply must arrive whole."""

    class ReplyThenClose(Handler):
        def on_message(self, conn, msg):
            conn.write(b"R" * 200000)
            conn.close()

    loop = Loop(selector=mode)
    try:
        addr = serve(loop, ReplyThenClose())
        c = client(addr)
        c.sendall(b"go\n" + b"noise" * 20000)  # unread bytes pending at close
        got = bytearray()

        def reader():
            c.settimeout(10)
            while True:
                try:
                    data = c.recv(65536)
                except ConnectionResetError:
                    got.extend(b"<RST>")
                    return
                if not data:
                    return
                got.extend(data)

        t = threading.Thread(target=reader)
        t.start()
        run_until(loop, lambda: not t.is_alive() or loop.connection_count == 0)
        c.shutdown(socket.SHUT_WR)  # the client's FIN ends the linger
        run_until(loop, lambda: not t.is_alive(), what="client sees EOF")
        assert bytes(got) == b"R" * 200000
    finally:
        loop.close()


def test_close_to_a_peer_that_never_reads_ends_at_close_timeout(mode):
    class BigReplyThenClose(Recorder):
        def on_message(self, conn, msg):
            conn.write(b"B" * (2 << 20))
            conn.close()

    loop = Loop(selector=mode)
    try:
        h = BigReplyThenClose(sndbuf=8192)
        addr = serve(loop, h, close_timeout_s=0.3, max_send_buffer=8 << 20, high_water=4 << 20,
                     low_water=1 << 20)
        c = client(addr)
        c.sendall(b"go\n")
        run_until(loop, lambda: h.conns and h.conns[0].close_reason, what="closing")
        conn = h.conns[0]
        assert not conn.closed  # still flushing to a peer that does not read
        run_until(loop, lambda: h.closed, what="close timeout")
        assert h.closed == [CloseReason.LOCAL_CLOSE]
        assert loop.pool.chunks_in_use == 0
        c.close()
    finally:
        loop.close()


@pytest.mark.parametrize("line_len", [3, 900, 1025, 5000, 70000])
def test_lines_arriving_in_pieces_across_reads_are_echoed_exactly(mode, line_len):
    """Partial lines between reads: short ones kept as bytes, long ones in pooled chunks,
    the scratch ring in between; every byte must come back in order."""
    loop = Loop(selector=mode, read_budget=16 * 1024)
    try:
        addr = serve(loop, LineEchoHandler(), max_line=1 << 20)
        c = client(addr)
        payload = b"".join(bytes([65 + i % 26]) * (line_len - 1) + b"\n" for i in range(20))
        col = Collect(loop, c, timeout=0)
        piece = max(777, line_len // 9)
        for k in range(0, len(payload), piece):
            c.sendall(payload[k:k + piece])
            col()
        wait_for(lambda: len(col.got) >= len(payload), step=col, what="echo")
        assert bytes(col.got) == payload
        assert loop.connections()[0].recv_buffered == 0
        assert loop.pool.chunks_in_use == 0
    finally:
        loop.close()


def test_mixed_line_lengths_switching_between_flat_buffer_and_ring(mode):
    """Each piece is its own read, so the partial line moves between bytes (short) and a
    pooled ring (over 1 KiB) and back many times; every byte must come back in order."""
    import random

    rnd = random.Random(7)
    loop = Loop(selector=mode, read_budget=8 * 1024)
    try:
        addr = serve(loop, LineEchoHandler(), max_line=1 << 16)
        c = client(addr)
        payload = b"".join(bytes([97 + i % 26]) * rnd.choice([0, 1, 40, 900, 1100, 3000])
                           + b"\n" for i in range(300))
        col = Collect(loop, c, timeout=0)
        run_until(loop, lambda: loop.connections(), what="accept")
        conn = loop.connections()[0]
        sent = 0
        while sent < len(payload):
            piece = payload[sent:sent + rnd.randint(1, 4000)]
            c.sendall(piece)
            sent += len(piece)
            wait_for(lambda: conn.bytes_in == sent, step=col, what="the piece is read")
        wait_for(lambda: len(col.got) >= len(payload), step=col, what="echo")
        assert bytes(col.got) == payload
        assert conn.recv_buffered == 0 and loop.pool.chunks_in_use == 0
    finally:
        loop.close()


@pytest.mark.parametrize("handler", ["batch", "per_frame"])
def test_frame_timeout_closes_a_slow_partial_line_after_echoing_the_complete_ones(mode, handler):
    """Slowloris: a partial line older than frame_timeout_s is an error; the lines before
    it are echoed first, and bytes trickling into the partial line do not reset its age."""
    clock = FakeClock(1000.0)
    loop = Loop(selector=mode, clock=clock)
    try:
        closed = []

        class Echo(LineEchoHandler):
            def on_close(self, conn, reason):
                closed.append(reason)

        class PerFrame(Recorder):
            def on_close(self, conn, reason):
                closed.append(reason)

        h = Echo() if handler == "batch" else PerFrame(echo=True)
        addr = serve(loop, h, frame_timeout_s=5.0)
        c = client(addr)
        col = Collect(loop, c)
        c.sendall(b"one\ntwo\nthr")
        wait_for(lambda: len(col.got) >= 8, step=col, what="the complete lines")
        for _ in range(4):  # a byte every 1.2 s: the line is still the one that began at 0
            clock.advance(1.2)
            c.sendall(b"e")
            run_until(loop, lambda: loop.connections()[0].recv_buffered >= 4)
        conn = loop.connections()[0]
        assert conn.close_reason is None
        clock.advance(0.3)  # 5.1 s since "thr" arrived
        run_until(loop, lambda: conn.close_reason, what="the timeout")
        expected = b"one\ntwo\n" + (b"ERR line timeout\n" if handler == "batch" else b"")
        assert col.until_eof() == expected  # then the server shuts its side down and lingers
        c.close()
        run_until(loop, lambda: closed, what="on_close")
        assert closed == [CloseReason.LINE_TIMEOUT]
    finally:
        loop.close()


def test_frame_timeout_never_fires_on_lines_that_complete(mode):
    clock = FakeClock(1000.0)
    loop = Loop(selector=mode, clock=clock)
    try:
        addr = serve(loop, LineEchoHandler(), frame_timeout_s=1.0)
        c = client(addr)
        col = Collect(loop, c)
        run_until(loop, loop.connections, what="accept")
        sent = b""
        for i in range(12):  # each line arrives in two halves 0.6 s apart: 7.2 s in all
            for half in (b"line %d" % i, b" done\n"):
                c.sendall(half)
                sent += half
                wait_for(lambda: loop.connections()[0].bytes_in == len(sent), step=col)
                clock.advance(0.6)
                loop.run_once(0)
        wait_for(lambda: len(col.got) >= len(sent), step=col, what="every line")
        assert bytes(col.got) == sent and loop.connection_count == 1
        clock.advance(10.0)  # no partial line held: nothing to time out
        for _ in range(5):
            loop.run_once(0)
        assert loop.connection_count == 1
    finally:
        loop.close()


def test_write_timeout_aborts_a_stalled_peer_but_not_a_slow_reader(mode):
    clock = FakeClock(1000.0)
    loop = Loop(selector=mode, clock=clock)
    try:
        h = Recorder()
        addr = serve(loop, h, write_timeout_s=2.0, heartbeat_s=0.5, max_send_buffer=16 << 20)
        # A fixed receive buffer (no autotuning, set before connect): once it is full the
        # stalled peer's kernel takes no more, so the server's send queue cannot shrink.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stalled.settimeout(10)
        stalled.connect(addr)
        slow = client(addr)
        run_until(loop, lambda: len(h.conns) == 2)
        by_port = {conn.peer[1]: conn for conn in h.conns}
        stalled_conn, slow_conn = (by_port[c.getsockname()[1]] for c in (stalled, slow))
        blob = bytes(range(256)) * 32768  # 8 MiB each: far more than the kernel buffers hold
        for conn in h.conns:
            conn.write(blob)
        run_until(loop, lambda: h.events.count("paused") == 2, what="both over high water")
        got = bytearray()
        slow.setblocking(False)

        def step():  # the loop runs while the slow one reads what has arrived
            loop.run_once(0)
            try:
                got.extend(slow.recv(1 << 16))
            except BlockingIOError:
                pass

        sent = bytearray(blob)
        # At least 4 s: the write timeout (2 s) and the grace in which the stalled one's
        # kernel send queue is watched (1 s) pass. Every 0.5 s the slow one reads until the
        # server can send more (it took some bytes); the other one reads nothing. On a busy
        # machine the stalled one's kernel may still be taking in-flight bytes at the first
        # look (the queue shrank: another grace), so the rounds go on until it is closed,
        # with a bound.
        rounds = 0
        while rounds < 8 or (stalled_conn.close_reason is None and rounds < 24):
            rounds += 1
            clock.advance(0.5)
            before = slow_conn.send_buffered
            wait_for(lambda: slow_conn.send_buffered < before, step=step, what="progress")
            slow_conn.write(blob[:1 << 20])  # and the server keeps it over the watermark
            sent += blob[:1 << 20]
        assert stalled_conn.close_reason is CloseReason.SLOW_CONSUMER
        assert slow_conn.close_reason is None and got == sent[:len(got)]
        assert "heartbeat" not in h.events  # no PING to a peer that is not reading
        with pytest.raises(ConnectionResetError):  # an abort is a reset
            while stalled.recv(1 << 16):
                pass
    finally:
        loop.close()


def test_lost_segments_excuse_a_peer_that_takes_nothing_for_a_bounded_time(mode, monkeypatch):
    """A peer whose kernel drops what it cannot hold looks, from here, like one behind a lossy
    link: TCP_INFO says retransmitting with an open window. The excuse ends after
    _LOSS_GRACE_S, so a peer that does not read is closed even then."""
    import reactor.lifecycle as lifecycle

    monkeypatch.setattr(Connection, "_retransmitting", lambda self: True)
    clock = FakeClock(1000.0)
    loop = Loop(selector=mode, clock=clock)
    try:
        h = Recorder()
        addr = serve(loop, h, write_timeout_s=2.0, max_send_buffer=16 << 20)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stalled.settimeout(10)
        stalled.connect(addr)
        run_until(loop, lambda: len(h.conns) == 1)
        conn = h.conns[0]
        conn.write(bytes(range(256)) * 32768)  # 8 MiB: far more than the kernel buffers hold
        run_until(loop, lambda: "paused" in h.events, what="over high water")
        for _ in range(50):  # the kernel's buffers fill: then it takes nothing more
            loop.run_once(0.002)
        t0 = clock.now()
        while clock.now() - t0 < lifecycle._LOSS_GRACE_S - 2.0:
            clock.advance(0.5)
            for _ in range(3):
                loop.run_once(0)
            assert conn.close_reason is None, f"closed after {clock.now() - t0:.1f} s"
        while conn.close_reason is None and clock.now() - t0 < lifecycle._LOSS_GRACE_S + 5.0:
            clock.advance(0.5)
            for _ in range(3):
                loop.run_once(0)
        assert conn.close_reason is CloseReason.SLOW_CONSUMER
    finally:
        loop.close()


def test_a_reset_connection_is_freed_without_the_cycle_collector(mode):
    """conn.error keeps the socket error without its traceback: the traceback's frames would
    hold the connection in a reference cycle that only a full GC frees (RSS grew with
    every reset connection under churn)."""
    import gc
    import struct
    import sys

    loop = Loop(selector=mode)
    gc.disable()
    try:
        rec = Recorder()
        addr = serve(loop, rec)
        c = client(addr)
        run_until(loop, lambda: rec.conns, what="accept")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sendall(b"partial")
        c.close()  # a reset
        run_until(loop, lambda: rec.closed, what="on_close")
        conn = rec.conns.pop()
        assert rec.closed == [CloseReason.PEER_RESET] and isinstance(conn.error, OSError)
        assert conn.error.__traceback__ is None
        before = sys.getrefcount(conn)
        # Only this frame's name and getrefcount's argument hold it: no cycle keeps it.
        assert before == 2
    finally:
        gc.enable()
        loop.close()


@pytest.mark.parametrize("ca_state, retransmits, unacked, window, lost", [
    (4, 3, 2, 65535, True),  # TCP_CA_Loss, segments in flight, an open window: the network
    (0, 1, 5, 65535, True),  # a retransmission under way
    (4, 0, 1, 0, False),     # lost on the way, but the peer's window is shut: it does not read
    (0, 0, 0, 0, False),     # nothing in flight: a closed window (zero-window probes)
    (4, 2, 0, 65535, False),  # nothing in flight is no loss of ours
    (0, 0, 9, 65535, False),  # in flight and no timeout yet: just a busy link
    (4, 3, 2, None, True),   # a kernel before 5.4 (no tcpi_snd_wnd): the doubt favours the peer
])
def test_retransmitting_reads_tcp_info(ca_state, retransmits, unacked, window, lost):
    info = bytearray(104 if window is None else 232)
    info[0], info[1], info[2] = 1, ca_state, retransmits
    info[24:28] = unacked.to_bytes(4, sys.byteorder)
    if window is not None:
        info[228:232] = window.to_bytes(4, sys.byteorder)

    class Sock:
        def getsockopt(self, level, name, size):
            assert (level, name) == (socket.IPPROTO_TCP, socket.TCP_INFO)
            return bytes(info[:size])

    class NoTcpInfo:
        def getsockopt(self, level, name, size):
            raise OSError(95, "Operation not supported")  # a unix socket

    conn = types.SimpleNamespace(_sock=Sock())
    assert Connection._retransmitting(conn) is lost
    assert Connection._retransmitting(types.SimpleNamespace(_sock=NoTcpInfo())) is False
