"""reactor/reading.py: the read path is chosen once per connection, and every path hands the
handler the same bytes, in order, with the same limits, however the input is cut."""

from __future__ import annotations

import itertools
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reactor
import reactor.connection
import reactor.reading as reading
from handlers.length_prefixed import LengthPrefixedCodec
from handlers.line import LineCodec
from reactor import CloseReason, Handler
from reactor.connstate import B_ECHO, B_FLAT, B_NONE, B_RING, F_BLOCKED, P_BACKPRESSURE
from reactor.reading import PUMPS, Reading
from reactor.testing import Harness, MemorySocket


class PerFrame(Handler):
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.closed: list[CloseReason] = []

    def on_message(self, conn, msg):
        self.got.append(bytes(msg))

    def on_close(self, conn, reason):
        self.closed.append(reason)

    def wire(self) -> bytes:
        """What was delivered, as it came on the wire (a frame is a line without its \\n)."""
        return b"".join(m + b"\n" for m in self.got)


class Batched(PerFrame):
    def on_batch(self, conn, data):  # type: ignore[override]
        self.got.append(bytes(data))

    def wire(self) -> bytes:
        return b"".join(self.got)


class RingBatchLines:
    """LineCodec with the batch capability but not the flat one: the ring batch path."""

    def __init__(self, max_line: int) -> None:
        self._inner = LineCodec(max_line)
        self.max_frame_bytes = max_line
        self.maybe_take_frame = self._inner.maybe_take_frame
        self.take_remainder = self._inner.take_remainder
        self.encode = self._inner.encode
        self.encode_into = self._inner.encode_into

    def maybe_take_batch(self, buf):
        return self._inner.maybe_take_batch(buf)


PATHS = {  # name: (handler, codec, the path chosen, its read core)
    "per frame": (PerFrame, LineCodec, B_NONE, Reading._pump_ring),
    "ring batch": (Batched, RingBatchLines, B_RING, Reading._pump_ring),
    "flat batch": (Batched, LineCodec, B_FLAT, Reading._pump_flat),
}


@pytest.mark.parametrize("name", PATHS)
def test_the_path_is_bound_into_the_class_once(name, monkeypatch):
    handler_cls, codec_cls, path, pump = PATHS[name]
    with Harness(handler_cls(), codec_cls(64)) as h:
        assert type(h.conn)._batch == path and type(h.conn)._pump is pump is PUMPS[path]
        # Nothing asks the codec or the handler again per event: with the choosers made to
        # fail where the connection looks them up, reads still go the same way...
        def chooser_called(*_args):
            raise AssertionError("the read path was chosen again")

        monkeypatch.setattr(reading, "_codec_batch_path", chooser_called)
        monkeypatch.setattr(reading, "read_path", chooser_called)
        monkeypatch.setattr(reactor.connection, "read_path", chooser_called)
        # ... while a new connection, which must choose, does reach them.
        with pytest.raises(AssertionError, match="chosen again"):
            Harness(handler_cls(), codec_cls(64))
        h.feed(b"one\ntw")
        h.feed(b"o\n")
        assert h.handler.wire() == b"one\ntwo\n"
        assert len(h.handler.got) == 2  # one per line, or one per read (each completed one)


def test_a_codec_without_the_batch_capability_gets_frames_even_for_a_batch_handler():
    with Harness(Batched(), LengthPrefixedCodec(header_bytes=1, max_frame_bytes=255)) as h:
        assert type(h.conn)._pump is Reading._pump_ring and type(h.conn)._batch == B_NONE
        h.feed(b"\x03abc\x01")
        h.feed(b"d\x02e")
        assert h.handler.got == [b"abc", b"d"]


LINES = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"),
                 max_size=20)


@settings(max_examples=60, deadline=None)
@given(LINES, st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
       st.lists(st.integers(0, 2000), max_size=12), st.booleans())
