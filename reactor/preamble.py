"""Preamble: an accepted socket that must first say whose it is (the PROXY protocol).

A listener with ``ConnectionOptions.proxy_protocol`` makes no connection of what it accepts
until the PROXY header has come: it watches the socket with a ``ProxyPreamble`` (registered
on the loop for read edges, as a connection is). The preamble peeks at what has arrived
(MSG_PEEK), decodes it with ``proxy_protocol.ProxyDecoder`` and, once the header is whole,
consumes exactly its bytes: whatever follows -- the application's first line, a TLS
ClientHello -- stays in the kernel for the connection, whose registration raises its edge.
The listener then admits the connection under the address the header names (per-address
caps apply to the client, not to the load balancer). Bytes that cannot begin a header, an
EOF or a reset before it is whole, or no whole header by ``proxy_timeout_s``, refuse the
socket, counted by reason; never a guess that a header might be absent.

Level-triggered mode reports a socket with a partial header readable on every poll, so there
an incomplete header is looked at again on a short timer instead of at each poll.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable

from .proxy_protocol import V2_SIGNATURE, ProxyDecoder, ProxyHeader, ProxyProtocolError
from .selector import ERR, HUP, RDHUP

if TYPE_CHECKING:  # pragma: no cover
    from .hub import Hub
    from .wheel import Timer

__all__ = ["ProxyPreamble", "MAX_V2_BYTES"]

#: The largest v2 header accepted (16 bytes + addresses + TLVs); HAProxy's are far smaller.
MAX_V2_BYTES = 4096
_PEEK = MAX_V2_BYTES  # a whole header fits in one peek (v1's 107 bytes too)
_V1_PEEK = 107  # a v1 line's longest (V1_MAX_BYTES): what a v1 header is looked at with
_HANGUP = HUP | RDHUP | ERR
_RETRY_S = 0.01  # level-triggered mode: how soon an incomplete header is looked at again


class ProxyPreamble:
    """One accepted socket waiting for its PROXY header (see the module docstring)."""

    __slots__ = ("sock", "addr", "hub", "done", "refused", "timer", "retry", "peek")

    #: Not a connection: the loop's books do not count it (Hub.forget).
    counted = False

    def __init__(self, sock: Any, addr: Any, hub: Hub,
                 done: Callable[[ProxyPreamble, ProxyHeader], None],
                 refused: Callable[..., None]) -> None:
        self.sock = sock
        self.addr = addr  # what accept() said: the load balancer's address
        self.hub = hub
        self.done = done  # (preamble, header): the listener admits the connection
        self.refused = refused  # (preamble, reason[, exc]): the listener refuses the socket
        self.timer: Timer | None = None
        self.retry: Timer | None = None
        self.peek = _PEEK  # _V1_PEEK once the first byte says v1

    def fileno(self) -> int:
        return self.sock.fileno()

    # The loop calls these two (Hub.watch registered it).
    def _on_events(self, ev: int) -> None:
        self.step(bool(ev & _HANGUP))

    def _on_ready(self) -> None:
        self.step(False)

    def step(self, hangup: bool = False) -> None:
        """Look at what has arrived; hand over, refuse, or wait for more."""
        self.retry = None
        try:
            # A v1 line is looked at 107 bytes at most, so a peer that sends it a byte at a
            # time costs 107 bytes a look, not the 4 KiB a v2 header may need.
            data = self.sock.recv(self.peek, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            if hangup:
                self.refused(self, "eof")
            return
        except OSError:
            self.refused(self, "reset")
            return
        if not data:
            self.refused(self, "eof")
            return
        if data[:1] == b"P":
            self.peek = _V1_PEEK
        try:
            header = ProxyDecoder(MAX_V2_BYTES).feed(data)
        except ProxyProtocolError as exc:
            self.refused(self, exc.reason.value, exc)
            return
        if header is None:
            hub = self.hub
            if len(data) >= 16 and data[:12] == V2_SIGNATURE:
                # A v2 header says its length: wake when all of it is there, not at every
                # segment of a peer that sends it a byte at a time (each look copies it all).
                need = 16 + int.from_bytes(data[14:16], "big")
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)
            if hangup:  # the peer is gone before its header was whole
                self.refused(self, "eof")
            elif not hub.edge and self.retry is None:
                # Level-triggered: a partial header keeps the socket "readable" on every
                # poll; stop asking and look again shortly, until the header's deadline.
                hub.selector.set_interest(self.sock.fileno(), False, False)
                self.retry = hub.wheel.call_later(_RETRY_S, self.step)
            return  # edge-triggered: the rest of the header raises a new edge
        try:
            taken = self.sock.recv(header.header_bytes)  # what was peeked, no more
        except OSError:
            taken = b""
        if len(taken) != header.header_bytes:
            self.refused(self, "reset")
            return
        if header.version == 2:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)  # the default again
        self.done(self, header)
