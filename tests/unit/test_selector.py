"""The two readiness backends on real socketpairs: edges are reported once, levels repeat."""

from __future__ import annotations

import socket

import pytest

from reactor.selector import IN, OUT, EdgeSelector, LevelSelector, make_selector


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def masks(events, fd):
    return [m for f, m in events if f == fd]


def test_edge_selector_reports_a_read_edge_once(pair):
    a, b = pair
    sel = EdgeSelector()
    try:
        sel.register(a.fileno())
        first = masks(sel.poll(0), a.fileno())
        assert first and first[0] & OUT and not first[0] & IN  # writable at once, nothing to read
        assert sel.poll(0) == []  # no new edge: nothing reported again
        b.send(b"hello")
        got = masks(sel.poll(1), a.fileno())
        assert got and got[0] & IN
        assert masks(sel.poll(0), a.fileno()) == []  # unread bytes raise no second edge
        b.send(b"more")
        assert masks(sel.poll(1), a.fileno())[0] & IN  # new bytes: a new edge
        assert a.recv(100) == b"hellomore"
    finally:
        sel.close()


def test_level_selector_repeats_until_read(pair):
    a, b = pair
    sel = LevelSelector()
    try:
        sel.register(a.fileno(), reading=True, writing=False)
        assert sel.poll(0) == []
        b.send(b"x")
        assert masks(sel.poll(1), a.fileno()) == [IN]
        assert masks(sel.poll(0), a.fileno()) == [IN]  # still there: reported again
        sel.set_interest(a.fileno(), reading=False, writing=True)
        assert masks(sel.poll(0), a.fileno()) == [OUT]
        sel.set_interest(a.fileno(), reading=False, writing=False)
        assert sel.poll(0) == []
        sel.set_interest(a.fileno(), reading=True, writing=False)
        assert a.recv(10) == b"x"
        assert sel.poll(0) == []
    finally:
        sel.close()


def test_make_selector_modes():
    assert make_selector("edge").edge_triggered is True
    assert make_selector("level").edge_triggered is False
    assert make_selector("auto").edge_triggered is True  # Linux has epoll
    with pytest.raises(ValueError, match="'bogus'"):
        make_selector("bogus")
