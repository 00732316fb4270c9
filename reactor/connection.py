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

from .connstate import (CLOSED, CLOSING, CONNECTING, F_BLOCKED, F_FLUSH, F_HIGH, F_HUP,
                        LINGER, NOT_DRAINING, OPEN, P_BACKPRESSURE, P_EOF, P_FIN, P_STARVED,
                        P_USER, B_FLAT, B_NONE, B_RING, _Extra, _InExtra)
from .errors import CloseReason, CodecError
from .lifecycle import Lifecycle
from .options import ConnectionOptions
from .protocols import BatchCodec, FlatCodec
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
_SMALL_REST = 1024  # a partial frame up to this size is kept as bytes, not in pool chunks
_MAX_SEGMENTS = 64  # iovecs per sendmsg; far below IOV_MAX (1024)
_FLUSH_BUDGET = 1 << 20  # bytes one flush may send before others get a turn


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


class Connection(Lifecycle, TimerEntry):
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


class _UncountedConnection(Connection):
    """A connection the loop serves but does not count (see ``Connection.counted``)."""

    __slots__ = ()
    counted = False
