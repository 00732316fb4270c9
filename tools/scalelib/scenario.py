"""A whole scale run: line-echo with N workers, scale.py against it, fd-stats watching.

``tools/scale_run.py`` is its command line. The run starts ``line-echo --workers W`` with the
long-connection features on (``--heartbeat``, ``--idle-timeout``), starts ``tools/scale.py``
against it, and samples the fleet every ``--sample-every`` seconds twice over: first by
reading the supervisor's stats socket from this process, as a resident scraper would (the
workers' loop lag is taken from this read: nothing was started on the machine just before
it), then with the ``fd-stats`` command itself (``fd-stats PID --json``: the answer a user
gets, timed; the lag it shows is kept too, and is higher: a new Python process's start-up on
two busy cores delays the workers' timers in the very window their p99 covers). Samples
taken while every connection is held (the fleet's total equals N) are the *hold*: the
workers' loop lag p99, the CPU each worker used over it (from /proc/PID/stat: the heartbeat
timers, their PINGs and nothing else run then), the kernel's TCP memory. With ``--restart``, once the
hold has lasted ``--restart-after`` seconds worker 0 is killed with SIGKILL and the run times
the supervisor's answer: old pid reaped, new worker forked, new worker serving its stats
socket; then scale.py's verdict must count exactly the killed worker's connections as lost.

Pure parts (``cpu_ticks``, ``hold_summary``, ``verdict``) are tested alone; ``Scenario`` only
drives processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from childproc import cpu_ticks as proc_cpu_ticks
from childproc import stat_cpu_ticks, tcp_sockstat

from .netns import own_ehash_entries

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


cpu_ticks = stat_cpu_ticks  # parses a /proc/PID/stat line (childproc)


def read_cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks, or None if it is gone or unreadable."""
    try:
        return proc_cpu_ticks(pid)
    except (OSError, ValueError, IndexError):
        return None


def tcp_mem_bytes() -> int | None:
    """The kernel's TCP buffer memory now (/proc/net/sockstat, via childproc)."""
    got = tcp_sockstat()
    return None if got is None else got["tcp_mem_bytes"]


@dataclass
class Sample:
    """One sample: when, how long fd-stats took to answer, and the fleet's figures."""

    t: float                       # seconds since scale.py started
    wall_s: float                  # how long `fd-stats PID --json` took
    connections: int
    workers_answered: int
    lag_p99_max_s: float           # the worst worker's (the resident read, see the module doc)
    bytes_out: int
    cpu: dict[int, int] = field(default_factory=dict)  # worker pid -> ticks at the sample
    lag_p99_median_s: float = 0.0  # the median worker's
    lag_p99_fdstats_max_s: float | None = None  # the worst worker's, in fd-stats' answer


SETTLE_S = 5.0  # a worker's lag p99 is over its last 1,024 fires: the ramp's, just after it


