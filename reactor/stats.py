"""The reactor's internals as one JSON document, and the unix socket that serves it.

``loop_stats(loop)`` reads counters the loop keeps anyway: nothing is added per
event for it, and walking the connections for buffered bytes happens only when
someone asks. ``serve_stats(loop, path)`` answers each connection on a mode-0600
unix socket with one document, then closes; a peer whose uid is neither ours
nor root's is closed without a byte. The socket is advertised at a well-known
path keyed by PID so ``fd-stats PID`` finds it without being told.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import socket
import stat
import struct
import tempfile
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable

from .connection import P_BACKPRESSURE, P_STARVED, P_USER
from .errors import CloseReason, FrameTooLong
from .pool import PoolStats
from .protocols import Handler

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .listener import Listener
    from .loop import Loop
    from .ring import RingBuffer

__all__ = [
    "STATS_VERSION", "loop_stats", "serve_stats", "read_stats", "aggregate",
    "advert_dir", "advertised_path", "StatsError",
]

log = logging.getLogger("reactor")

#: Version of the stats document's schema; bumped on any incompatible change.
STATS_VERSION = 1
TOP_N = 10
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_MAX_DOC_BYTES = 16 << 20  # a stats reply larger than this is garbage, not a document
#: Counters whose per-second rates the document carries (since the previous request).
_RATED = ("iterations", "events", "accepted", "closed_total", "bytes_in", "bytes_out",
          "pool_refused")


class StatsError(Exception):
    """Reading a stats socket failed; ``str(exc)`` is one line saying why."""


def loop_stats(loop: Loop) -> dict[str, Any]:
    """A JSON-ready dict of the loop's internals (the schema is in docs/fd-stats.md)."""
    now = loop.time()
    conns = loop.connections()
    rx = tx = paused = by_user = by_backpressure = by_starved = 0
    busy: list[tuple[int, int, Connection]] = []  # only these can be "top": idle ones hold 0
    for c in conns:
        crx = c.recv_buffered
        ctx = c.send_buffered
        if crx or ctx:
            rx += crx
            tx += ctx
            busy.append((crx + ctx, len(busy), c))
        if c.paused:
            paused += 1
            why = c._pause
            by_user += why & P_USER != 0
            by_backpressure += why & P_BACKPRESSURE != 0
            by_starved += why & P_STARVED != 0
    top = [c for _n, _i, c in heapq.nlargest(TOP_N, busy)]
    closed = {r.value: n for r, n in loop._closed_by_reason.items()}
    pool = loop.pool.stats()
    wheel = loop._wheel.stats()
    listeners = [lst for lst in loop.listeners if lst._counted]
    counters = {
        "iterations": loop._iterations,
        "events": loop._events,
        "accepted": loop._accepted_total,
        "closed_total": sum(closed.values()),
        "bytes_in": loop._bytes_in,
        "bytes_out": loop._bytes_out,
        "pool_refused": pool.exhausted_total,
    }
    rates = _rates(loop, now, counters)
    doc: dict[str, Any] = {
        "version": STATS_VERSION,
        "pid": os.getpid(),
        "role": "worker",
        "selector": loop.selector_name,
        "edge_triggered": loop.edge_triggered,
        "uptime_s": round(now - loop.started_at, 3),
        "connections": loop.connection_count,
        **counters,
        "closed": closed,
        **rates,
        "paused_reading": paused,
        "broadcast_skipped": loop._broadcast_skipped,
        "per_ip_rejections": sum(lst.per_ip_rejected_total for lst in listeners),
        "accept_pauses": sum(lst.accept_pauses_total for lst in listeners),
        # Named for what the daemon's limits do; the same counts are under "closed" too.
        "line_timeouts": closed["line_timeout"] + closed["frame_timeout"],
        "slow_consumer_closes": closed["slow_consumer"],
        "rx_bytes": rx,
        "tx_bytes": tx,
        "chunks": asdict(pool),
        "pool": _pool_doc(pool, counters, rates),
        "paused": {"user": by_user, "backpressure": by_backpressure, "starved": by_starved},
        "memory_bound": memory_bound(loop),
        "timers": {"entries": wheel.timers, "expired": wheel.fired_total,
                   "scheduled": wheel.scheduled_total, "cancelled": wheel.cancelled_total},
        "lag": {"p50_s": wheel.lag_p50_s, "p99_s": wheel.lag_p99_s},
        "listeners": [_listener_doc(lst) for lst in listeners],
        "shutting_down": loop.shutting_down,
        "rss_bytes": _own_rss(),
        "top": [c._snapshot(now) for c in top],
    }
    return doc


