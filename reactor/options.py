"""ConnectionOptions: the settings a listener (or a connect) gives its connections."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - ssl is imported only where TLS is used (reactor/tls.py)
    import ssl

__all__ = ["ConnectionOptions"]


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
    #: TLS (reactor/tls.py): the context a listener's connections are served with (server
    #: side) or a connect is made with (client side); None: plaintext.
    ssl: ssl.SSLContext | None = None
    #: A TLS handshake not finished by then closes the connection (asyncio's default).
    ssl_handshake_timeout_s: float = 60.0
    #: A graceful close of a TLS connection (its flush and close_notify) not done by then is
    #: aborted; it replaces close_timeout_s for TLS connections (asyncio's default).
    ssl_shutdown_timeout_s: float = 30.0
    #: Every accepted connection must begin with a PROXY protocol header (v1 or v2, from a
    #: load balancer such as HAProxy); its address becomes the connection's peer. One that
    #: sends anything else, or no complete header within proxy_timeout_s, is closed
    #: (listener.py, preamble.py). Only for listeners.
    proxy_protocol: bool = False
    proxy_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("idle_timeout_s", "heartbeat_s", "linger_s", "close_timeout_s",
                     "frame_timeout_s", "write_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        for name in ("ssl_handshake_timeout_s", "ssl_shutdown_timeout_s", "proxy_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")
        if not 0 <= self.low_water <= self.high_water:
            raise ValueError(
                f"need 0 <= low_water <= high_water, got {self.low_water} and {self.high_water}"
            )
        if self.max_send_buffer < self.high_water:
            raise ValueError(
                f"max_send_buffer {self.max_send_buffer} is below high_water {self.high_water}"
            )

    @classmethod
    def given(cls, options: ConnectionOptions | None, kwargs: dict[str, Any]) -> ConnectionOptions:
        """``options``, or one made of ``kwargs`` (``Loop.listen(..., options=...)`` or
        ``Loop.listen(..., idle_timeout_s=...)``); ``TypeError`` if both are given."""
        if options is not None and kwargs:
            raise TypeError("pass either options= or ConnectionOptions keywords, not both")
        return options if options is not None else cls(**kwargs)

    def apply(self, sock: Any) -> None:
        """Set the socket options these settings ask for on a TCP socket."""
        if self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
