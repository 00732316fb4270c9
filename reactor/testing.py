"""Testing kit for handlers and codecs: an in-memory harness and fault injection.

``Harness`` runs the real ``Connection`` over a ``MemorySocket`` (no fd, no kernel) on a
``FakeClock``: bytes in, bytes out, timers and close reasons, with no real time passing.
``FaultySocket`` wraps a real socket so that chosen calls fail (EAGAIN, ECONNRESET,
EPIPE, EMFILE...) by a ``Faults`` plan. Imports only the core; docs/testing.md shows use.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from .clock import FakeClock
from .connection import Connection
from .errors import CloseReason
from .loop import Loop
from .protocols import Codec, Handler
from .selector import ERR, HUP, IN, OUT, RDHUP

__all__ = ["Faults", "FaultySocket", "Harness", "MemorySocket", "kick"]

#: Loop turns ``Harness`` runs at most to settle one step (a handler that keeps itself busy
#: forever would otherwise hang the test).
_MAX_TURNS = 10_000


class MemorySocket:
    """What a Connection calls on a socket, in memory. ``fileno()`` is -1, so a loop that
    adopts it does not poll it: its owner raises its events (``Harness`` does).

    Bytes from the peer: ``inbound`` (``recv_into`` takes from it; BlockingIOError when
    empty, 0 once ``eof`` is set and it is empty; ``reset`` makes the next call raise
    ConnectionResetError). Bytes to the peer: ``sent``, every byte in order.
    ``window``: bytes the "kernel" accepts before send raises BlockingIOError (None: no
    limit); a send takes what fits and lowers it. ``inbound`` has no cap (a kernel's
    would): the connection's own caps still bound what it holds.
    """

    def __init__(self, family: int = socket.AF_INET,
                 peer: Any = ("127.0.0.1", 40000), local: Any = ("127.0.0.1", 7000)) -> None:
        self.family = family
        self.peer = peer
        self.local = local
        self.inbound = bytearray()
        self.sent = bytearray()
        self.window: int | None = None
        self.eof = False  # the peer's FIN
        self.reset = False  # the peer's RST: the next recv_into raises
        self.fin_sent = False  # shutdown(SHUT_WR or SHUT_RDWR) was called
        self.reset_sent = False  # SO_LINGER 0 was set (abort): close() sends RST
        self.closed = False
        self.options: dict[tuple[int, int], Any] = {}

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool) -> None:
        self._check_open()

    def setsockopt(self, level: int, name: int, value: Any) -> None:
        self._check_open()
        self.options[(level, name)] = value
        if (level, name) == (socket.SOL_SOCKET, socket.SO_LINGER):
            self.reset_sent = value[:4] != b"\0\0\0\0"  # struct linger: l_onoff first

    def getsockopt(self, level: int, name: int, *args: Any) -> Any:
        self._check_open()
        if (level, name) == (socket.SOL_SOCKET, socket.SO_ERROR):
            return 0
        return self.options.get((level, name), 0)

    def getpeername(self) -> Any:
        self._check_open()
        return self.peer

    def getsockname(self) -> Any:
        self._check_open()
        return self.local

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        self._check_open()
        data = self.inbound
        if not data:
            if self.reset:
                self.reset = False
                raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
            if self.eof:
                return 0
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        n = min(nbytes or len(buf), len(buf), len(data))
        memoryview(buf)[:n] = data[:n]
        del data[:n]
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        return self.sendmsg([data])

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        self._check_open()
        if self.fin_sent:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        data = b"".join(bytes(b) for b in buffers)
        n = len(data) if self.window is None else min(len(data), self.window)
        if not n and data:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        self.sent += data[:n]
        if self.window is not None:
            self.window -= n
        return n

    def shutdown(self, how: int) -> None:
        self._check_open()
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self.fin_sent = True

    def close(self) -> None:
        self.closed = True


class Harness:
    """One real Connection of ``handler`` and ``codec`` over a MemorySocket, on a Loop
    with a FakeClock (``clock``, default ``FakeClock(1000.0)``). Keyword arguments are
    ``ConnectionOptions``. ``handler.on_connect`` has run when this returns.

    Each step (``feed``, ``feed_eof``, ``feed_reset``, ``advance``, ``set_window``,
    ``run``) raises the events it implies and runs loop turns until nothing is queued
    (ready list, flush queue) and two more turns have passed, so ``on_close`` and other
    ``call_soon`` callbacks have run. No real time passes: turns poll with timeout 0.
    ``selector``: the loop's (``"auto"``, ``"edge"``, ``"level"``); the socket is never
    polled in either, so the connection's code paths of that mode are what differ.
    """

    def __init__(self, handler: Handler, codec: Codec, *, clock: FakeClock | None = None,
                 sock: MemorySocket | None = None, selector: str = "auto",
                 **connection_options: Any) -> None:
        self.clock = clock if clock is not None else FakeClock(1000.0)
        self.loop = Loop(selector=selector, clock=self.clock, raise_fd_limit=False)
        self.sock = sock if sock is not None else MemorySocket()
        self.handler = handler
        self._taken = 0
        try:
            self.conn: Connection = self.loop.adopt(self.sock, handler, codec,
                                                    **connection_options)
            self.run()
        except BaseException:
            self.loop.close()
            raise

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- the peer

    def feed(self, data: bytes) -> None:
        """Bytes from the peer: buffer them, raise an IN edge, run the loop."""
        self.sock.inbound += data
        self._event(IN)

    def feed_eof(self) -> None:
        """The peer's FIN (after what was fed): raise IN|RDHUP, run the loop."""
        self.sock.eof = True
        self._event(IN | RDHUP)

    def feed_reset(self) -> None:
        """The peer's RST: the next read fails with ECONNRESET (after what was fed)."""
        self.sock.reset = True
        self._event(IN | HUP | ERR)

    def set_window(self, n: int | None) -> None:
        """The kernel accepts ``n`` more bytes from now (None: any number); if there is
        room, raise an OUT edge (the peer read) and run the loop."""
        self.sock.window = n
        if n is None or n > 0:
            self._event(OUT)
        else:
            self.run()

    def take(self) -> bytes:
        """The bytes the connection sent since the last ``take()``."""
        out = bytes(self.sock.sent[self._taken:])
        self._taken = len(self.sock.sent)
        return out

    @property
    def written(self) -> bytes:
        """Every byte the connection sent, in order."""
        return bytes(self.sock.sent)

    # ------------------------------------------------------------------- time

    def advance(self, seconds: float) -> None:
        """Move the fake clock ``seconds`` on, stopping at each timer deadline on the way
        and running the loop there, so a periodic timer fires once per period."""
        if seconds < 0:
            raise ValueError(f"cannot advance by {seconds} s")
        target = self.clock.now() + seconds
        wheel = self.loop.hub.wheel
        for _ in range(_MAX_TURNS):
            due = wheel.next_deadline()
            if due is None or due > target:
                break
            while self.clock.now() < due:  # float steps may fall a hair short
                self.clock.advance(max(due - self.clock.now(), 1e-9))
            self.run()
        else:
            raise RuntimeError(f"timers kept firing for {_MAX_TURNS} steps")
        if self.clock.now() < target:
            self.clock.advance(target - self.clock.now())
        self.run()

    # ------------------------------------------------------------------ facts

    @property
    def closed(self) -> bool:
        """The connection closed its socket (``on_close`` has run)."""
        return self.conn.closed

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the connection closed or is closing; None while open."""
        return self.conn.close_reason

    @property
    def fin_sent(self) -> bool:
        """The connection shut down its sending side: the peer would read EOF after
        ``written``. After a graceful close it lingers until ``feed_eof`` or ``linger_s``."""
        return self.sock.fin_sent

    # ---------------------------------------------------------------- running

    def run(self) -> None:
        """Run loop turns until nothing is queued, then two more (call_soon callbacks)."""
        hub = self.loop.hub
        quiet = 0
        for _ in range(_MAX_TURNS):
            self.loop.run_once(0)
            if hub.ready or hub.flushq or hub.accepting:
                quiet = 0
            else:
                quiet += 1
                if quiet > 2:
                    return
        raise RuntimeError(f"the loop was still busy after {_MAX_TURNS} turns")

    def _event(self, mask: int) -> None:
        self.conn._on_events(mask)
        self.run()

    def close(self) -> None:
        """Abort the connection if open (``on_close`` runs) and release the loop's fds.
        Idempotent."""
        self.loop.close()  # aborts the connection (SHUTDOWN) and runs its on_close


# ------------------------------------------------------------ fault injection


def _error(spec: Any) -> BaseException:
    if isinstance(spec, int):
        return OSError(spec, os.strerror(spec))  # OSError picks the subclass: EAGAIN -> BlockingIOError
    if isinstance(spec, type) and issubclass(spec, BaseException):
        return spec()
    if isinstance(spec, BaseException):
        return spec
    raise TypeError(f"a fault is an errno, an exception or its class, not {spec!r}")


class Faults:
    """A fault plan: per socket method, a queue of rules consumed in order.

    ``fail(method, error, times=1, after=0)``: once ``after`` calls of ``method`` have
    passed through (counted from when this rule becomes the first of its method), the
    next ``times`` calls raise ``error`` (an errno such as ``errno.ECONNRESET``, an
    exception or its class) instead of reaching the socket; then the next rule, if any,
    applies. ``injected[method]`` counts the faults raised; ``pending()`` says how many
    are still to come.
    """

    METHODS = ("recv_into", "recv", "send", "sendmsg", "shutdown", "_accept", "accept")

    def __init__(self) -> None:
        self._rules: dict[str, list[list[Any]]] = {}
        self.injected: dict[str, int] = dict.fromkeys(self.METHODS, 0)

    def fail(self, method: str, error: Any, times: int = 1, after: int = 0) -> Faults:
        if method not in self.METHODS:
            raise ValueError(f"cannot inject into {method!r}; one of {', '.join(self.METHODS)}")
        if times < 1 or after < 0:
            raise ValueError(f"need times >= 1 and after >= 0, got {times} and {after}")
        _error(error)  # reject a bad spec now, not at the call
        self._rules.setdefault(method, []).append([after, times, error])
        return self

    def pending(self, method: str | None = None) -> int:
        """Faults still to be raised (for ``method``, or for all)."""
        return sum(rule[1] for m, rules in self._rules.items()
                   if method in (None, m) for rule in rules)

    def check(self, method: str) -> None:
        """Raise the planned fault for this call of ``method``, if one is due."""
        rules = self._rules.get(method)
        if not rules:
            return
        rule = rules[0]
        if rule[0]:
            rule[0] -= 1
            return
        rule[1] -= 1
        if not rule[1]:
            rules.pop(0)
        self.injected[method] += 1
        raise _error(rule[2])


class FaultySocket:
    """A real socket whose calls named in ``Faults.METHODS`` consult ``faults`` first;
    everything else goes straight to the socket. Give it to ``Loop.adopt`` (a connection)
    or ``Loop.listen(sock=...)`` (a bound socket: a listener).

    Edge-triggered caveat: an injected EAGAIN on ``recv_into`` or ``send`` leaves the
    kernel's state as it was, so no new edge will come for bytes already waiting or
    room already there. Raise the edge yourself with :func:`kick`.
    """

    def __init__(self, sock: socket.socket, faults: Faults | None = None) -> None:
        self.sock = sock
        self.faults = faults if faults is not None else Faults()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def recv_into(self, *args: Any) -> int:
        self.faults.check("recv_into")
        return self.sock.recv_into(*args)

    def recv(self, *args: Any) -> bytes:
        self.faults.check("recv")
        return self.sock.recv(*args)

    def send(self, *args: Any) -> int:
        self.faults.check("send")
        return self.sock.send(*args)

    def sendmsg(self, *args: Any) -> int:
        self.faults.check("sendmsg")
        return self.sock.sendmsg(*args)

    def shutdown(self, how: int) -> None:
        self.faults.check("shutdown")
        self.sock.shutdown(how)

    def _accept(self) -> tuple[int, Any]:
        self.faults.check("_accept")
        return self.sock._accept()  # type: ignore[attr-defined]

    def accept(self) -> tuple[socket.socket, Any]:
        self.faults.check("accept")
        return self.sock.accept()


def kick(conn: Connection, mask: int = IN | OUT) -> None:
    """Raise an event on ``conn`` by hand (``mask``: bits of ``reactor.selector``), as
    epoll would: for a fault that hid an edge the kernel will not report again."""
    conn._on_events(mask)
