"""Listener: the accept path -- accept within a budget, connection caps, rate, fd exhaustion.

Each listening socket is registered for read edges only. One edge may stand
for many queued connections, so we accept until EAGAIN (invariant 1 of
connection.py applies to accept too), at most ``accept_budget`` per turn; if the
budget runs out the listener goes on the loop's ready list.

Two optional limits, both free when off (a local int or None test per accept):
``max_conns_per_ip`` counts held connections per peer host in a dict that drops
a host at zero, so it never holds more entries than connections; the slot is
given back from the connection's close path (``Hub.forget``). ``accept_rate``
is a ``TokenBucket``: when it is empty we stop accepting and leave the rest in
the kernel's backlog, and -- as with EMFILE below, there will be no new edge --
a timer resumes accepting when the next token is due.

Running out of file descriptors (EMFILE/ENFILE)
-----------------------------------------------
When the process has no fd left, accept() fails but the connection stays in
the kernel's queue. A level-triggered loop then wakes at once, fails again, and
spins a core (bun#32705: ~98k EMFILE returns in 10 s); an edge-triggered loop
instead goes deaf, because the queued connection raises no new edge. Both are
wrong. We keep one spare fd (``FdReserve``, Twisted's _FileDescriptorReservation
and libuv's uv__emfile_trick): on EMFILE we close the spare, accept the waiting
connection into the freed slot, tell it ``reject_message`` if it will take it,
close it, and take the spare back -- repeated until the queue is empty, so
peers get an answer instead of a hang. (Linux fails accept() with EMFILE before it
looks at the queue, so the last round finds nobody: accepting then just stops until
the next edge.) If that cannot work (ENFILE, or the
spare could not be re-taken), accepting pauses for ``_RETRY_S`` and a timer
retries: no spin, no deafness. Warnings are rate-limited to one per
``_WARN_EVERY_S`` with a count. Nothing on this path opens a file or imports a
module (Netty #6055: the recovery code itself needed an fd).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import resource
import socket
import struct
import _socket
from typing import TYPE_CHECKING, Any, Callable

from .address import format_address
from .errors import CloseReason
from .preamble import ProxyPreamble

if TYPE_CHECKING:  # pragma: no cover
    from .clock import Clock
    from .connection import ConnectionOptions
    from .hub import Hub
    from .protocols import Codec, Handler
    from .proxy_protocol import ProxyHeader

__all__ = ["Listener", "FdReserve", "TokenBucket", "raise_fd_limit", "default_max_conns",
           "FD_RESERVE"]

log = logging.getLogger("reactor")

_FD_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Errors that concern only the connection being accepted (it died in the queue).
_PEER_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                          errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
                          errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH})
_RETRY_S = 0.1
_WARN_EVERY_S = 10.0
_LINGER_ZERO = struct.pack("ii", 1, 0)
# Float time falls short: 100.1 - 100.0 is 0.0999999999999943, so the token a timer
# was set for must count as there a hair early.
_TOKEN_EPS = 1e-9


#: File descriptors kept back from the default connection cap for listeners, logs,
#: the stats socket and the spare fd (Redis's CONFIG_MIN_RESERVED_FDS is 32).
FD_RESERVE = 32


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force."""


    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # pragma: no cover - e.g. a sandbox forbids it
            pass
    return soft


def default_max_conns() -> int:
    """What the fd limit allows: the soft RLIMIT_NOFILE less ``FD_RESERVE`` (at least 1)."""


    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:  # pragma: no cover
        soft = 1 << 20
    return max(1, soft - FD_RESERVE)


def _open_devnull() -> int:
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