def test_every_path_delivers_the_same_bytes_and_the_same_verdict(lines, tail, cuts, eof):
    """Per frame, ring batch and flat batch: the lines joined, the partial tail kept for
    on_eof, and a line over the limit (32) closes with LINE_TOO_LONG after the good ones."""
    data = b"".join(lines) + tail
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    seen = {}
    for name, (handler_cls, codec_cls, _, _) in PATHS.items():
        handler = handler_cls()
        with Harness(handler, codec_cls(32)) as h:
            for a, b in itertools.pairwise(bounds):
                if h.closed:
                    break
                h.feed(data[a:b])
            if eof and not h.closed:
                h.feed_eof()
            seen[name] = (handler.wire(), h.close_reason, h.conn.recv_buffered if not h.closed else None)
    first = next(iter(seen.values()))
    assert all(v == first for v in seen.values()), seen
    good = list(itertools.takewhile(lambda line: len(line) <= 32, lines))
    # max_line counts the newline: a partial line of 32 bytes can no longer fit.
    if len(good) < len(lines) or len(tail) >= 32:
        assert first[1] is CloseReason.LINE_TOO_LONG
        assert first[0] == b"".join(good)
    else:
        assert first[0] == b"".join(lines)
        assert first[1] is (CloseReason.PEER_CLOSED if eof else None)


# ---------------------------------------------------------------- the echo path (B_ECHO)

