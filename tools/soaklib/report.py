"""The soak's result as the text report it prints."""

from __future__ import annotations

from typing import Any

from .common import HOST


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _na(x: Any) -> Any:
    return "n/a" if x is None else x


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1000:.1f} ms"


def report(r: dict[str, Any]) -> str:
    c, b, f, u, d = r["connections"], r["bytes"], r["faults"], r["unexpected"], r["daemon"]
    cfg = r["config"]
    fds, rss, lag = d["fds"], d["rss_bytes"], d["lag_p99_s"]
    back = {True: "back to baseline", False: "NOT back to baseline", None: "n/a"}
    if not lag["samples"]:
        lag_line = "n/a: no stats socket"
    elif d["timers_fired_during_traffic"] == 0:
        lag_line = ("n/a: no timer fired during the traffic, so the stats document's lag has "
                    "no samples (start line-echo with --heartbeat)")
    else:
        lag_line = (f"max {_ms(lag['max'])}  median {_ms(lag['median'])}  end of traffic "
                    f"{_ms(lag['end_of_traffic'])}  ({lag['samples']} samples, 1/s, each over "
                    f"the last 1,024 timer fires; {_na(d['timers_fired_during_traffic'])} fired)")
    lines = [
        f"soak {r['date']}: line-echo {HOST}:{cfg['port']} ("
        f"{'started here' if cfg['own_daemon'] else 'already running'}, pids "
        f"{d['pids'] or 'unknown'}), {cfg['conns']} connections from {cfg['procs']} client "
        f"processes, {r['traffic_s']:g} s of traffic, seed {cfg['seed']}",
        f"connections held    target {c['target']}  clients min {_na(c['held_min'])} avg "
        f"{_na(c['held_avg'])}  daemon min {_na(c['daemon_min'])} avg {_na(c['daemon_avg'])}  "
        f"({c['samples']} samples, 1/s)",
        f"connections opened  {c['opened_total']} in total  connect failures "
        f"{c['connect_failed']} {c['connect_errors'] or ''}".rstrip(),
        f"bytes sent          {b['sent']} ({_size(b['sent'])}): verified + lost + "
        f"{b['discarded_by_rst']} discarded by RSTs + {b['abandoned_after_mismatch']} abandoned "
        f"after mismatches {'= sent' if b['accounted'] else '!= sent (a soak bug)'}",
        f"bytes verified      {b['verified']} ({_size(b['verified'])}) echoed and checked, "
        f"{_size(b['verified'] / max(r['traffic_s'], 0.1))}/s",
        f"faults injected     rst {f['rst']}  half_close {f['half_close']} (with a trailing "
        f"partial line {f['half_close_partial']})  reconnect {f['reconnect']}",
        f"lost bytes          {b['lost']}",
        f"corrupted bytes     {b['corrupted']}",
        f"unexpected          server closes {u['server_closed']}  server resets "
        f"{u['server_reset']}  mismatches {u['mismatches']}  ERR lines {u['err_lines']}  "
        f"drain timeouts {u['drain_timeouts']}  (heartbeats received {r['pings']})",
        f"daemon fds          baseline {_na(fds['baseline'])}  start {_na(fds['start'])}  "
        f"end {_na(fds['end'])} "
        f"({back[d['fd_back_to_baseline']]})",
        f"daemon rss          baseline {_size(rss['baseline'])}  start {_size(rss['start'])}  "
        f"max during traffic {_size(rss['max_during_traffic'])}  end {_size(rss['end'])}",
        f"loop lag p99        {lag_line}",
    ]
    if d["closed_by_reason"]:
        lines.append("daemon closes       " + "  ".join(
            f"{k} {v}" for k, v in sorted(d["closed_by_reason"].items())))
    if d["pool"]:
        p = d["pool"]
        lines.append(f"daemon pool         high water {p['high_water']} of {p['chunks_total']} "
                     f"chunks  exhausted {p['exhausted_total']}  overflow {p['overflow_total']}  "
                     f"in use at end {p['chunks_in_use']}")
    for w in d["warnings"]:
        lines.append(f"daemon log          {w[:160]}")
    for s in r["mismatch_samples"]:
        lines.append(f"mismatch            conn {s['conn']} at byte {s['offset']}: expected "
                     f"{s['expected'][:32]}... got {s['got_text'][:40]!r}")
    lines.append("verdict             " + ("PASS" if r["passed"] else
                                           "FAIL: " + "; ".join(r["failures"])))
    return "\n".join(lines)
