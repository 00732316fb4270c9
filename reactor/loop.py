"""Loop: the event loop. It knows fds, masks, the ready list and the next deadline.

One iteration (``run_once``), in this order:
  1. poll the selector, sleeping until the timer wheel's next deadline at most
     (not at all if anything is ready);
  2. dispatch each event straight from fd to its object (connection, listener,
     waker): no per-event key tuple, no callback-queue hop; every ``_ACCEPT_EVERY``
     events, listeners whose accept budget ran out get another turn, so a loop
     busy with thousands of flooding peers still accepts at its accept budget;
  3. serve the ready list made in the previous iteration (objects that stopped
     early -- budget, pause, pool -- and have work left without a new edge);
  4. run the call_soon callbacks that were queued when this step began;
  5. fire due timers (if the deadline read before the poll says any can be due);
  6. flush every connection that queued bytes this iteration: many small
     sends become one sendmsg (Redis's beforeSleep);
  7. wake connections the buffer pool refused, if chunks came back.

Buffer memory is shared by a fair-share rule (``Loop._reshare``, docs/architecture.md):
each connection may hold about ``share`` bytes, the pool's cap split over the open
connections. A read asks at most a share and a send backlog over ``min(high_water,
share)`` pauses reading, so all of them stay within the cap; one that holds less than its
share is never refused memory (at the cap it borrows from the heap, counted as overflow),
so no connection waits on another's peer.
Protocols, codecs and buffers live elsewhere; this file wires them together.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
from typing import Any, Callable

from .clock import Clock, MonotonicClock
from .address import format_address
from .connection import Connection, ConnectionOptions, _UncountedConnection
from .errors import CloseReason
from .hub import READS_PER_TURN, Handle, Hub
from .listener import Listener, default_max_conns
from .listener import raise_fd_limit as _raise_fd_limit
from .pool import BufferPool, fair_share
from .protocols import Codec, Handler
from .selector import make_selector
from .sockets import bind_listening, outgoing_socket
from .stats import loop_stats
from .wakeup import Signals, Waker
from .wheel import Timer, TimerWheel

__all__ = ["Loop", "Handle"]

log = logging.getLogger("reactor")

_SOON_BUDGET = 10_000
_TRIM_EVERY_S = 1.0  # how often a grown pool gives back arenas that are wholly free
#: Events dispatched between two turns of a listener with connections still queued: one
#: poll returns up to 1,024 events, and at 10,000 flooding peers an iteration takes tens
#: of ms, too long to leave the accept queue (net.core.somaxconn) unserved.
_ACCEPT_EVERY = 256


class Loop:
    """A single-threaded reactor. Create one per thread (normally one per process).

    ``selector``: ``"auto"`` (edge-triggered epoll where available), ``"edge"`` or
    ``"level"``. ``clock``: where time is read (tests pass a ``FakeClock``).
    ``pool``: the buffer pool every connection's rings borrow from (default: an
    elastic pool of ``chunk_size`` chunks, ``pool_chunks`` mapped at first, growing up
    to ``pool_max_chunks``). ``read_budget``: bytes one connection may read per turn
    before others are served, at most (a turn is also 16 reads of a fair share at most);
    ``read_size``: bytes one recv asks for at most (the fair share's ceiling). ``read_reserve``: chunks kept back from reads for sends
    once the pool is at its cap (default: 1/8 of the cap). ``tick_s``: the timer wheel's
    tick; ``timer_grain_s``: connections' own deadlines (idle, heartbeat, connect, close)
    are rounded up onto a grid this far apart, offset by ``timer_phase_s``, so that one
    wakeup serves every connection due within it (0: a tick; user timers are never rounded).
    ``raise_fd_limit``: raise the soft RLIMIT_NOFILE to the hard limit now.
    """

    def __init__(
        self,
        *,
        selector: str = "auto",
        clock: Clock | None = None,
        pool: BufferPool | None = None,
        chunk_size: int = 16 * 1024,
        pool_chunks: int = 4096,
        pool_max_chunks: int = 65536,
        read_budget: int = 1024 * 1024,
        read_size: int = 64 * 1024,
        read_reserve: int | None = None,
        tick_s: float = 0.001,
        timer_grain_s: float = 0.01,
        timer_phase_s: float = 0.0,
        raise_fd_limit: bool = True,
    ) -> None:
        if read_budget < 1:
            raise ValueError(f"read_budget must be >= 1, not {read_budget}")
        if read_size < 1:
            raise ValueError(f"read_size must be >= 1, not {read_size}")
        if raise_fd_limit:
            _raise_fd_limit()
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._selector = make_selector(selector)
        self._edge = self._selector.edge_triggered
        if pool is None:
            pool = BufferPool(chunk_size, pool_chunks, max(pool_chunks, pool_max_chunks))
        self.pool = pool
        if read_reserve is None:
            read_reserve = pool.chunks_max // 8
        if not 0 <= read_reserve < pool.chunks_max:
            raise ValueError(
                f"read_reserve must be in [0, {pool.chunks_max}), not {read_reserve}"
            )
        self._trim_timer: Timer | None = None
        pool.on_grow = self._pool_grew
        # The most one recv asks for (the fair share's ceiling). 64 KiB as py_et_echo's window
        # and libuv's read size: under tcp_mem pressure in a no-window flood, 256 KiB replies
        # left 10x more connections without a byte for seconds than 64 KiB ones (issue 10).
        self._read_size = min(read_size, read_budget)
        self._wheel = TimerWheel(self._clock, tick_s=tick_s, on_error=self._timer_failed,
                                 grain_s=timer_grain_s, phase_s=timer_phase_s)
        #: What connections and listeners share with this loop (reactor/hub.py).
        self.hub = hub = Hub(self._clock, self._wheel, self._selector, pool, read_budget,
                             self._read_size, read_reserve, dict.fromkeys(CloseReason, 0))
        hub.attach, hub.forget, hub.watch = self._attach, self._forget, self._register
        hub.call_soon = self.call_soon
        # Who owns each registered fd, indexed by the fd: a list, not a dict, because fds
        # are small dense ints (no hash entry and no key object per connection).
        self._fdmap: list[Any] = []
        self._unpolled: list[Connection] = []  # adopted with no fd (Loop.adopt): not in _fdmap
        self._soon: collections.deque[Handle] = collections.deque()
        self._listeners: list[Listener] = []
        self._waker = Waker()
        self._register(self._waker.fileno(), self._waker)
        self._signals = Signals(self._run_callback, lambda s: self._register(s.fileno(), s))
        self._reshare()
        self._running = False
        self._stopping = False
        self._drain_timer: Timer | None = None
        self._closed = False
        self.started_at = hub.now

    # ------------------------------------------------------------------ facts

    @property
    def edge_triggered(self) -> bool:
        """True when the loop runs on edge-triggered epoll."""
        return self._edge

    @property
    def selector_name(self) -> str:
        return self._selector.name

    @property
    def connection_count(self) -> int:
        """Open connections (those from ``listen``/``connect``; not stats readers)."""
        return self.hub.nconns

    @property
    def shutting_down(self) -> bool:
        return self.hub.shutting_down

    def time(self) -> float:
        """The loop's clock, in seconds."""
        return self._clock.now()

    def connections(self) -> list[Connection]:
        """A snapshot list of the open connections."""
        return [o for o in self._fdmap if isinstance(o, Connection) and o.counted] + [
            c for c in self._unpolled if c.counted]

    @property
    def listeners(self) -> list[Listener]:
        return list(self._listeners)

    # ------------------------------------------------------------- scheduling

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run ``callback(*args)`` on the next iteration, in FIFO order."""
        h = Handle(callback, args)
        self._soon.append(h)
        return h

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> Handle:
        """Like :meth:`call_soon`, from any thread; wakes the loop if it sleeps."""
        h = Handle(callback, args)
        self._soon.append(h)  # deque.append is atomic
        self._waker.wake()
        return h

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` after ``delay`` seconds (never earlier; tick 1 ms).

        Returns a Timer: ``loop.cancel_timer(t)`` cancels it, ``loop.rearm(t, d)``
        moves it to ``d`` seconds from now in O(1).
        """
        return self._wheel.call_later(delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` at loop time ``when``."""
        return self._wheel.call_at(when, callback, *args)

    def cancel_timer(self, timer: Timer) -> None:
        self._wheel.cancel(timer)

    def rearm(self, timer: Timer, delay: float) -> None:
        """Move ``timer`` to ``delay`` seconds from now (reschedules a fired one)."""
        self._wheel.rearm(timer, delay)

    # ---------------------------------------------------------------- signals

    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop when ``sig`` arrives. Main thread only. The
        C-level handler writes the signal number to a socketpair given to
        ``signal.set_wakeup_fd``, so a sleeping poll returns at once."""
        self._signals.add(sig, callback, args)

    def remove_signal_handler(self, sig: int) -> bool:
        """Restore ``sig``'s earlier disposition; False if the loop had no handler for it."""
        return self._signals.remove(sig)

    # ---------------------------------------------------------------- sockets

    def listen(
        self,
        address: tuple[str, int] | str,
        handler_factory: Callable[[], Handler],
        codec_factory: Callable[[], Codec],
        *,
        backlog: int = 1024,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        max_conns: int | None = None,
        reject_message: bytes | None = None,
        max_conns_per_ip: int = 0,
        per_ip_reject_message: bytes | None = None,
        accept_rate: float = 0.0,
        accept_budget: int = 256,
        unix_mode: int | None = None,
        counted: bool = True,
        options: ConnectionOptions | None = None,
        **option_kwargs: Any,
    ) -> Listener:
        """Listen on ``(host, port)`` or a unix socket path and serve what connects.

        Each accepted connection gets ``handler_factory()`` and ``codec_factory()``.
        SO_REUSEADDR is always set; SO_REUSEPORT when ``reuse_port``. ``sock``: an
        already bound socket to use instead (it is listened on if needed).
        ``max_conns`` (default: the fd limit less a reserve): connections beyond
        it are sent ``reject_message`` (if any) and closed. ``max_conns_per_ip``
        (0: off; not for unix sockets): a connection from a host that already
        holds that many is sent ``per_ip_reject_message`` (if any) and closed;
        ``max_conns`` is checked first. ``accept_rate`` (0: off): accept at most
        that many connections per second, in bursts of up to as many; the
        kernel's backlog holds the rest meanwhile. ``unix_mode``: file
        mode of a unix socket (set race-free through the umask). Connection
        settings come from ``options`` or keyword arguments of
        :class:`ConnectionOptions`. Raises OSError if the address cannot be bound.
        """
        opts = ConnectionOptions.given(options, option_kwargs)
        if sock is None:
            sock = bind_listening(address, backlog, reuse_port, unix_mode)
        else:
            sock.listen(backlog)
        sock.setblocking(False)
        try:
            listener = Listener(
                self.hub, sock, handler_factory, codec_factory, opts,
                max_conns=default_max_conns() if max_conns is None else max_conns,
                reject_message=reject_message, max_conns_per_ip=max_conns_per_ip,
                per_ip_reject_message=per_ip_reject_message, accept_rate=accept_rate,
                accept_budget=accept_budget, counted=counted,
            )
            self._register(sock.fileno(), listener, writing=False)
        except BaseException:
            sock.close()
            raise
        self._listeners.append(listener)
        return listener

    def connect(
        self,
        address: tuple[str, int] | str,
        handler_factory: Callable[[], Handler],
        codec_factory: Callable[[], Codec],
        *,
        timeout_s: float = 10.0,
        server_hostname: str | None = None,
        options: ConnectionOptions | None = None,
        **option_kwargs: Any,
    ) -> Connection:
        """Open an outgoing connection; returns at once with the Connection.

        ``on_connect`` runs when it is established (with ``ssl=context``: after the TLS
        handshake, whose name check and SNI use ``server_hostname``, by default the host);
        on failure or after ``timeout_s`` the handler gets ``on_close`` with CONNECT_FAILED
        or CONNECT_TIMEOUT and ``conn.error`` says why. Bytes sent before the connection is
        up are queued. Host names are resolved here (blocking): pass numeric addresses."""
        opts = ConnectionOptions.given(options, option_kwargs)
        sock, target = outgoing_socket(address)
        if sock.family != socket.AF_UNIX:
            opts.apply(sock)
        err = sock.connect_ex(target)
        hub = self.hub
        conn = Connection(hub, sock, handler_factory(), codec_factory(), opts, target,
                          hub.new_id(), connecting=True)
        if opts.ssl is not None:
            conn._tls_client(server_hostname or (address[0] if isinstance(address, tuple)
                                                 else None))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._own(sock.fileno(), conn)
            hub.nconns += 1
            conn._connect_failed(OSError(err, os.strerror(err)))
            return conn
        self._register(sock.fileno(), conn, writing=True)
        hub.nconns += 1
        self._reshare()
        self._wheel.rearm_coarse(conn, timeout_s)  # the connect timeout (Connection._fire)
        return conn

    def adopt(
        self,
        sock: Any,
        handler: Handler,
        codec: Codec,
        *,
        options: ConnectionOptions | None = None,
        **option_kwargs: Any,
    ) -> Connection:
        """Serve an already connected socket (asyncio's ``connect_accepted_socket``): one
        made elsewhere, inherited, or one end of a ``socketpair``. Returns the Connection;
        ``handler.on_connect`` has run. The socket is made non-blocking; a TCP socket gets
        the options' ``nodelay``/``keepalive``. ``sock`` may be any object with the
        socket methods a connection calls (``reactor.testing`` passes wrappers that fail
        on demand, and in-memory sockets whose ``fileno()`` is -1: those are not polled,
        whoever made them raises their events; they are listed, drained and closed as the
        others). Counted in ``connection_count``, not as accepted.
        """
        opts = ConnectionOptions.given(options, option_kwargs)
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            opts.apply(sock)
        return self._attach(sock, handler, codec, opts, True, accepted=False)

    def _own(self, fd: int, obj: Any) -> None:
        fdmap = self._fdmap
        if fd >= len(fdmap):
            fdmap.extend([None] * (max(fd + 1, 2 * len(fdmap), 64) - len(fdmap)))
        fdmap[fd] = obj

    def _register(self, fd: int, obj: Any, writing: bool = False) -> None:
        self._own(fd, obj)
        self._selector.register(fd, True, writing)

    def _attach(self, sock: Any, handler: Handler, codec: Codec, opts: ConnectionOptions,
                counted: bool, accepted: bool = True, proxy: Any = None) -> Connection:
        """``Hub.attach``: an accepted socket (and the PROXY header it came with, whose source
        is its peer) becomes a registered Connection, on_connect run when this returns it."""
        hub = self.hub
        # The address accept() returned is not kept (140 bytes per connection): conn.peer
        # asks the kernel when someone wants it. The id is drawn when first asked.
        conn = (Connection if counted else _UncountedConnection)(
            hub, sock, handler, codec, opts, None if proxy is None else proxy.source, 0)
        if proxy is not None:
            conn._extra().proxy = proxy
        # ET: an fd already readable when added raises its edge at once: no byte is missed.
        fd = sock.fileno()
        if fd >= 0:
            self._register(fd, conn, writing=self._edge)
        else:  # an in-memory socket (reactor.testing), driven by its owner
            self._unpolled.append(conn)
        if counted:
            hub.nconns += 1
            hub.accepted_total += accepted
            self._reshare()
        conn._opened()
        return conn

    def _forget(self, obj: Any) -> None:
        """``Hub.forget``: an object closed; stop watching its fd and update the books."""
        hub = self.hub
        fd = obj.fileno()  # called before the socket is closed
        fdmap = self._fdmap
        if 0 <= fd < len(fdmap) and fdmap[fd] is obj:
            fdmap[fd] = None
            self._selector.unregister(fd)
            if hub.on_forget:
                hook = hub.on_forget.pop(fd, None)
                if hook is not None:
                    hook()
        elif fd < 0 and obj in self._unpolled:
            self._unpolled.remove(obj)
        if isinstance(obj, Listener):
            if obj in self._listeners:
                self._listeners.remove(obj)
            return
        if obj.counted:
            hub.nconns -= 1
            self._reshare()
            hub.count_close(obj.close_reason or CloseReason.LOCAL_CLOSE)
            if hub.shutting_down and hub.nconns == 0:
                self.stop()

    def _reshare(self) -> None:
        """The fair share and the turn's read budget for the connection count (module doc)."""
        hub = self.hub
        hub.share = share = fair_share(self.pool.max_bytes, hub.nconns, self._read_size)
        hub.turn_budget = min(hub.read_budget, READS_PER_TURN * share)

    @property
    def buffer_share(self) -> int:
        """The fair share of buffer memory per connection now, in bytes (see ``_reshare``)."""
        return self.hub.share

    def _pool_grew(self) -> None:
        """``BufferPool.on_grow``: trim the pool about once a second until it is back down."""
        if self._trim_timer is None:
            self._trim_timer = self._wheel.call_later(_TRIM_EVERY_S, self._trim_pool)

    def _trim_pool(self) -> None:
        self.pool.trim()
        self._trim_timer = (self._wheel.call_later(_TRIM_EVERY_S, self._trim_pool)
                            if self.pool.grown else None)

    # --------------------------------------------------------------- running

    def run(self) -> None:
        """Run until :meth:`stop` (or the end of :meth:`shutdown`)."""
        if self._running:
            raise RuntimeError("the loop is already running")
        if self._closed:
            raise RuntimeError("the loop is closed")
        self._running = True
        self._stopping = False
        try:
            while not self._stopping:
                self.run_once()
            self._run_soon()  # on_close callbacks of the last connections
        finally:
            self._running = False

    def run_once(self, timeout: float | None = None) -> None:
        """One iteration (see the module docstring). ``timeout`` caps the sleep."""
        hub = self.hub
        ready = hub.ready
        if ready:
            hub.ready = []
        # No timer has work before ``deadline`` (None: no timers), so the wheel is asked only
        # from then on; one that the events add fires next iteration, whose poll does not wait.
        deadline: float | None = 0.0
        if ready or self._soon or hub.flushq or hub.accepting:
            wait: float | None = 0.0
        else:
            deadline = self._wheel.next_deadline()
            if deadline is None:
                wait = None
            else:
                wait = deadline - self._clock.now()
                if wait < 0:
                    wait = 0.0
        if timeout is not None and (wait is None or timeout < wait):
            wait = timeout
        events = self._selector.poll(wait)
        hub.now = now = self._clock.now()  # one clock read per iteration, for cheap timestamps
        fdmap = self._fdmap
        if len(events) <= _ACCEPT_EVERY:
            for fd, ev in events:
                obj = fdmap[fd]  # epoll reports only registered fds, all below len(fdmap)
                if obj is not None:
                    obj._on_events(ev)
        else:
            for i in range(0, len(events), _ACCEPT_EVERY):
                for fd, ev in events[i:i + _ACCEPT_EVERY]:
                    obj = fdmap[fd]
                    if obj is not None:
                        obj._on_events(ev)
                if hub.accepting:
                    self._serve_accepting()
        if hub.accepting:
            self._serve_accepting()
        for obj in ready:
            obj._on_ready()
        if self._soon:
            self._run_soon()
        if deadline is not None and now >= deadline:
            self._wheel.expire(10000, now)
        flushq = hub.flushq
        if flushq:
            hub.flushq = []
            for conn in flushq:
                conn._flush_due()
        if hub.starved and not self.pool.is_low(hub.read_keep):
            starved = hub.starved
            hub.starved = []
            for conn in starved:
                conn._unstarve()
        hub.iterations += 1
        hub.events += len(events)

    def _serve_accepting(self) -> None:
        hub = self.hub
        accepting, hub.accepting = hub.accepting, []
        for listener in accepting:
            listener._on_ready()

    def _run_soon(self) -> None:
        soon = self._soon
        for _ in range(min(len(soon), _SOON_BUDGET)):
            h = soon.popleft()
            if not h.cancelled:
                self._run_callback(h.callback, h.args)

    def _run_callback(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - one bad callback must not stop the loop
            log.exception("callback %r raised", callback)

    def _timer_failed(self, timer: Timer, exc: BaseException) -> None:
        log.error("timer callback %r raised %s: %s", timer.callback, type(exc).__name__, exc,
                  exc_info=exc)

    def stop(self) -> None:
        """Make :meth:`run` return after the current iteration."""
        self._stopping = True
        self._waker.wake()

    # --------------------------------------------------------------- shutdown

    def shutdown(self, drain_timeout_s: float = 10.0) -> None:
        """Graceful stop: stop accepting, drain every connection, then stop the loop.

        Each connection reads the bytes the kernel already holds for it, delivers
        every complete message, flushes the replies and closes (reason SHUTDOWN).
        After ``drain_timeout_s`` whatever is left is dropped with one warning
        naming the connections and bytes. :meth:`run` returns when done.
        """
        if self.hub.shutting_down:
            return
        self.hub.shutting_down = True
        for listener in list(self._listeners):
            if listener.counted:
                listener.close()
        for conn in self.connections():
            conn._begin_drain()
        if self.hub.nconns == 0:
            self.stop()
        else:
            self._drain_timer = self._wheel.call_later(
                drain_timeout_s, self.abort_all, f"drain timeout after {drain_timeout_s:g} s")

    def abort_all(self, why: str = "aborted") -> None:
        """Close every connection at once, with one warning naming what was dropped."""
        conns = self.connections()
        if conns:
            left = [(c, c.send_buffered + c.recv_buffered) for c in conns]
            total = sum(n for _, n in left)
            names = ", ".join(f"{format_address(c.peer)} ({n} B)" for c, n in left[:10])
            more = f" and {len(left) - 10} more" if len(left) > 10 else ""
            log.warning("%s: dropping %d connection(s) with %d byte(s) buffered: %s%s",
                        why, len(left), total, names, more)
            for c in conns:
                c.abort(CloseReason.SHUTDOWN)
        self.stop()

    def close(self) -> None:
        """Release every fd the loop holds. The loop cannot run afterwards."""
        if self._closed:
            return
        for obj in [o for o in self._fdmap if o is not None] + self._unpolled:
            if isinstance(obj, Connection):
                obj.abort(CloseReason.SHUTDOWN)
            elif isinstance(obj, Listener):
                obj.close()
        self._run_soon()
        self._signals.close()
        self._waker.close()
        self._selector.close()
        self._fdmap = []
        self._closed = True

    def close_after_fork(self) -> None:
        """In a child made by ``os.fork()``: drop the parent's loop fds without side effects
        (the child builds its own Loop; signal dispositions stay as they are)."""
        for obj in [o for o in self._fdmap if o is not None]:
            sock = getattr(obj, "_sock", None)
            if sock is not None:
                sock.close()
        self._signals.close_after_fork()
        self._waker.close()
        self._selector.close()
        self._fdmap = []
        self._closed = True

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """The loop's internals as a plain dict (what the stats socket serves)."""
        return loop_stats(self)
