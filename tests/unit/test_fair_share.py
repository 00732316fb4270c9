"""The fair share of buffer memory: its bounds alone, then on a loop with a dry pool.

The policy (reactor/pool.py ``fair_share``, applied by Loop and Connection): a read asks
at most one share, reading pauses once a connection's send backlog is over
``min(high_water, share)``, and a connection below its share is never refused memory. So no
connection waits on another's peer: peers that never read cannot stop the ones that do.
"""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.echo import LineEchoHandler
from reactor import BufferPool, CloseReason, Loop
from reactor.connection import F_BLOCKED
from reactor.pool import MIN_SHARE, fair_share
from tests.conftest import wait_for
from tests.unit.test_connection import MODES, Recorder, client, run_until, serve


@given(max_bytes=st.integers(1, 1 << 34), conns=st.integers(0, 2_000_000),
       read_budget=st.integers(1, 1 << 22))
def test_fair_share_bounds(max_bytes, conns, read_budget):
    share = fair_share(max_bytes, conns, read_budget)
    assert share >= MIN_SHARE
    assert share <= max(read_budget, MIN_SHARE)
    # Two shares a connection (backlog, then one read's reply) fit the cap, or the floor.
    assert 2 * share * max(conns, 1) <= max(max_bytes, 2 * MIN_SHARE * max(conns, 1))
    # More connections never get a larger share.
    assert fair_share(max_bytes, conns + 1, read_budget) <= share


def test_the_share_follows_the_connection_count():
    pool = BufferPool(1024, 16, max_chunks=256)  # 256 KiB cap
    loop = Loop(pool=pool, read_budget=64 * 1024)
    try:
        assert loop.buffer_share == 64 * 1024  # one connection or none: a read budget
        addr = serve(loop, LineEchoHandler())
        clients = [client(addr) for _ in range(12)]
        run_until(loop, lambda: loop.connection_count == 12)
        assert loop.buffer_share == fair_share(256 * 1024, 12, 64 * 1024) == 10922
        for c in clients[:10]:
            c.close()
        run_until(loop, lambda: loop.connection_count == 2)
        assert loop.buffer_share == 64 * 1024
        for c in clients[10:]:
            c.close()
        run_until(loop, lambda: loop.connection_count == 0)
    finally:
        loop.close()


class SmallBuffers(LineEchoHandler):
    """The batch (flat) read path, with a small kernel send buffer so replies back up."""

    def on_connect(self, conn):
        conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def _handler(kind: str):
    return SmallBuffers() if kind == "batch" else Recorder(echo=True, sndbuf=4096)


def _send(sock: socket.socket, data: bytes) -> threading.Thread:
    def run():
        try:
            sock.sendall(data)
        except OSError:  # closed by the server (a slow consumer) or at the end of the test
            pass
    return threading.Thread(target=run, daemon=True)


def _reader(sock: socket.socket, want: int, got: bytearray) -> threading.Thread:
    def run():
        while len(got) < want:
            data = sock.recv(65536)
            if not data:
                return
            got.extend(data)
    return threading.Thread(target=run, daemon=True)


