"""fd-stats' logic: one sample of a process (fds, sockets, limits) joined with its reactor stats.

``Watcher`` takes samples of one PID: the process view from ``procview``
(psutil for the process, /proc for its fds and sockets) and, for a process built on this reactor, the document its
stats socket serves. ``render`` turns a sample into the aligned human view;
``sample_json`` into the stable JSON schema (docs/fd-stats.md). The CLI in
``reactor/cli/fd_stats.py`` only parses arguments and loops.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .procview import CPU_INTERVAL_S, NoPermission, ProcessGone, ProcessSampler
from .stats_socket import StatsError, advertised_path, read_stats

__all__ = ["FDSTATS_VERSION", "Watcher", "render", "pool_view", "fleet_view", "fleet_total", "ProcessGone", "NoPermission",
           "StatsError"]

#: Version of fd-stats' JSON sample schema.
FDSTATS_VERSION = 1
_RATE_KEYS = (("accepted", "accepts_per_s"), ("closed_total", "closes_per_s"),
              ("bytes_in", "bytes_in_per_s"), ("bytes_out", "bytes_out_per_s"),
              ("events", "events_per_s"), ("iterations", "iterations_per_s"))
#: The buffer pool's figures in a stats document's "pool" object (docs/fd-stats.md).
POOL_KEYS = ("chunk_size", "chunks_capacity", "chunks_max", "chunks_in_use", "chunks_free",
             "high_water", "grows", "shrinks", "refused", "refused_per_s", "overflow_in_use",
             "overflow_total", "capacity_bytes", "max_bytes")
PAUSE_CAUSES = ("user", "backpressure", "starved")


class Watcher:
    """Samples one PID. Raises ProcessGone / NoPermission at construction, and
    StatsError when an explicitly given stats socket cannot be read.

    ``cpu_interval_s``: the shortest interval the process's ``cpu_percent`` is measured over
    (``ProcessSampler``); a sample taken sooner after the previous one (or after construction)
    waits out the rest."""

    def __init__(self, pid: int, stats_socket: str | None = None,
                 cpu_interval_s: float = CPU_INTERVAL_S) -> None:
        self.pid = pid
        self.process = ProcessSampler(pid, cpu_interval_s)
        self.explicit = stats_socket is not None
        self.stats_socket = stats_socket
        if stats_socket is None:
            uid = _owner_uid(pid)
            candidate = advertised_path(pid, uid)
            if os.path.exists(candidate):
                self.stats_socket = candidate
        self._prev: tuple[float, dict[str, Any]] | None = None
        self.note: str | None = None

    def sample(self) -> dict[str, Any]:
        """One JSON-ready sample (see docs/fd-stats.md for the schema)."""
        proc = self.process.sample()
        reactor = None
        self.note = None
        if self.stats_socket is not None:
            try:
                reactor = read_stats(self.stats_socket)
            except StatsError as exc:
                if self.explicit:
                    raise
                self.note = f"advertised stats socket unusable: {exc}"
            if reactor is not None and reactor.get("pid") != self.pid:
                msg = (f"stats socket {self.stats_socket} belongs to PID {reactor.get('pid')}, "
                       f"not {self.pid}")
                if self.explicit:
                    raise StatsError(msg)
                self.note, reactor = msg, None
        now = time.monotonic()
        rates = None
        if reactor is not None:
            refused = pool_view(reactor)["refused"]
            if self._prev is not None and now > self._prev[0]:
                span = now - self._prev[0]
                rates = {name: round((reactor.get(k, 0) - self._prev[1].get(k, 0)) / span, 1)
                         for k, name in _RATE_KEYS}
                before = pool_view(self._prev[1])["refused"]
                rates["pool_refused_per_s"] = (None if refused is None or before is None
                                               else round((refused - before) / span, 1))
            else:  # first sample: the reactor's own rates since its previous request
                rates = {name: reactor.get(f"{k}_per_s", 0.0) for k, name in _RATE_KEYS}
                rates["pool_refused_per_s"] = pool_view(reactor)["refused_per_s"]
            self._prev = (now, reactor)
        workers = fleet_view(reactor)
        return {
            "version": FDSTATS_VERSION,
            "pid": self.pid,
            "time": proc["time"],
            "process": proc,
            "stats_socket": self.stats_socket if reactor is not None else None,
            "reactor": reactor,
            "rates": rates,
            "workers": workers,
            "total": fleet_total(proc, reactor, workers),
        }


def fleet_view(r: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One compact entry per worker of a supervisor's document (``[]`` for a single loop,
    or no document): the figures that tell an uneven spread or a sick worker at a glance."""
    out = []
    for w in (r or {}).get("workers", []):
        if "error" in w:
            out.append({"index": w.get("index"), "pid": w.get("pid"), "error": w["error"]})
            continue
        pool, lag = pool_view(w), w.get("lag", {})
        out.append({
            "index": w.get("index"), "pid": w.get("pid"),
            "connections": w.get("connections", 0), "accepted": w.get("accepted", 0),
            "closed_total": w.get("closed_total", 0),
            "closed": {k: v for k, v in w.get("closed", {}).items() if v},
            "bytes_in": w.get("bytes_in", 0), "bytes_out": w.get("bytes_out", 0),
            "lag_p50_s": lag.get("p50_s"), "lag_p99_s": lag.get("p99_s"),
            "timers": w.get("timers", {}).get("entries"),
            "pool_in_use": pool["chunks_in_use"], "pool_capacity": pool["chunks_capacity"],
            "pool_refused": pool["refused"], "paused_reading": w.get("paused_reading"),
            "rss_bytes": w.get("rss_bytes"),
        })
    return out


