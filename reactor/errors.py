"""Exception types and the CloseReason enum.

Two kinds of error (h11's split): misuse of the API raises ``ValueError`` or
``TypeError`` at once; bad bytes from a *peer* raise a ``CodecError`` subclass,
which closes only that peer's connection with the error's ``reason``.
This module owns no behaviour, only names.
"""

from __future__ import annotations

import enum

__all__ = [
    "CloseReason",
    "ReactorError",
    "CodecError",
    "FrameTooLong",
    "LineTooLong",
    "FrameTimeout",
    "LineTimeout",
    "TLSError",
]


class CloseReason(enum.Enum):
    """Why a connection closed; passed to ``Handler.on_close`` and counted in stats.

    The values are the words stats documents use.
    """

    PEER_CLOSED = "peer_closed"        #: the peer sent FIN and everything was flushed
    PEER_RESET = "reset"               #: ECONNRESET, EPIPE and friends
    IDLE_TIMEOUT = "idle_timeout"      #: no byte received for idle_timeout_s
    LINE_TOO_LONG = "line_too_long"    #: a line exceeded the line codec's limit
    FRAME_TOO_LONG = "frame_too_long"  #: a frame exceeded the codec's max_frame_bytes
    LINE_TIMEOUT = "line_timeout"      #: a partial line was older than the frame timeout
    FRAME_TIMEOUT = "frame_timeout"    #: a partial frame was older than frame_timeout_s
    PROTOCOL_ERROR = "protocol_error"  #: any other CodecError
    SLOW_CONSUMER = "slow_consumer"    #: send buffer passed its hard limit
    SERVER_FULL = "server_full"        #: refused at accept: connection cap or no fds
    PER_IP_LIMIT = "per_ip_limit"      #: refused at accept: its address held max_conns_per_ip
    SHUTDOWN = "shutdown"              #: closed by Loop.shutdown()
    LOCAL_CLOSE = "local_close"        #: the application called close() or abort()
    HANDLER_ERROR = "handler_error"    #: a handler callback raised
    CONNECT_FAILED = "connect_failed"  #: an outgoing connect() failed
    CONNECT_TIMEOUT = "connect_timeout"  #: an outgoing connect() did not finish in time
    IO_ERROR = "io_error"              #: any other socket error
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"    #: the TLS handshake was refused or cut
    TLS_HANDSHAKE_TIMEOUT = "tls_handshake_timeout"  #: it did not finish in time
    TLS_ERROR = "tls_error"            #: a TLS record was refused after the handshake
    PROXY_PROTOCOL = "proxy_protocol"  #: refused before the connection: no valid PROXY header


class ReactorError(Exception):
    """Base class of the library's own exceptions."""


class CodecError(ReactorError):
    """A peer sent bytes the codec cannot accept.

    Raised by codecs from ``maybe_take_frame``; the connection delivers every
    frame decoded before it, hands the error to ``Handler.on_codec_error`` and,
    by default, closes with :attr:`reason` after flushing what was queued.
    """

    reason: CloseReason = CloseReason.PROTOCOL_ERROR
    #: Raised by ``frames_end`` (the flat-buffer fast path): how many bytes at the start
    #: of the buffer hold complete, valid frames before the bad one. They are delivered
    #: first, as ``maybe_take_batch`` would have returned them before raising.
    valid_prefix: int = 0


class FrameTooLong(CodecError):
    """A frame (complete or still arriving) is larger than the codec allows.

    ``size`` is the frame's length in bytes as far as it is known (at least this
    many), ``limit`` the codec's maximum.
    """

    reason = CloseReason.FRAME_TOO_LONG

    def __init__(self, size: int, limit: int, message: str | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            message or f"frame of {size} bytes exceeds max_frame_bytes {limit}"
        )


class LineTooLong(FrameTooLong):
    """A line, its newline included, is longer than the line codec's ``max_line``."""

    reason = CloseReason.LINE_TOO_LONG

    def __init__(self, size: int, limit: int, complete: bool = True) -> None:
        what = "line of" if complete else "line of at least"
        super().__init__(size, limit, f"{what} {size} bytes exceeds max_line {limit}")


class FrameTimeout(CodecError):
    """A frame began arriving longer ago than ``frame_timeout_s`` and is still incomplete
    (a slowloris peer). Raised by the connection, not by a codec: a codec names its own
    subclass in a ``frame_timeout_error`` class attribute (``LineCodec``: LineTimeout).
    ``age`` is how long the partial frame has been waiting, ``limit`` the timeout."""

    reason = CloseReason.FRAME_TIMEOUT
    what = "frame"

    def __init__(self, age: float, limit: float) -> None:
        self.age = age
        self.limit = limit
        super().__init__(f"a partial {self.what} waited {age:.3f} s, over the {limit:g} s limit")


class LineTimeout(FrameTimeout):
    """A partial line waited longer than the line timeout."""

    reason = CloseReason.LINE_TIMEOUT
    what = "line"


class TLSError(ReactorError, OSError):
    """A TLS record was refused after the handshake (a bad MAC, an unexpected message, a
    renegotiation attempt): the connection closes with ``CloseReason.TLS_ERROR``."""
