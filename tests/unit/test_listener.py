"""The accept path under fd exhaustion, in both selector modes, in a subprocess whose
RLIMIT_NOFILE is tiny; the spare-fd reservation and the token bucket on their own; the
per-address cap and the accept rate on real sockets (clients bound to 127.0.0.2 and
127.0.0.3 stand for other addresses: all of 127.0.0.0/8 is loopback)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import CloseReason, FakeClock, Handler, Loop
from reactor.listener import FdReserve, TokenBucket
from reactor.stats import loop_stats
from tests.conftest import (ROOT, connect_many_expect_refusals, cpu_ticks, recv_exactly, run_echo,
                            wait_for)

SERVER = """
import resource, sys
from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import Loop
loop = Loop(selector=sys.argv[1], raise_fd_limit=False)
resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))
lst = loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, max_conns=1000,
                  reject_message=b"ERR server full\\n")
loop.add_signal_handler(15, loop.stop)
print(lst.address[1], flush=True)
loop.run()
"""


@pytest.mark.parametrize("mode", ["edge", "level"])
def test_emfile_refuses_excess_without_spinning_then_recovers(mode):
    proc = subprocess.Popen([sys.executable, "-c", SERVER, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        port = int(proc.stdout.readline())
        held, refused = connect_many_expect_refusals(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=10), 40)
        assert refused >= 20 and len(held) >= 5
        before = cpu_ticks(proc.pid)
        time.sleep(1.0)
        assert cpu_ticks(proc.pid) - before < 30  # idle at the limit: no spin
        for s in held[:3]:
            s.close()
        time.sleep(0.3)  # the server sees them close: their fds are free again
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"after\n")
            assert recv_exactly(s, 6) == b"after\n"
        for s in held[3:]:
            s.sendall(b"still\n")
            assert recv_exactly(s, 6) == b"still\n"
            s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0, err
    assert err.count("out of file descriptors") == 1  # rate-limited to one warning


def test_fd_reserve_releases_and_reacquires():
    opened = []

    def opener():
        fd = os.open(os.devnull, os.O_RDONLY)
        opened.append(fd)
        return fd

    r = FdReserve(opener)
    assert r.held and len(opened) == 1
    assert r.release() is True and not r.held
    assert r.release() is False
    assert r.reacquire() is True and r.held and len(opened) == 2

    def failing():
        raise OSError(24, "Too many open files")

    r.close()
    r2 = FdReserve(failing)
    assert not r2.held and r2.reacquire() is False


# ---------------------------------------------------------------- token bucket

def test_token_bucket_starts_full_then_refills_at_its_rate():
    clock = FakeClock(100.0)
    b = TokenBucket(4, clock)
    assert [b.take() for _ in range(5)] == [True] * 4 + [False]  # a burst of 4, no more
    assert b.wait_s() == pytest.approx(0.25)
    clock.advance(0.2)
    assert not b.take() and b.wait_s() == pytest.approx(0.05)  # a failed take spends nothing
    clock.advance(0.05)
    assert b.take() and not b.take()
    clock.advance(0.3)  # 0.3 s at 4/s: one token and a fifth of the next
    assert b.take() and not b.take()
    assert b.tokens == pytest.approx(0.2)


def test_token_bucket_holds_at_most_one_burst_and_give_back_is_capped():
    clock = FakeClock()
    b = TokenBucket(3, clock)
    clock.advance(3600.0)  # an hour idle buys one burst, not 10,800 connections
    assert b.tokens == 3.0 and b.wait_s() == 0.0
    b.give_back()
    assert b.tokens == 3.0
    assert b.take() and b.tokens == 2.0
    b.give_back()
    assert b.tokens == 3.0
    slow = TokenBucket(0.5, clock)  # below 1/s: bursts of one, one every 2 s
    assert slow.capacity == 1.0 and slow.take() and not slow.take()
    clock.advance(1.9)
    assert not slow.take()
    clock.advance(0.1)
    assert slow.take()


def test_token_bucket_has_the_token_wait_s_promised_despite_float_rounding():
    clock = FakeClock(100.0)
    b = TokenBucket(10, clock)
    while b.take():
        pass
    clock.advance(b.wait_s())  # 100.1 - 100.0 is 0.09999999999999432: 0.99999999999994 tokens
    assert b.take()  # else the listener would pause again for nothing


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_token_bucket_refuses_a_rate_that_is_not_a_positive_number(rate):
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate, FakeClock())


# ------------------------------------------------------ per-address cap, accept rate

@pytest.fixture(params=["edge", "level"])
def loop(request):
    lp = Loop(selector=request.param)
    yield lp
    lp.close()


def connect_from(address, host: str = "127.0.0.1") -> socket.socket:
    """A client bound to ``host``, connected (the kernel completes the handshake), non-blocking."""
    s = socket.socket()
    s.settimeout(5)
    s.bind((host, 0))
    s.connect(address)
    s.setblocking(False)
    return s


def run_until_eof(loop, s: socket.socket) -> bytes:
    """Run the loop until the server closes ``s``; everything ``s`` received."""
    got, eof = bytearray(), []

    def step():
        loop.run_once(0.01)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if data:
            got.extend(data)
        else:
            eof.append(True)

    wait_for(lambda: eof, step=step, what="the server to close")
    return bytes(got)


def run_loop_until(loop, predicate, what: str) -> None:
    wait_for(predicate, step=lambda: loop.run_once(0.01), what=what)


def test_per_ip_cap_refuses_one_address_only_and_a_close_frees_its_slot(loop):
    lst = loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, max_conns_per_ip=2,
                      per_ip_reject_message=b"ERR per ip\n")
    mine = [connect_from(lst.address) for _ in range(2)]
    for i, s in enumerate(mine):
        run_echo(loop, s, b"mine %d\n" % i)
    extra = connect_from(lst.address)
    assert run_until_eof(loop, extra) == b"ERR per ip\n"
    others = [connect_from(lst.address, "127.0.0.2") for _ in range(2)]
    others.append(connect_from(lst.address, "127.0.0.3"))
    for i, s in enumerate(others):
        run_echo(loop, s, b"other %d\n" % i)
    for i, s in enumerate(mine):
        run_echo(loop, s, b"still %d\n" % i * 100)
    assert lst._per_ip == {"127.0.0.1": 2, "127.0.0.2": 2, "127.0.0.3": 1}
    assert lst.per_ip_rejected_total == 1 and lst.rejected_total == 1
    doc = loop_stats(loop)
    assert doc["per_ip_rejections"] == 1 and doc["closed"]["per_ip_limit"] == 1
    assert doc["listeners"][0]["max_conns_per_ip"] == 2
    mine[0].close()
    run_loop_until(loop, lambda: lst._per_ip["127.0.0.1"] == 1, "the slot freed")
    again = connect_from(lst.address)
    run_echo(loop, again, b"again\n")
    for s in [again, *mine[1:], *others]:
        s.close()
    # An address leaves the table with its last connection: it never outgrows the connections.
    run_loop_until(loop, lambda: lst._per_ip == {} and loop.connection_count == 0, "all gone")
    assert loop.hub.on_forget == {} and lst.per_ip_rejected_total == 1
    extra.close()


def test_server_full_wins_over_the_per_ip_cap(loop):
    lst = loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, max_conns=2,
                      reject_message=b"ERR full\n", max_conns_per_ip=2,
                      per_ip_reject_message=b"ERR per ip\n")
    held = [connect_from(lst.address) for _ in range(2)]
    for s in held:
        run_echo(loop, s, b"held\n")
    for host in ("127.0.0.1", "127.0.0.2"):  # both caps hit, then only the server's
        s = connect_from(lst.address, host)
        assert run_until_eof(loop, s) == b"ERR full\n"
        s.close()
    assert lst.per_ip_rejected_total == 0 and lst.rejected_total == 2
    for s in held:
        s.close()


class _AbortAtOnce(Handler):
    def on_connect(self, conn):
        conn.abort()


def _no_handler():
    raise RuntimeError("no handler for you")


@pytest.mark.parametrize("factory", [_AbortAtOnce, _no_handler])
def test_per_ip_slot_comes_back_when_the_connection_never_gets_going(loop, factory, caplog):
    lst = loop.listen(("127.0.0.1", 0), factory, LineCodec, max_conns_per_ip=1,
                      per_ip_reject_message=b"ERR per ip\n")
    for _ in range(3):  # with a lost slot the second one would be refused
        s = connect_from(lst.address)
        assert run_until_eof(loop, s) == b""
        s.close()
        assert lst._per_ip == {} and loop.hub.on_forget == {}
    assert lst.per_ip_rejected_total == 0


def test_per_ip_cap_does_not_apply_to_unix_sockets(loop, tmp_path):
    path = str(tmp_path / "echo.sock")
    lst = loop.listen(path, LineEchoHandler, LineCodec, max_conns_per_ip=1)
    assert lst.max_conns_per_ip == 0
    clients = []
    for i in range(3):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.setblocking(False)
        run_echo(loop, s, b"unix %d\n" % i)
        clients.append(s)
    assert lst.per_ip_rejected_total == 0 and lst._per_ip == {}
    for s in clients:
        s.close()


def test_limits_off_keep_no_table(loop):
    lst = loop.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec)
    s = connect_from(lst.address)
    run_echo(loop, s, b"free\n")
    assert lst._bucket is None and lst._per_ip == {} and loop.hub.on_forget == {}
    assert lst.accept_pauses_total == 0 and lst.per_ip_rejected_total == 0
    s.close()


@pytest.mark.parametrize("kwargs, needle", [({"max_conns_per_ip": -1}, "max_conns_per_ip"),
                                            ({"accept_rate": -2.0}, "accept_rate"),
                                            ({"accept_rate": float("nan")}, "accept_rate")])
def test_bad_limits_raise_at_listen(kwargs, needle):
    lp = Loop()
    try:
        with pytest.raises(ValueError, match=needle):
            lp.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, **kwargs)
    finally:
        lp.close()


@pytest.mark.parametrize("mode", ["edge", "level"])
def test_accept_rate_pauses_with_the_backlog_holding_the_rest_and_a_timer_resumes(mode):
    clock = FakeClock(1000.0)
    lp = Loop(selector=mode, clock=clock)
    try:
        lst = lp.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, accept_rate=5)
        clients = [connect_from(lst.address) for _ in range(12)]

        def settle():  # no time passes: only what the bucket allows is accepted
            for _ in range(5):
                lp.run_once(0.01)

        settle()
        assert (lst.accepted_total, lst.accept_pauses_total) == (5, 1)  # the bucket starts full
        clock.advance(0.25)  # one token (and a quarter): the resume timer is due
        settle()
        assert (lst.accepted_total, lst.accept_pauses_total) == (6, 2)
        clock.advance(1.0)  # five tokens' worth, but the bucket holds five at most
        settle()
        assert (lst.accepted_total, lst.accept_pauses_total) == (11, 3)
        clock.advance(1.0)
        settle()  # the last one, then EAGAIN: no pause, and the token it did not use kept
        assert (lst.accepted_total, lst.accept_pauses_total) == (12, 3)
        assert lst._bucket.tokens == pytest.approx(4.0)
        assert lst.rejected_total == 0 and loop_stats(lp)["accept_pauses"] == 3
        for i, s in enumerate(clients):
            run_echo(lp, s, b"paced %d\n" % i)
            s.close()
    finally:
        lp.close()