def fleet_total(proc: dict[str, Any], r: dict[str, Any] | None,
                workers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The whole service: a supervisor's sums over its workers, or a single loop's own
    figures. ``rss_bytes`` counts the sampled process and every worker that answered
    (a worker's RSS comes from its own document); ``workers_answered`` of ``workers``."""
    if r is None:
        return None
    rss = proc["rss_bytes"] + sum(w.get("rss_bytes") or 0 for w in workers)
    return {"workers": len(workers), "workers_answered": sum("error" not in w for w in workers),
            "connections": r.get("connections", 0), "accepted": r.get("accepted", 0),
            "closed_total": r.get("closed_total", 0), "bytes_in": r.get("bytes_in", 0),
            "bytes_out": r.get("bytes_out", 0), "rss_bytes": rss}


def pool_view(r: dict[str, Any]) -> dict[str, Any]:
    """The buffer pool's figures of a stats document, keyed by ``POOL_KEYS``; None where absent.

    From ``r["pool"]``; a document from before it (a fixed arena, only ``r["chunks"]``) gives
    the figures it has: its ``chunks_total`` is the capacity and ``exhausted_total`` counts the
    same refused acquires as ``refused``; the cap, grows, shrinks and byte sizes stay None.
    """
    pool = r.get("pool")
    if not isinstance(pool, dict):
        chunks = r.get("chunks")
        chunks = chunks if isinstance(chunks, dict) else {}
        pool = {k: chunks.get(k) for k in ("chunk_size", "chunks_in_use", "chunks_free",
                                            "high_water", "overflow_in_use", "overflow_total")}
        pool.update(chunks_capacity=chunks.get("chunks_total"),
                    refused=chunks.get("exhausted_total"))
    return {k: pool.get(k) for k in POOL_KEYS}


def _owner_uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return os.getuid()


# ------------------------------------------------------------------ rendering

def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _opt(v: Any, fmt: Any = str) -> str:
    """A figure the document may lack: ``-`` for None."""
    return "-" if v is None else fmt(v)


def _secs(v: float) -> str:
    return f"{v:.2f} s"


def _opt_size(v: Any) -> str:
    return _opt(v, _size)


def _opt_rate(v: Any) -> str:
    return _opt(v, lambda x: f"{x:g}")


def _dur(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _pairs(d: dict[str, Any], skip_zero: bool = True) -> str:
    items = [(k, v) for k, v in d.items() if v or not skip_zero]
    return "  ".join(f"{k} {v}" for k, v in items) or "none"


def render(sample: dict[str, Any]) -> str:
    """The human view of one sample: aligned label / value lines."""
    p = sample["process"]
    fds, lim = p["fds"], p["rlimit_nofile"]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sample["time"]))
    rows: list[tuple[str, str]] = [
        ("fd-stats", f"pid {p['pid']}  {p['cmdline'] or p['name']}  {when}"),
        ("process", f"rss {_size(p['rss_bytes'])} ({'+' if p['rss_growth_bytes'] >= 0 else '-'}"
                    f"{_size(abs(p['rss_growth_bytes']))} since first sample)  "
                    f"cpu {p['cpu_percent']:.1f} % over {_opt(p.get('cpu_interval_s'), _secs)}  "
                    f"threads {p['threads']}"),
        ("fds", f"{fds['total']} open of {lim['soft']} soft / {lim['hard']} hard  "
                f"({lim['used_pct']:.1f} % used, headroom {lim['headroom']})"),
        ("  by kind", "  ".join(f"{k} {v}" for k, v in fds.items() if k != "total")),
        ("tcp", _pairs(p["tcp_states"])),
        ("unowned", f"{_pairs(p['unowned'])}  (kernel table, no fd: matched by this "
                    "process's listening ports and server-side addresses)"),
        ("listening", "  ".join(p["listening"]) or "none"),
    ]
    r = sample.get("reactor")
    if r is not None:
        rows += _reactor_rows(r, sample.get("rates") or {})
        workers = sample.get("workers")
        if workers is None:  # a sample from before the fleet view
            workers = fleet_view(r)
        rows += [_worker_row(w) for w in workers]
        total = sample.get("total")
        if workers and total:
            rows.append(("  total", f"workers {total['workers_answered']} of "
                                    f"{total['workers']} answered  connections "
                                    f"{total['connections']}  accepted {total['accepted']}  "
                                    f"closed {total['closed_total']}  "
                                    f"in {_size(total['bytes_in'])}  "
                                    f"out {_size(total['bytes_out'])}  rss "
                                    f"{_size(total['rss_bytes'])} (supervisor + workers)"))
    else:
        rows.append(("reactor", "no stats socket (not a reactor process, or not advertised: "
                                "pass --stats-socket PATH)"))
    width = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(width)}  {v}" for k, v in rows]
    if lim["warning"]:
        out.append(f"WARNING: {lim['used_pct']:.1f} % of RLIMIT_NOFILE in use "
                   f"({lim['used']} of {lim['soft']}); raise the limit or lower --max-conns")
    return "\n".join(out)


