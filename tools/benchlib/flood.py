"""The unwindowed workloads: the no-window flood, the open loop, the tcpkali cross-check.

The flood (``load.c --mode flood``) writes as fast as the kernel takes bytes on every
connection and reads whatever comes back, so a server's buffering, pausing and fairness
are what limit it; the open loop (``--mode open``) offers a fixed load (N connections ×
R lines/s) and measures what that costs the server in CPU per line. While line-echo is
flooded its stats socket is sampled every ``plan.stats_interval`` seconds: pauses,
refused pool acquires, and the longest stretch with zero bytes out (a stall detector).
The kernel's TCP counters (system-wide, but only our loopback traffic moves them) are
read around each run: a no-window flood at thousands of connections drives this
kernel into TCP memory pressure, where it drops segments and waits for retransmission
timeouts whatever the server does.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from childproc import cpu_seconds as read_cpu_s

from .base import ROOT, Env, HarnessError, Plan, Server, _child_setup, stream_checks

LINE_LEN = 5  # "ping\n"
# /proc/net/netstat and /proc/net/snmp counters recorded as deltas over each run
KERNEL_COUNTERS = ("TCPRcvQDrop", "TCPOFODrop", "TCPTimeouts", "TCPMemoryPressures",
                   "RetransSegs", "ListenOverflows", "ListenDrops")


def connect_budget(conns: int, rate: int) -> float:
    """Seconds allowed for connecting: the paced time, and room for SYN retransmissions."""
    return conns / rate + (30.0 if conns > 1000 else 10.0) if rate else 30.0


def kernel_counters() -> dict[str, int]:
    """The KERNEL_COUNTERS now (missing ones left out)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2]):
            for k, v in zip(names.split()[1:], values.split()[1:]):
                if k in KERNEL_COUNTERS and v.lstrip("-").isdigit():
                    out[k] = int(v)
    return out


def kernel_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in KERNEL_COUNTERS if k in before and k in after}


def _stats_reader() -> Any:
    try:
        from reactor.service.stats_socket import StatsError, read_stats
    except ImportError:
        sys.path.insert(0, str(ROOT))
        from reactor.service.stats_socket import StatsError, read_stats
    return read_stats, StatsError


def stats_sample(doc: dict[str, Any]) -> dict[str, Any]:
    """What we keep of one stats document; fields not there yet (they are being added to
    the core: ``paused``, ``pool``) are None and show as '-'."""
    paused = doc.get("paused") or {}
    pool = doc.get("pool") or {}
    return {
        "bytes_out": doc.get("bytes_out"),
        "connections": doc.get("connections"),
        "paused_reading": doc.get("paused_reading"),
        "paused_user": paused.get("user"),
        "paused_backpressure": paused.get("backpressure"),
        "paused_starved": paused.get("starved"),
        "pool_refused": pool.get("refused"),
        "pool_in_use": pool.get("chunks_in_use"),
        "pool_capacity": pool.get("chunks_capacity"),
        "chunks_exhausted": (doc.get("chunks") or {}).get("exhausted_total"),
        "slow_consumer": (doc.get("closed") or {}).get("slow_consumer"),
    }


