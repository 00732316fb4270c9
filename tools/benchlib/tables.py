"""The printed report: cells, medians, one table per workload, the targets."""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any, Callable, Iterable

from .base import (BATCH_PEER, FLOOD_PEERS, LOAD_BOUND_PCT, PY_ET_PEER, RATIO_PEERS, TARGET_PEER,
                   TLS_PEERS)

def si(x: float | None) -> str:
    if x is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {suffix}"
    return f"{x:.0f}"


def ms(us: float | None) -> str:
    if us is None or us < 0:
        return "-"
    if us >= 1000:
        return f"{us / 1000:.1f} ms"
    return f"{us:.0f} µs"


def pct(x: float | None) -> str:
    return "-" if x is None or x < 0 else f"{x:.0f}%"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}×"


RATIO_HEADS = [f"÷{peer}" for peer in RATIO_PEERS]


def ratios(value: float | None, peers: list[float | None]) -> list[str]:
    """The row's ÷ cells, one per RATIO_PEERS entry (``peers`` from ``Results.peer_meds``)."""
    return [ratio(value, theirs) for theirs in peers]


def counted(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs a median is taken over: the verified ones if any, else all that measured."""
    ok = [r for r in recs if r.get("verified") and "error" not in r]
    return ok or [r for r in recs if "error" not in r]


def median_of(recs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in counted(recs) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def values_of(recs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in counted(recs) if r.get(key) is not None]


def extreme(recs: list[dict[str, Any]], key: str, pick: Callable[..., float]) -> float | None:
    """min or max of ``key`` over the runs a median is taken over."""
    vals = values_of(recs, key)
    return pick(vals) if vals else None


def kernel_of(recs: list[dict[str, Any]], key: str) -> float | None:
    """Median over the runs of one kernel counter's growth during the run."""
    vals = [r["kernel"][key] for r in counted(recs) if key in r.get("kernel", {})]
    return statistics.median(vals) if vals else None


def count(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def opened_cell(recs: list[dict[str, Any]]) -> str:
    """Connections initiated of requested: one figure if every run agrees, else the range."""
    got = sorted({r["initiated"] for r in recs if "initiated" in r})
    if not got:
        return "-"
    want = recs[0]["requested"]
    return f"{got[0]}/{want}" if len(got) == 1 else f"{got[0]}–{got[-1]}/{want}"


def render(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (it reads as plain text too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def fmt(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])


def one_line(note: str, limit: int = 120) -> str:
    """A note fit for a table cell: whitespace runs (newlines too) as one space, and cut."""
    flat = " ".join(note.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def check_cell(recs: list[dict[str, Any]]) -> str:
    """'ok', or what failed in how many runs (figures then come from the runs that passed)."""
    if not recs:
        return "-"
    failed = [r for r in recs if not r.get("verified") or "error" in r]
    kinds: dict[str, list[str]] = {}
    for r in failed:
        for n in map(one_line, r.get("notes", [])):
            count, _, what = n.partition(" ")
            got, _, total = count.partition("/")
            if got.isdigit() and total.isdigit():  # "6413/10000 never served"
                kinds.setdefault(f"{what}|{total}", []).append(got)
            else:
                kinds.setdefault(n, [])
    parts = [f"{what.split('|')[0]} {'/'.join(c)} of {what.split('|')[1]}" if c else what
             for what, c in kinds.items()]
    if failed:
        how = f"{len(failed)}/{len(recs)} runs failed" if len(recs) > 1 else "FAILED"
        used = "" if len(failed) == len(recs) else ", figures from the others"
        cell = f"{how}{used}: " + "; ".join(parts)
    else:
        cell = "ok"
    noisy = [r for r in recs if r.get("warnings")]
    if noisy:
        cell += f" ({len(noisy)}/{len(recs)} noisy)"
    return cell


def gen_cell(recs: list[dict[str, Any]]) -> str:
    g = median_of(recs, "gen_busy_pct")
    if g is None:
        return "-"
    return f"{g:.0f}%" + (" LOAD-BOUND" if g >= LOAD_BOUND_PCT else "")


class Results:
    """Records grouped by (workload, config, server), with medians."""

    def __init__(self, records: list[dict[str, Any]], servers: list[str]) -> None:
        self.servers = servers
        self.groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.configs: dict[str, list[str]] = {}
        for rec in records:
            if rec.get("kind") != "measurement":
                continue
            key = (rec["workload"], rec["config"], rec["server"])
            self.groups.setdefault(key, []).append(rec)
            cfgs = self.configs.setdefault(rec["workload"], [])
            if rec["config"] not in cfgs:
                cfgs.append(rec["config"])

    def get(self, workload: str, config: str, server: str) -> list[dict[str, Any]]:
        return self.groups.get((workload, config, server), [])

    def med(self, workload: str, config: str, server: str, key: str) -> float | None:
        return median_of(self.get(workload, config, server), key)

    def peer_meds(self, workload: str, config: str, key: str,
                  peers: Iterable[str] = RATIO_PEERS) -> list[float | None]:
        """The medians of ``key`` of each of ``peers``, in order: a row's ÷ cells."""
        return [self.med(workload, config, peer, key) for peer in peers]


def tables(res: Results, repeat: int) -> str:
    out: list[str] = []
    srv = res.servers
    rep = f"median of {repeat}" if repeat > 1 else "1 run"
    if "firehose" in res.configs:
        rows = []
        for cfg in res.configs["firehose"]:
            peers = res.peer_meds("firehose", cfg, "lines_per_s")
            for s in srv:
                recs = res.get("firehose", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "lines_per_s")
                rss = median_of(recs, "server_hwm_kb")
                cpu = median_of(recs, "server_cpu_pct")
                rows.append([cfg, s, si(v), *ratios(v, peers), pct(cpu),
                             f"{rss / 1024:.1f} MiB" if rss else "-", gen_cell(recs),
                             check_cell(recs)])
        out.append(f"### Firehose: lines/s echoed back ({rep})\n\n" + render(
            ["conns", "server", "lines/s", *RATIO_HEADS, "server CPU", "peak RSS", "gen busy",
             "check"], rows))
    if "closed" in res.configs:
        rows = []
        for cfg in res.configs["closed"]:
            peers = res.peer_meds("closed", cfg, "lines_per_s")
            tp = res.med("closed", cfg, TARGET_PEER, "lat_p99_us")
            bp = res.med("closed", cfg, BATCH_PEER, "lat_p99_us")
            for s in srv:
                recs = res.get("closed", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "lines_per_s")
                p99 = median_of(recs, "lat_p99_us")
                rows.append([cfg.replace("x", "×"), s, si(v), *ratios(v, peers),
                             ms(median_of(recs, "lat_p50_us")), ms(p99),
                             ms(median_of(recs, "lat_p999_us")), ratio(p99, tp), ratio(p99, bp),
                             pct(median_of(recs, "server_cpu_pct")), gen_cell(recs),
                             check_cell(recs)])
        out.append(f"### Closed loop: conns × lines in flight ({rep})\n\n" + render(
            ["conns×depth", "server", "lines/s", *RATIO_HEADS, "p50", "p99", "p99.9",
             f"p99 ÷{TARGET_PEER}", f"p99 ÷{BATCH_PEER}", "server CPU", "gen busy", "check"],
            rows))
    if "idle" in res.configs:
        rows = []
        for cfg in res.configs["idle"]:
            peers = res.peer_meds("idle", cfg, "bytes_per_conn_silent")
            for s in srv:
                recs = res.get("idle", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "bytes_per_conn_silent")
                e = median_of(recs, "bytes_per_conn_echoed")
                held = median_of(recs, "held_silent")
                rows.append([cfg, s, f"{held:.0f}" if held is not None else "-",
                             f"{v:.0f} B" if v is not None else "-",
                             f"{e:.0f} B" if e is not None else "-", *ratios(v, peers),
                             check_cell(recs)])
        out.append(f"### Idle memory: server RSS per held connection ({rep})\n\n" + render(
            ["conns", "server", "fds held", "B/conn silent", "B/conn after 1 line",
             *(f"silent {h}" for h in RATIO_HEADS), "check"], rows))
    if "accept" in res.configs:
        rows = []
        for cfg in res.configs["accept"]:
            peers = res.peer_meds("accept", cfg, "lines_per_s")
            for s in srv:
                recs = res.get("accept", cfg, s)
                if not recs:
                    continue
                served = median_of(recs, "probes_served")
                extra = median_of(recs, "extra")
                share = median_of(recs, "served_pct")
                last = median_of(recs, "last_served_s")
                v = median_of(recs, "lines_per_s")
                rows.append([cfg, s, f"{served:.0f}/{extra:.0f}" if served is not None else "-",
                             f"{share:.1f} %" if share is not None else "-",
                             f"{last:.2f} s" if last is not None and last >= 0 else "-",
                             si(v), *ratios(v, peers), gen_cell(recs), check_cell(recs)])
        out.append(f"### Accept under load: firehose + new connections at a steady rate "
                   f"({rep})\n\n" + render(
                       ["firehose+new", "server", "served in window", "served", "last served at",
                        "firehose lines/s", *RATIO_HEADS, "gen busy", "check"], rows))
    if "timers" in res.configs:
        rows = []
        for cfg in res.configs["timers"]:
            a = res.med("timers", cfg, "asyncio", "ns_per_rearm")
            for s in ("line-echo", "asyncio"):
                recs = res.get("timers", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "ns_per_rearm")
                live = median_of(recs, "live_entries")
                rows.append([cfg, recs[0]["impl"], f"{v:.0f} ns" if v is not None else "-",
                             ratio(a, v) if s != "asyncio" else "1.00×",
                             f"{live:.0f}" if live is not None else "-", check_cell(recs)])
        out.append(f"### Idle-timer re-arm with N live timers ({rep})\n\n" + render(
            ["timers", "implementation", "per re-arm", "faster than asyncio",
             "live entries after", "check"], rows))
    out += flood_tables(res, rep)
    out += tls_tables(res, rep)
    return "\n\n".join(out)


FLOOD_HEADS = [f"÷{peer}" for peer in FLOOD_PEERS]


def flood_tables(res: Results, rep: str) -> list[str]:
    """The flood (throughput, then starvation and stalls), tcpkali and open-loop tables."""
    out: list[str] = []
    srv = res.servers

    if "flood" in res.configs:
        rows, starve = [], []
        for cfg in res.configs["flood"]:
            peers = res.peer_meds("flood", cfg, "lines_per_s", FLOOD_PEERS)
            py = res.med("flood", cfg, PY_ET_PEER, "lines_per_s")
            for s in srv:
                recs = res.get("flood", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "lines_per_s")
                lo, hi = extreme(recs, "lines_per_s", min), extreme(recs, "lines_per_s", max)
                ns = median_of(recs, "server_cpu_ns_per_line")
                rows.append([cfg, s, si(v), si(lo), si(hi), *(ratio(v, p) for p in peers),
                             ratio(lo, py), ratio(hi, py), opened_cell(recs),
                             secs(median_of(recs, "server_cpu_s")),
                             f"{ns:.1f} ns" if ns is not None else "-", gen_cell(recs),
                             check_cell(recs)])
                pauses = [extreme(recs, f"paused_{k}_max", max)
                          for k in ("user", "backpressure", "starved")]
                starve.append([
                    cfg, s, f"{count(median_of(recs, 'silent_in_window'))} "
                    f"(max {count(extreme(recs, 'silent_in_window', max))})",
                    count(median_of(recs, "conn_lines_min")),
                    count(median_of(recs, "conn_lines_med")),
                    secs(extreme(recs, "conn_gap_max_s", max)),
                    secs(extreme(recs, "gap_max_s", max)),
                    f"{count(kernel_of(recs, 'TCPRcvQDrop'))} / "
                    f"{count(kernel_of(recs, 'TCPTimeouts'))}",
                    count(extreme(recs, "paused_reading_max", max)),
                    "/".join(count(p) for p in pauses),
                    count(extreme(recs, "pool_refused_delta", max)),
                    count(extreme(recs, "chunks_exhausted_delta", max)),
                    count(extreme(recs, "slow_consumer_delta", max)),
                    secs(extreme(recs, "zero_out_max_s", max))])
        out.append(f"### Flood: no window, lines/s echoed back ({rep}; min and max of the "
                   "runs)\n\n" + render(
                       ["conns", "server", "lines/s", "min", "max", *FLOOD_HEADS,
                        f"min ÷{PY_ET_PEER}", f"max ÷{PY_ET_PEER}", "opened", "server CPU",
                        "CPU/line", "gen busy", "check"], rows))
        out.append("### Flood: starvation and stalls (medians; \"max\" columns: the worst "
                   "run)\n\n" + render(
                       ["conns", "server", "silent conns", "lines/conn min", "lines/conn med",
                        "max conn gap", "max gap, all", "kernel rcvq drops / RTOs",
                        "paused_reading max", "paused u/bp/starved max", "pool refused",
                        "chunks exhausted", "slow-consumer closes", "max zero-out stretch"],
                       starve))
    if "tcpkali" in res.configs:
        rows = []
        for cfg in res.configs["tcpkali"]:
            peers = res.peer_meds("tcpkali", cfg, "lines_per_s", FLOOD_PEERS)
            for s in srv:
                recs = res.get("tcpkali", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "lines_per_s")
                rows.append([cfg, s, si(v), *(ratio(v, p) for p in peers),
                             ratio(res.med("flood", cfg, s, "lines_per_s"), v),
                             pct(median_of(recs, "server_cpu_pct")), gen_cell(recs),
                             check_cell(recs)])
        out.append(f"### tcpkali cross-check: the flood from the standard generator ({rep}; "
                   "bytes not checked)\n\n" + render(
                       ["conns", "server", "lines/s", *FLOOD_HEADS, "our flood ÷ tcpkali",
                        "server CPU", "tcpkali CPU", "check"], rows))
    if "open" in res.configs:
        rows = []
        for cfg in res.configs["open"]:
            peers = res.peer_meds("open", cfg, "server_cpu_s_per_mline", FLOOD_PEERS)
            for s in srv:
                recs = res.get("open", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "server_cpu_s_per_mline")
                rows.append([cfg.replace("x", " × ") + "/s", s,
                             si(median_of(recs, "offered_per_s")),
                             si(median_of(recs, "lines_per_s")),
                             count(extreme(recs, "unanswered", max)),
                             secs(median_of(recs, "server_cpu_s")),
                             f"{v:.2f} s" if v is not None else "-",
                             *(ratio(v, p) for p in peers),
                             ms(median_of(recs, "lat_p50_us")), ms(median_of(recs, "lat_p99_us")),
                             ms(median_of(recs, "lat_p999_us")), opened_cell(recs),
                             check_cell(recs)])
        out.append(f"### Open loop: fixed offered load, server CPU per line ({rep})\n\n" + render(
            ["conns × lines/s", "server", "offered/s", "echoed/s", "unanswered", "server CPU",
             "CPU s / M lines", *FLOOD_HEADS, "p50", "p99", "p99.9", "opened", "check"], rows))
    return out


TLS_HEADS = [f"÷{peer}" for peer in TLS_PEERS]


def tls_what(res: Results, workload: str) -> str:
    """The protocol and cipher the generator negotiated, as the records say."""
    seen = sorted({f"{r.get('tls_version')}, {r.get('cipher')}" for (w, _, _), recs
                   in res.groups.items() if w == workload for r in recs if r.get("cipher")})
    return "; ".join(seen) or "no handshake"


def tls_tables(res: Results, rep: str) -> list[str]:
    """The TLS firehose and the TLS handshake loop (benchlib/tls.py)."""
    out: list[str] = []
    srv = res.servers

    if "tls" in res.configs:
        rows = []
        for cfg in res.configs["tls"]:
            peers = res.peer_meds("tls", cfg, "lines_per_s", TLS_PEERS)
            for s in srv:
                recs = res.get("tls", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "lines_per_s")
                ns = median_of(recs, "server_cpu_ns_per_line")
                gns = median_of(recs, "gen_cpu_ns_per_line")
                mb = median_of(recs, "plain_mb_per_s")
                rss = median_of(recs, "server_hwm_kb")
                rows.append([cfg, s, si(v), si(extreme(recs, "lines_per_s", min)),
                             si(extreme(recs, "lines_per_s", max)),
                             *(ratio(v, p) for p in peers),
                             f"{mb:.0f} MB/s" if mb is not None else "-",
                             pct(median_of(recs, "server_cpu_pct")),
                             f"{ns:.1f} ns" if ns is not None else "-",
                             f"{gns:.1f} ns" if gns is not None else "-",
                             f"{rss / 1024:.1f} MiB" if rss else "-",
                             secs(extreme(recs, "connect_s", max)), opened_cell(recs),
                             gen_cell(recs), check_cell(recs)])
        out.append(f"### TLS firehose: lines/s echoed back inside TLS ({rep}; min and max of "
                   f"the runs; {tls_what(res, 'tls')})\n\n" + render(
                       ["conns", "server", "lines/s", "min", "max", *TLS_HEADS,
                        "plaintext each way", "server CPU", "CPU/line", "gen CPU/line", "peak RSS",
                        "all handshaken in", "opened", "gen busy", "check"], rows))
    if "handshake" in res.configs:
        rows = []
        for cfg in res.configs["handshake"]:
            peers = res.peer_meds("handshake", cfg, "handshakes_per_s", TLS_PEERS)
            cpu_peers = res.peer_meds("handshake", cfg, "server_cpu_us_per_handshake", TLS_PEERS)
            for s in srv:
                recs = res.get("handshake", cfg, s)
                if not recs:
                    continue
                v = median_of(recs, "handshakes_per_s")
                us = median_of(recs, "server_cpu_us_per_handshake")
                gus = median_of(recs, "gen_cpu_us_per_handshake")
                failed = extreme(recs, "failed", max)
                clients, _, rate = cfg.partition("x")
                rows.append([clients, "unpaced" if rate in ("", "0") else f"{int(rate):,}/s", s,
                             si(v), *(ratio(v, p) for p in peers),
                             pct(median_of(recs, "server_cpu_pct")),
                             f"{us:.0f} µs" if us is not None else "-",
                             *(ratio(us, p) for p in cpu_peers),
                             f"{gus:.0f} µs" if gus is not None else "-",
                             ms(median_of(recs, "hs_p50_us")), ms(median_of(recs, "hs_p99_us")),
                             ms(median_of(recs, "cycle_p99_us")),
                             count(median_of(recs, "initiated")), count(failed),
                             gen_cell(recs), check_cell(recs)])
        out.append(f"### TLS handshakes: connect, full handshake, one line echoed, RST ({rep}; "
                   f"{tls_what(res, 'handshake')})\n\n" + render(
                       ["clients", "offered", "server", "handshakes/s", *TLS_HEADS, "server CPU",
                        "server CPU/handshake", *(f"CPU/hs {h}" for h in TLS_HEADS),
                        "gen CPU/handshake", "handshake p50", "handshake p99", "cycle p99",
                        "initiated", "failed (worst run)", "gen busy", "check"], rows))
    return out


def verdict(value: float, goal: float, higher: bool) -> str:
    """'met', or 'NOT met' and by how much."""
    if value >= goal if higher else value <= goal:
        return "met"
    if higher:
        return f"NOT met: {1 - value / goal:.0%} short" if goal else "NOT met"
    return f"NOT met: {value / goal - 1:.1%} over the limit"


def targets(res: Results) -> str:
    """The issue's targets, each met or not, by how much.

    A goal stated against asyncio is judged against TARGET_PEER (the per-line Protocol the
    issue's table calls "asyncio Protocol"); the last column applies the same goal to
    BATCH_PEER, so that both readings stay in view, and gives the idle ratios as context.
    """
    rows: list[list[str]] = []

    def add(what: str, value: float | None, goal: float, higher: bool, unit: str = "×",
            why: str = "", beside: str = "-") -> None:
        if value is None:
            rows.append([what, "not measured in this run", "-", beside])
            return
        shown = f"{value:.3f}{unit}" if unit == "×" else f"{value:.0f}{unit}"
        rows.append([what, shown + (f" ({why})" if why else ""), verdict(value, goal, higher),
                     beside])

    def r(workload: str, cfg: str, key: str, other: str, inverse: bool = False) -> float | None:
        mine = res.med(workload, cfg, "line-echo", key)
        theirs = res.med(workload, cfg, other, key)
        if mine is None or theirs is None or (theirs == 0 and not inverse) or (inverse and mine == 0):
            return None
        return theirs / mine if inverse else mine / theirs

    def add_vs_asyncio(what: str, workload: str, cfg: str, key: str, goal: float,
                       higher: bool) -> None:
        batched = r(workload, cfg, key, BATCH_PEER)
        beside = "-" if batched is None else f"{batched:.3f}× ({verdict(batched, goal, higher)})"
        add(what, r(workload, cfg, key, TARGET_PEER), goal, higher, beside=beside)

    for n in ("1000", "10000"):
        add_vs_asyncio(f"firehose {n} conns ≥ 4× {TARGET_PEER}", "firehose", n, "lines_per_s",
                       4, True)
        add(f"firehose {n} conns ≥ C echo", r("firehose", n, "lines_per_s", "c-echo"), 1, True)
    add_vs_asyncio(f"closed loop 10000×16 ≥ 1.1× {TARGET_PEER}", "closed", "10000x16",
                   "lines_per_s", 1.1, True)
    add_vs_asyncio(f"closed loop 10000×1 ≥ {TARGET_PEER}", "closed", "10000x1", "lines_per_s",
                   1, True)
    add_vs_asyncio(f"p99 closed loop 10000×1 ≤ 0.8× {TARGET_PEER}", "closed", "10000x1",
                   "lat_p99_us", 0.8, False)
    for cfg in res.configs.get("idle", []):
        for key, after in (("bytes_per_conn_silent", "silent"),
                           ("bytes_per_conn_echoed", "after one line")):
            # An absolute goal: the peers' ratios are context, not part of the verdict.
            vs = r("idle", cfg, key, TARGET_PEER)
            batched = r("idle", cfg, key, BATCH_PEER)
            # 300 B: issue 10's goal (it was 400 B in issue 5's table).
            add(f"idle bytes/conn {after} ≤ 300 B ({cfg} conns)",
                res.med("idle", cfg, "line-echo", key), 300, False, " B",
                why="" if vs is None else f"{vs:.2f}× {TARGET_PEER}",
                beside="-" if batched is None else f"{batched:.3f}× (the goal is in bytes)")
    for cfg in res.configs.get("accept", []):
        add(f"accept under load ({cfg}) 100 %",
            res.med("accept", cfg, "line-echo", "served_pct"), 100, True, " %")
    for cfg in res.configs.get("timers", []):
        speed = r("timers", cfg, "ns_per_rearm", "asyncio", inverse=True)
        add(f"timer re-arm ≥ 10× faster than asyncio ({cfg} timers)", speed, 10, True)
        live = res.med("timers", cfg, "line-echo", "live_entries")
        if live is not None:
            rows.append([f"no growth in live timer entries ({cfg} timers)", f"{live:.0f}",
                         "met" if live == int(cfg) else "NOT met", "-"])
    for cfg in res.configs.get("flood", []):
        py = res.med("flood", cfg, PY_ET_PEER, "lines_per_s")
        mine = res.get("flood", cfg, "line-echo")
        add(f"flood {cfg} conns median ≥ 0.9× {PY_ET_PEER}", r("flood", cfg, "lines_per_s",
                                                               PY_ET_PEER), 0.9, True)
        for what, pick in (("slowest", min), ("fastest", max)):
            v = extreme(mine, "lines_per_s", pick)
            add(f"flood {cfg} conns {what} run ≥ 0.7× {PY_ET_PEER} median",
                v / py if v is not None and py else None, 0.7, True)
        if mine:
            exact = sum(1 for x in mine if x.get("opened_exactly"))
            drops = extreme(mine, "dropped", max)
            rows.append([f"flood {cfg} conns: every run opens exactly {cfg} connections, "
                         "all held to the end",
                         f"{exact}/{len(mine)} runs (initiated {opened_cell(mine)}, "
                         f"dropped by the server: {count(drops)} at most)",
                         "met" if exact == len(mine) else "NOT met", "-"])
    for cfg in res.configs.get("open", []):
        add(f"open loop {cfg.replace('x', ' × ')}/s CPU per line ≤ 1.1× {PY_ET_PEER}",
            r("open", cfg, "server_cpu_s_per_mline", PY_ET_PEER), 1.1, False)
    if "tls" in res.configs:  # issue 13: against batched asyncio's TLS, uvloop's as context
        uv = r("tls", "1000", "lines_per_s", "uvloop")
        add("TLS firehose 1000 conns ≥ 2× asyncio TLS", r("tls", "1000", "lines_per_s", "asyncio"),
            2, True, why="" if uv is None else f"{uv:.2f}× uvloop TLS")
    return ("### Targets (line-echo against its peers, from the medians above)\n\n" + render(
        ["target", "measured", "verdict", f"against batched {BATCH_PEER}"], rows)
        + f"\n\nGoals against asyncio are judged against `{TARGET_PEER}`, the per-line Protocol "
        f"the issue's table calls \"asyncio Protocol\"; the last column holds the same goals "
        f"against `{BATCH_PEER}`, which echoes up to the last newline in one write.")


def report(run_rec: dict[str, Any], records: list[dict[str, Any]],
           elapsed: float | None = None) -> str:
    """The whole printed report of one run: where and how it ran, the tables, the targets."""
    info = run_rec["machine"]
    plan = run_rec["plan"]
    took = f", {elapsed:.0f} s" if elapsed is not None else ""
    argv = " ".join(run_rec["argv"])
    head = [
        f"## Benchmark run {run_rec['run']} ({'smoke' if run_rec['smoke'] else 'full'}{took})",
        "",
        f"- command: `tools/bench.py{' ' + argv if argv else ''}`",
        f"- commit: {run_rec['commit']}",
        f"- machine: {info['cpu']}, {info['cpus']} CPUs, Linux {info['kernel']}, "
        f"Python {info['python']}, uvloop {info['uvloop'] or 'absent'}; server pinned to CPU "
        f"{run_rec['server_cpu']}, load generator to CPU {run_rec['load_cpu']}",
    ]
    for name, why in run_rec["skipped"].items():
        head.append(f"- skipped {name}: {why}")
    for note in run_rec.get("notes", []):
        head.append(f"- note: {note}")
    res = Results(records, run_rec["servers"])
    return "\n".join(head) + "\n\n" + tables(res, plan["repeat"]) + "\n\n" + targets(res)


def report_from_file(path: str) -> int:
    """Print the report of the last run recorded in a --json file."""
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    runs = [r for r in recs if r.get("kind") == "run"]
    if not runs:
        print(f"bench: no run recorded in {path}", file=sys.stderr)
        return 1
    last = runs[-1]
    mine = [r for r in recs if r.get("run") == last["run"]]
    ends = [r for r in mine if r.get("kind") == "end"]
    if ends:
        last = {**last, "notes": [*last.get("notes", []), *ends[-1]["notes"]]}
    print(report(last, mine, ends[-1]["seconds"] if ends else None))
    return 0