def _worker_row(w: dict[str, Any]) -> tuple[str, str]:
    """One worker of a fleet: its load, how its connections ended, its loop, pool and RSS."""
    if "error" in w:
        return (f"  worker {w['index']}", f"pid {w['pid']}: {w['error']}")
    closed = ", ".join(f"{k} {v}" for k, v in w["closed"].items())
    return (f"  worker {w['index']}",
            f"pid {w['pid']}  connections {w['connections']}  accepted {w['accepted']}  "
            f"closed {w['closed_total']}{f' ({closed})' if closed else ''}  "
            f"in {_size(w['bytes_in'])}  out {_size(w['bytes_out'])}  "
            f"lag p99 {_opt(w['lag_p99_s'], lambda v: f'{v * 1000:.1f} ms')}  "
            f"pool {_opt(w['pool_in_use'])} in use of {_opt(w['pool_capacity'])}  "
            f"refused {_opt(w['pool_refused'])}  paused {_opt(w['paused_reading'])}  "
            f"rss {_opt_size(w['rss_bytes'])}")


def _limit(r: dict[str, Any], key: str, unit: str = "") -> str:
    """A listener limit as set on every listener ("off" for 0), several values joined by /."""
    values = sorted({lst.get(key, 0) for lst in r.get("listeners", [])})
    return "/".join((f"{v}" if isinstance(v, int) else f"{v:g}") + unit if v else "off"
                    for v in values) or "off"


