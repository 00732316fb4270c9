"""The windowed workloads: firehose, closed loop, idle memory, accept under load, timers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from .flood import measure_flood, measure_open, measure_tcpkali
from .tls import measure_handshake, measure_tls_firehose
from .base import (ROOT, TLS_WORKLOADS, Env, HarnessError, Plan, Server, _child_setup,
                   fd_count, firehose_window, proc_status_kb, read_line, stream_checks)

def _connect_budget(conns: int) -> float:
    return 30.0 if conns > 1000 else 10.0


def measure_firehose(env: Env, server: Server, conns: int, plan: Plan) -> dict[str, Any]:
    window = firehose_window(conns)
    ct = _connect_budget(conns)
    out = env.run_load(["--mode", "firehose", "--port", str(server.port), "--conns", str(conns),
                        "--window", str(window), "--duration", str(plan.duration),
                        "--warmup", str(plan.warmup), "--connect-timeout", str(ct),
                        "--server-pid", str(server.pid)],
                       timeout=ct + plan.warmup + plan.duration + 30)
    return {**out, "config": f"{conns}", **stream_checks(out, conns)}


def measure_closed(env: Env, server: Server, conns: int, depth: int, plan: Plan) -> dict[str, Any]:
    ct = _connect_budget(conns)
    out = env.run_load(["--mode", "closed", "--port", str(server.port), "--conns", str(conns),
                        "--depth", str(depth), "--duration", str(plan.duration),
                        "--warmup", str(plan.warmup), "--connect-timeout", str(ct),
                        "--server-pid", str(server.pid)],
                       timeout=ct + plan.warmup + plan.duration + 30)
    return {**out, "config": f"{conns}x{depth}", **stream_checks(out, conns)}


def measure_idle(env: Env, server: Server, conns: int) -> dict[str, Any]:
    """RSS per held connection, silent and after one echoed line each; fds prove they are held."""
    server.warm()
    time.sleep(0.3)
    pid = server.pid
    rss0, fd0 = proc_status_kb(pid, "VmRSS"), fd_count(pid)
    ct = _connect_budget(conns)
    gen = subprocess.Popen([str(env.load_bin), "--mode", "idle", "--port", str(server.port),
                            "--conns", str(conns), "--connect-timeout", str(ct),
                            "--max-seconds", str(ct * 2 + 60)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=_child_setup(env.load_cpu))
    assert gen.stdin and gen.stdout
    try:
        line = read_line(gen.stdout.fileno(), ct + 15)
        if not line:
            raise HarnessError("idle generator said nothing")
        connected = json.loads(line)
        # The client's connect completes before the server accepts: wait for the fds.
        deadline = time.monotonic() + 15
        while fd_count(pid) < fd0 + connected["open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        rss1, fd1 = proc_status_kb(pid, "VmRSS"), fd_count(pid)
        gen.stdin.write(b"echo\n")
        gen.stdin.flush()
        line = read_line(gen.stdout.fileno(), ct + 15)
        if not line:
            raise HarnessError("idle generator did not answer 'echo'")
        echoed = json.loads(line)
        time.sleep(0.5)
        rss2, fd2 = proc_status_kb(pid, "VmRSS"), fd_count(pid)
        gen.stdin.write(b"quit\n")
        gen.stdin.flush()
        gen.wait(30)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
        for f in (gen.stdin, gen.stdout, gen.stderr):
            if f:
                try:
                    f.close()
                except BrokenPipeError:
                    pass
    notes = []
    if connected["open"] < conns:
        notes.append(f"{conns - connected['open']}/{conns} connects failed")
    if fd1 - fd0 < conns:
        notes.append(f"server held {fd1 - fd0}/{conns} silent")
    if fd2 - fd0 < conns:
        notes.append(f"server held {fd2 - fd0}/{conns} after echo")
    if echoed["echoed"] < conns:
        notes.append(f"{echoed['echoed']}/{conns} echoed")
    if echoed["mismatches"]:
        notes.append(f"BAD BYTES x{echoed['mismatches']}")
    return {
        "config": f"{conns}", "conns": conns, "rss_before_kb": rss0, "rss_silent_kb": rss1,
        "rss_echoed_kb": rss2, "fds_before": fd0, "fds_silent": fd1, "fds_echoed": fd2,
        "held_silent": fd1 - fd0, "held_echoed": fd2 - fd0, "echoed": echoed["echoed"],
        "bytes_per_conn_silent": (rss1 - rss0) * 1024 / conns,
        "bytes_per_conn_echoed": (rss2 - rss0) * 1024 / conns,
        "mismatches": echoed["mismatches"], "verified": not notes, "notes": notes,
        "bytes_ok": not echoed["mismatches"],
    }


def measure_accept(env: Env, server: Server, plan: Plan) -> dict[str, Any]:
    conns, extra = plan.accept_conns, plan.accept_extra
    ct = _connect_budget(conns)
    out = env.run_load(["--mode", "accept", "--port", str(server.port), "--conns", str(conns),
                        "--window", str(firehose_window(conns)), "--extra", str(extra),
                        "--open-seconds", str(plan.accept_open_s),
                        "--serve-window", str(plan.accept_window_s), "--warmup", str(plan.warmup),
                        "--connect-timeout", str(ct), "--server-pid", str(server.pid)],
                       timeout=ct + plan.warmup + plan.accept_window_s + 30)
    checks = stream_checks(out, conns)
    # The probes' count is the measurement, not a check: a busy server that does not accept
    # scores low here, it is not "unverified".
    return {**out, "config": f"{conns}+{extra}", **checks,
            "served_pct": 100.0 * out["probes_served"] / extra if extra else 0.0}


def measure_timers(count: int, rounds: int) -> list[dict[str, Any]]:
    """ns per idle-timer re-arm with ``count`` live timers: reactor TimerWheel vs asyncio."""
    try:
        from reactor import MonotonicClock, TimerWheel
    except ImportError:
        sys.path.insert(0, str(ROOT))
        from reactor import MonotonicClock, TimerWheel

    def cb() -> None:
        pass

    wheel = TimerWheel(MonotonicClock())
    timers = [wheel.call_later(300.0, cb) for _ in range(count)]
    rearm = wheel.rearm
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        for i in range(count):
            rearm(timers[i], 300.0)
    wheel_ns = (time.perf_counter_ns() - t0) / (rounds * count)
    wheel_live = len(wheel)
    wheel_active = sum(t.active for t in timers)

    aio = asyncio.new_event_loop()  # never run: the cost of the calls alone
    try:
        handles = [aio.call_later(300.0, cb) for _ in range(count)]
        call_later = aio.call_later
        t0 = time.perf_counter_ns()
        for _ in range(rounds):
            for i in range(count):
                handles[i].cancel()
                handles[i] = call_later(300.0, cb)
        aio_ns = (time.perf_counter_ns() - t0) / (rounds * count)
        aio_live = len(aio._scheduled)  # type: ignore[attr-defined]
        aio_active = sum(not h.cancelled() for h in handles)
    finally:
        aio.close()
    common = {"config": f"{count}", "timers": count, "rearms": rounds * count}
    wheel_notes = [] if wheel_live == count == wheel_active else [
        f"live {wheel_live}, active {wheel_active}, want {count}"]
    aio_notes = [] if aio_active == count else [f"active {aio_active}, want {count}"]
    return [
        {**common, "server": "line-echo", "impl": "reactor TimerWheel.rearm(t, 300)",
         "ns_per_rearm": wheel_ns, "live_entries": wheel_live, "verified": not wheel_notes,
         "notes": wheel_notes, "bytes_ok": True},
        {**common, "server": "asyncio", "impl": "h.cancel(); loop.call_later(300, cb)",
         "ns_per_rearm": aio_ns, "live_entries": aio_live, "verified": not aio_notes,
         "notes": aio_notes, "bytes_ok": True},
    ]


# -- running ----------------------------------------------------------------------------

def steps(plan: Plan, only: set[str], tcpkali: bool = False,
          tls: bool = False) -> list[tuple[str, tuple[Any, ...]]]:
    """What to measure, in order; ``tls``: the TLS generator is there (else the TLS
    workloads are left out, and the run says why)."""
    out: list[tuple[str, tuple[Any, ...]]] = []
    if "firehose" in only:
        out += [("firehose", (n,)) for n in plan.firehose_conns]
    if "closed" in only:
        out += [("closed", cd) for cd in plan.closed]
    if "idle" in only:
        out.append(("idle", (plan.idle_conns,)))
    if "accept" in only:
        out.append(("accept", ()))
    if "flood" in only:
        out += [("flood", (n,)) for n in plan.flood_conns]
    if tcpkali and ("tcpkali" in only or "flood" in only):  # the flood's cross-check
        out += [("tcpkali", (n,)) for n in plan.flood_conns]
    if "open" in only:
        out += [("open", load) for load in plan.open_loads]
    if tls and "tls" in only:
        out += [("tls", (n,)) for n in plan.tls_conns]
    if tls and "handshake" in only:
        out += [("handshake", load) for load in plan.handshake_loads]
    return out


def measure(env: Env, workload: str, args: tuple[Any, ...], server_name: str,
            plan: Plan) -> dict[str, Any]:
    server = env.start(server_name, tls=workload in TLS_WORKLOADS)
    try:
        if workload == "firehose":
            rec = measure_firehose(env, server, args[0], plan)
        elif workload == "closed":
            rec = measure_closed(env, server, args[0], args[1], plan)
        elif workload == "idle":
            rec = measure_idle(env, server, args[0])
        elif workload == "flood":
            rec = measure_flood(env, server, args[0], plan)
        elif workload == "open":
            rec = measure_open(env, server, args[0], args[1], plan)
        elif workload == "tcpkali":
            rec = measure_tcpkali(env, server, args[0], plan)
        elif workload == "tls":
            rec = measure_tls_firehose(env, server, args[0], plan)
        elif workload == "handshake":
            rec = measure_handshake(env, server, args[0], args[1], plan)
        else:
            rec = measure_accept(env, server, plan)
        if not server.alive():
            raise HarnessError(f"{server_name} exited during the run: {server.stderr_tail()}")
        return rec
    finally:
        server.stop()

