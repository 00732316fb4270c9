"""The reactor's internals as one JSON document: ``loop_stats(loop)``, and ``aggregate``
over several workers' documents.

``loop_stats(loop)`` reads counters the loop keeps anyway: nothing is added per
event for it, and walking the connections for buffered bytes happens only when
someone asks. The unix socket that serves the document is the service's
(``reactor/service/stats_socket.py``); the core only makes it.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

from .connstate import P_BACKPRESSURE, P_STARVED, P_USER
from .pool import PoolStats

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection
    from .hub import Hub
    from .listener import Listener
    from .pool import BufferPool

__all__ = ["STATS_VERSION", "aggregate", "loop_stats", "memory_bound"]

#: Version of the stats document's schema; bumped on any incompatible change.
STATS_VERSION = 1
TOP_N = 10
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: Counters whose per-second rates the document carries (since the previous request).
_RATED = ("iterations", "events", "accepted", "closed_total", "bytes_in", "bytes_out",
          "pool_refused")


class LoopView(Protocol):
    """What the stats document reads of a loop (``reactor.Loop`` has it all); a Protocol so
    that this module sits above the hub and below the loop, which imports it."""

    hub: Hub
    pool: BufferPool
    started_at: float

    def time(self) -> float: ...

    def connections(self) -> list[Connection]: ...

    @property
    def listeners(self) -> list[Listener]: ...

    @property
    def selector_name(self) -> str: ...

    @property
    def edge_triggered(self) -> bool: ...

    @property
    def connection_count(self) -> int: ...

    @property
    def buffer_share(self) -> int: ...

    @property
    def shutting_down(self) -> bool: ...


def loop_stats(loop: LoopView) -> dict[str, Any]:
    """A JSON-ready dict of the loop's internals (the schema is in docs/fd-stats.md)."""
    now = loop.time()
    conns = loop.connections()
    rx = tx = paused = by_user = by_backpressure = by_starved = 0
    hub = loop.hub
    # The hub counts the bytes of closed connections; the live ones count their own.
    bytes_in = hub.bytes_in + sum(c.bytes_in for c in conns)
    bytes_out = hub.bytes_out + sum(c.bytes_out for c in conns)
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
    closed = {r.value: n for r, n in hub.closed_by_reason.items()}
    pool = loop.pool.stats()
    wheel = hub.wheel.stats()
    listeners = [lst for lst in loop.listeners if lst.counted]
    counters = {
        "iterations": hub.iterations,
        "events": hub.events,
        "accepted": hub.accepted_total,
        "closed_total": sum(closed.values()),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
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
        "broadcast_skipped": hub.broadcast_skipped,
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
        "tls": {"handshakes_total": hub.tls_handshakes,
                "handshake_failures": dict(sorted(hub.tls_failures.items()))},
        "proxy_protocol": _proxy_doc(listeners),
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


def memory_bound(loop: LoopView) -> dict[str, int]:
    """The fair share of buffer memory now and the bounds it gives (docs/architecture.md):
    a connection's buffered bytes stay within two shares (a send backlog up to its share,
    then one read's reply), all of them within the pool's cap, or two minimum shares a
    connection when there are more connections than the cap can give that to. A partial
    frame is bounded by its codec's maximum, and one backlog by ``max_send_buffer``."""
    share = loop.buffer_share
    n = loop.connection_count
    return {"share_bytes": share, "per_connection_bytes": 2 * share,
            "total_bytes": max(loop.pool.max_bytes, 2 * share * n)}


def _rates(loop: LoopView, now: float, counters: dict[str, int]) -> dict[str, float]:
    """Per-second rates since the previous request (or since start), kept on the loop.

    A request less than 0.2 s after the previous one measures from the one before
    that, so two readers polling at once do not see noise.
    """
    marks = loop.hub.stats_marks
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
        "line_timeout_s": lst.options.frame_timeout_s,
        "max_send_buffer": lst.options.max_send_buffer,
        "write_timeout_s": lst.options.write_timeout_s,
        "proxy_protocol": lst.options.proxy_protocol,
    }


def _proxy_doc(listeners: list[Listener]) -> dict[str, Any]:
    """PROXY protocol listeners' books: headers taken, sockets refused by reason."""
    refused: dict[str, int] = {}
    for lst in listeners:
        for k, v in lst.proxy_refused.items():
            refused[k] = refused.get(k, 0) + v
    return {"accepted_total": sum(lst.proxy_accepted_total for lst in listeners),
            "rejected": dict(sorted(refused.items()))}


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
    tls = {"handshakes_total": 0, "handshake_failures": {}}
    proxy: dict[str, Any] = {"accepted_total": 0, "rejected": {}}
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
        t = d.get("tls", {})
        tls["handshakes_total"] += t.get("handshakes_total", 0)
        for k, v in t.get("handshake_failures", {}).items():
            tls["handshake_failures"][k] = tls["handshake_failures"].get(k, 0) + v
        p = d.get("proxy_protocol", {})
        proxy["accepted_total"] += p.get("accepted_total", 0)
        for k, v in p.get("rejected", {}).items():
            proxy["rejected"][k] = proxy["rejected"].get(k, 0) + v
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
            "memory_bound": bound, "timers": timers, "lag": lag, "tls": tls,
            "proxy_protocol": proxy,
            "listeners": listeners, "top": top[:TOP_N]}
