"""Connection: one non-blocking socket, its two pooled rings, codec, handler and timers.

Three halves make one class: this file is the event dispatch (``_on_events``) and the
write path (``send``/``write`` -> the send ring -> ``_flush``: one sendmsg of its
segments); reading.py is where bytes enter (``_pump``: recv_into) and become messages
(``_deliver``: codec -> handler), with the edge-triggered invariants; lifecycle.py is the
cold policy. The loop asks of a connection only what ``reactor/hub.py``'s ``Driver``
names, and a connection asks of its loop only what the ``Hub`` holds.

Closing without losing data (lifecycle.py, with the timers, the drain and the
connect; this file is the hot path): close() stops reading, flushes the send ring,
shuts down our sending side, then keeps reading and discarding ("lingering")
until the peer's FIN or ``linger_s``; only then is the socket closed. Closing a
socket with unread bytes makes the kernel send RST, which can destroy replies
the peer has not read yet.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .connstate import (CLOSED, CLOSING, CONNECTING, F_BLOCKED, F_DIAL, F_FLUSH, F_HIGH, F_HUP,
                        LINGER, NOT_DRAINING, OPEN, P_BACKPRESSURE, P_STARVED,
                        P_USER, _Extra, _InExtra)
from .errors import CloseReason
from .lifecycle import Lifecycle
from .options import ConnectionOptions
from .reading import PUMPS, Reading, read_path
from .ring import RingBuffer
from .selector import ERR, HUP, IN, OUT, RDHUP
from .wheel import TimerEntry

if TYPE_CHECKING:  # pragma: no cover
    from .hub import Hub
    from .protocols import Codec, Handler

__all__ = ["Connection", "ConnectionOptions"]

log = logging.getLogger("reactor")

_READ_EVENTS = IN | HUP | RDHUP | ERR
_HANGUP = HUP | RDHUP | ERR
_WRITE_EVENTS = OUT | HUP | ERR
_EMPTY: Any = ()  # stands for "no send ring" in _flush: falsy, len() 0
_MAX_SEGMENTS = 64  # iovecs per sendmsg; far below IOV_MAX (1024)
_FLUSH_BUDGET = 1 << 20  # bytes one flush may send before others get a turn
#: What get_extra_info answers from a TLS connection's ssl.SSLObject (asyncio's names).
_TLS_INFO: dict[str, Any] = {
    "ssl_object": lambda obj: obj, "peercert": lambda obj: obj.getpeercert(),
    "cipher": lambda obj: obj.cipher(), "compression": lambda obj: obj.compression(),
    "alpn_protocol": lambda obj: obj.selected_alpn_protocol()}


def _connection_class(cls: type, batch: int, hub: Hub) -> type:
    """``cls`` with its read path ``batch`` (and the read core for it, ``_pump``) and its
    loop's ``hub`` as class attributes: a no-slot subclass, made once per loop (kept in
    ``hub.conn_classes``)."""
    base = cls.__dict__.get("_base", cls)
    key = (base, batch)
    sub = hub.conn_classes.get(key)
    if sub is None:
        sub = hub.conn_classes[key] = type(base.__name__, (base,), {
            "__slots__": (), "_batch": batch, "_pump": PUMPS[batch], "_hub": hub, "_base": base,
            "__module__": base.__module__, "__qualname__": base.__qualname__})
    return sub


class Connection(Reading, Lifecycle, TimerEntry):
    """One peer. Created by the loop (accept or connect), never by users.

    Public surface: :meth:`send`, :meth:`write`, :meth:`close`, :meth:`abort`,
    :meth:`pause_reading`, :meth:`resume_reading`, and the read-only facts
    ``id``, ``peer``, ``bytes_in``, ``bytes_out``, ``created_at``, ``closed``,
    ``close_reason``, ``error``, ``writable``, plus ``user_data`` for the
    application's own per-connection state.
    """

    __slots__ = (
        "_sock", "_handler", "_codec", "_rx", "_tx", "_opts",
        "_state", "_pause", "_flags", "_rest", "_out",
        "_last_rx", "_last_tx", "_partial_since", "_x", "created_at",
        "bytes_in", "bytes_out",
    )
    # Idle memory is the budget here (issue 10: <= 300 B a connection with 10,000 held), so
    # what most connections never set lives elsewhere: the close reason, the error, the
    # application's user_data, an outgoing connection's address, a shutdown drain's quota
    # and the id (drawn from the loop when first asked: an int object per connection
    # otherwise) in an _Extra made on first use (_x); the loop's hub and the read path in the
    # class (see _connection_class).

    #: The read path (``_batch``, ``_pump``: reading.py) and the loop's hub: set once, at
    #: construction, by moving the instance to a subclass that holds them (_connection_class).
    _hub: Hub

    #: Counted in the loop's books (connection_count, close reasons, stats). The loop's own
    #: service connections (the stats socket's) are an _UncountedConnection.
    counted = True

    def __init__(
        self,
        hub: Hub,
        sock: Any,
        handler: Handler,
        codec: Codec,
        opts: ConnectionOptions,
        peer: Any,
        conn_id: int,
        *,
        connecting: bool = False,
    ) -> None:
        self._sock = sock  # its fd is asked of it when needed: no int object kept per connection
        self._handler = handler
        self._codec = codec
        # Rings are borrowed from the loop only while they hold bytes, so an idle
        # connection holds neither a chunk nor a ring object.
        self._rx: RingBuffer | None = None
        self._tx: RingBuffer | None = None
        self._rest: bytes | None = None  # a short partial frame kept between reads
        # One write kept by reference until the flush (bytes, or a view of the unsent rest)
        self._out: bytes | memoryview | None = None
        self._opts = opts
        self._state = CONNECTING if connecting else OPEN
        self._pause = 0
        self._flags = F_DIAL if connecting else 0  # F_FLUSH | F_BLOCKED | F_HIGH | F_HUP ...
        # The connection is its own wheel entry for the idle and heartbeat checks (_fire).
        TimerEntry.__init__(self)
        # The read path, chosen once: per frame, or the batch fast path for a handler with
        # on_batch and a BatchCodec, in the loop's flat buffer if it is a FlatCodec too.
        self.__class__ = _connection_class(type(self), read_path(handler, codec), hub)
        self._x: _Extra | None = None
        if conn_id:  # 0: drawn from the loop when first asked (the id property)
            self._extra().id = conn_id
        if peer is not None:  # None for accepted connections: asked of the kernel when needed
            self._peer = peer
        self.created_at = self._last_rx = self._last_tx = hub.now
        self._partial_since = 0.0  # when the partial frame held now began arriving
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ facts

    @property
    def id(self) -> int:
        """Unique on its loop (drawn when first asked, so not in accept order)."""
        x = self._extra()
        if not x.id:
            x.id = self._hub.new_id()
        return x.id

    def _extra(self) -> _Extra:
        x = self._x
        if x is None:
            x = self._x = _Extra()
        return x

    # Kept in the _Extra (see _InExtra): read as their default while it does not exist.
    _drain_left = _InExtra("drain_left", NOT_DRAINING,
                           "Bytes still to read in a shutdown drain, NOT_DRAINING or DRAINED. "
                           "Read on the hot path only behind hub.shutting_down.")
    _reason = _InExtra("reason", None, "Why the connection closed (or is closing); None while open.")
    _peer = _InExtra("peer", None, "The peer's address once known.")
    error = _InExtra("error", None,
                     "The socket error that closed the connection (without its traceback), or None.")
    user_data = _InExtra("user_data", None,
                         "The application's own per-connection state (None until set).")

    @property
    def peer(self) -> Any:
        """The peer's address: ``(host, port)`` for TCP, a path or ``""`` for unix sockets;
        None if it was never asked for while the socket was open."""
        if self._peer is None and self._state != CLOSED:
            try:
                self._peer = self._sock.getpeername()
            except OSError:
                pass
        return self._peer

    @property
    def closed(self) -> bool:
        """True once the socket is closed (``on_close`` follows on the loop)."""
        return self._state == CLOSED

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the connection closed (or is closing); None while open."""
        return self._reason

    @property
    def writable(self) -> bool:
        """False while the send buffer is above its high watermark (after on_paused)."""
        return not self._flags & F_HIGH

    @property
    def send_buffered(self) -> int:
        """Bytes queued for the peer and not yet accepted by the kernel."""
        tx, out = self._tx, self._out
        return (len(tx) if tx is not None else 0) + (len(out) if out is not None else 0)

    @property
    def recv_buffered(self) -> int:
        """Bytes received and not yet decoded into a message."""
        rx = self._rx
        if rx is not None:
            return len(rx)
        return len(self._rest) if self._rest is not None else 0

    @property
    def reading(self) -> bool:
        """True while the connection reads from its peer."""
        return self._state == OPEN and not self._pause

    @property
    def paused(self) -> bool:
        """True while an open connection holds off reading: by request, for backpressure,
        or because the buffer pool is short."""
        return self._state == OPEN and bool(self._pause & (P_USER | P_BACKPRESSURE | P_STARVED))

    def fileno(self) -> int:
        return self._sock.fileno()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As asyncio's transports: ``"socket"``, ``"peername"`` or ``"sockname"``; over TLS
        also ``"ssl_object"``, ``"peercert"``, ``"cipher"``, ``"compression"`` and
        ``"alpn_protocol"``; ``"proxy_header"``, the PROXY protocol header it came with
        (its TLVs included); else ``default`` (also when the socket is closed)."""
        if self._state == CLOSED:
            return default
        tls = getattr(self._sock, "ssl_object", None)
        if tls is not None and name in _TLS_INFO:
            return default if not self._sock.handshaken else _TLS_INFO[name](tls)
        if name == "proxy_header":
            return self._x.proxy if self._x is not None else default
        if name == "socket":
            return getattr(self._sock, "raw", self._sock)
        if name == "peername":
            return self.peer
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        return default

    # ---------------------------------------------------------------- sending

    def send(self, msg: Any) -> bool:
        """Encode ``msg`` with the connection's codec and queue it for the peer.

        Queued bytes leave in one batch when the loop flushes (once per
        iteration). Returns False, queuing nothing, if the connection is closing
        or closed, or if this send pushed it past ``max_send_buffer`` (it is
        then aborted as a slow consumer).
        """
        if self._state > OPEN:  # CONNECTING and OPEN may queue
            return False
        tx = self._tx if self._out is None else self._spill()
        if tx is None:
            tx = self._tx = self._hub.take_ring()
        self._codec.encode_into(msg, tx)
        return self._queued(len(tx))

    def write(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue raw bytes for the peer, bypassing the codec. Same rules as :meth:`send`."""
        if self._state > OPEN:
            return False
        if self._tx is None and self._out is None and type(data) is bytes:
            # The common case (one reply per read): keep the bytes object itself, no
            # copy and no ring; if the kernel does not take it all, the rest is copied
            # into a ring then. Only bytes: anything mutable could change meanwhile.
            self._out = data
            n = len(data)
            if n <= self._hub.share and n <= self._opts.high_water and self._flags & F_FLUSH:
                return True  # under both watermarks, flush already due: _queued has nothing to do
            return self._queued(n)
        tx = self._tx if self._out is None else self._spill()
        if tx is None:
            tx = self._tx = self._hub.take_ring()
        tx.write(data)
        return self._queued(len(tx))

    def _spill(self) -> RingBuffer:
        """Move the write kept by reference into a send ring (a second write came)."""
        tx = self._tx = self._hub.take_ring()
        tx.write(self._out)  # type: ignore[arg-type]
        self._out = None
        return tx

    def _queued(self, n: int) -> bool:
        """``n`` bytes are now queued: schedule the flush, apply the watermarks and the limit."""
        if not self._flags & F_FLUSH:
            self._flags |= F_FLUSH
            self._hub.flushq.append(self)
        opts = self._opts
        high = opts.high_water
        share = self._hub.share
        if share < high:  # many connections share the pool: each pauses sooner
            high = share
        if n > high:
            if not self._flags & (F_HIGH | F_BLOCKED) or n > opts.max_send_buffer:
                # Try the kernel before judging the peer: what one iteration queued for a
                # reader that keeps up (one sender's burst fanned out by broadcast, a burst
                # over the limit) would otherwise make it a laggard, or a slow consumer,
                # before the flush at the end of the iteration. Once per crossing.
                self._flush()
                if self._state == CLOSED:
                    return False
                n = self.send_buffered
                if n > opts.max_send_buffer:
                    log.debug("connection %s: %d bytes queued, over max_send_buffer %d",
                              self.id, n, opts.max_send_buffer)
                    self.abort(CloseReason.SLOW_CONSUMER)
                    return False
            if not self._flags & F_HIGH and n > high:
                self._went_high()
        return True

    def _went_high(self) -> None:
        """Over the high watermark: stop reading (until ``_flush`` is below the low one), start
        the write deadline, tell the handler."""
        self._flags |= F_HIGH
        self._set_pause(P_BACKPRESSURE)
        timeout = self._opts.write_timeout_s
        if timeout > 0.0:  # the peer must now take bytes by then
            self._hub.wheel.rearm_sooner(self, timeout)
        self._call("on_paused")

    def _flush(self) -> None:
        """Send what the send ring holds: one sendmsg of its segments per round."""
        self._flags &= ~F_FLUSH
        st = self._state
        if st == CONNECTING or st >= LINGER:
            return
        sent = 0
        tx: Any  # the send ring, the unsent view of one write, or _EMPTY
        out = self._out
        if out is not None:  # one write kept by reference: send it as it is
            self._out = None
            try:
                sent = self._sock.send(out)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._fail(exc)
                return
            if sent == len(out) and self._tx is None and st == OPEN \
                    and not self._flags & (F_HIGH | F_BLOCKED):
                # The per-event case (one reply, all taken, nothing paused): only accounting.
                self.bytes_out += sent
                self._last_tx = self._hub.now
                return
            if sent < len(out):
                # The kernel is full: keep the rest by reference too (a view of the same
                # immutable bytes: no copy, no chunk), until the OUT edge or a second write.
                tx = self._out = (out if type(out) is memoryview else memoryview(out))[sent:]
            else:
                tx = _EMPTY
        else:
            tx = self._tx
            if tx is None:
                tx = _EMPTY
                if self._flags & F_BLOCKED:  # nothing queued: only a TLSSocket's ciphertext
                    try:                     # can be waiting (tls.py); send(b"") sends it
                        self._sock.send(b"")
                    except (BlockingIOError, InterruptedError):
                        return  # still full: the next OUT edge
                    except OSError as exc:
                        self._fail(exc)
                        return
        while tx and out is None:
            before = len(tx)
            segs = tx.segments(_MAX_SEGMENTS)
            try:
                n = self._sock.sendmsg(segs)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fail(exc)
                return
            if n:
                tx.consume(n)
                sent += n
            covered = before if len(segs) < _MAX_SEGMENTS else sum(map(len, segs))
            if n < covered:  # the kernel's buffer is full: wait for the OUT edge
                break
            if sent >= _FLUSH_BUDGET and tx:  # fair share spent; more next iteration
                self._flags |= F_FLUSH
                self._hub.flushq.append(self)
                break
        if sent:
            self.bytes_out += sent
            self._last_tx = self._hub.now
        blocked = bool(tx) and not self._flags & F_FLUSH
        if blocked != bool(self._flags & F_BLOCKED):
            self._flags ^= F_BLOCKED
            if not self._hub.edge:
                self._sync_interest()
        if not tx and tx is not _EMPTY:
            self._tx = None
            self._hub.ring_free.append(tx)
        if self._flags & F_HIGH and len(tx) <= self._low_water():
            self._flags &= ~F_HIGH
            self._clear_pause(P_BACKPRESSURE)
            self._call("on_writable")
        if not tx and self._state == CLOSING:
            self._finish_close()

    def _send_blocked(self) -> None:
        """A send outside ``_flush`` left bytes queued (the kernel is full): as ``_flush``
        would, wait for the OUT edge (level mode: ask for write interest) rather than
        trying again in this event."""
        self._flags = (self._flags | F_BLOCKED) & ~F_FLUSH
        if not self._hub.edge:
            self._sync_interest()

    def _flush_due(self) -> None:
        """It was on the loop's flush queue (``Hub.flushq``): flush if still due."""
        if self._flags & F_FLUSH:
            self._flush()

    def _low_water(self) -> int:
        """Where reading resumes: the low watermark, a quarter of the fair share if that is
        lower (the high watermark follows the share too, in _queued)."""
        low = self._opts.low_water
        quarter = self._hub.share >> 2
        return quarter if quarter < low else low

    # ---------------------------------------------------------------- reading

    def pause_reading(self) -> None:
        """Stop reading from the peer (and delivering buffered messages) until resumed."""
        self._set_pause(P_USER)

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        self._clear_pause(P_USER)

    def _set_pause(self, bit: int) -> None:
        if self._hub.shutting_down and self._drain_left != NOT_DRAINING:  # a drain reads regardless
            bit &= ~(P_USER | P_BACKPRESSURE)
        was = self._pause
        self._pause = was | bit
        if not was and self._pause and not self._hub.edge:
            self._sync_interest()

    def _clear_pause(self, bit: int) -> None:
        was = self._pause
        self._pause = was & ~bit
        if was and not self._pause and self._state == OPEN:
            # Invariant 2: bytes may be waiting with no edge to announce them.
            self._hub.ready.append(self)
            if not self._hub.edge:
                self._sync_interest()

    def _on_events(self, ev: int) -> None:
        """Called by the loop with the epoll mask of one event for this fd."""
        st = self._state
        if st == OPEN:
            if ev & _HANGUP:
                self._flags |= F_HUP
            if ev & _READ_EVENTS and not self._pause:
                # Flagged as due now, so that what the handlers write here needs no place
                # in the loop's flush queue: the flush below sends it.
                self._flags |= F_FLUSH
                self._pump()
                # Replies to what this burst delivered leave now, in one sendmsg, so their
                # chunks go back to the pool at once instead of piling up until the end of
                # the iteration (with 1,000 events per poll that was 1,000 chunks touched).
                if self._flags & F_FLUSH:
                    self._flush()
            if self._flags & F_BLOCKED and ev & _WRITE_EVENTS and self._state <= CLOSING:
                self._flush()  # (an ET event nearly always says OUT: test the rare bit first)
        elif st == CLOSING:
            if ev & _WRITE_EVENTS and (self._tx or self._out is not None):
                self._flush()
        elif st == LINGER:
            if ev & _READ_EVENTS:
                self._linger_reads()
        elif st == CONNECTING:
            if ev & _HANGUP:  # kept for the read that follows an accepted TLS handshake
                self._flags |= F_HUP
            self._finish_connect()

    def _on_ready(self) -> None:
        """Called by the loop for a connection it put on the ready list (no edge)."""
        st = self._state
        if st == OPEN and not self._pause:
            self._deliver()
            if self._state == OPEN and not self._pause:
                self._pump()
            if self._flags & F_FLUSH:
                self._flush()
        elif st == LINGER:
            self._linger_reads()

class _UncountedConnection(Connection):
    """A connection the loop serves but does not count (see ``Connection.counted``)."""

    __slots__ = ()
    counted = False