def _own_rss() -> int | None:
    """This process's resident set now (Linux /proc/self/statm; None elsewhere). The stats
    socket says it so a supervisor can sum its workers' without a sampler of its own."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None


def _pool_doc(pool: PoolStats, counters: dict[str, int], rates: dict[str, float]
              ) -> dict[str, Any]:
    return {
        "chunk_size": pool.chunk_size,
        "chunks_capacity": pool.chunks_total,
        "chunks_max": pool.chunks_max,
        "chunks_in_use": pool.chunks_in_use,
        "chunks_free": pool.chunks_free,
        "high_water": pool.high_water,
        "grows": pool.grows_total,
        "shrinks": pool.shrinks_total,
        "refused": counters["pool_refused"],
        "refused_per_s": rates["pool_refused_per_s"],
        "overflow_in_use": pool.overflow_in_use,
        "overflow_total": pool.overflow_total,
        "capacity_bytes": pool.chunks_total * pool.chunk_size,
        "max_bytes": pool.chunks_max * pool.chunk_size,
    }


def memory_bound(loop: Loop) -> dict[str, int]:
    """The fair share of buffer memory now and the bounds it gives (docs/architecture.md):
    a connection's buffered bytes stay within two shares (a send backlog up to its share,
    then one read's reply), all of them within the pool's cap, or two minimum shares a
    connection when there are more connections than the cap can give that to. A partial
    frame is bounded by its codec's maximum, and one backlog by ``max_send_buffer``."""
    share = loop.buffer_share
    n = loop.connection_count
    return {"share_bytes": share, "per_connection_bytes": 2 * share,
            "total_bytes": max(loop.pool.max_bytes, 2 * share * n)}


def _rates(loop: Loop, now: float, counters: dict[str, int]) -> dict[str, float]:
    """Per-second rates since the previous request (or since start), kept on the loop.

    A request less than 0.2 s after the previous one measures from the one before
    that, so two readers polling at once do not see noise.
    """
    marks = loop._rate_marks
    if not marks:
        marks.append((loop.started_at, dict.fromkeys(counters, 0)))
    since, before = marks[-1]
    if now - since < 0.2 and len(marks) > 1:
        since, before = marks[-2]
    span = now - since
    out = {f"{k}_per_s": round((counters[k] - before[k]) / span, 1) if span > 0 else 0.0
           for k in _RATED}
    if now - marks[-1][0] >= 0.2:
        marks.append((now, dict(counters)))
        del marks[:-2]
    return out


def _listener_doc(lst: Listener) -> dict[str, Any]:
    addr = lst.address
    return {
        "address": f"unix:{addr}" if isinstance(addr, str) else f"{addr[0]}:{addr[1]}",
        "accepted": lst.accepted_total,
        "rejected": lst.rejected_total,
        "fd_exhausted": lst.fd_exhausted_total,
        "max_conns": lst.max_conns,
        "max_conns_per_ip": lst.max_conns_per_ip,
        "per_ip_rejections": lst.per_ip_rejected_total,
        "accept_rate": lst.accept_rate,
        "accept_pauses": lst.accept_pauses_total,
        "line_timeout_s": lst._opts.frame_timeout_s,
        "max_send_buffer": lst._opts.max_send_buffer,
        "write_timeout_s": lst._opts.write_timeout_s,
    }