@pytest.mark.parametrize("kind", ["batch", "per-line"])
@pytest.mark.parametrize("mode", MODES)
def test_a_dry_pool_never_stops_a_connection_whose_peer_reads(mode, kind):
    pool = BufferPool(chunk_size=1024, chunks=16)  # 16 KiB, fixed: dry at once
    loop = Loop(selector=mode, pool=pool, read_budget=64 * 1024, read_reserve=4)
    try:
        addr = serve(loop, _handler(kind), max_line=512, high_water=8192, low_water=2048)
        stuck = [client(addr) for _ in range(6)]  # never read
        for s in stuck:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        readers = [client(addr) for _ in range(2)]
        payload = [b"".join(b"r%d-%07d\n" % (i, n) for n in range(60000)) for i in range(2)]
        junk = b"".join(b"s-%07d\n" % n for n in range(60000))
        writers = [_send(s, junk) for s in stuck]
        for t in writers:
            t.start()
        # First the never-readers fill the pool and stop, each at its own backlog...
        run_until(loop, lambda: loop.connection_count == 8 and sum(
            not c.reading for c in loop.connections()) >= 6, what="the never-readers paused")
        if kind == "per-line":  # replies in send rings: the pool ran dry
            assert pool.chunks_free == 0 or pool.stats().overflow_in_use > 0
        # (the batch path keeps each reply by reference: its backlog takes no chunk)
        # ...then the readers start, and must get every byte back while the others wait.
        got = [bytearray(), bytearray()]
        threads = [_send(r, p) for r, p in zip(readers, payload)]
        threads += [_reader(r, len(p), g) for r, p, g in zip(readers, payload, got)]
        for t in threads:
            t.start()
        run_until(loop, lambda: all(len(g) >= len(p) for g, p in zip(got, payload)),
                  timeout=60, what="the readers' echoes")
        assert [bytes(g) for g in got] == payload
        stalled = [c for c in loop.connections() if c.send_buffered]
        assert len(stalled) >= 6 and all(not c.reading for c in stalled)
        share = loop.buffer_share
        assert all(c.send_buffered <= 2 * share for c in loop.connections())
        for s in stuck + readers:
            s.close()
        run_until(loop, lambda: loop.connection_count == 0, timeout=20)
        assert pool.chunks_in_use == 0 and pool.stats().overflow_in_use == 0
    finally:
        loop.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_peer_that_reads_is_not_closed_as_slow_while_one_that_never_reads_is(mode):
    pool = BufferPool(chunk_size=1024, chunks=16)
    loop = Loop(selector=mode, pool=pool, read_budget=64 * 1024, read_reserve=4)
    rec = Recorder(echo=True, sndbuf=4096)
    try:
        addr = serve(loop, rec, max_line=512, high_water=8192, low_water=2048,
                     write_timeout_s=0.5)
        never = client(addr)
        never.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow = client(addr)  # (not a small SO_RCVBUF: loopback's 64 KiB MSS would leave its
        # window shut until the persist timer, which is the kernel stalling, not the peer)
        junk = b"x" * 100 + b"\n"
        payload = b"".join(b"slow-%07d\n" % n for n in range(150000))  # 2 MB
        _send(never, junk * 20000).start()
        _send(slow, payload).start()
        got = bytearray()
        stop = threading.Event()

        def slow_reader():  # 4 KiB at a time, a pause between: slow, but always taking bytes
            while len(got) < len(payload) and not stop.is_set():
                data = slow.recv(4096)
                if not data:
                    return
                got.extend(data)
                stop.wait(0.002)
        t = threading.Thread(target=slow_reader, daemon=True)
        t.start()
        run_until(loop, lambda: CloseReason.SLOW_CONSUMER in rec.closed, timeout=30,
                  what="the never-reader closed as slow")
        run_until(loop, lambda: len(got) >= len(payload), timeout=60, what="the slow reader")
        assert bytes(got) == payload
        assert rec.closed == [CloseReason.SLOW_CONSUMER]  # only the one that never read
        stop.set()
        slow.close()
        never.close()
        run_until(loop, lambda: loop.connection_count == 0, timeout=20)
    finally:
        loop.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_draining_a_large_kernel_buffer_is_not_a_slow_consumer(mode):
    """It takes bytes, but too few at a time for the kernel to raise an OUT edge soon (it
    waits for a third of the send buffer, ~2.7 MiB here, to be free), so the server may send
    nothing for longer than the write timeout: the kernel's shrinking send queue (SIOCOUTQ)
    keeps it open."""
    from reactor import FakeClock

    class BigKernelBuffer(Recorder):
        def on_connect(self, conn):
            conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            super().on_connect(conn)

    clock = FakeClock(1000.0)
    loop = Loop(selector=mode, clock=clock)
    h = BigKernelBuffer()
    try:
        addr = serve(loop, h, write_timeout_s=2.0, max_send_buffer=64 << 20)
        slow, never = client(addr), client(addr)
        run_until(loop, lambda: len(h.conns) == 2)
        by_port = {conn.peer[1]: conn for conn in h.conns}
        slow_conn, never_conn = (by_port[c.getsockname()[1]] for c in (slow, never))
        blob = bytes(range(256)) * (48 << 12)  # 48 MiB each: the kernel takes a few
        for conn in h.conns:
            conn.write(blob)
        run_until(loop, lambda: all(c._flags & F_BLOCKED for c in h.conns), what="both blocked")
        slow.setblocking(False)
        got = bytearray()
        steps = 0
        while never_conn.close_reason is None and steps < 40:  # 20 s of fake time at most
            steps += 1
            clock.advance(0.5)
            # 256 KiB per half second: always, but slowly (well above loopback's 64 KiB MSS,
            # so the window it frees is announced: less would leave the kernel's queue still)
            want = len(got) + (256 << 10)
            wait_for(lambda: len(got) >= want, what="the slow reader's bytes",
                     step=lambda: (loop.run_once(0), got.extend(_recv_some(slow))))
        assert never_conn.close_reason is CloseReason.SLOW_CONSUMER
        assert slow_conn.close_reason is None
        assert bytes(got) == blob[:len(got)]
        assert slow_conn.bytes_out - len(got) > 0  # it is still behind: reading, slowly
    finally:
        loop.close()


def _recv_some(sock: socket.socket) -> bytes:
    try:
        return sock.recv(16384)
    except BlockingIOError:
        return b""
