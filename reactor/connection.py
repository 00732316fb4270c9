"""Connection: one non-blocking socket, its two pooled rings, codec, handler and timers.

Bytes enter here (``_pump_reads``: recv_into the receive ring), become messages
here (``_deliver``: codec -> handler.on_message) and leave here (``_flush``:
one sendmsg of the send ring's segments). The loop asks of a connection only what
``reactor/hub.py``'s ``Driver`` names, and a connection asks of its loop only what the
``Hub`` holds; everything about one peer lives in this file.

The edge-triggered invariants (written once, tested in tests/unit/test_connection.py)
-------------------------------------------------------------------------------------
epoll with EPOLLET reports a *change*: "bytes arrived", "room appeared". It does
not say again that bytes are still waiting. So:

1. After a read edge, recv until EAGAIN, or until a short read (fewer bytes than
   asked: the queue was emptied at that instant, and any later arrival raises a
   new edge -- nginx and libuv rely on the same fact), or until the per-event
   byte budget runs out. If the budget ran out, the connection goes on the
   loop's ready list and is read again next iteration with no edge at all;
   forgetting this is the classic ET stall. A short read does not prove the
   queue is empty when the peer's FIN or an error came with the edge (RDHUP/HUP/
   ERR): then we read on until recv returns 0 or fails.
2. Every other reason to stop reading with bytes possibly left behind -- pause
   (user or backpressure), pool exhaustion, the drain quota -- must be undone by
   putting the connection on the ready list when the reason goes away, never by
   waiting for an edge.
3. The socket is registered once for IN|OUT|RDHUP|ET and never modified: a send
   that blocks only sets ``F_BLOCKED``; the next OUT edge (room appeared)
   resumes the flush. In level-triggered mode the same code asks the selector
   for write interest while blocked and drops read interest while paused.

Closing without losing data: close() stops reading, flushes the send ring,
shuts down our sending side, then keeps reading and discarding ("lingering")
until the peer's FIN or ``linger_s``; only then is the socket closed. Closing a
socket with unread bytes makes the kernel send RST, which can destroy replies
the peer has not read yet.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import sys
import termios
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .address import format_address
from .errors import CloseReason, CodecError, FrameTimeout
from .protocols import BatchCodec, FlatCodec
from .ring import RingBuffer
from .selector import ERR, HUP, IN, OUT, RDHUP
from .wheel import TimerEntry

if TYPE_CHECKING:  # pragma: no cover
    from .hub import Hub
    from .protocols import Codec, Handler
    from .wheel import TimerWheel

__all__ = ["Connection", "ConnectionOptions"]

log = logging.getLogger("reactor")

# States, in the order a connection moves through them.
CONNECTING, OPEN, CLOSING, LINGER, CLOSED = range(5)
_STATE_NAMES = ("connecting", "open", "closing", "linger", "closed")

# Reasons reading is paused; reading runs only while none is set.
P_USER = 1  # pause_reading()
P_BACKPRESSURE = 2  # send ring above the high watermark
P_STARVED = 4  # the buffer pool refused a chunk
P_EOF = 8  # the peer's FIN was read, or the connection is closing
P_FIN = 16  # the peer's FIN was read (set with P_EOF)

# _flags: bits of the send side and the last edge (one int, not four slots per connection).
F_FLUSH = 1  # queued for a flush this iteration (or flushed at the end of this event)
F_BLOCKED = 2  # the kernel refused bytes: waiting for an OUT edge
F_HIGH = 4  # the send backlog is over the high watermark (reading paused, on_paused sent)
F_HUP = 8  # the peer's FIN or an error came with an edge: read on until EOF

# _drain_left: bytes still to read in a shutdown drain, or one of these.
NOT_DRAINING = -1
DRAINED = -2  # the drain read its quota; delivering and closing, pauses still ignored

# How messages reach the handler: one on_message per frame, or on_batch with every
# complete frame at once, decoded in a ring or (the fast path) in the loop's flat buffer.
B_NONE, B_RING, B_FLAT = 0, 1, 2

_SHUT_WR = socket.SHUT_WR
_LINGER_ZERO = struct.pack("ii", 1, 0)
_FIONREAD = termios.FIONREAD
_OUTQ = getattr(termios, "TIOCOUTQ", 0x5411)  # SIOCOUTQ: bytes the kernel still holds to send
#: After --write-timeout with no byte taken from our queue, how long the kernel's own send
#: queue is watched for progress before the peer is called slow.
_WRITE_GRACE_S = 1.0
_READ_EVENTS = IN | HUP | RDHUP | ERR
_HANGUP = HUP | RDHUP | ERR
_WRITE_EVENTS = OUT | HUP | ERR
_EMPTY: Any = ()  # stands for "no send ring" in _flush: falsy, len() 0
_SMALL_REST = 1024  # a partial frame up to this size is kept as bytes, not in pool chunks
_MAX_SEGMENTS = 64  # iovecs per sendmsg; far below IOV_MAX (1024)
_INF = float("inf")
_FLUSH_BUDGET = 1 << 20  # bytes one flush may send before others get a turn


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Per-listener (or per-connect) settings shared by its connections.

    Defaults follow asyncio's flow control (64 KiB high, low = high / 4) and
    Redis's idea of a hard output limit; 0 disables a timeout.
    """

    idle_timeout_s: float = 0.0  #: close (on_idle) after this long with no byte received
    heartbeat_s: float = 0.0  #: call on_heartbeat after this long with no byte sent
    high_water: int = 64 * 1024  #: send ring above this: on_paused, reading pauses
    low_water: int = 16 * 1024  #: back at or below this: on_writable, reading resumes
    max_send_buffer: int = 4 * 1024 * 1024  #: above this the peer is a slow consumer: abort
    keepalive: bool = False  #: SO_KEEPALIVE
    nodelay: bool = True  #: TCP_NODELAY
    linger_s: float = 2.0  #: how long a graceful close waits for the peer's FIN
    close_timeout_s: float = 30.0  #: a graceful close that has not flushed by then is aborted
    #: A partial frame whose first byte arrived longer ago than this is an error (slowloris):
    #: the codec's ``frame_timeout_error`` (LineTimeout for lines) goes to on_codec_error.
    frame_timeout_s: float = 0.0
    #: Over the high watermark with no byte taken by the peer for this long: a slow
    #: consumer, aborted (the write deadline; 0 = only max_send_buffer ends it).
    write_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("idle_timeout_s", "heartbeat_s", "linger_s", "close_timeout_s",
                     "frame_timeout_s", "write_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if not 0 <= self.low_water <= self.high_water:
            raise ValueError(
                f"need 0 <= low_water <= high_water, got {self.low_water} and {self.high_water}"
            )
        if self.max_send_buffer < self.high_water:
            raise ValueError(
                f"max_send_buffer {self.max_send_buffer} is below high_water {self.high_water}"
            )


    def apply(self, sock: Any) -> None:
        """Set the socket options these settings ask for on a TCP socket."""
        if self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class _Extra:
    """What a connection sets rarely: kept apart so that most connections never pay for it."""

    __slots__ = ("reason", "error", "user_data", "peer", "drain_left", "id")

    def __init__(self) -> None:
        self.drain_left = NOT_DRAINING
        self.id = 0
        self.reason: CloseReason | None = None
        self.error: OSError | None = None
        self.user_data: Any = None
        self.peer: Any = None


class _InExtra:
    """A connection attribute kept in its _Extra: its default until first set."""

    # No __slots__: a few of these exist, one per attribute, and __doc__ needs the dict.

    def __init__(self, name: str, default: Any, doc: str) -> None:
        self.name = name
        self.default = default
        self.__doc__ = doc

    def __get__(self, conn: Any, owner: type | None = None) -> Any:
        if conn is None:
            return self
        x = conn._x
        return self.default if x is None else getattr(x, self.name)

    def __set__(self, conn: Any, value: Any) -> None:
        setattr(conn._extra(), self.name, value)


_CODEC_PATHS: dict[type, int] = {}


def _codec_batch_path(codec: Any) -> int:
    """The read path ``codec`` allows a batch handler: B_FLAT, B_RING or B_NONE.

    Asked of the codec's class once and kept (isinstance against a runtime-checkable
    Protocol costs microseconds, too much for each accept); only a class with a
    ``__getattr__``, whose instances may grow methods of their own, is asked per instance.
    """
    cls = type(codec)
    path = _CODEC_PATHS.get(cls)
    if path is None:
        dynamic = hasattr(cls, "__getattr__")
        path = (B_NONE if not isinstance(codec, BatchCodec)
                else B_FLAT if isinstance(codec, FlatCodec) else B_RING)
        if not dynamic:
            _CODEC_PATHS[cls] = path
    return path


def _connection_class(cls: type, batch: int, hub: Hub) -> type:
    """``cls`` with its read path ``batch`` and its loop's ``hub`` as class attributes: a
    no-slot subclass, made once per loop (kept in ``hub.conn_classes``)."""
    base = cls.__dict__.get("_base", cls)
    key = (base, batch)
    sub = hub.conn_classes.get(key)
    if sub is None:
        sub = hub.conn_classes[key] = type(base.__name__, (base,), {
            "__slots__": (), "_batch": batch, "_hub": hub, "_base": base,
            "__module__": base.__module__, "__qualname__": base.__qualname__})
    return sub


class Connection(TimerEntry):
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

    #: How messages reach the handler (B_NONE, B_RING, B_FLAT) and the loop's hub: set once, at
    #: construction, by moving the instance to a subclass that holds them (_connection_class).
    _batch = B_NONE
    _hub: Hub

    #: Counted in the loop's books (connection_count, close reasons, stats). The loop's own
    #: service connections (the stats socket's) are an _UncountedConnection.
    counted = True

    def __init__(
        self,
        hub: Hub,
        sock: socket.socket,
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
        self._flags = 0  # F_FLUSH | F_BLOCKED | F_HIGH | F_HUP
        # The connection is its own wheel entry for the idle and heartbeat checks (_fire).
        TimerEntry.__init__(self)
        # The batch fast path: a handler with on_batch and a BatchCodec (B_RING); a codec
        # that is a FlatCodec as well decodes reads in the loop's flat buffer (B_FLAT).
        batch = B_NONE if handler.on_batch is None else _codec_batch_path(codec)
        self.__class__ = _connection_class(type(self), batch, hub)
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
        """As asyncio's transports: ``"socket"``, ``"peername"`` or ``"sockname"``, else
        ``default`` (also when the socket is closed)."""
        if self._state == CLOSED:
            return default
        if name == "socket":
            return self._sock
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
            if n > opts.max_send_buffer:
                # Try the kernel before giving up on the peer: a burst larger than
                # the limit to a healthy reader is not a slow consumer.
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
                self._flags |= F_HIGH
                self._set_pause(P_BACKPRESSURE)
                if opts.write_timeout_s > 0.0:  # the peer must now take bytes by then
                    self._hub.wheel.rearm_sooner(self, opts.write_timeout_s)
                self._call("on_paused")
        return True

    def _flush(self) -> None:
        """Send what the send ring holds: one sendmsg of its segments per round."""
        self._flags &= ~F_FLUSH
        st = self._state
        if st == CONNECTING or st >= LINGER:
            return
        sent = 0
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
                self._hub.bytes_out += sent
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
            self._hub.bytes_out += sent
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
                if self._batch == B_FLAT:
                    self._pump_flat(self._hub.read_budget)
                else:
                    self._pump_reads()
                # Replies to what this burst delivered leave now, in one sendmsg, so their
                # chunks go back to the pool at once instead of piling up until the end of
                # the iteration (with 1,000 events per poll that was 1,000 chunks touched).
                if self._flags & F_FLUSH:
                    self._flush()
            if ev & _WRITE_EVENTS and self._flags & F_BLOCKED and self._state <= CLOSING:
                self._flush()
        elif st == CLOSING:
            if ev & _WRITE_EVENTS and (self._tx or self._out is not None):
                self._flush()
        elif st == LINGER:
            if ev & _READ_EVENTS:
                self._linger_reads()
        elif st == CONNECTING:
            self._finish_connect()

    def _on_ready(self) -> None:
        """Called by the loop for a connection it put on the ready list (no edge)."""
        st = self._state
        if st == OPEN and not self._pause:
            self._deliver()
            if self._state == OPEN and not self._pause:
                self._pump_reads()
            if self._flags & F_FLUSH:
                self._flush()
        elif st == LINGER:
            self._linger_reads()

    def _pump_reads(self) -> None:
        """Read until EAGAIN, a short read or the budget (invariant 1), delivering as we go.

        A batch handler with a ``frames_end`` codec takes ``_pump_flat`` instead; this is
        the per-frame path (``on_message``), and the batch path of other codecs.
        Where the bytes land: a connection whose receive side holds nothing, or only
        a short partial frame, reads into the loop's one big scratch ring (the partial
        copied in front first): one large recv, decoded in place, and only what is left
        over afterwards is kept -- a partial frame of up to ``_SMALL_REST`` bytes as a
        ``bytes`` object, anything larger in a ring of pooled chunks (gnet's design).
        So a busy connection holds pool memory only while it has a large partial
        frame, and 10,000 connections each between two lines cost 10,000 small
        objects, not 10,000 chunks. A connection with a large partial frame reads
        straight into its own pooled ring.
        """
        hub = self._hub
        budget = hub.read_budget
        if self._batch == B_FLAT:
            self._pump_flat(budget)
            return
        recv_into = self._sock.recv_into
        keep = hub.read_keep
        scratch = hub.scratch_ring
        while not self._pause and self._state == OPEN:
            rx = self._rx
            if rx is None or (len(rx) <= _SMALL_REST and not rx.chunks_held > 1):
                if rx is not None:  # hoist a short leftover in front of the new bytes
                    for seg in rx.segments():
                        scratch.write(seg)
                    rx.clear()
                    hub.ring_free.append(rx)
                rest = self._rest
                if rest is not None:
                    scratch.write(rest)
                    self._rest = None
                rx = self._rx = scratch
            try:
                n = self._read_once(rx, recv_into, 0 if rx is scratch else keep)
            finally:
                if rx is scratch:
                    self._settle(scratch)
            if n < 0:
                return
            budget -= n
            if budget <= 0:
                hub.ready.append(self)  # invariant 1: no edge will come for the rest
                return

    def _pump_flat(self, budget: int) -> None:
        """_pump_reads for the batch fast path, one recv per round (invariant 1 as there).

        Each recv lands in the loop's flat buffer, behind the partial frame kept as
        bytes; the codec's ``frames_end`` says where the complete frames end, they go to
        ``on_batch`` as one copy, and only the partial frame after them is kept. No ring
        unless a partial frame over ``_SMALL_REST`` is still arriving (``_read_once``).
        One function on purpose: this is the per-event path, and calls are its cost.
        """
        hub = self._hub
        # No pool check here: these reads take no chunk, and the replies they cause are
        # bounded by the fair share (a read asks at most ``share`` bytes; a backlog over
        # it pauses reading), so a connection that reads never waits on another's peer.
        share = hub.share
        mv = hub.flat_mv
        codec = self._codec
        if TYPE_CHECKING:  # B_FLAT was chosen for a FlatCodec (_codec_batch_path)
            assert isinstance(codec, FlatCodec)
        while not self._pause and self._state == OPEN:
            rx = self._rx
            if rx is not None:
                if len(rx) > _SMALL_REST:  # a large frame still arriving: its own ring
                    n = self._read_once(rx, self._sock.recv_into, hub.read_keep)
                    if n < 0:
                        return
                    budget -= n
                    if budget <= 0:
                        hub.ready.append(self)  # invariant 1: no edge for the rest
                        return
                    continue
                # What is left of a large frame: back to bytes (the codec forgets its scan).
                self._rest = self._codec.take_remainder(rx)
                self._rx = None
                hub.ring_free.append(rx)
            rest = self._rest
            if rest is None:
                off = 0
                view = mv
            else:
                off = len(rest)
                mv[:off] = rest
                view = mv[off:]
            want = len(view)
            if want > share:
                want = share
            if hub.shutting_down and 0 <= self._drain_left < want:
                want = self._drain_left
            try:
                n = self._sock.recv_into(view, want)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(exc)
                return
            if not n:
                self._peer_eof()  # the partial frame is still in self._rest for on_eof
                return
            self._rest = None
            self.bytes_in += n
            hub.bytes_in += n
            self._last_rx = hub.now  # see _read_once
            end = off + n
            error = None
            try:
                cut = codec.frames_end(hub.flat, off, end)
            except CodecError as exc:
                error, cut = exc, exc.valid_prefix
            except Exception as exc:  # noqa: BLE001 - a codec bug closes one peer, as a handler's
                self._handler_failed(exc, "codec frames_end")
                return
            if cut < end and error is None:  # keep the partial frame before the handler runs
                if end - cut <= _SMALL_REST:
                    self._rest = mv[cut:end].tobytes()
                else:
                    self._keep_in_ring(mv[cut:end])
                if not off:  # a partial frame where there was none: its deadline starts
                    self._partial_began()
                elif cut:  # the old one completed and a new one began
                    self._partial_since = hub.now
            if cut:
                try:
                    self._handler.on_batch(self, mv[:cut].tobytes())  # type: ignore[misc]
                except Exception as exc:  # noqa: BLE001 - a handler bug closes one peer
                    self._handler_failed(exc, "on_batch")
                    return
            if error is not None:
                if self._state == OPEN:
                    self._codec_error(error)
                return
            if hub.shutting_down and self._drain_left >= 0:
                self._drain_left -= n
                if self._drain_left == 0:
                    self._drain_done()
                    return
            if n < want and not self._flags & F_HUP:
                return  # short read: drained (invariant 1)
            budget -= n
            if budget <= 0:
                hub.ready.append(self)  # invariant 1: no edge will come for the rest
                return

    def _keep_in_ring(self, data: Any) -> None:
        """Keep received bytes in a pooled receive ring (a large partial frame, or frames
        held back by a pause). They are read and must be kept, borrowing heap chunks if the
        pool is dry, but then reading stops until the pool has chunks again."""
        hub = self._hub
        rx = self._rx = hub.take_ring()
        rx.write(data)
        if len(rx) >= hub.share and hub.pool.is_low(hub.read_keep):
            self._starve()

    def _read_once(self, rx: RingBuffer, recv_into: Any, keep: int) -> int:
        """One recv into ``rx`` and the delivery of what it completed.

        Returns the bytes read, or -1 when reading must stop for now."""
        before = len(rx)
        view = rx.writable(keep)
        hub = self._hub
        share = hub.share
        if view is None:
            # The pool is at its cap. Below its fair share a connection still reads (a
            # heap chunk, counted as overflow); above it, it waits for chunks to come back.
            if before >= share or rx is hub.scratch_ring:
                self._starve()
                return -1
            view = rx.writable(keep, borrow=True)
        want = len(view)
        if want > share:
            want = share
        if hub.shutting_down and 0 <= self._drain_left < want:
            want = self._drain_left
        try:
            n = recv_into(view, want)
        except (BlockingIOError, InterruptedError):
            rx.commit(0)
            self._drop_rx_if_empty()
            return -1
        except OSError as exc:
            rx.commit(0)
            self._fail(exc)
            return -1
        if not n:
            rx.commit(0)
            self._peer_eof()
            return -1
        rx.commit(n)
        self.bytes_in += n
        hub.bytes_in += n
        # The idle timer is not touched here: it checks this stamp when it fires
        # (Netty's IdleStateHandler), so a busy connection pays one store per read.
        self._last_rx = hub.now
        self._deliver()
        if not before and len(rx):  # a partial frame (or frames held by a pause) began
            self._partial_began()
        if hub.shutting_down and self._drain_left >= 0:
            self._drain_left -= n
            if self._drain_left == 0:
                self._drain_done()
                return -1
        if n < want and not self._flags & F_HUP:
            self._drop_rx_if_empty()
            return -1  # short read: drained (invariant 1)
        return n

    def _settle(self, scratch: RingBuffer) -> None:
        """After reading into the loop's scratch ring: keep what is left, free the scratch."""
        if self._rx is scratch:
            self._rx = None
            left = len(scratch)
            if left and self._state == OPEN:
                if left <= _SMALL_REST and not self._pause:
                    self._rest = scratch.peek(left)  # a partial frame: no chunk for it
                else:  # complete frames held back by a pause, or a large partial frame
                    self._keep_in_ring(scratch.peek(left))
        scratch.clear()

    def _deliver(self) -> None:
        """Hand every complete message in the receive ring to the handler, in order."""
        rx = self._rx
        if not rx:  # None or empty
            return
        if self._batch:
            codec = self._codec
            if TYPE_CHECKING:  # B_RING or B_FLAT was chosen for a BatchCodec
                assert isinstance(codec, BatchCodec)
            take = codec.maybe_take_batch
            on_message = self._handler.on_batch
        else:
            take = self._codec.maybe_take_frame
            on_message = self._handler.on_message
        while not self._pause and self._state == OPEN:
            try:
                msg = take(rx)
            except CodecError as exc:
                self._codec_error(exc)
                return
            except Exception as exc:  # noqa: BLE001 - a codec bug closes one peer, as a handler's
                self._handler_failed(exc, f"codec {take.__name__}")
                return
            if msg is None:
                return
            self._partial_since = self._hub.now  # whatever is left began no earlier
            try:
                on_message(self, msg)
            except Exception as exc:  # noqa: BLE001 - a handler bug closes one peer
                self._handler_failed(exc, "on_batch" if self._batch else "on_message")
                return

    def _drop_rx_if_empty(self) -> None:
        rx = self._rx
        if rx is not None and not rx and rx is not self._hub.scratch_ring:
            self._rx = None
            self._hub.ring_free.append(rx)

    def _starve(self) -> None:
        self._set_pause(P_STARVED)
        self._hub.starved.append(self)

    def _unstarve(self) -> None:
        """The pool has chunks again (called by the loop)."""
        self._clear_pause(P_STARVED)

    def _peer_eof(self) -> None:
        self._pause |= P_EOF | P_FIN
        if not self._hub.edge:
            self._sync_interest()
        try:
            if self._rx:
                remainder = self._codec.take_remainder(self._rx)
            else:
                remainder, self._rest = self._rest or b"", None
            keep_open = self._handler.on_eof(self, remainder)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(exc, "on_eof")
            return
        if not keep_open and self._state == OPEN:
            self.close(CloseReason.PEER_CLOSED)

    def _codec_error(self, exc: CodecError) -> None:
        log.debug("connection %s %r: %s", self.id, self.peer, exc)
        self._pause |= P_EOF
        self._call("on_codec_error", exc)
        if self._state == OPEN:  # a handler that ignores the error still loses the peer
            self.close(exc.reason)

    # ----------------------------------------------------------------- timers

    def _opened(self) -> None:
        """Established (accepted, or the connect finished): arm the idle and heartbeat
        checks and tell the handler."""
        opts = self._opts
        if opts.idle_timeout_s > 0 or opts.heartbeat_s > 0:
            now = self._hub.now
            self._hub.wheel.rearm(self, self._next_check(now) - now)
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
        more: if it shrank, the peer is reading and the deadline starts again."""
        timeout = self._opts.write_timeout_s
        if timeout <= 0 or not self._flags & F_HIGH or now - self._last_tx < timeout - 1e-9:
            return False
        watched = self._hub.outq_seen
        seen = watched.pop(self, None)
        # The last look counts only if nothing was sent since (a send refills the queue).
        before = seen[0] if seen is not None and seen[1] == self._last_tx else None
        try:
            queued = struct.unpack("i", fcntl.ioctl(self._sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
        except OSError:
            queued = -1
        if queued == 0:  # the kernel has room: send (an OUT edge was missed, or is late)
            self._flush()
            return self._state == CLOSED
        if queued > 0 and (before is None or queued < before):
            self._last_tx = now - timeout + _WRITE_GRACE_S  # look again after the grace
            watched[self] = (queued, self._last_tx)
            return False
        log.debug("connection %s: %d bytes queued and none sent for %g s", self.id,
                  self.send_buffered, now - self._last_tx)
        self.abort(CloseReason.SLOW_CONSUMER)
        return True

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
            self._hub.wheel.rearm(self, due - now)

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
        self._hub.wheel.rearm(self, self._opts.close_timeout_s)
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
        self._hub.wheel.rearm(self, self._opts.linger_s)
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
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(OSError(err, os.strerror(err)))
            return
        self._hub.wheel.cancel(self)  # the connect timeout
        self._state = OPEN
        self._opened()
        if self._state == OPEN and (self._tx or self._out is not None):
            self._flush()
        if self._state == OPEN and not self._pause:
            self._pump_reads()
        if not self._hub.edge and self._state < CLOSED:
            self._sync_interest()

    def _connect_failed(self, exc: OSError) -> None:
        self.error = exc
        self._teardown(CloseReason.CONNECT_FAILED)

    def _connect_timed_out(self) -> None:
        if self._state == CONNECTING:
            self.error = TimeoutError("connect timed out")
            self._teardown(CloseReason.CONNECT_TIMEOUT)

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


class _UncountedConnection(Connection):
    """A connection the loop serves but does not count (see ``Connection.counted``)."""

    __slots__ = ()
    counted = False