def hold_summary(samples: list[Sample], conns: int, tck: int = CLK_TCK,
                 settle_s: float = SETTLE_S) -> dict[str, Any]:
    """The hold's figures from the samples at which all ``conns`` were held.

    ``lag_p99_ms`` lists every hold sample's worst worker; ``lag_p99_settled_max_ms`` is the
    worst of those taken ``settle_s`` or more after the first (each worker's p99 is over its
    last 1,024 timer fires, which just after the ramp are the ramp's). CPU per worker is each
    worker's ticks between the first and the last hold sample over that wall time (only
    workers alive at both); ``bytes_out_per_s`` is the fleet's send rate over it (at the hold,
    the heartbeat PINGs)."""
    hold = [s for s in samples if s.connections == conns]
    out: dict[str, Any] = {"hold_samples": len(hold)}
    if not hold:
        return out
    out["lag_p99_max_ms"] = round(max(s.lag_p99_max_s for s in hold) * 1000, 2)
    out["lag_p99_ms"] = [round(s.lag_p99_max_s * 1000, 1) for s in hold]
    out["lag_p99_median_worker_ms"] = [round(s.lag_p99_median_s * 1000, 1) for s in hold]
    settled = [s.lag_p99_max_s for s in hold if s.t >= hold[0].t + settle_s]
    out["lag_p99_settled_max_ms"] = round(max(settled) * 1000, 2) if settled else None
    out["lag_p99_fdstats_ms"] = [None if s.lag_p99_fdstats_max_s is None
                                 else round(s.lag_p99_fdstats_max_s * 1000, 1) for s in hold]
    out["fdstats_wall_max_s"] = round(max(s.wall_s for s in hold), 3)
    out["fdstats_wall_median_s"] = round(sorted(s.wall_s for s in hold)[len(hold) // 2], 3)
    first, last = hold[0], hold[-1]
    span = last.t - first.t
    out["hold_observed_s"] = round(span, 1)
    if span > 0:
        pct = [(last.cpu[p] - first.cpu[p]) / tck / span * 100
               for p in first.cpu if p in last.cpu]
        if pct:
            out["worker_cpu_pct_mean"] = round(sum(pct) / len(pct), 2)
            out["worker_cpu_pct_max"] = round(max(pct), 2)
        out["bytes_out_per_s"] = round((last.bytes_out - first.bytes_out) / span, 1)
    return out


def verdict(scale: dict[str, Any] | None, restart: dict[str, Any] | None) -> tuple[bool, str]:
    """Did the run pass: every connection verified; with a restart, exactly the killed
    worker's connections lost (and nothing else)."""
    if scale is None:
        return False, "scale.py printed no result"
    lost = scale["conns"] - scale["verified"]
    if restart is None:
        return lost == 0, f"verified {scale['verified']:,} of {scale['conns']:,}"
    if "killed_connections" not in restart:
        return False, f"no worker was killed: {restart.get('error', 'the hold never came')}"
    expected = restart["killed_connections"]
    return (lost == expected and restart.get("serving_s") is not None,
            f"lost {lost:,}, the killed worker held {expected:,}")


class Scenario:
    """Drives one run. ``log`` gets progress lines."""

    def __init__(self, args: Any, log: Callable[[str], None]) -> None:
        self.a = args
        self.log = log
        self.samples: list[Sample] = []
        self.restart: dict[str, Any] | None = {} if args.restart else None
        self.hold_since: float | None = None
        self.server: subprocess.Popen | None = None

    # -- processes --------------------------------------------------------------------

    def start_server(self) -> None:
        a = self.a
        cmd = [str(BIN / "line-echo"), "--host", "127.0.0.1", "--port", str(a.port),
               "--workers", str(a.workers), "--heartbeat", f"{a.heartbeat:g}",
               "--idle-timeout", f"{a.idle_timeout:g}", "--backlog", str(a.backlog),
               "--log-level", "warning"]
        self.log("scale_run: " + " ".join(cmd))
        self.server = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT)
        assert self.server.stdout is not None
        line = self.server.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"line-echo did not start: {line!r}")
        deadline = time.monotonic() + 30 + a.workers
        while time.monotonic() < deadline:
            s = self.fd_stats()
            if s is not None and s["total"] and len(_workers(s)) == a.workers:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the {a.workers} workers did not all answer within the deadline")

    def fd_stats(self) -> dict[str, Any] | None:
        assert self.server is not None
        try:
            r = subprocess.run([str(BIN / "fd-stats"), str(self.server.pid), "--json"],
                               capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:  # a starved machine: no sample, not the end
            self.log("scale_run: fd-stats did not answer within 60 s")
            return None
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout else None

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    # -- the run ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.a
        try:
            self.start_server()
        except BaseException:
            self.stop_server()
            raise
        assert self.server is not None
        started_tcp_mem = tcp_mem_bytes()
        cmd = [sys.executable, str(ROOT / "tools" / "scale.py"), "--port", str(a.port),
               "--conns", str(a.conns), "--hold", f"{a.hold:g}", "--rate", f"{a.rate:g}",
               "--pid", str(self.server.pid)] + (["--defer-pings"] if a.defer_pings else [])
        self.log("scale_run: " + " ".join(cmd))
        t0 = time.monotonic()
        nice = getattr(a, "client_nice", 0)
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, cwd=ROOT, text=True,
                                  preexec_fn=(lambda: os.nice(nice)) if nice else None)
        try:
            while client.poll() is None:
                self._sample(t0)
                self._maybe_restart(t0)
                time.sleep(max(0.0, a.sample_every - (time.monotonic() - t0) % a.sample_every))
            out = client.stdout.read() if client.stdout else ""
        finally:
            if client.poll() is None:
                client.kill()
            client.wait()
            self.stop_server()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        scale = json.loads(lines[-1]) if lines else None
        ok, why = verdict(scale, self.restart)
        result = {
            "ok": ok, "why": why, "conns": a.conns, "workers": a.workers,
            "heartbeat_s": a.heartbeat, "idle_timeout_s": a.idle_timeout, "hold_s": a.hold,
            "defer_pings": a.defer_pings, "client_nice": getattr(a, "client_nice", 0),
            "tcp_ehash_entries": own_ehash_entries(),
            "scale": scale, **hold_summary(self.samples, a.conns),
            "tcp_mem_bytes_before": started_tcp_mem,
            "restart": self.restart,
        }
        if scale and scale.get("kernel"):
            k = scale["kernel"]
            result["kernel_tcp_mem_per_conn_bytes"] = round(k["tcp_mem_bytes"] / a.conns, 1)
        return result

    def _sample(self, t0: float) -> None:
        assert self.server is not None
        resident = _worker_lags(self.server.pid)  # first: nothing started just before it
        t = time.monotonic()
        s = self.fd_stats()
        wall = time.monotonic() - t
        if s is None or s.get("total") is None:
            return
        ws = _workers(s)
        seen = sorted(w["lag_p99_s"] or 0.0 for w in ws)
        lags = seen if resident is None else resident
        sample = Sample(t=t - t0, wall_s=wall, connections=s["total"]["connections"],
                        workers_answered=len(ws),
                        lag_p99_max_s=max(lags, default=0.0),
                        lag_p99_median_s=lags[len(lags) // 2] if lags else 0.0,
                        bytes_out=s["total"]["bytes_out"],
                        lag_p99_fdstats_max_s=max(seen, default=0.0))
        for w in ws:
            ticks = read_cpu_ticks(w["pid"])
            if ticks is not None:
                sample.cpu[w["pid"]] = ticks
        self.samples.append(sample)
        self.workers = ws
        if sample.connections == self.a.conns and self.hold_since is None:
            self.hold_since = sample.t
        self.log(f"scale_run: t {sample.t:6.1f} s  connections {sample.connections:,}  "
                 f"workers {sample.workers_answered}/{self.a.workers}  lag p99 max "
                 f"{sample.lag_p99_max_s * 1000:.1f} ms (in fd-stats' answer "
                 f"{max(seen, default=0.0) * 1000:.1f} ms)  fd-stats {wall:.2f} s")

    def _maybe_restart(self, t0: float) -> None:
        r = self.restart
        if r is None or r or self.hold_since is None:
            return
        if time.monotonic() - t0 - self.hold_since < self.a.restart_after:
            return
        victim = next((w for w in self.workers if w["index"] == 0), None)
        if victim is None:
            r["error"] = "worker 0 did not answer"
            return
        assert self.server is not None
        sup, old = self.server.pid, victim["pid"]
        r.update(killed_pid=old, killed_connections=victim["connections"])
        t = time.monotonic()
        os.kill(old, signal.SIGKILL)
        deadline = t + 60
        new = None
        while time.monotonic() < deadline and ("serving_s" not in r):
            now = time.monotonic() - t
            if "reaped_s" not in r and not os.path.exists(f"/proc/{old}"):
                r["reaped_s"] = round(now, 4)
            if new is None:
                try:
                    kids = {int(x) for x in open(f"/proc/{sup}/task/{sup}/children").read().split()}
                except OSError:
                    kids = set()
                fresh = kids - {w["pid"] for w in self.workers}
                if fresh:
                    new = fresh.pop()
                    r.update(new_pid=new, forked_s=round(now, 4))
            elif _answers(new):
                r["serving_s"] = round(time.monotonic() - t, 4)
            time.sleep(0.001)
        self.log(f"scale_run: killed worker 0 (pid {old}, {victim['connections']:,} "
                 f"connections): {json.dumps(r)}")


def _workers(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The loops that answered: a supervisor's workers, or a single process as worker 0."""
    if sample["workers"]:
        return [w for w in sample["workers"] if "error" not in w]
    r = sample.get("reactor")
    if r is None:
        return []
    return [{"index": 0, "pid": r["pid"], "connections": r.get("connections", 0),
             "lag_p99_s": r.get("lag", {}).get("p99_s")}]


def _read_advertised(pid: int, timeout_s: float) -> dict[str, Any] | None:
    """``pid``'s stats document, read from its advertised socket by this process (None if
    it does not answer)."""
    sys.path.insert(0, str(ROOT))
    from reactor.service.stats_socket import StatsError, advertised_path, read_stats

    try:
        return read_stats(advertised_path(pid), timeout_s=timeout_s)
    except StatsError:
        return None


def _answers(pid: int) -> bool:
    """Whether ``pid``'s advertised stats socket answers: the worker is serving."""
    doc = _read_advertised(pid, 1.0)
    return doc is not None and doc.get("pid") == pid


def worker_lags(doc: dict[str, Any]) -> list[float]:
    """Each answering worker's loop lag p99 in a stats document, sorted (a single loop's
    own when it has no workers)."""
    if doc.get("role") == "supervisor":
        ws = [w for w in doc.get("workers", []) if "error" not in w]
    else:
        ws = [doc]
    return sorted(w.get("lag", {}).get("p99_s") or 0.0 for w in ws)


def _worker_lags(pid: int) -> list[float] | None:
    doc = _read_advertised(pid, 10.0)
    return None if doc is None else worker_lags(doc)