class StatsSampler:
    """Reads a stats socket every ``interval`` s on a thread until stopped."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path, self.interval = str(path), interval
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._read, self._error = _stats_reader()
        self._thread = threading.Thread(target=self._loop, name="stats-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                doc = self._read(self.path, timeout_s=max(self.interval, 1.0))
                self.samples.append((t, stats_sample(doc)))
            except self._error as exc:
                self.failures.append(f"{t:.2f}: {exc}")
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def summarise_stats(samples: list[tuple[float, dict[str, Any]]], t0: float, t1: float,
                    interval: float, failures: int) -> dict[str, Any]:
    """Over the window [t0, t1] (plus the samples just outside it, for the deltas): the
    highest pause gauges, the counters' growth, and the longest stretch of samples with
    the same ``bytes_out`` (nothing sent for at least that long)."""
    inside = [(t, s) for t, s in samples if t0 - interval <= t <= t1 + interval]
    out: dict[str, Any] = {"stats_samples": len(inside), "stats_failures": failures}

    def peak(key: str) -> int | None:
        vals = [s[key] for _, s in inside if s.get(key) is not None]
        return max(vals) if vals else None

    def grew(key: str) -> int | None:
        vals = [s[key] for _, s in inside if s.get(key) is not None]
        return vals[-1] - vals[0] if len(vals) >= 2 else None

    for key in ("paused_reading", "paused_user", "paused_backpressure", "paused_starved",
                "pool_in_use", "pool_capacity"):
        out[f"{key}_max"] = peak(key)
    for key in ("pool_refused", "chunks_exhausted", "slow_consumer"):
        out[f"{key}_delta"] = grew(key)
    stall = 0.0
    run_start: tuple[float, Any] | None = None
    for t, s in inside:
        b = s.get("bytes_out")
        if run_start is None or b != run_start[1]:
            run_start = (t, b)
        else:
            stall = max(stall, t - run_start[0])
    out["zero_out_max_s"] = round(stall, 3) if len(inside) >= 2 else None
    return out


def flood_checks(out: dict[str, Any], conns: int) -> dict[str, Any]:
    """The windowed workloads' checks, and: every connect() made was one of the N asked
    for (none reopened), every open-loop line was answered."""
    checks = stream_checks(out, conns)
    extra = []
    if out["initiated"] != conns:
        extra.append(f"{out['initiated']}/{conns} connections initiated")
    if out.get("unanswered"):
        extra.append(f"{out['unanswered']} lines unanswered")
    checks["notes"] += extra
    checks["verified"] = not checks["notes"]
    checks["opened_exactly"] = out["initiated"] == conns and out["open"] == conns
    return checks


def _with_cpu_per_line(out: dict[str, Any]) -> dict[str, Any]:
    cpu, lines = out.get("server_cpu_s", -1), out.get("lines", 0)
    return {"server_cpu_ns_per_line": cpu * 1e9 / lines if cpu >= 0 and lines else None,
            "server_cpu_s_per_mline": cpu * 1e6 / lines if cpu >= 0 and lines else None}


def measure_flood(env: Env, server: Server, conns: int, plan: Plan) -> dict[str, Any]:
    ct = connect_budget(conns, plan.connect_rate)
    sampler = (StatsSampler(server.stats_path, plan.stats_interval)
               if server.stats_path is not None else None)
    k0 = kernel_counters()
    try:
        out = env.run_load(["--mode", "flood", "--port", str(server.port), "--conns", str(conns),
                            "--connect-rate", str(plan.connect_rate),
                            "--duration", str(plan.duration), "--warmup", str(plan.warmup),
                            "--connect-timeout", str(ct), "--server-pid", str(server.pid)],
                           timeout=ct + plan.warmup + plan.duration + 30)
    finally:
        if sampler is not None:
            sampler.stop()
    rec = {**out, "config": f"{conns}", "kernel": kernel_delta(k0, kernel_counters()),
           **_with_cpu_per_line(out), **flood_checks(out, conns)}
    if sampler is not None:
        rec.update(summarise_stats(sampler.samples, out["t0_mono"], out["t1_mono"],
                                   plan.stats_interval, len(sampler.failures)))
        if sampler.failures:
            rec["stats_failure_first"] = sampler.failures[0]
            rec["warnings"].append(f"{len(sampler.failures)} stats reads failed: "
                                   f"{sampler.failures[0]}")
    return rec


def measure_open(env: Env, server: Server, conns: int, rate: int, plan: Plan) -> dict[str, Any]:
    """N connections × ``rate`` lines/s each; no stats sampling (it costs the server CPU)."""
    ct = connect_budget(conns, plan.connect_rate)
    k0 = kernel_counters()
    drain = 5.0
    out = env.run_load(["--mode", "open", "--port", str(server.port), "--conns", str(conns),
                        "--period-ms", f"{1000.0 / rate:.6f}", "--drain-seconds", str(drain),
                        "--connect-rate", str(plan.connect_rate),
                        "--duration", str(plan.open_duration), "--warmup", str(plan.warmup),
                        "--connect-timeout", str(ct), "--server-pid", str(server.pid)],
                       timeout=ct + plan.warmup + plan.open_duration + drain + 30)
    rec = {**out, "config": f"{conns}x{rate}", "rate_per_conn": rate,
           "kernel": kernel_delta(k0, kernel_counters()), **_with_cpu_per_line(out),
           **flood_checks(out, conns)}
    if out["lines"] < 0.9 * out["due_in_window"]:
        rec["warnings"].append(f"fell behind: {out['lines']}/{out['due_in_window']} due lines "
                               "echoed in the window")
    return rec


_RECEIVED = re.compile(r"Total data received:.*\((\d+) bytes\)")
_DURATION = re.compile(r"Test duration:\s*([\d.]+)\s*s")
_RAMPED = re.compile(r"Ramped up to (\d+) connections")


def parse_tcpkali(text: str) -> dict[str, Any]:
    """Bytes received, test duration and connections from tcpkali's summary."""
    got, took, ramped = _RECEIVED.search(text), _DURATION.search(text), _RAMPED.search(text)
    if not got or not took:
        raise HarnessError(f"tcpkali printed no summary: {text[-300:]!r}")
    received, seconds = int(got.group(1)), float(took.group(1))
    return {"bytes_received": received, "tcpkali_seconds": seconds,
            "ramped_up": int(ramped.group(1)) if ramped else None,
            "lines_per_s": received / LINE_LEN / seconds if seconds > 0 else 0.0}