class FdReserve:
    """One spare file descriptor, given up for a moment when the process runs out.

    ``opener`` returns a new fd (default: /dev/null, opened now, before any
    shortage). Tests inject their own.
    """

    __slots__ = ("_opener", "_fd")

    def __init__(self, opener: Callable[[], int] = _open_devnull) -> None:
        self._opener = opener
        self._fd: int | None = None
        self.reacquire()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> bool:
        """Close the spare so the next fd the process opens can use its slot."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True

    def reacquire(self) -> bool:
        """Take a spare again; False if there is still no fd to be had."""
        if self._fd is None:
            try:
                self._fd = self._opener()
            except OSError:
                return False
        return True

    def close(self) -> None:
        self.release()


class TokenBucket:
    """At most ``rate`` takes per second on average, in bursts of up to ``rate`` (at least 1).

    Starts full. Refilled from ``clock`` (the loop's; tests pass a FakeClock)
    whenever it is asked, so it needs no timer of its own. A bucket rather than
    a per-second window: a window lets two windows' worth through around its edge.
    Raises ValueError unless ``rate`` is a finite number > 0.
    """

    __slots__ = ("rate", "capacity", "_clock", "_tokens", "_stamp")

    def __init__(self, rate: float, clock: Clock) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a finite number > 0, not {rate}")
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate)
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock.now()

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now (fractions count toward the next one)."""
        now = self._clock.now()
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._tokens = tokens if tokens < self.capacity else self.capacity
        self._stamp = now
        return self._tokens

    def take(self) -> bool:
        """Spend one token; False, spending nothing, if the bucket holds less than one."""
        if self.tokens < 1.0 - _TOKEN_EPS:
            return False
        self._tokens -= 1.0
        return True

    def give_back(self) -> None:
        """Return a token that bought nothing (accept() found the queue empty)."""
        self._tokens = min(self.capacity, self._tokens + 1.0)

    def wait_s(self) -> float:
        """Seconds until the next token is due; 0 if one is there."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


class Listener:
    """A listening socket and what to do with the connections it accepts.

    Created by ``Loop.listen``. ``address`` is the bound address; ``close()``
    stops accepting (established connections are not affected).
    ``max_conns_per_ip`` (0: off; always 0 on a unix socket, whose peers have
    no address) and ``accept_rate`` (connections per second, 0: off) are the
    optional limits; ``per_ip_rejected_total`` and ``accept_pauses_total`` count them
    (``per_ip_rejections`` and ``accept_pauses`` in the stats document).
    """

    __slots__ = (
        "_hub", "_sock", "_fd", "_handler_factory", "_codec_factory", "options",
        "max_conns", "reject_message", "accept_budget", "_reserve", "_paused",
        "_retry", "counted", "_warned_at", "_unwarned", "address", "family",
        "accepted_total", "rejected_total", "fd_exhausted_total", "_closed", "on_close",
        "max_conns_per_ip", "per_ip_reject_message", "_per_ip", "per_ip_rejected_total",
        "accept_rate", "_bucket", "accept_pauses_total",
        "_preambles", "proxy_accepted_total", "proxy_refused",
    )

    def __init__(
        self,
        hub: Hub,
        sock: socket.socket,
        handler_factory: Callable[[], Handler],
        codec_factory: Callable[[], Codec],
        opts: ConnectionOptions,
        *,
        max_conns: int,
        reject_message: bytes | None = None,
        max_conns_per_ip: int = 0,
        per_ip_reject_message: bytes | None = None,
        accept_rate: float = 0.0,
        accept_budget: int = 256,
        counted: bool = True,
        reserve: FdReserve | None = None,
    ) -> None:
        if max_conns_per_ip < 0:
            raise ValueError(f"max_conns_per_ip must be >= 0, not {max_conns_per_ip}")
        if not (accept_rate >= 0 and math.isfinite(accept_rate)):
            raise ValueError(f"accept_rate must be a finite number >= 0, not {accept_rate}")
        self._hub = hub
        self._sock = sock
        self._fd = sock.fileno()
        self._handler_factory = handler_factory
        self._codec_factory = codec_factory
        #: The settings of the connections it accepts.
        self.options = opts
        self.max_conns = max_conns
        self.reject_message = reject_message
        self.family = sock.family
        self.max_conns_per_ip = 0 if self.family == socket.AF_UNIX else max_conns_per_ip
        self.per_ip_reject_message = per_ip_reject_message
        self._per_ip: dict[str, int] = {}  # peer host -> connections held; no zero entries
        self.per_ip_rejected_total = 0
        self.accept_rate = float(accept_rate)
        self._bucket = TokenBucket(accept_rate, hub.clock) if accept_rate else None
        self.accept_pauses_total = 0
        self.accept_budget = accept_budget
        self._reserve = reserve if reserve is not None else FdReserve()
        self._paused = False
        self._retry: Any = None
        #: Its connections are counted in the loop's books (False: the stats socket's).
        self.counted = counted
        self._warned_at = -1e18
        self._unwarned = 0
        self.address = sock.getsockname()
        self.accepted_total = 0
        self.rejected_total = 0
        self.fd_exhausted_total = 0
        self._closed = False
        #: Called once after close() (e.g. to remove files that advertise the listener).
        self.on_close: Callable[[], None] | None = None
        # opts.proxy_protocol: accepted sockets waiting for their PROXY header (preamble.py),
        # by fd; headers taken, and sockets refused by reason (``proxy_protocol`` in stats).
        self._preambles: dict[int, ProxyPreamble] = {}
        self.proxy_accepted_total = 0
        self.proxy_refused: dict[str, int] = {}

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Stop accepting and close the listening socket (and a unix socket's file)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._hub.wheel.cancel(self._retry)
        self._hub.forget(self)
        for pre in list(self._preambles.values()):  # not connections yet: nothing to drain
            self._end_preamble(pre)
            pre.sock.close()
        path = self.address if self.family == socket.AF_UNIX else None
        self._sock.close()
        self._reserve.close()
        if isinstance(path, str) and path and not path.startswith("\0"):
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.on_close is not None:
            self.on_close()

    # The loop calls these two.
    def _on_events(self, ev: int) -> None:
        if not self._paused:
            self._accept_some()

    def _on_ready(self) -> None:
        if not self._paused and not self._closed:
            self._accept_some()

    def _accept_some(self) -> None:
        accept = self._sock._accept  # type: ignore[attr-defined]  # fd, addr: no socket object yet
        hub = self._hub
        bucket = self._bucket
        proxied = self.options.proxy_protocol
        # Behind a load balancer every socket comes from it: the client's address is known
        # only from the PROXY header, and the per-address cap is applied then.
        per_ip = 0 if proxied else self.max_conns_per_ip
        for _ in range(self.accept_budget):
            if bucket is not None and not bucket.take():
                self.accept_pauses_total += 1  # the backlog holds the rest until a token is due
                self._pause(bucket.wait_s())
                return
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                if bucket is not None:
                    bucket.give_back()
                return
            except OSError as exc:
                if exc.errno in _FD_ERRORS:
                    if not self._out_of_fds(exc):
                        return
                    continue
                if exc.errno in _PEER_ERRORS:
                    continue
                log.error("listener %s: accept failed: %s; retrying in %.1f s",
                          format_address(self.address), exc, _RETRY_S)
                self._pause()
                return
            if self.counted and hub.nconns + len(self._preambles) >= self.max_conns:
                self._reject(fd, CloseReason.SERVER_FULL, self.reject_message)
                continue
            if proxied:
                self._begin_preamble(fd, addr)
                continue
            if per_ip and not self._take_ip_slot(fd, addr[0]):
                continue
            self.accepted_total += 1
            if not self._admit(fd, addr) and per_ip:  # not admitted: give the slot back
                give_back = hub.on_forget.pop(fd, None)
                if give_back is not None:
                    give_back()
            if self._closed:
                return
        hub.accepting.append(self)  # budget spent; the queue may hold more (no new edge)

    def _admit(self, fd: int, addr: Any, proxy: ProxyHeader | None = None) -> bool:
        """Make the accepted ``fd`` a connection (``Hub.attach``); False if it was refused."""
        try:
            # The C socket type, not socket.socket: the same methods without the Python
            # subclass's GC-tracked wrapper (48 bytes per connection instead of 88).
            sock = _socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        except OSError:  # pragma: no cover
            os.close(fd)
            return False
        opts = self.options
        try:
            sock.setblocking(False)
            if self.family != socket.AF_UNIX:
                opts.apply(sock)
            handler = self._handler_factory()
            codec = self._codec_factory()
        except Exception as exc:  # noqa: BLE001 - a bad factory refuses one peer
            log.error("listener %s: cannot set up a connection from %s: %s",
                      format_address(self.address), format_address(addr), exc, exc_info=exc)
            sock.close()
            return False
        self._hub.attach(sock, handler, codec, opts, self.counted, proxy=proxy)
        return True

    # -- the PROXY protocol (preamble.py) -----------------------------------------------

    def _begin_preamble(self, fd: int, addr: Any) -> None:
        try:
            sock = _socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
        except OSError:  # pragma: no cover
            os.close(fd)
            return
        pre = ProxyPreamble(sock, addr, self._hub, self._preamble_done, self._preamble_refused)
        self._preambles[fd] = pre
        hub = self._hub
        hub.watch(fd, pre)  # a header already there raises its edge at the next poll
        pre.timer = hub.wheel.call_later(self.options.proxy_timeout_s, self._preamble_refused,
                                         pre, "timeout")

    def _end_preamble(self, pre: ProxyPreamble) -> None:
        del self._preambles[pre.fileno()]
        self._hub.forget(pre)
        for timer in (pre.timer, pre.retry):
            if timer is not None:
                self._hub.wheel.cancel(timer)

    def _preamble_done(self, pre: ProxyPreamble, header: ProxyHeader) -> None:
        """The header is taken: admit the connection as the client it names (a LOCAL or
        UNKNOWN header names none: the balancer's own connection, e.g. a health check)."""
        self._end_preamble(pre)
        self.proxy_accepted_total += 1
        fd = pre.sock.detach()
        src = header.source
        per_ip = self.max_conns_per_ip and isinstance(src, tuple)
        if per_ip and not self._take_ip_slot(fd, src[0]):  # type: ignore[index]
            return
        self.accepted_total += 1
        if not self._admit(fd, pre.addr, header) and per_ip:
            give_back = self._hub.on_forget.pop(fd, None)
            if give_back is not None:
                give_back()

    def _preamble_refused(self, pre: ProxyPreamble, why: str, exc: Any = None) -> None:
        """No valid header: counted by reason, one log line, closed (nothing was read)."""
        if pre.fileno() not in self._preambles:
            return  # already handed over or refused
        self._end_preamble(pre)
        self.proxy_refused[why] = self.proxy_refused.get(why, 0) + 1
        self.rejected_total += 1
        self._hub.count_close(CloseReason.PROXY_PROTOCOL)
        log.info("listener %s: connection from %s refused: no valid PROXY header (%s)%s",
                 format_address(self.address), format_address(pre.addr), why,
                 f": {exc}" if exc is not None else "")
        try:
            pre.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        except OSError:  # pragma: no cover
            pass
        pre.sock.close()  # a reset: what it sent is not ours to read

    def _take_ip_slot(self, fd: int, host: str) -> bool:
        """Count one more connection from ``host``, to be given back when it closes;
        if ``host`` already holds ``max_conns_per_ip``, reject ``fd`` and return False."""
        held = self._per_ip.get(host, 0)
        if held >= self.max_conns_per_ip:
            self.per_ip_rejected_total += 1
            self._reject(fd, CloseReason.PER_IP_LIMIT, self.per_ip_reject_message)
            return False
        self._per_ip[host] = held + 1
        # Registered before the connection exists: on_connect may abort it at once.
        self._hub.on_forget[fd] = functools.partial(self._give_ip_slot, host)
        return True

    def _give_ip_slot(self, host: str) -> None:
        held = self._per_ip[host] - 1
        if held:
            self._per_ip[host] = held
        else:
            del self._per_ip[host]

    def _out_of_fds(self, exc: OSError) -> bool:
        """EMFILE and friends. True if a queued connection was answered and closed; False
        when accepting stops: nobody was waiting after all, or it pauses for ``_RETRY_S``."""
        fd = -1
        if exc.errno == errno.EMFILE and self._reserve.release():
            try:
                fd, _addr = self._sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                # Linux takes the fd before it looks at the queue: at the limit accept()
                # fails with EMFILE even when nobody waits. Nobody was refused, and the next
                # connection raises an edge: no retry timer, or each refusal would wait for
                # it (test_hostile.py::test_fd_exhaustion_again_and_again).
                if self._reserve.reacquire():
                    if self._bucket is not None:
                        self._bucket.give_back()  # as for EAGAIN in _accept_some
                    return False
            except OSError:
                pass
        self.fd_exhausted_total += 1
        self._warn(exc)
        if fd >= 0:
            self._reject(fd, CloseReason.SERVER_FULL, self.reject_message)
        if self._reserve.reacquire() and fd >= 0:
            return True
        self._pause()
        return False

    def _reject(self, fd: int, reason: CloseReason, message: bytes | None) -> None:
        """Tell an excess connection why (if it will take the bytes now), then close it."""
        self.rejected_total += 1
        self._hub.count_close(reason)
        try:
            s = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        except OSError:  # pragma: no cover
            os.close(fd)
            return
        try:
            s.setblocking(False)
            if message:
                s.send(message)
            s.shutdown(socket.SHUT_WR)
            # Unread bytes at close() turn the FIN into a RST, which may destroy the
            # message above before the peer reads it: read what is queued first.
            scratch = self._hub.scratch
            for _ in range(16):
                if not s.recv_into(scratch):
                    break
        except OSError:
            pass
        finally:
            s.close()

    def _pause(self, delay_s: float = _RETRY_S) -> None:
        if self._paused or self._closed:
            return
        self._paused = True
        if not self._hub.edge:  # a level-triggered listener would report itself ready all along
            self._hub.selector.set_interest(self._fd, False, False)
        self._retry = self._hub.wheel.call_later(delay_s, self._resume)

    def _resume(self) -> None:
        self._paused = False
        self._retry = None
        if not self._hub.edge and not self._closed:
            self._hub.selector.set_interest(self._fd, True, False)
        if not self._closed:
            self._reserve.reacquire()
            self._accept_some()

    def _warn(self, exc: OSError) -> None:
        now = self._hub.clock.now()
        if now - self._warned_at >= _WARN_EVERY_S:
            more = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
            log.warning("listener %s: out of file descriptors (%s): refusing connections "
                        "with the spare fd%s", format_address(self.address),
                        errno.errorcode.get(exc.errno or 0, exc.errno), more)
            self._warned_at = now
            self._unwarned = 0
        else:
            self._unwarned += 1


