"""Lifecycle: a connection's cold policy, apart from its hot path (connection.py).

Timers (one wheel entry per connection: the connect timeout, the idle, heartbeat,
frame and write deadlines, the close timeout and the linger), closing without losing
data (flush, shut down our side, linger until the peer's FIN), the shutdown drain,
the outgoing connect, and the handler-call guard. ``Connection`` inherits it; the
attributes used here are the connection's own slots (listed below for readers).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import sys
import termios
from typing import Any

from .address import format_address
from .connstate import (CLOSED, CLOSING, CONNECTING, DRAINED, F_BLOCKED, F_DIAL, F_FLUSH,
                        F_HIGH, F_OPENED, LINGER, OPEN, P_BACKPRESSURE, P_EOF, P_FIN, P_USER,
                        _STATE_NAMES, ConnectionHalf)
from .errors import CloseReason, FrameTimeout, TLSError


__all__ = ["Lifecycle"]

log = logging.getLogger("reactor")

_SHUT_WR = socket.SHUT_WR
_LINGER_ZERO = struct.pack("ii", 1, 0)
_FIONREAD = termios.FIONREAD
_OUTQ = getattr(termios, "TIOCOUTQ", 0x5411)  # SIOCOUTQ: bytes the kernel still holds to send
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_TCP_CA_LOSS = 4  # struct tcp_info's tcpi_ca_state while the kernel retransmits after a timeout
#: After --write-timeout with no byte taken from our queue, how long the kernel's own send
#: queue is watched for progress before the peer is called slow.
_WRITE_GRACE_S = 1.0
#: How long lost segments excuse a peer that takes nothing (``_retransmitting``): an outage of
#: up to ~15 s, whose next retransmission the kernel's backoff may put as far again. A peer
#: that does not read but whose kernel drops what it cannot hold (system-wide TCP memory
#: pressure) looks the same from here; past this it is judged like any other.
_LOSS_GRACE_S = 30.0
_INF = float("inf")


class Lifecycle(ConnectionHalf):
    """The cold half of ``Connection`` (a mixin: no slots of its own)."""

    __slots__ = ()

    # ----------------------------------------------------------------- timers

    def _opened(self) -> None:
        """Established (accepted, or the connect finished): arm the idle and heartbeat
        checks and tell the handler. With TLS, the handshake comes first (``_tls_begin``)
        and this runs again when it is done."""
        opts = self._opts
        if opts.ssl is not None and not getattr(self._sock, "handshaken", False):
            self._tls_begin(opts.ssl)
            return
        if opts.idle_timeout_s > 0 or opts.heartbeat_s > 0:
            now = self._hub.now
            self._hub.wheel.rearm_coarse(self, self._next_check(now) - now)
        self._flags |= F_OPENED
        self._call("on_connect")

    def _partial_began(self) -> None:
        """A partial frame began arriving now: with a frame timeout, check by its deadline."""
        self._partial_since = self._hub.now
        timeout = self._opts.frame_timeout_s
        if timeout > 0.0:
            self._hub.wheel.rearm_sooner(self, timeout)

    def _holds_partial(self) -> bool:
        return self._rest is not None or bool(self._rx)

    def _next_check(self, now: float) -> float:
        """When the idle period, the heartbeat period or the partial frame's time, whichever
        first, ends (infinity if none applies)."""
        opts = self._opts
        due = float("inf")
        if opts.idle_timeout_s > 0:
            due = self._last_rx + opts.idle_timeout_s
        if self._flags & F_HIGH:  # no heartbeat to a peer that is not reading; a write deadline
            if opts.write_timeout_s > 0:
                due = min(due, self._last_tx + opts.write_timeout_s)
        elif opts.heartbeat_s > 0:
            due = min(due, self._last_tx + opts.heartbeat_s)
        timeout = opts.frame_timeout_s
        if timeout > 0 and self._holds_partial():
            # While reading is paused the frame cannot complete through no fault of the
            # peer's: look again a period later rather than at a deadline already passed.
            due = min(due, now + timeout if self._pause else self._partial_since + timeout)
        return max(due, now)

    def _write_stalled(self, now: float) -> bool:
        """Over the high watermark and no byte taken for write_timeout_s: a slow consumer
        (nginx's send_timeout; Redis's soft output limit), unless the kernel's send queue
        is still shrinking. A peer that reads slowly from a large kernel buffer takes bytes
        without ever raising an OUT edge (the kernel waits for a third of the buffer to be
        free), so before the abort the queue (SIOCOUTQ) is watched for ``_WRITE_GRACE_S``
        more: if it shrank, the peer is reading and the deadline starts again. Nor is a peer
        whose segments are being lost (``_retransmitting``: loopback under ``tcp_mem``
        pressure drops them, a link went down): its window is open, the kernel's
        retransmission backoff is what holds the bytes, for ``_LOSS_GRACE_S`` at most."""
        timeout = self._opts.write_timeout_s
        if timeout <= 0 or not self._flags & F_HIGH or now - self._last_tx < timeout - 1e-9:
            return False
        watched = self._hub.outq_seen
        seen = watched.pop(self, None)
        # The last look counts only if nothing was sent since (a send refills the queue).
        before = seen[0] if seen is not None and seen[1] == self._last_tx else None
        lost_since = seen[2] if before is not None else now  # excused by losses since
        try:
            queued = struct.unpack("i", fcntl.ioctl(self._sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
        except OSError:
            queued = -1
        if queued == 0:  # the kernel has room: send (an OUT edge was missed, or is late)
            self._flush()
            return self._state == CLOSED
        progress = before is None or queued < before
        if queued > 0 and (progress or (now - lost_since < _LOSS_GRACE_S
                                        and self._retransmitting())):
            self._last_tx = now - timeout + _WRITE_GRACE_S  # look again after the grace
            watched[self] = (queued, self._last_tx, now if progress else lost_since)
            return False
        log.debug("connection %s: %d bytes queued and none sent for %g s", self.id,
                  self.send_buffered, now - self._last_tx)
        self.abort(CloseReason.SLOW_CONSUMER)
        return True

    def _retransmitting(self) -> bool:
        """True if the kernel is retransmitting unacknowledged bytes on this TCP socket after
        a timeout (the network or the peer's kernel lost them) while the peer's window is
        open, rather than holding bytes back because the peer's window is closed (a peer
        that does not read: its window 0, whatever was lost on the way). Read from TCP_INFO;
        False where there is none (unix sockets)."""
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 232)
        except (OSError, AttributeError):
            return False
        if len(info) < 28:
            return False
        unacked = int.from_bytes(info[24:28], sys.byteorder)  # tcpi_unacked: segments in flight
        if not (unacked > 0 and (info[1] == _TCP_CA_LOSS or info[2] > 0)):  # ca_state, retransmits
            return False
        # tcpi_snd_wnd (Linux 5.4+): the window the peer last offered; 0 = it does not read.
        return len(info) < 232 or int.from_bytes(info[228:232], sys.byteorder) > 0

    def _frame_timed_out(self, now: float) -> bool:
        timeout = self._opts.frame_timeout_s
        if timeout <= 0 or self._pause or not self._holds_partial():
            return False
        age = now - self._partial_since
        if age < timeout - 1e-9:
            return False
        error = getattr(self._codec, "frame_timeout_error", FrameTimeout)
        self._codec_error(error(age, timeout))
        return True

    def _fire(self) -> None:
        """The connection's one wheel entry fired; what it was armed for follows the state:
        the connect timeout, the idle and heartbeat checks, the close timeout, the linger."""
        st = self._state
        if st != OPEN:
            if st == CONNECTING:
                self._connect_timed_out()
            elif st == CLOSING:
                self._close_expired()
            elif st == LINGER:
                self._linger_over()
            return
        now = self._hub.clock.now()
        if self._frame_timed_out(now) or self._write_stalled(now):
            return
        opts = self._opts
        if opts.idle_timeout_s > 0 and now - self._last_rx >= opts.idle_timeout_s - 1e-9:
            self._last_rx = now  # once per idle period, if the handler keeps the connection
            self._call("on_idle")
            if self._state != OPEN:
                return
        if (opts.heartbeat_s > 0 and not self._flags & F_HIGH
                and now - self._last_tx >= opts.heartbeat_s - 1e-9):
            self._last_tx = now  # the next heartbeat is a period later even if nothing is sent
            self._call("on_heartbeat")
            if self._state != OPEN:
                return
        due = self._next_check(now)
        if due != _INF:
            self._hub.wheel.rearm_coarse(self, due - now)

    # ---------------------------------------------------------------- closing

    def close(self, reason: CloseReason = CloseReason.LOCAL_CLOSE) -> None:
        """Close gracefully: stop reading, flush what is queued, then close.

        Idempotent. ``on_close(conn, reason)`` follows on the loop.
        """
        st = self._state
        if st >= CLOSING:
            return
        if st == CONNECTING:
            self._teardown(reason)
            return
        self._state = CLOSING
        self._reason = reason
        self._pause |= P_EOF
        if not self._hub.edge:
            self._sync_interest()
        if not self._tx and self._out is None:
            self._finish_close()
            return
        # A peer that never reads must not hold a closing connection forever.
        opts = self._opts
        self._hub.wheel.rearm_coarse(
            self, opts.close_timeout_s if opts.ssl is None else opts.ssl_shutdown_timeout_s)
        if not self._flags & (F_FLUSH | F_BLOCKED):
            self._flags |= F_FLUSH
            self._hub.flushq.append(self)

    def _close_expired(self) -> None:
        if self._state == CLOSING:
            log.debug("connection %s: close did not flush %d bytes in %g s", self.id,
                      self.send_buffered, self._opts.close_timeout_s)
            self._teardown(self._reason or CloseReason.LOCAL_CLOSE)

    def abort(self, reason: CloseReason = CloseReason.LOCAL_CLOSE) -> None:
        """Close at once, dropping whatever is still queued for the peer, the kernel's send
        queue included: the peer gets a reset (SO_LINGER 0). Otherwise a slow consumer's
        unsent megabytes would stay in kernel memory, trickling out, long after the close."""
        if self._state != CLOSED:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            except OSError:
                pass
            self._teardown(reason)

    def _finish_close(self) -> None:
        """The send ring is empty after close(): shut down our side and linger."""
        if self._pause & P_FIN:
            self._teardown(self._reason or CloseReason.PEER_CLOSED)
            return
        try:
            self._sock.shutdown(_SHUT_WR)
        except OSError:
            self._teardown(self._reason or CloseReason.PEER_RESET)
            return
        self._state = LINGER
        self._hub.wheel.rearm_coarse(self, self._opts.linger_s)
        if not self._hub.edge:
            self._sync_interest()
        self._linger_reads()

    def _linger_reads(self) -> None:
        """Read and discard until the peer's FIN (then close) or EAGAIN."""
        recv_into = self._sock.recv_into
        scratch = self._hub.scratch
        budget = self._hub.read_budget
        while budget > 0:
            try:
                n = recv_into(scratch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = 0
            if not n:
                self._teardown(self._reason or CloseReason.LOCAL_CLOSE)
                return
            budget -= n
        self._hub.ready.append(self)

    def _linger_over(self) -> None:
        if self._state == LINGER:
            self._teardown(self._reason or CloseReason.LOCAL_CLOSE)

    def _fail(self, exc: OSError) -> None:
        """A socket error: this connection ends, the loop goes on."""
        # Without its traceback: the traceback's frames hold this connection, and a
        # connection kept alive by a cycle is freed only by a full GC (RSS grew by ~700 B
        # per reset connection under churn until one ran).
        self.error = exc.with_traceback(None)
        reason = (
            CloseReason.PEER_RESET
            if isinstance(exc, (ConnectionError, BrokenPipeError))
            else CloseReason.TLS_ERROR if isinstance(exc, TLSError)
            else CloseReason.IO_ERROR
        )
        if self._reason is None or self._state < CLOSING:
            self._reason = reason
        self._teardown(self._reason)

    def _teardown(self, reason: CloseReason) -> None:
        if self._state == CLOSED:
            return
        self._state = CLOSED
        if self._reason is None:
            self._reason = reason
        if self._hub.outq_seen:
            self._hub.outq_seen.pop(self, None)
        if self.counted:  # the loop's own service connections' bytes (stats, metrics) are
            self._hub.bytes_in += self.bytes_in  # not the service's traffic
            self._hub.bytes_out += self.bytes_out
        self._hub.wheel.cancel(self)  # whatever it was armed for; a no-op if nothing
        self._hub.forget(self)
        try:
            self._sock.close()
        except OSError:  # pragma: no cover
            pass
        for ring in (self._rx, self._tx):
            if ring is not None:
                ring.clear()
                if ring is not self._hub.scratch_ring:
                    self._hub.ring_free.append(ring)
        self._rx = self._tx = self._rest = self._out = None
        if self._flags & (F_OPENED | F_DIAL):  # whoever heard on_connect, or asked to dial
            self._hub.call_soon(self._notify_closed)

    def _notify_closed(self) -> None:
        try:
            self._handler.on_close(self, self._reason)
        except Exception:  # noqa: BLE001
            log.exception("connection %s: handler on_close raised", self.id)

    # -------------------------------------------------------- drain at shutdown

    def _begin_drain(self) -> None:
        """Loop.shutdown(): deliver every byte the kernel holds now, then close.

        FIONREAD gives the bytes queued at this instant: exactly what the peer
        had delivered before the shutdown began. Reading stops after them, so a
        peer that keeps sending cannot hold the drain open.
        """
        st = self._state
        if st == CONNECTING:
            self._teardown(CloseReason.SHUTDOWN)
            return
        if st != OPEN:
            return
        if self._pause & P_FIN:
            self.close(CloseReason.SHUTDOWN)
            return
        self._pause &= ~(P_USER | P_BACKPRESSURE)
        try:
            buf = fcntl.ioctl(self._sock.fileno(), _FIONREAD, b"\0\0\0\0")
            queued = int.from_bytes(buf, sys.byteorder)
        except OSError:
            queued = 0
        # TLS: ciphertext (more bytes than the plaintext it holds), plus what the SSL object
        # took in already; the read path ends the drain at the first short read (EAGAIN).
        queued += getattr(self._sock, "buffered", 0)
        self._drain_left = queued
        self._deliver()
        if self._state != OPEN:
            return
        if queued == 0:
            self._drain_done()
        else:
            self._hub.ready.append(self)

    def _drain_done(self) -> None:
        self._drain_left = DRAINED
        self._deliver()
        self.close(CloseReason.SHUTDOWN)

    # ----------------------------------------------------------------- helpers

    def _finish_connect(self) -> None:
        """An event while CONNECTING: the outgoing connect finished, or (TLS) the handshake
        can take a step."""
        if getattr(self._sock, "handshaking", False):
            self._tls_step()
            return
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(OSError(err, os.strerror(err)))
            return
        self._hub.wheel.cancel(self)  # the connect timeout
        self._established()

    def _established(self) -> None:
        """Open now: tell the handler, send what was queued meanwhile, and read what came
        (edge-triggered: bytes that arrived with the connect or the handshake raise no new
        edge)."""
        self._state = OPEN
        self._opened()
        if getattr(self._sock, "want_write", False):  # TLS: the handshake's last flight
            self._flags |= F_BLOCKED  # waits for room: the OUT edge sends it (_flush)
        if self._state == OPEN and (self._tx or self._out is not None):
            self._flush()
        if self._state == OPEN and not self._pause:
            self._pump()
        if not self._hub.edge and self._state < CLOSED:
            self._sync_interest()

    def _connect_failed(self, exc: OSError) -> None:
        self.error = exc
        self._teardown(CloseReason.CONNECT_FAILED)

    def _connect_timed_out(self) -> None:
        if self._state != CONNECTING:
            return
        if getattr(self._sock, "handshaking", False):
            self._tls_failed(TimeoutError(
                f"TLS handshake not done in {self._opts.ssl_handshake_timeout_s:g} s"),
                CloseReason.TLS_HANDSHAKE_TIMEOUT)
            return
        self.error = TimeoutError("connect timed out")
        self._teardown(CloseReason.CONNECT_TIMEOUT)

    # -------------------------------------------------------------------- TLS

    def _tls_begin(self, context: Any) -> None:
        """Wrap the socket (an accepted one, server side; an outgoing one was wrapped by
        ``Loop.connect``) and start the handshake: CONNECTING until it is done, under its
        timeout."""
        from .tls import TLSSocket  # ssl is imported only by services that use TLS

        sock = self._sock
        if not isinstance(sock, TLSSocket):
            sock = self._sock = TLSSocket(sock, context, True, None, self._hub.cipher_buffer())
            sock.on_end = self._read_again
        self._state = CONNECTING
        self._hub.wheel.rearm_coarse(self, self._opts.ssl_handshake_timeout_s)
        sock.handshaking = True
        self._tls_step()

    def _tls_client(self, server_hostname: str | None) -> None:
        """``Loop.connect`` with TLS: the client side of the handshake, which begins once
        the TCP connect is done (``_finish_connect`` -> ``_opened`` -> ``_tls_begin``)."""
        from .tls import TLSSocket

        ctx = self._opts.ssl
        try:
            sock = TLSSocket(self._sock, ctx, False, server_hostname, self._hub.cipher_buffer())
        except BaseException:  # e.g. a context that checks host names, and no name to check
            self._sock.close()
            raise
        sock.on_end = self._read_again
        self._sock = sock

    def _read_again(self) -> None:
        """TLS: a read met the end of the stream after some bytes; read once more (no edge
        will come) to get the 0 that says so."""
        self._hub.ready.append(self)

    def _tls_step(self) -> None:
        try:
            done = self._sock.handshake()
        except OSError as exc:  # ssl.SSLError is one
            self._tls_failed(exc, CloseReason.TLS_HANDSHAKE_FAILED)
            return
        if done:
            self._hub.tls_handshakes += 1
            self._hub.wheel.cancel(self)  # the handshake timeout
            self._established()
        elif not self._hub.edge:
            self._sync_interest()

    def _tls_failed(self, exc: OSError, reason: CloseReason) -> None:
        """A handshake that failed: counted by its reason, one log line, no traceback."""
        from .tls import failure_reason

        why = failure_reason(exc)
        failures = self._hub.tls_failures
        failures[why] = failures.get(why, 0) + 1
        log.info("connection %s %s: TLS handshake failed (%s): %s", self.id,
                 format_address(self.peer), why, exc)
        self.error = exc.with_traceback(None)
        self._teardown(reason)

    def _call(self, name: str, *args: Any) -> None:
        """Run a handler callback; an exception closes this connection only."""
        try:
            getattr(self._handler, name)(self, *args)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc, name)

    def _handler_failed(self, exc: Exception, where: str) -> None:
        log.error("connection %s %r: %s raised %s: %s", self.id, self.peer,
                  where if where.startswith("codec ") else f"handler {where}",
                  type(exc).__name__, exc, exc_info=exc)
        self._reason = CloseReason.HANDLER_ERROR
        if self._state <= OPEN:
            self.close(CloseReason.HANDLER_ERROR)

    def _sync_interest(self) -> None:
        """Level-triggered mode only: make the selector's interest match our state."""
        st = self._state
        sock = self._sock
        if st == CONNECTING and getattr(sock, "handshaking", False):
            reading, writing = True, sock.want_write  # a TLS handshake: the peer's next flight
        else:
            reading = (st == OPEN and not self._pause) or st == LINGER
            writing = st == CONNECTING or (bool(self._flags & F_BLOCKED) and st <= CLOSING)
        fd = self._sock.fileno() if st != CLOSED else -1
        if fd >= 0:  # -1: not polled (an in-memory socket, Loop.adopt)
            self._hub.selector.set_interest(fd, reading, writing)

    def _snapshot(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": format_address(self.peer),
            "state": _STATE_NAMES[self._state],
            "rx_bytes": self.recv_buffered,
            "tx_bytes": self.send_buffered,
            "age_s": round(now - self.created_at, 3),
            "idle_s": round(max(0.0, now - self._last_rx), 3),
            "paused": self.paused,
        }