def measure_tcpkali(env: Env, server: Server, conns: int, plan: Plan) -> dict[str, Any]:
    """The standard generator on the flood's sizes: ``-e`` before ``-m`` (this build
    unescapes only the message arguments after it), pinned to the generator's CPU. It
    checks no bytes: a cross-check of the flood's rate, not a verified measurement."""
    assert env.tcpkali is not None
    seconds = max(1, round(plan.tcpkali_seconds))
    argv = [str(env.tcpkali), "-w", "1", "-c", str(conns), "--connect-rate",
            str(plan.connect_rate), "-e", "-m", "ping\\n", "-T", f"{seconds}s",
            f"127.0.0.1:{server.port}"]
    cpu0, kids0 = read_cpu_s(server.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=connect_budget(conns, plan.connect_rate) + seconds + 30,
                              preexec_fn=_child_setup(env.load_cpu))
    except subprocess.TimeoutExpired:
        raise HarnessError("tcpkali timed out") from None
    wall, cpu = time.monotonic() - t0, read_cpu_s(server.pid) - cpu0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # tcpkali's own CPU, it was waited for
    gen = (kids1.ru_utime - kids0.ru_utime + kids1.ru_stime - kids0.ru_stime) / wall * 100
    text = done.stdout + done.stderr
    if "Could not create" in text:  # its verdict on the server's accepting: a failed row
        return {"config": f"{conns}", "conns": conns, "lines_per_s": None, "verified": False,
                "notes": [f"tcpkali could not open {conns} connections in {seconds} s"],
                "warnings": [], "bytes_ok": True}
    if done.returncode != 0:
        last = (text.strip().splitlines() or [""])[-1]
        raise HarnessError(f"tcpkali exited {done.returncode}: {last[-200:]}")
    parsed = parse_tcpkali(text)
    notes = []
    if parsed["ramped_up"] is not None and parsed["ramped_up"] < conns:
        notes.append(f"{parsed['ramped_up']}/{conns} connections ramped up")
    return {**parsed, "config": f"{conns}", "conns": conns, "server_cpu_s": round(cpu, 3),
            "server_cpu_pct": 100.0 * cpu / wall if wall > 0 else -1.0,
            "gen_busy_pct": round(gen, 1), "verified": not notes, "notes": notes, "warnings": [], "bytes_ok": True}
