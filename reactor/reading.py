"""Reading: where bytes enter a connection and become messages (the read core).

``Connection`` inherits this half; connection.py holds the event dispatch and the write
path, lifecycle.py the cold policy. A connection's read path is chosen once, when it is
made, from what its handler and codec can do (``read_path``): the connection's class then
holds it as ``_pump``, so no event asks again.

- ``_pump_ring`` (``B_NONE`` and ``B_RING``): recv into the loop's scratch ring (or the
  connection's own pooled ring while a large partial frame arrives), then the codec's
  ``maybe_take_frame`` -> ``on_message`` per frame, or ``maybe_take_batch`` -> ``on_batch``.
- ``_pump_flat`` (``B_FLAT``: an ``on_batch`` handler and a ``FlatCodec``): recv into the
  loop's flat buffer behind the kept partial frame, the codec's ``frames_end`` finds the
  end of the complete frames, and they go to ``on_batch`` as one ``bytes``. ``B_ECHO``
  (the handler's ``echo_batches``) takes the same path but sends the frames itself,
  straight from the flat buffer, whenever nothing else is queued for the peer.

Both keep the same invariants and the same books (bytes_in, the idle stamp, the drain
quota, the partial-frame deadline, the fair share as the largest read).

The edge-triggered invariants (written once, tested in tests/unit/test_connection.py
and test_reading.py)
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
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from .connstate import (B_ECHO, B_FLAT, B_NONE, B_RING, F_BLOCKED, F_FLUSH, F_HIGH, F_HUP,
                        OPEN, P_EOF, P_FIN, P_STARVED, ConnectionHalf)
from .errors import CloseReason, CodecError
from .hub import SMALL_REST as _SMALL_REST
from .protocols import BatchCodec, FlatCodec

if TYPE_CHECKING:  # pragma: no cover
    from .protocols import Codec, Handler
    from .ring import RingBuffer

__all__ = ["Reading", "read_path"]

log = logging.getLogger("reactor")


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


def read_path(handler: Handler, codec: Codec) -> int:
    """The read path a connection with ``handler`` and ``codec`` takes, chosen once."""
    if handler.on_batch is None:
        return B_NONE
    path = _codec_batch_path(codec)
    return B_ECHO if path == B_FLAT and handler.echo_batches else path


class Reading(ConnectionHalf):
    """The read half of ``Connection`` (a mixin: no slots of its own)."""

    __slots__ = ()

    #: How messages reach the handler (B_NONE, B_RING, B_FLAT, B_ECHO); set with ``_pump`` in the
    #: connection's class (connection.py, ``_connection_class``).
    _batch = B_NONE

    def _pump(self) -> None:
        """Read what the socket holds: the read core of this connection's path, bound into
        its class once (``PUMPS``); this default is the ring path's."""
        self._pump_ring()

    def _pump_ring(self) -> None:
        """Read until EAGAIN, a short read or the budget (invariant 1), delivering as we go.

        The per-frame path (``on_message``), and the batch path of codecs that are no
        ``FlatCodec``; a batch handler with a ``FlatCodec`` has ``_pump_flat`` instead.
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
        budget = hub.turn_budget
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

    def _pump_flat(self) -> None:
        """_pump_ring for the batch fast path, one recv per round (invariant 1 as there).

        Each recv lands in the loop's flat buffer, behind the partial frame kept as
        bytes; the codec's ``frames_end`` says where the complete frames end, they go to
        ``on_batch`` as one copy, and only the partial frame after them is kept. No ring
        unless a partial frame over ``_SMALL_REST`` is still arriving (``_read_once``).
        One function on purpose: this is the per-event path, and calls are its cost.
        """
        hub = self._hub
        budget = hub.turn_budget
        # No pool check here: these reads take no chunk, and the replies they cause are
        # bounded by the fair share (a read asks at most ``share`` bytes; a backlog over
        # it pauses reading), so a connection that reads never waits on another's peer.
        share = hub.share
        mv = hub.flat_mv
        codec = self._codec
        if TYPE_CHECKING:  # B_FLAT or B_ECHO was chosen for a FlatCodec (_codec_batch_path)
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
            # The flat buffer holds a short partial frame and a whole read behind it (hub.py),
            # and a share is never more than a read: every recv may ask a whole share.
            want = share
            if hub.shutting_down and 0 <= self._drain_left < want:
                want = self._drain_left
            try:
                n = self._sock.recv_into(view, want)
            except (BlockingIOError, InterruptedError):
                if hub.shutting_down and self._drain_left > 0:
                    self._drain_done()  # TLS: the quota counted ciphertext; all was read
                return
            except OSError as exc:
                self._fail(exc)
                return
            if not n:
                self._peer_eof()  # the partial frame is still in self._rest for on_eof
                return
            self._rest = None
            self.bytes_in += n
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
                if self._batch == B_ECHO and self._out is None and self._tx is None \
                        and not self._flags & (F_BLOCKED | F_HIGH):
                    # The echo, sent from the flat buffer (Handler.echo_batches): what the
                    # kernel takes needs no copy and no flush; the rest is queued as bytes.
                    try:
                        sent = self._sock.send(mv[:cut])
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as exc:
                        self._fail(exc)
                        return
                    if sent:
                        self.bytes_out += sent
                        self._last_tx = hub.now
                    if sent == cut:  # nothing is queued: no flush is due for this event
                        self._flags &= ~F_FLUSH
                    elif self.write(mv[sent:cut].tobytes()) and self._flags & F_FLUSH:
                        # Queued for a flush (not flushed at once, over max_send_buffer): the
                        # kernel is full, wait for the OUT edge; and read no more until the
                        # rest is out (an echo's high watermark is its first unsent byte):
                        # what the peer sends meanwhile waits in the kernel, uncopied.
                        self._send_blocked()
                        if not self._flags & F_HIGH:
                            self._went_high()
                else:
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
                if self._drain_left == 0 or n < want:  # short: what was queued is read
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
            if TYPE_CHECKING:  # a borrowed chunk always comes
                assert view is not None
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
            if hub.shutting_down and self._drain_left > 0:
                self._drain_done()  # TLS: the quota counted ciphertext; all was read
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
        # The idle timer is not touched here: it checks this stamp when it fires
        # (Netty's IdleStateHandler), so a busy connection pays one store per read.
        self._last_rx = hub.now
        self._deliver()
        if not before and len(rx):  # a partial frame (or frames held by a pause) began
            self._partial_began()
        if hub.shutting_down and self._drain_left >= 0:
            self._drain_left -= n
            if self._drain_left == 0 or n < want:  # short: what was queued is read
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
            if TYPE_CHECKING:  # B_RING, B_FLAT or B_ECHO was chosen for a BatchCodec
                assert isinstance(codec, BatchCodec)
            take = codec.maybe_take_batch
            on_message = self._handler.on_batch
            if TYPE_CHECKING:  # and for a handler with on_batch
                assert on_message is not None
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


#: The read core of each path, bound into the connection's class once (``_pump``).
PUMPS: dict[int, Callable[[Any], None]] = {
    B_NONE: Reading._pump_ring, B_RING: Reading._pump_ring, B_FLAT: Reading._pump_flat,
    B_ECHO: Reading._pump_flat}
