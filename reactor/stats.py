"""The reactor's internals as one JSON document, and the unix socket that serves it.

``loop_stats(loop)`` gathers counters the loop keeps anyway (no per-event
bookkeeping is added for it); walking the connections for buffered bytes
happens only when someone asks. ``serve_stats(loop, path)`` answers each
connection on a mode-0600 unix socket with one document, then closes; a peer
whose uid is neither ours nor root's is closed without a byte.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from .errors import CloseReason
from .protocols import Handler

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .listener import Listener
    from .loop import Loop
    from .ring import RingBuffer

__all__ = ["STATS_VERSION", "loop_stats", "serve_stats", "read_stats"]

log = logging.getLogger("reactor")

#: Version of the stats document's schema; bumped on any incompatible change.
STATS_VERSION = 1
_TOP_N = 10


def loop_stats(loop: Loop, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready dict of the loop's internals (see docs/architecture.md)."""
    now = loop.time()
    conns = loop.connections()
    rx = tx = paused = 0
    for c in conns:
        rx += c.recv_buffered
        tx += c.send_buffered
        paused += c.paused
    top = sorted(conns, key=lambda c: c.recv_buffered + c.send_buffered, reverse=True)[:_TOP_N]
    closed = {r.value: n for r, n in loop._closed_by_reason.items()}
    doc: dict[str, Any] = {
        "version": STATS_VERSION,
        "pid": os.getpid(),
        "selector": loop.selector_name,
        "edge_triggered": loop.edge_triggered,
        "uptime_s": round(now - loop.started_at, 3),
        "connections": loop.connection_count,
        "accepted": loop._accepted_total,
        "closed": closed,
        "closed_total": sum(closed.values()),
        "bytes_in": loop._bytes_in,
        "bytes_out": loop._bytes_out,
        "iterations": loop._iterations,
        "events": loop._events,
        "paused_reading": paused,
        "broadcast_skipped": loop._broadcast_skipped,
        "rx_bytes": rx,
        "tx_bytes": tx,
        "chunks": dataclasses.asdict(loop.pool.stats()),
        "timers": dataclasses.asdict(loop._wheel.stats()),
        "listeners": [_listener_doc(lst) for lst in loop.listeners if lst._counted],
        "shutting_down": loop.shutting_down,
        "top": [c._snapshot(now) for c in top if c.recv_buffered + c.send_buffered],
    }
    if extra:
        doc.update(extra)
    return doc


def _listener_doc(lst: Listener) -> dict[str, Any]:
    addr = lst.address
    return {
        "address": f"unix:{addr}" if isinstance(addr, str) else f"{addr[0]}:{addr[1]}",
        "accepted": lst.accepted_total,
        "rejected": lst.rejected_total,
        "fd_exhausted": lst.fd_exhausted_total,
        "max_conns": lst.max_conns,
    }


class _IgnoreInput:
    """A codec for the stats socket: whatever a reader sends is dropped."""

    __slots__ = ()
    max_frame_bytes = 0

    def maybe_take_frame(self, buf: RingBuffer) -> None:
        buf.clear()
        return None

    def take_remainder(self, buf: RingBuffer) -> bytes:
        buf.clear()
        return b""

    def encode(self, msg: Any) -> bytes:
        return bytes(msg)

    def encode_into(self, msg: Any, out: RingBuffer) -> None:
        out.write(msg)


class _StatsHandler(Handler):
    __slots__ = ("_loop", "_extra")

    def __init__(self, loop: Loop, extra: Any) -> None:
        self._loop = loop
        self._extra = extra

    def on_connect(self, conn: Connection) -> None:
        if not _peer_allowed(conn._sock):
            conn.abort(CloseReason.LOCAL_CLOSE)
            return
        extra = self._extra() if callable(self._extra) else self._extra
        doc = loop_stats(self._loop, extra)
        conn.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
        conn.close()

    def on_idle(self, conn: Connection) -> None:
        conn.abort(CloseReason.IDLE_TIMEOUT)


def _peer_allowed(sock: socket.socket) -> bool:
    """Only our own uid and root may read the stats (the file mode is not enough:
    a socket inherited or passed elsewhere could be reached by others)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # pragma: no cover - no SO_PEERCRED here
        return True
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


def serve_stats(loop: Loop, path: str, extra: Any = None) -> Listener:
    """Serve ``loop_stats`` on the unix socket ``path`` (mode 0600).

    ``extra``: a dict, or a callable returning one, merged into each document.
    Readers do not count as connections and cannot stall the loop: the
    document is queued like any reply and a reader that never reads is closed
    by a 5-second idle timeout.
    """
    return loop.listen(path, lambda: _StatsHandler(loop, extra), _IgnoreInput,
                       unix_mode=0o600, counted=False, idle_timeout_s=5.0, linger_s=0.5)


def read_stats(path: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Client side: connect to a stats socket and return its document.

    Raises OSError if it cannot connect, ValueError if the reply is not JSON.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    doc = json.loads(b"".join(chunks))
    if not isinstance(doc, dict):
        raise ValueError("stats document is not a JSON object")
    return doc
