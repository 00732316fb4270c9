"""Running it: the command line, the loop over repeats, configurations and servers."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import __doc__ as DOC
from .base import (AIO_PEERS, CERT_DIR, FULL, LOAD_BOUND_PCT, ROOT, SERVERS, SMOKE, TLS_SERVERS,
                   TLS_WORKLOADS, WORKLOADS, Env, HarnessError, Plan, setup_env)
from .tables import ms, report, report_from_file, si
from .workloads import measure, measure_timers, steps

def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "reactor", "handlers"],
                               cwd=ROOT, text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in reactor/ or handlers/" if dirty else "")


def code_state() -> str:
    """A digest of the code under test, to tell whether it changed while we measured."""
    h = hashlib.sha1()
    for path in sorted([*ROOT.glob("reactor/**/*.py"), *ROOT.glob("handlers/*.py")]):
        try:
            h.update(path.name.encode() + path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:12]


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": model or platform.processor(), "cpus": os.cpu_count(),
        "kernel": platform.release(), "python": platform.python_version(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    return info


def run(plan: Plan, env: Env, only: set[str], log: Callable[[str], None],
        emit: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    todo = steps(plan, only, tcpkali=env.tcpkali is not None, tls=env.tls_bin is not None)
    for r in range(plan.repeat):
        # Servers interleave inside each configuration, so noise hits them alike.
        for workload, args in todo:
            for name in env.servers:
                if not plan.measures(name, workload, args):
                    continue
                if workload in TLS_WORKLOADS and name not in TLS_SERVERS:
                    continue  # no TLS in py-et, the per-line peer, the C echo
                t0 = time.monotonic()
                base = {"kind": "measurement", "workload": workload, "server": name,
                        "repeat": r + 1}
                try:
                    rec = {**base, **measure(env, workload, args, name, plan)}
                except (HarnessError, OSError, ValueError, KeyError) as exc:
                    rec = {**base, "config": "x".join(map(str, args)) or "-", "error": str(exc),
                           "verified": False, "bytes_ok": False, "notes": [f"ERROR {exc}"]}
                rec["seconds"] = round(time.monotonic() - t0, 2)
                if "gen_busy_pct" in rec:
                    rec["load_bound"] = rec["gen_busy_pct"] >= LOAD_BOUND_PCT
                records.append(rec)
                emit(rec)
                log(f"  [{r + 1}/{plan.repeat}] {workload:8} {rec['config']:>9} {name:13} "
                    f"{_summary(rec)}  ({rec['seconds']:.1f} s)")
        if "timers" in only:
            saved = os.sched_getaffinity(0)
            if env.server_cpu is not None:
                os.sched_setaffinity(0, {env.server_cpu})
            try:
                for rec in measure_timers(plan.timer_count, plan.timer_rounds):
                    rec = {"kind": "measurement", "workload": "timers", "repeat": r + 1, **rec}
                    records.append(rec)
                    emit(rec)
                    log(f"  [{r + 1}/{plan.repeat}] timers   {rec['config']:>9} "
                        f"{rec['server']:13} {_summary(rec)}")
            finally:
                os.sched_setaffinity(0, saved)
    return records


def _summary(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"ERROR {rec['error']}"
    parts = []
    if "lines_per_s" in rec:
        parts.append(f"{si(rec['lines_per_s'])} lines/s")
    if rec.get("server_cpu_s_per_mline") is not None and rec.get("workload") == "open":
        parts.append(f"{rec['server_cpu_s_per_mline']:.2f} CPU s/M lines")
    if "handshakes_per_s" in rec:
        parts.append(f"{si(rec['handshakes_per_s'])} handshakes/s")
        if rec.get("server_cpu_us_per_handshake") is not None:
            parts.append(f"{rec['server_cpu_us_per_handshake']:.0f} µs server CPU/handshake")
    if "initiated" in rec and rec.get("workload") in ("flood", "open", "tls"):
        parts.append(f"opened {rec['initiated']}/{rec['requested']}")
    if rec.get("workload") == "flood":
        parts.append(f"{rec['silent_in_window']} silent")
        if rec.get("zero_out_max_s") is not None:
            parts.append(f"zero-out {rec['zero_out_max_s']:.1f} s")
    if "lat_p99_us" in rec:
        parts.append(f"p99 {ms(rec['lat_p99_us'])}")
    if "bytes_per_conn_silent" in rec:
        parts.append(f"{rec['bytes_per_conn_silent']:.0f} B/conn silent, "
                     f"{rec['bytes_per_conn_echoed']:.0f} after echo")
    if "served_pct" in rec:
        parts.append(f"served {rec['probes_served']}/{rec['extra']}")
    if "ns_per_rearm" in rec:
        parts.append(f"{rec['ns_per_rearm']:.0f} ns/re-arm, {rec['live_entries']} live")
    if "gen_busy_pct" in rec:
        parts.append(f"gen {rec['gen_busy_pct']:.0f}%")
    parts.append("ok" if rec["verified"] else "; ".join(rec["notes"]))
    return ", ".join(parts)


# -- main -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=DOC.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="1 repeat, ~0.5 s per run and small sizes: checks the harness, not speed")
    p.add_argument("--repeat", type=int, help="repeats per measurement (default 3, smoke 1)")
    p.add_argument("--duration", type=float,
                   help="measured seconds per firehose/closed/flood run (open loop: --open-duration)")
    p.add_argument("--open-duration", type=float, help="measured seconds per open-loop run")
    p.add_argument("--py-et", metavar="PATH",
                   help="py_et_echo.py, the pure-Python peer (default: $BENCH_PY_ET, else "
                        "../shared/bench/py_et_echo.py beside the clone); skipped if missing")
    p.add_argument("--tcpkali", metavar="PATH", nargs="?", const="",
                   help="also run tcpkali at the flood's sizes, a cross-check of the flood "
                        "(PATH defaults to ~/.cache/tcpkali/bin/tcpkali)")
    p.add_argument("--only", default=",".join((*WORKLOADS, "resp")),
                   help=f"comma-separated workloads (default all: {','.join(WORKLOADS)},resp; "
                        "resp is tools/bench_resp.py: docs/examples/resp_kv.py beside "
                        "redis-server under redis-benchmark -P 16 -c 50)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma-separated servers (default all: {','.join(SERVERS)})")
    p.add_argument("--json", metavar="PATH", help="append one JSON object per measurement")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--report", metavar="PATH",
                   help="measure nothing: print the tables of the last run saved in PATH")
    a = p.parse_args(argv)
    if a.report:
        return report_from_file(a.report)
    plan = SMOKE if a.smoke else FULL
    if a.repeat is not None or a.duration is not None or a.open_duration is not None:
        plan = Plan(**{**plan.__dict__, "repeat": a.repeat or plan.repeat,
                       "duration": a.duration or plan.duration,
                       "open_duration": a.open_duration or plan.open_duration})
    only = {w.strip() for w in a.only.split(",") if w.strip()}
    resp = "resp" in only
    only.discard("resp")
    wanted = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = (only - set(WORKLOADS)) | (set(wanted) - set(SERVERS))
    if bad or plan.repeat < 1:
        p.error(f"unknown workload or server: {', '.join(sorted(bad))}" if bad
                else "--repeat must be at least 1")
    if not only:  # resp alone: not an echo workload, it has its own servers and client
        return run_resp(plan, a.smoke)
    log = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    json_file = open(a.json, "a") if a.json else None
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = git_describe()
    code_at_start = code_state()
    info = machine()

    def emit(rec: dict[str, Any]) -> None:
        if json_file:
            json_file.write(json.dumps({"run": run_id, "commit": commit, **rec}) + "\n")
            json_file.flush()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        try:
            env = setup_env(wanted, Path(tmp), py_et=a.py_et, tcpkali=a.tcpkali,
                            tls=bool(only & set(TLS_WORKLOADS)))
        except HarnessError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        if only & set(TLS_WORKLOADS) and env.tls_bin is not None and not (
                set(env.servers) & set(TLS_SERVERS)):
            env.notes.append("TLS workloads asked for, but none of these servers speaks TLS "
                             f"({', '.join(TLS_SERVERS)} do)")
        run_rec = {"kind": "run", "argv": sys.argv[1:] if argv is None else list(argv),
                   "smoke": a.smoke, "plan": plan.__dict__, "machine": info,
                   "servers": env.servers, "skipped": env.skipped, "notes": env.notes,
                   "aio_peers": {name: {"loop": loop, "style": style}
                                 for name, (loop, style) in AIO_PEERS.items()},
                   "server_cpu": env.server_cpu, "load_cpu": env.load_cpu,
                   "tls": {"asked": bool(only & set(TLS_WORKLOADS)),
                           "available": env.tls_bin is not None,
                           "skipped": env.tls_skipped, "certs": str(CERT_DIR)}}
        emit(run_rec)
        run_rec = {"run": run_id, "commit": commit, **run_rec}
        for name, why in env.skipped.items():
            emit({"kind": "skip", "server": name, "reason": why})
        if env.load_cpu is not None:  # this script waits on the generator's core
            os.sched_setaffinity(0, {env.load_cpu})
        log(f"bench: servers {', '.join(env.servers)}; server on CPU {env.server_cpu}, "
            f"generator on CPU {env.load_cpu}; {plan.repeat} repeat(s)")
        records = run(plan, env, only, log, emit)
    elapsed = time.monotonic() - started
    end = {"kind": "end", "seconds": round(elapsed, 1), "notes": []}
    if code_state() != code_at_start:
        end["notes"].append("the code under test (reactor/, handlers/) changed during this "
                            "run: its figures mix versions")
    emit(end)
    run_rec["notes"] = [*run_rec["notes"], *end["notes"]]
    print(report(run_rec, records, elapsed))
    if json_file:
        json_file.close()
    failed = [r for r in records if "error" in r or not r.get("bytes_ok", True)]
    if failed:
        print(f"\nbench: {len(failed)} measurement(s) failed; see the check column",
              file=sys.stderr)
    resp_status = run_resp(plan, a.smoke) if resp else 0
    return 1 if failed or resp_status else 0


def run_resp(plan: Plan, smoke: bool) -> int:
    """The RESP workload: tools/bench_resp.py with this run's repeats (its own table)."""
    import shutil

    import bench_resp  # tools/, on the path that bench.py set

    print("\n## RESP: docs/examples/resp_kv.py and redis-server under redis-benchmark\n",
          flush=True)
    if shutil.which("redis-benchmark") is None:
        print("skipped: redis-benchmark is not installed (apt-get install redis-tools)")
        return 0
    args = ["--repeat", str(plan.repeat)]
    if smoke:
        args += ["--requests", "2000"]
    return bench_resp.main(args)


