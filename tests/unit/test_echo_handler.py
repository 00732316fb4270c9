"""handlers/echo.py's whole behaviour, on reactor.testing's Harness: the real Connection,
no socket, a fake clock. (The same behaviour over real sockets, in both selector modes,
is test_connection.py's.)"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.echo import ERR_LINE_TIMEOUT, ERR_LINE_TOO_LONG, PING, LineEchoHandler
from handlers.line import LineCodec
from reactor import CloseReason
from reactor.testing import Harness


class Echo(LineEchoHandler):
    def __init__(self) -> None:
        self.closed: list[CloseReason] = []

    def on_close(self, conn, reason):
        self.closed.append(reason)


def harness(**options) -> Harness:
    return Harness(Echo(), LineCodec(options.pop("max_line", 65536)), **options)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"") + b"\n"),
                max_size=30),
       st.lists(st.integers(0, 4096), max_size=20))
def test_lines_are_echoed_byte_for_byte_however_they_are_cut(lines, cuts):
    data = b"".join(lines)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    with harness() as h:
        for a, b in itertools.pairwise(bounds):
            h.feed(data[a:b])
        assert h.take() == data
        assert h.conn.recv_buffered == 0 and h.close_reason is None


def test_a_split_line_is_echoed_only_when_complete():
    with harness() as h:
        h.feed(b"hel")
        assert h.take() == b""
        h.feed(b"lo\nwor")
        assert h.take() == b"hello\n"
        h.feed(b"ld\n")
        assert h.take() == b"world\n"


def test_a_line_over_the_limit_gets_err_after_the_good_ones_then_a_close():
    with harness(max_line=16) as h:
        h.feed(b"short\n" + b"y" * 40 + b"\nnever echoed\n")
        assert h.take() == b"short\n" + ERR_LINE_TOO_LONG
        assert h.close_reason is CloseReason.LINE_TOO_LONG and h.fin_sent
        h.feed_eof()  # the peer's FIN ends the linger
        assert h.closed and h.handler.closed == [CloseReason.LINE_TOO_LONG]


def test_the_partial_line_is_echoed_after_the_peers_fin():
    with harness() as h:
        h.feed(b"a\nb\ntail")
        h.feed_eof()
        assert h.take() == b"a\nb\ntail"
        assert h.closed and h.handler.closed == [CloseReason.PEER_CLOSED]


def test_ping_after_heartbeat_s_of_silence_and_none_before():
    with harness(heartbeat_s=2.0) as h:
        h.advance(1.99)
        assert h.take() == b""
        h.advance(0.01)
        assert h.take() == PING
        h.feed(b"x\n")  # the echo is a send: the next PING is 2 s after it
        assert h.take() == b"x\n"
        h.advance(1.5)
        assert h.take() == b""
        h.advance(0.5)
        assert h.take() == PING


def test_idle_timeout_closes_only_after_idle_timeout_s_without_a_byte():
    with harness(idle_timeout_s=5.0, heartbeat_s=2.0) as h:  # PINGs are not input
        h.advance(4.0)
        h.feed(b"alive\n")
        h.advance(4.9)
        assert h.close_reason is None
        h.advance(0.1)
        assert h.close_reason is CloseReason.IDLE_TIMEOUT
        assert h.take() == PING + PING + b"alive\n" + PING + PING
        assert h.fin_sent and not h.closed  # lingering for the peer's FIN
        h.advance(2.0)  # linger_s
        assert h.closed and h.handler.closed == [CloseReason.IDLE_TIMEOUT]


@pytest.mark.parametrize("trickle", [False, True])
def test_a_partial_line_older_than_frame_timeout_gets_err_line_timeout(trickle):
    """Slowloris: bytes trickling into the partial line do not reset its age."""
    with harness(frame_timeout_s=5.0) as h:
        h.feed(b"one\ntwo\nthr")
        for _ in range(4):
            h.advance(1.2)
            if trickle:
                h.feed(b"e")
        assert h.close_reason is None
        h.advance(0.3)
        assert h.take() == b"one\ntwo\n" + ERR_LINE_TIMEOUT
        assert h.close_reason is CloseReason.LINE_TIMEOUT
        h.feed_eof()
        assert h.handler.closed == [CloseReason.LINE_TIMEOUT]


def test_lines_that_complete_never_time_out():
    with harness(frame_timeout_s=1.0) as h:
        sent = b""
        for i in range(12):
            for half in (b"line %d" % i, b" done\n"):
                h.feed(half)
                sent += half
                h.advance(0.6)
        h.advance(10.0)
        assert h.take() == sent and h.close_reason is None