# --------------------------------------------------------------- aggregation

_SUMMED = ("connections", "iterations", "events", "accepted", "closed_total", "bytes_in",
           "bytes_out", "paused_reading", "broadcast_skipped", "per_ip_rejections",
           "accept_pauses", "line_timeouts", "slow_consumer_closes", "rx_bytes", "tx_bytes",
           "pool_refused", "rss_bytes",
           *(f"{k}_per_s" for k in _RATED))


def aggregate(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over several workers' documents: counters and gauges summed, lag the worst,
    listeners and top connections merged (each top entry tagged with its worker's pid)."""
    total: dict[str, Any] = {k: 0 for k in _SUMMED}
    closed: dict[str, int] = {}
    chunks: dict[str, int] = {}
    pool: dict[str, int] = {}
    paused: dict[str, int] = {}
    bound: dict[str, int] = {}
    timers: dict[str, int] = {}
    lag = {"p50_s": 0.0, "p99_s": 0.0}
    listeners: list[Any] = []
    top: list[dict[str, Any]] = []
    for d in docs:
        for k in _SUMMED:
            total[k] += d.get(k) or 0
        for src, dst in ((d.get("closed", {}), closed), (d.get("chunks", {}), chunks),
                         (d.get("timers", {}), timers), (d.get("pool", {}), pool),
                         (d.get("paused", {}), paused), (d.get("memory_bound", {}), bound)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        for k in lag:
            lag[k] = max(lag[k], d.get("lag", {}).get(k, 0.0))
        listeners += d.get("listeners", [])
        top += [{**c, "worker": d.get("pid")} for c in d.get("top", [])]
    for k in _SUMMED:
        if k.endswith("_per_s"):
            total[k] = round(total[k], 1)
    top.sort(key=lambda c: c.get("rx_bytes", 0) + c.get("tx_bytes", 0), reverse=True)
    # Per-worker sizes are not sums: every worker has the same chunk size and its own share.
    for src in (chunks, pool):
        if "chunk_size" in src:
            src["chunk_size"] = docs[0].get("chunks", {}).get("chunk_size", 0)
    if "refused_per_s" in pool:
        pool["refused_per_s"] = round(pool["refused_per_s"], 1)
    if docs and bound:
        bound["share_bytes"] = min(d.get("memory_bound", {}).get("share_bytes", 0)
                                   for d in docs)
        bound["per_connection_bytes"] = 2 * bound["share_bytes"]
    return {**total, "closed": closed, "chunks": chunks, "pool": pool, "paused": paused,
            "memory_bound": bound, "timers": timers, "lag": lag,
            "listeners": listeners, "top": top[:TOP_N]}


# ------------------------------------------------------------------- serving

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


class WholeReply(_IgnoreInput):
    """A codec that keeps everything until EOF (``take_remainder``), up to a cap."""

    __slots__ = ()
    max_frame_bytes = _MAX_DOC_BYTES

    def maybe_take_frame(self, buf: RingBuffer) -> None:
        if len(buf) > _MAX_DOC_BYTES:
            raise FrameTooLong(len(buf), _MAX_DOC_BYTES)
        return None

    def take_remainder(self, buf: RingBuffer) -> bytes:
        return buf.take(len(buf))


Provider = Callable[[Callable[[dict[str, Any]], None]], None]


class _StatsHandler(Handler):
    __slots__ = ("_provide",)

    def __init__(self, provide: Provider) -> None:
        self._provide = provide

    def on_connect(self, conn: Connection) -> None:
        if not _peer_allowed(conn._sock):
            conn.abort(CloseReason.LOCAL_CLOSE)
            return

        def reply(doc: dict[str, Any]) -> None:
            if conn.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n"):
                conn.close()

        self._provide(reply)

    def on_eof(self, conn: Connection, remainder: bytes) -> bool:
        # A reader that shuts down its side before an asynchronous provider (the
        # supervisor's) has replied still gets the document: reply() closes.
        return True

    def on_idle(self, conn: Connection) -> None:
        conn.abort(CloseReason.IDLE_TIMEOUT)


def _peer_allowed(sock: socket.socket) -> bool:
    """Only our own uid and root may read the stats. The file mode is not enough:
    a socket inherited by, or passed to, another process could be reached by others."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # pragma: no cover - no SO_PEERCRED here
        return True
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


def advert_dir(uid: int | None = None) -> str:
    """Where processes of ``uid`` advertise their stats sockets, one entry per PID."""
    return os.path.join(tempfile.gettempdir(), f"reactor-stats-{os.getuid() if uid is None else uid}")


def advertised_path(pid: int, uid: int | None = None) -> str:
    """The well-known path of ``pid``'s stats socket (a symlink to it, or the socket itself)."""
    return os.path.join(advert_dir(uid), f"{pid}.sock")


def _advert_dir_ready() -> str | None:
    """Create our advert directory (0700) if needed; None if it is not safely ours."""
    d = advert_dir()
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("not advertising the stats socket: %s is not a private directory of ours", d)
        return None
    return d


def serve_stats(loop: Loop, path: str | None = None, provider: Provider | None = None,
                advertise: bool = True) -> Listener:
    """Serve the loop's stats on the unix socket ``path`` (mode 0600). One call.

    ``path`` defaults to :func:`advertised_path` of this process. With
    ``advertise``, a symlink at that well-known path points to ``path`` so
    ``fd-stats PID`` finds it. ``provider(reply)``, if given, produces the
    document asynchronously by calling ``reply(doc)`` (the supervisor of
    several workers gathers theirs this way). Readers do not count as
    connections and cannot stall the loop: a reader that never reads is closed
    by a 5-second idle timeout. Raises OSError if ``path`` cannot be bound.
    """
    advert = advertised_path(os.getpid()) if advertise and _advert_dir_ready() else None
    if path is None:
        if advert is None:
            raise OSError("no stats socket path given and no private advert directory")
        path = advert
    if provider is None:
        def provider(reply: Callable[[dict[str, Any]], None]) -> None:
            reply(loop_stats(loop))
    listener = loop.listen(path, lambda: _StatsHandler(provider), _IgnoreInput,
                           unix_mode=0o600, counted=False, idle_timeout_s=5.0, linger_s=0.5)
    if advert is not None and os.path.abspath(path) != advert:
        try:
            if os.path.lexists(advert):
                os.unlink(advert)
            os.symlink(os.path.abspath(path), advert)
        except OSError as exc:
            log.warning("cannot advertise the stats socket at %s: %s", advert, exc)
            advert = None

    def cleanup() -> None:
        if advert is not None and os.path.abspath(path) != advert:
            try:
                if os.readlink(advert) == os.path.abspath(path):
                    os.unlink(advert)
            except OSError:
                pass

    listener.on_close = cleanup
    return listener


def read_stats(path: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Client side: connect to a stats socket and return its document.

    Raises :class:`StatsError` with a one-line reason: missing, stale (nobody
    listening), no permission, timed out, or not a stats document.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(path)
            chunks, size = [], 0
            while size <= _MAX_DOC_BYTES:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
    except FileNotFoundError:
        raise StatsError(f"stats socket {path} does not exist") from None
    except ConnectionRefusedError:
        raise StatsError(f"stats socket {path} is stale: nobody is listening on it") from None
    except PermissionError:
        raise StatsError(f"no permission to read stats socket {path}") from None
    except TimeoutError:
        raise StatsError(f"stats socket {path} did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise StatsError(f"cannot read stats socket {path}: {exc.strerror or exc}") from None
    raw = b"".join(chunks)
    if not raw:
        raise StatsError(f"stats socket {path} closed without a document (are we allowed?)")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise StatsError(f"stats socket {path} did not answer with a stats document") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
        raise StatsError(f"stats socket {path} did not answer with a stats document")
    return doc