def _reactor_rows(r: dict[str, Any], rates: dict[str, float]) -> list[tuple[str, str]]:
    tm, lag = r.get("timers", {}), r.get("lag", {})
    rows = [
        ("reactor", f"{r.get('role', 'worker')}  {r.get('selector', '')}  "
                    f"up {_dur(r.get('uptime_s', 0))}  connections {r.get('connections', 0)}  "
                    f"accepted {r.get('accepted', 0)}  closed {r.get('closed_total', 0)}"),
        ("  rates", f"accepts/s {rates.get('accepts_per_s', 0):g}  "
                    f"closes/s {rates.get('closes_per_s', 0):g}  "
                    f"in {_size(rates.get('bytes_in_per_s', 0))}/s  "
                    f"out {_size(rates.get('bytes_out_per_s', 0))}/s  "
                    f"events/s {rates.get('events_per_s', 0):g}  "
                    f"iterations/s {rates.get('iterations_per_s', 0):g}"),
        ("  closed", _pairs(r.get("closed", {}))),
        _pool_row(pool_view(r), rates),
        _paused_row(r),
        _memory_row(r),
        ("  limits", f"per ip {_limit(r, 'max_conns_per_ip')}  "
                     f"per_ip_rejections {r.get('per_ip_rejections', 0)}  "
                     f"accept rate {_limit(r, 'accept_rate', '/s')}  "
                     f"accept_pauses {r.get('accept_pauses', 0)}"),
        ("  peers", f"line timeout {_limit(r, 'line_timeout_s', ' s')}  "
                     f"line_timeouts {r.get('line_timeouts', 0)}  "
                     f"max send buffer {_limit(r, 'max_send_buffer', ' B')}  "
                     f"write timeout {_limit(r, 'write_timeout_s', ' s')}  "
                     f"slow_consumer_closes {r.get('slow_consumer_closes', 0)}"),
        ("  buffers", f"rx {_size(r.get('rx_bytes', 0))}  tx {_size(r.get('tx_bytes', 0))}  "
                      f"broadcast skipped {r.get('broadcast_skipped', 0)}"),
        ("  timers", f"{tm.get('entries', 0)} entries  expired {tm.get('expired', 0)}  "
                     f"lag p50 {lag.get('p50_s', 0) * 1000:.1f} ms  "
                     f"p99 {lag.get('p99_s', 0) * 1000:.1f} ms"),
        ("  bytes", f"in {_size(r.get('bytes_in', 0))}  out {_size(r.get('bytes_out', 0))}  "
                    f"iterations {r.get('iterations', 0)}  events {r.get('events', 0)}"),
    ]
    top = r.get("top", [])
    if top:
        rows.append(("  top", f"{'peer':<24}{'rx':>10}{'tx':>10}{'age':>8}{'idle':>8}"))
        for c in top:
            rows.append(("", f"{c.get('peer', '?'):<24}{_size(c.get('rx_bytes', 0)):>10}"
                             f"{_size(c.get('tx_bytes', 0)):>10}{_dur(c.get('age_s', 0)):>8}"
                             f"{c.get('idle_s', 0):>7.1f}s"))
    return rows


def _pool_row(p: dict[str, Any], rates: dict[str, Any]) -> tuple[str, str]:
    """Chunks mapped now / the cap, what is lent, how the pool moved, and refused acquires."""
    return ("  pool", f"capacity {_opt(p['chunks_capacity'])} / {_opt(p['chunks_max'])} chunks "
                      f"of {_opt(p['chunk_size'])} B ({_opt_size(p['capacity_bytes'])} / "
                      f"{_opt_size(p['max_bytes'])})  in use {_opt(p['chunks_in_use'])}  "
                      f"free {_opt(p['chunks_free'])}  high water {_opt(p['high_water'])}  "
                      f"grows {_opt(p['grows'])}  shrinks {_opt(p['shrinks'])}  "
                      f"refused {_opt(p['refused'])}  "
                      f"refused/s {_opt_rate(rates.get('pool_refused_per_s'))}  "
                      f"overflow {_opt(p['overflow_in_use'])} ({_opt(p['overflow_total'])} total)")


def _paused_row(r: dict[str, Any]) -> tuple[str, str]:
    """Open connections paused reading, by cause (one can have several), and in all."""
    paused = r.get("paused")
    paused = paused if isinstance(paused, dict) else {}
    causes = "  ".join(f"{c} {_opt(paused.get(c))}" for c in PAUSE_CAUSES)
    return ("  paused", f"{causes}  (reading paused {_opt(r.get('paused_reading'))} "
                        f"of {_opt(r.get('connections'))} connections)")


def _memory_row(r: dict[str, Any]) -> tuple[str, str]:
    """The fair share of buffer memory per connection now, and the stated bounds."""
    m = r.get("memory_bound")
    m = m if isinstance(m, dict) else {}
    return ("  memory", f"share {_opt_size(m.get('share_bytes'))} per connection now  "
                        f"bound {_opt_size(m.get('per_connection_bytes'))} per connection, "
                        f"{_opt_size(m.get('total_bytes'))} total")
