"""The interfaces the core owns: Codec (bytes <-> messages), Handler (callbacks) and
Transport (what a handler may do with its connection).

``handlers/`` implements Codec and Handler; the core only calls them. ``Connection``
is the Transport a loop gives handlers; ``reactor.testing`` has one with no socket. A codec is sans-IO: it
reads a :class:`~reactor.ring.RingBuffer` and writes one, and never sees a
socket, the loop or a clock. Handler methods are no-ops by default (gnet's
``BuiltinEventEngine``), so a handler overrides only what it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from .errors import CloseReason, CodecError

if TYPE_CHECKING:  # pragma: no cover
    from .ring import RingBuffer

__all__ = ["BatchCodec", "Codec", "FlatCodec", "Handler", "Transport"]


class Transport(Protocol):
    """A connection as its handler sees it (``reactor.Connection`` is one).

    Written down here, below the connection, so that handlers and codecs can be
    typed and tested without a loop or a socket (``reactor.testing``).
    """

    user_data: Any  #: the application's own per-connection state (None until set)

    def send(self, msg: Any) -> bool:
        """Encode ``msg`` with the connection's codec and queue it; False if not queued."""
        ...

    def write(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue raw bytes, bypassing the codec; False if not queued."""
        ...

    def close(self, reason: CloseReason = CloseReason.LOCAL_CLOSE) -> None:
        """Flush what is queued, then close (idempotent)."""
        ...

    def abort(self, reason: CloseReason = CloseReason.LOCAL_CLOSE) -> None:
        """Close now, dropping what is queued."""
        ...

    def pause_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"socket"``, ``"peername"``, ``"sockname"`` (as asyncio's), else ``default``."""
        ...

    def resume_reading(self) -> None: ...

    @property
    def id(self) -> int: ...

    @property
    def peer(self) -> Any: ...

    @property
    def closed(self) -> bool: ...

    @property
    def close_reason(self) -> CloseReason | None: ...

    @property
    def writable(self) -> bool:
        """False while the send buffer is above its high watermark (after on_paused)."""
        ...

    @property
    def send_buffered(self) -> int: ...

    @property
    def recv_buffered(self) -> int: ...


class Codec(Protocol):
    """Turns the bytes in a receive ring into messages, and messages into bytes.

    A codec may keep per-connection state (then the factory given to ``Loop.listen``
    makes one per connection) or none: ``LineCodec`` keeps its scan offset in the
    ring (``RingBuffer.scan``), so one instance can serve every connection.
    """

    #: The largest frame the codec accepts; a larger one raises a ``FrameTooLong``.
    max_frame_bytes: int

    def maybe_take_frame(self, buf: RingBuffer) -> bytes | None:
        """Consume and return the next complete frame, or ``None`` if there is none yet.

        The returned object owns its bytes (never a view into the pool).
        Raises a :class:`~reactor.errors.CodecError` subclass on bad input.
        """
        ...

    def take_remainder(self, buf: RingBuffer) -> bytes:
        """At end of input: consume and return the bytes of an incomplete frame (``b""`` if none)."""
        ...

    def encode(self, msg: Any) -> bytes:
        """Return the wire bytes of ``msg``."""
        ...

    def encode_into(self, msg: Any, out: RingBuffer) -> None:
        """Append the wire bytes of ``msg`` to ``out`` without building an intermediate object."""
        ...


# The optional capabilities, for the batch fast path (see Handler.on_batch). A codec has one
# by having its method (each Protocol names only that one); the connection asks once per
# (handler class, codec class), not per event nor per connection: isinstance against a
# runtime-checkable Protocol costs microseconds. The flat path needs both.

@runtime_checkable
class BatchCodec(Protocol):
    """A codec that can hand over every complete frame buffered at once."""

    def maybe_take_batch(self, buf: RingBuffer) -> bytes | None:
        """Consume and return every complete frame in ``buf``, in wire form (``None``: none)."""
        ...


@runtime_checkable
class FlatCodec(Protocol):
    """A codec that can find frames in a flat buffer without consuming them."""

    def frames_end(self, buf: Any, start: int, end: int) -> int:
        """Stateless: where the complete frames in ``buf[:end]`` end, given that
        ``buf[:start]`` holds no complete frame (0: none). A
        :class:`~reactor.errors.CodecError` it raises says in ``valid_prefix`` how many
        bytes of good frames come before the bad one."""
        ...


class Handler:
    """Callbacks for one connection's events. Override what you need.

    A handler object may be shared by many connections (the factory given to
    ``Loop.listen`` may return the same instance) as long as it keeps no
    per-connection state of its own; per-connection state can live in
    ``conn.user_data``. Every callback runs on the loop thread. An exception
    raised by a callback is logged once and closes that connection with
    ``CloseReason.HANDLER_ERROR``; the loop and other connections go on.
    """

    __slots__ = ()

    #: Optional fast path. A handler that defines ``on_batch(conn, data)`` and runs with a
    #: :class:`BatchCodec` (``LineCodec`` is one) gets every complete frame
    #: buffered at once, in wire form, as one ``bytes`` object, instead of one
    #: ``on_message`` per frame: one Python call per read instead of one per line. The
    #: frame limits still hold. Suits handlers that treat frames as a stream (echo,
    #: relay, fan-out). If the codec is also a :class:`FlatCodec` (``LineCodec`` is), reads
    #: are decoded in place in one flat buffer of the loop and no ring is touched unless
    #: a frame larger than 1 KiB is still arriving.
    on_batch: Callable[[Transport, bytes], None] | None = None

    #: Set (as a class attribute) by a handler whose ``on_batch(conn, data)`` does nothing
    #: but ``conn.write(data)``: on the flat path the connection then sends the complete
    #: frames straight from the loop's read buffer when nothing else is queued for the peer
    #: -- no copy, no ``on_batch`` call, no separate flush -- and only what the kernel does
    #: not take is copied and queued as ``write`` would. ``on_batch`` is still called
    #: wherever that shortcut does not apply (output already queued, a large frame read
    #: through a ring), so it must stay equivalent to the write.
    echo_batches: bool = False

    def on_connect(self, conn: Transport) -> None:
        """The connection is established (accepted, or an outgoing connect finished)."""

    def on_message(self, conn: Transport, msg: Any) -> None:
        """The codec decoded a complete message. ``msg`` owns its bytes."""

    def on_paused(self, conn: Transport) -> None:
        """The send buffer rose above the high watermark: stop producing for this peer.

        The connection has also stopped reading from the peer (backpressure) until
        :meth:`on_writable` is called.
        """

    def on_writable(self, conn: Transport) -> None:
        """The send buffer fell to the low watermark after :meth:`on_paused`; reading resumed."""

    def on_idle(self, conn: Transport) -> None:
        """No byte was received for ``idle_timeout_s``. By default: close (IDLE_TIMEOUT)."""
        conn.close(CloseReason.IDLE_TIMEOUT)

    def on_heartbeat(self, conn: Transport) -> None:
        """No byte was sent for ``heartbeat_s``: a good moment to send a ping."""

    def on_eof(self, conn: Transport, remainder: bytes) -> bool:
        """The peer shut down its sending side. Every complete frame was delivered first.

        ``remainder`` holds the bytes of an incomplete trailing frame (``b""`` if
        none). Return True to keep the connection open for writing (call
        ``conn.close()`` later); by default the connection flushes and closes.
        """
        return False

    def on_codec_error(self, conn: Transport, exc: CodecError) -> None:
        """The peer sent bytes the codec refused. Frames decoded before were delivered.

        By default: close with ``exc.reason`` after flushing what was queued.
        """
        conn.close(exc.reason)

    def on_close(self, conn: Transport, reason: CloseReason) -> None:
        """The connection is closed and its socket released; called exactly once for a
        connection whose ``on_connect`` ran, and for an outgoing connect that failed. An
        accepted connection that never opened (its TLS handshake failed) gets neither."""