class RecordsReads(MemorySocket):
    """A MemorySocket that remembers how many bytes each recv_into asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    def recv_into(self, buf, nbytes=0):
        self.asked.append(nbytes or len(buf))
        return super().recv_into(buf, nbytes)


@pytest.mark.parametrize("name", PATHS)
def test_a_kept_partial_line_does_not_shrink_the_next_read(name):
    """Every recv asks a whole read (the loop's read size, 64 KiB here) even with a partial
    line of up to 1 KiB kept in front of it: the shared read buffers hold both."""
    handler_cls, codec_cls, _path, _pump = PATHS[name]
    sock = RecordsReads()
    lines = b"".join(b"%07d\n" % i for i in range(40000))  # 320,000 bytes
    with Harness(handler_cls(), codec_cls(4096), sock=sock) as h:
        assert h.conn._hub.share == 64 * 1024
        h.feed(b"p" * 1000)  # a partial line, kept as bytes between reads
        assert h.conn.recv_buffered == 1000
        sock.asked.clear()
        h.feed(b"\n" + lines)
        assert sock.asked[0] == 64 * 1024
        assert max(sock.asked) == 64 * 1024
        assert h.handler.wire() == b"p" * 1000 + b"\n" + lines


class WritesBatches(PerFrame):
    """An echo through on_batch (no echo_batches): the reference the echo path must match."""

    def on_batch(self, conn, data):  # type: ignore[override]
        self.got.append(bytes(data))
        conn.write(data)


class DeclaredEcho(WritesBatches):
    echo_batches = True


def test_echo_batches_takes_the_echo_path_only_on_the_flat_codec():
    with Harness(DeclaredEcho(), LineCodec(64)) as h:
        assert type(h.conn)._batch == B_ECHO and type(h.conn)._pump is Reading._pump_flat
        h.feed(b"a\nb")
        assert h.take() == b"a\n" and h.handler.got == []  # sent from the buffer, no call
        h.feed(b"\n")
        assert h.take() == b"b\n"
    with Harness(DeclaredEcho(), RingBatchLines(64)) as h:  # no flat capability: on_batch
        assert type(h.conn)._batch == B_RING
        h.feed(b"a\n")
        assert h.take() == b"a\n" and h.handler.got == [b"a\n"]


def test_the_echo_path_queues_what_the_kernel_does_not_take_and_reads_no_more_until_out():
    with Harness(DeclaredEcho(), LineCodec(64)) as h:
        h.set_window(3)
        h.feed(b"hello\nworld\n")
        assert h.take() == b"hel" and h.conn.send_buffered == 9
        assert h.conn.paused and h.conn._pause == P_BACKPRESSURE
        h.feed(b"again\n")  # not read: it waits in the kernel, not in a ring
        assert h.take() == b"" and h.sock.inbound == b"again\n" and h.conn.send_buffered == 9
        h.set_window(None)  # the OUT edge: the rest goes, reading resumes, the echo path too
        assert h.take() == b"lo\nworld\nagain\n" and h.conn.send_buffered == 0
        assert not h.conn.paused and h.handler.got == []
        h.feed(b"free\n")
        assert h.take() == b"free\n" and h.handler.got == []


class TakesAllButTheFirstSend(MemorySocket):
    """A kernel that takes 3 bytes of the first send and everything after."""

    def sendmsg(self, buffers, *args):
        n = super().sendmsg(buffers, *args)
        self.window = None
        return n


def test_a_short_echo_whose_rest_the_kernel_takes_at_once_leaves_nothing_blocked():
    """The rest is over max_send_buffer, so queueing it flushes at once and the kernel takes
    it all: nothing waits for an OUT edge, and the next read is echoed straight away."""
    sock = TakesAllButTheFirstSend()
    sock.window = 3
    with Harness(DeclaredEcho(), LineCodec(64), sock=sock, max_send_buffer=8, high_water=4,
                 low_water=2) as h:
        h.feed(b"hello\nworld\n")
        assert h.take() == b"hello\nworld\n" and h.conn.send_buffered == 0
        assert not h.conn._flags & F_BLOCKED and not h.closed
        h.feed(b"next\n")  # no OUT edge comes in between
        assert h.take() == b"next\n" and h.handler.got == []


@settings(max_examples=80, deadline=None)
@given(LINES, st.lists(st.tuples(st.integers(0, 600), st.one_of(st.none(), st.integers(0, 200))),
                       max_size=16), st.booleans())
def test_the_echo_path_sends_what_the_on_batch_echo_sends(lines, steps, eof):
    """However the input is cut and however little the kernel takes at a time, the echo
    path and an on_batch that writes the batch send the same bytes, in order, and end
    the same way (a line over the limit of 32 included)."""
    data = b"".join(lines)
    seen = []
    for handler_cls in (WritesBatches, DeclaredEcho):
        with Harness(handler_cls(), LineCodec(32)) as h:
            pos = 0
            for size, window in steps:
                if h.closed:
                    break
                h.set_window(window)
                h.feed(data[pos:pos + size])
                pos += size
            if not h.closed:
                h.feed(data[pos:])
                h.set_window(None)
                if eof and not h.closed:
                    h.feed_eof()
            seen.append((h.written, h.close_reason))
    assert seen[0] == seen[1]
    good = list(itertools.takewhile(lambda line: len(line) <= 32, lines))
    if len(good) == len(lines):
        assert seen[1][0] == data and seen[1][1] is (CloseReason.PEER_CLOSED if eof else None)
    else:
        assert seen[1][0] == b"".join(good) and seen[1][1] is CloseReason.LINE_TOO_LONG


@pytest.mark.parametrize("mode", ["edge", "level"])
def test_the_echo_path_over_real_sockets_loses_nothing_when_the_kernel_fills(mode):
    """A peer that sends 4 MiB of lines before it reads a byte: the echo path's sends come
    up short, the rest is queued, reading pauses for backpressure, and once the peer reads
    every byte comes back in order (edge- and level-triggered)."""
    import socket
    import threading

    from handlers.echo import LineEchoHandler
    from reactor import Loop
    from tests.conftest import wait_for

    loop = Loop(selector=mode)
    try:
        lst = loop.listen(("127.0.0.1", 0), LineEchoHandler, lambda: LineCodec(65536))
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # fills early
        c.connect(lst.address)
        payload = b"".join(b"%07d the echo path under a full kernel\n" % i for i in range(100_000))
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        wait_for(lambda: loop.connections() and loop.connections()[0].paused, 20,
                 "reading paused for backpressure", step=lambda: loop.run_once(0.01))
        conn = loop.connections()[0]
        assert conn.send_buffered > 0 and type(conn)._batch == B_ECHO
        c.setblocking(False)
        got = bytearray()

        def step():
            loop.run_once(0.005)
            try:
                got.extend(c.recv(1 << 20))
            except BlockingIOError:
                pass

        wait_for(lambda: len(got) >= len(payload), 30, "the whole echo", step=step)
        sender.join(10)
        assert bytes(got) == payload and conn.bytes_out == len(payload)
    finally:
        loop.close()


@pytest.mark.parametrize("name", PATHS)
def test_a_read_budget_below_the_smallest_share_still_reads_whole_shares(name):
    """Loop(read_budget=2048): the read size follows it down, but a fair share is never
    below MIN_SHARE (4 KiB), and every recv may ask a whole share: the loop's read buffers
    must hold one (they were sized by the read size and a recv asked more than they held)."""
    handler_cls, codec_cls, _path, _pump = PATHS[name]
    loop = reactor.Loop(read_budget=2048)
    try:
        a, b = socket.socketpair()
        h = handler_cls()
        loop.adopt(a, h, codec_cls(4096))
        data = b"x" * 3000 + b"\n" + b"y\n" * 2000
        b.sendall(data)
        for _ in range(50):
            loop.run_once(0.005)
        assert loop.hub.share == 4096 and h.wire() == data and loop.connection_count == 1
        b.close()
    finally:
        loop.close()
