"""The loop's own scheduling: call_soon order, timers on a fake clock, poll timeouts,
thread-safe wakeups, signals, and shutdown."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from handlers.echo import LineEchoHandler
from handlers.line import LineCodec
from reactor import BufferPool, CloseReason, FakeClock, Handler, Loop, TimerWheel
from tests.conftest import run_echo, wait_for


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def test_call_soon_runs_in_fifo_order_and_only_what_was_queued_before_the_pass(loop):
    ran = []

    def again():
        ran.append("again")

    def first():
        ran.append(1)
        loop.call_soon(again)  # queued during the pass: waits for the next one

    loop.call_soon(first)
    loop.call_soon(ran.append, 2)
    h = loop.call_soon(ran.append, "cancelled")
    h.cancel()
    loop.run_once(0)
    assert ran == [1, 2]
    loop.run_once(0)
    assert ran == [1, 2, "again"]


def test_a_raising_callback_is_logged_and_the_loop_goes_on(loop, caplog):
    ran = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(ran.append, "after")
    loop.run_once(0)
    assert ran == ["after"]
    assert any("ZeroDivisionError" in r.getMessage() or r.exc_info for r in caplog.records)


def test_timers_follow_the_injected_clock():
    clock = FakeClock(50.0)
    lp = Loop(clock=clock)
    try:
        fired = []
        t = lp.call_later(5.0, fired.append, "idle")
        lp.call_at(52.0, fired.append, "at")
        clock.advance(2.5)
        lp.run_once(0)
        assert fired == ["at"]
        lp.rearm(t, 5.0)  # deadline moves to 57.5
        clock.advance(4.0)
        lp.run_once(0)
        assert fired == ["at"]
        clock.advance(1.1)
        lp.run_once(0)
        assert fired == ["at", "idle"]
        t2 = lp.call_later(1.0, fired.append, "never")
        lp.cancel_timer(t2)
        clock.advance(2)
        lp.run_once(0)
        assert fired == ["at", "idle"]
    finally:
        lp.close()


class RecordingSelector:
    """Wraps the real selector and records every poll timeout."""

    def __init__(self, inner):
        self.inner = inner
        self.timeouts = []
        self.edge_triggered = inner.edge_triggered
        self.name = inner.name

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def poll(self, timeout):
        self.timeouts.append(timeout)
        return self.inner.poll(0)


def test_poll_timeout_comes_from_the_next_deadline():
    clock = FakeClock(0.0)
    lp = Loop(clock=clock)
    try:
        rec = RecordingSelector(lp._selector)
        lp._selector = rec
        lp.run_once()
        assert rec.timeouts[-1] is None  # nothing scheduled: sleep until an event
        lp.call_later(3.0, lambda: None)
        lp.run_once()
        assert 0 < rec.timeouts[-1] <= 3.0
        assert rec.timeouts[-1] >= 3.0 - 0.257  # a lower bound (one level-1 bucket), not a busy loop
        lp.call_soon(lambda: None)
        lp.run_once()
        assert rec.timeouts[-1] == 0  # work pending: do not sleep
        lp.run_once(timeout=0.5)
        assert rec.timeouts[-1] == 0.5  # the caller's cap
    finally:
        lp.close()


def test_the_wheel_is_asked_only_when_a_timer_can_be_due(monkeypatch):
    """The deadline read before the poll spares the wheel's expire() on iterations where
    nothing can be due; a timer added during an iteration fires on a later one, never early."""
    clock = FakeClock(0.0)
    lp = Loop(clock=clock)
    try:
        calls = []
        real_expire = TimerWheel.expire
        monkeypatch.setattr(TimerWheel, "expire",
                            lambda *a: calls.append(a) or real_expire(*a))
        fired = []
        lp.call_later(2.0, fired.append, "due")
        for _ in range(50):
            lp.run_once(0)
        assert calls == [] and fired == []
        clock.advance(2.5)
        lp.run_once(0)
        assert fired == ["due"] and len(calls) == 1
        # Added by an event handler with its deadline already past: not fired in that
        # iteration (its deadline was read before the poll), but in the next one, which
        # does not sleep: the wheel's next deadline is already past.
        class Schedules(Handler):
            def on_message(self, conn, line):
                lp.call_at(1.0, fired.append, line)

        a, b = socket.socketpair()
        lp.adopt(a, Schedules(), LineCodec())
        b.send(b"late\n")
        rec = RecordingSelector(lp._selector)
        lp._selector = rec
        lp.run_once(5.0)
        assert fired == ["due"] and rec.timeouts == [5.0]
        lp.run_once(5.0)
        assert fired == ["due", b"late"] and rec.timeouts[-1] == 0
        b.close()
    finally:
        lp.close()


def test_a_grown_pool_is_trimmed_back_by_the_loop():
    """BufferPool.on_grow arms the loop's trim timer; once the grown arena is free again,
    the timer gives it back and is not re-armed."""
    clock = FakeClock(0.0)
    pool = BufferPool(1024, 2, max_chunks=8, grow_chunks=2)
    lp = Loop(clock=clock, pool=pool)
    try:
        held = [pool.acquire() for _ in range(4)]  # the third maps a second arena
        assert pool.grown and len(lp._wheel) == 1
        clock.advance(1.1)
        lp.run_once(0)
        assert pool.grown and len(lp._wheel) == 1  # still in use: kept, looked at again
        for c in held:
            pool.release(c)
        clock.advance(1.1)
        lp.run_once(0)
        assert not pool.grown and pool.stats().shrinks_total == 1 and len(lp._wheel) == 0
    finally:
        lp.close()


def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop):
    ran = []

    def later():
        time.sleep(0.2)
        loop.call_soon_threadsafe(ran.append, "from thread")
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=later)
    start = time.monotonic()
    t.start()
    loop.run()  # nothing scheduled: only the eventfd can wake it
    t.join()
    assert ran == ["from thread"]
    assert time.monotonic() - start < 5


def test_drain_on_signals_drains_on_the_first_and_aborts_on_the_second(caplog):
    """drain_on_signals: the hook, then a drain that lets run() return; a second signal
    while draining aborts what the drain still holds (here a peer that never sends its FIN,
    kept for a 30 s linger)."""
    from reactor import drain_on_signals

    lp = Loop()
    try:
        said: list[str] = []
        lst = lp.listen(("127.0.0.1", 0), LineEchoHandler, LineCodec, linger_s=30.0)
        drain_on_signals(lp, 60.0, before=said.append, signals=(signal.SIGUSR1,))
        c = socket.create_connection(lst.address, timeout=5)
        run_echo(lp, c, b"before\n")
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for(lambda: lp.shutting_down, step=lambda: lp.run_once(0.05), what="the drain")
        for _ in range(10):
            lp.run_once(0.01)
        assert said == ["SIGUSR1"] and lp.connection_count == 1  # lingering, not dropped
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for(lambda: lp.connection_count == 0, 5, step=lambda: lp.run_once(0.05),
                 what="the abort")
        assert said == ["SIGUSR1"]  # the hook runs once, for the drain
        assert any("second SIGUSR1: dropping 1 connection(s)" in r.getMessage()
                   for r in caplog.records)
        c.close()
    finally:
        lp.remove_signal_handler(signal.SIGUSR1)
        lp.close()


def test_signal_handler_runs_on_the_loop(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, "usr1")
    try:
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        wait_for(lambda: got, step=lambda: loop.run_once(1.0), what="signal")
        assert got == ["usr1"]
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_shutdown_drains_what_the_kernel_holds_and_stops(loop):
    class Slow(Handler):
        """Echoes, but pauses reading after the first line so bytes stay in the kernel."""

        def on_message(self, conn, msg):
            conn.send(msg)
            conn.pause_reading()

    lst = loop.listen(("127.0.0.1", 0), Slow, LineCodec)
    c = socket.create_connection(lst.address, timeout=10)
    c.sendall(b"a\nb\nc\npartial")
    wait_for(lambda: loop.connection_count == 1 and loop.connections()[0].bytes_in,
             step=lambda: loop.run_once(0.01))
    time.sleep(0.05)
    loop.shutdown(drain_timeout_s=5)
    assert loop.listeners == []  # no longer accepting
    got = bytearray()
    c.setblocking(False)

    def step():
        loop.run_once(0.01)
        try:
            data = c.recv(4096)
            if not data:
                got.extend(b"<EOF>")
                c.close()
            else:
                got.extend(data)
        except (BlockingIOError, OSError):
            pass

    wait_for(lambda: got.endswith(b"<EOF>"), step=step, what="drained")
    assert bytes(got) == b"a\nb\nc\n<EOF>"
    wait_for(lambda: loop._stopping, step=lambda: loop.run_once(0.01), what="loop stops")
    assert loop.hub.closed_by_reason[CloseReason.SHUTDOWN] == 1


def test_connect_timeout(loop):
    """A loopback listener whose accept queue is full drops our SYN: connect never finishes."""
    closed = []

    class H(Handler):
        def on_connect(self, conn):
            closed.append("connected?!")

        def on_close(self, conn, reason):
            closed.append(reason)

    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(8):  # fill the accept queue (backlog 0 still admits one or two)
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(full.getsockname())
        fillers.append(f)
    time.sleep(0.1)
    start = time.monotonic()
    conn = loop.connect(full.getsockname(), H, LineCodec, timeout_s=0.3)
    try:
        wait_for(lambda: closed, step=lambda: loop.run_once(0.05), what="connect timeout")
        assert closed == [CloseReason.CONNECT_TIMEOUT]
        assert isinstance(conn.error, TimeoutError)
        assert 0.25 < time.monotonic() - start < 5
    finally:
        for f in fillers:
            f.close()
        full.close()


def test_unix_listener_replaces_a_stale_socket_file(loop, tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    lst = loop.listen(path, LineEchoHandler, LineCodec, unix_mode=0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(OSError):
        loop.listen(path, LineEchoHandler, LineCodec)  # a live listener is not replaced
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    run_echo(loop, c, b"u\n")
    c.close()
    lst.close()
    assert not os.path.exists(path)
