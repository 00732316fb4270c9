"""A connection's states and flag bits, and the holder of what it sets rarely.

Shared by the three halves of a connection -- connection.py (events, the write path),
reading.py (the read core) and lifecycle.py (timers, closing, drain, connect); stats.py
reads the pause bits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CloseReason

if TYPE_CHECKING:  # pragma: no cover
    from .errors import CodecError
    from .hub import Driver, Hub
    from .options import ConnectionOptions
    from .protocols import Codec, Handler, Transport
    from .ring import RingBuffer
    from .wheel import TimerEntry

    class ConnectionHalf(TimerEntry, Transport, Driver):
        """For the type checker only: each half of ``Connection`` (reading.py, lifecycle.py,
        connection.py) is, once joined, what a handler sees (``Transport``), what the loop
        drives (``Driver``) and a wheel entry, with the slots and methods of the others."""

        # Connection.__slots__
        _sock: Any
        _handler: Handler
        _codec: Codec
        _rx: RingBuffer | None
        _tx: RingBuffer | None
        _out: Any
        _rest: bytes | None
        _opts: ConnectionOptions
        _state: int
        _pause: int
        _flags: int
        _last_rx: float
        _last_tx: float
        _partial_since: float
        _x: _Extra | None
        created_at: float
        bytes_in: int
        bytes_out: int
        # In the connection's class (connection.py, _connection_class) or its _Extra.
        _hub: Hub
        _batch: int
        _drain_left: int

        # Each half calls some of the others' methods.
        def _pump(self) -> None: ...
        def _deliver(self) -> None: ...
        def _codec_error(self, exc: CodecError) -> None: ...
        def _flush(self) -> None: ...
        def _send_blocked(self) -> None: ...
        def _set_pause(self, bit: int) -> None: ...
        def _went_high(self) -> None: ...
        def _clear_pause(self, bit: int) -> None: ...
        def _fail(self, exc: OSError) -> None: ...
        def _handler_failed(self, exc: Exception, where: str) -> None: ...
        def _partial_began(self) -> None: ...
        def _drain_done(self) -> None: ...
        def _sync_interest(self) -> None: ...
        def _call(self, name: str, *args: Any) -> None: ...

        @property
        def paused(self) -> bool: ...
else:
    ConnectionHalf = object

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
F_OPENED = 16  # on_connect ran: on_close will follow (an accepted TLS connection whose
               # handshake failed never opens, and its handler hears nothing, as asyncio's)
F_DIAL = 32  # an outgoing connect: on_close follows even if it never opened (CONNECT_FAILED)

# _drain_left: bytes still to read in a shutdown drain, or one of these.
NOT_DRAINING = -1
DRAINED = -2  # the drain read its quota; delivering and closing, pauses still ignored

# How messages reach the handler: one on_message per frame, or on_batch with every
# complete frame at once, decoded in a ring or (the fast path) in the loop's flat buffer.
# B_ECHO is B_FLAT for a handler whose on_batch only writes the batch back (echo_batches).
B_NONE, B_RING, B_FLAT, B_ECHO = 0, 1, 2, 3


class _Extra:
    """What a connection sets rarely: kept apart so that most connections never pay for it."""

    __slots__ = ("reason", "error", "user_data", "peer", "drain_left", "id", "proxy")

    def __init__(self) -> None:
        self.drain_left = NOT_DRAINING
        self.id = 0
        self.reason: CloseReason | None = None
        self.error: OSError | None = None
        self.user_data: Any = None
        self.peer: Any = None
        self.proxy: Any = None  # the PROXY header it came with (proxy_protocol.ProxyHeader)


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
