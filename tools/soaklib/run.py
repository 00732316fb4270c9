"""The soak's parent: the daemon it starts or joins, the client processes, the settle waits, the result."""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from childproc import fd_count, status_kb
from reactor.service.stats_socket import StatsError, read_stats

from .common import DRAIN_S, FAULTS, HOST, INFLIGHT_BYTES, ROOT, SETTLE_S, _child_setup
from .report import _size


class SoakError(Exception):
    """The run could not go on; ``str(exc)`` says why in one line."""


class _Timeout(BaseException):
    pass


def _proc_fds(pids: list[int]) -> int | None:
    if not pids:
        return None
    try:
        return sum(fd_count(p) for p in pids)
    except OSError:
        return None


def _proc_rss(pids: list[int]) -> int | None:
    if not pids:
        return None
    total = 0
    try:
        for p in pids:
            total += status_kb(p, "VmRSS")
    except (OSError, KeyError):
        return None
    return total * 1024


def _wait_until(predicate: Callable[[], Any], timeout: float, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(poll_s)


class _ClientProc:
    def __init__(self, index: int, cfg: dict[str, Any], cpus: set[int] | None) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "soak.py"), "--client", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
            preexec_fn=_child_setup(cpus))
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.partial = b""
        self.ready = False
        self.eof = False
        self.last: dict[str, Any] = {"held": 0, "counters": {}, "faults": {}}
        self.done: dict[str, Any] | None = None

    def read(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self.eof = True
            return
        self.partial += data
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            msg = json.loads(line)
            if msg["event"] == "ready":
                self.ready = True
            elif msg["event"] in ("progress", "done"):
                self.last = msg
                if msg["event"] == "done":
                    self.done = msg

    def tell(self, line: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f:
                    f.close()
            except BrokenPipeError:
                pass


class Soak:
    """One soak run: the daemon, the client processes, the samples and the result."""

    def __init__(self, a: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> None:
        self.a = a
        self.workdir = workdir
        self.log = log
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_stderr: Path | None = None
        self.port = a.port
        self.stats_path = a.stats_socket
        self.clients: list[_ClientProc] = []
        self.failures: list[str] = []
        self.held_samples: list[int] = []
        self.daemon_samples: list[int] = []
        self.lag_samples: list[float] = []
        self.timeline: list[list[Any]] = []  # [s since go, held, daemon conns, lag p99, rss, fds]
        self.t_go = 0.0
        self.stats_errors = 0
        self.docs: dict[str, dict[str, Any] | None] = {"baseline": None, "start": None,
                                                        "end_of_traffic": None, "end": None}
        self.fds: dict[str, int | None] = {"baseline": None, "start": None, "end": None}
        self.rss: dict[str, int | None] = {"baseline": None, "start": None, "end": None}
        self.pids: list[int] = []
        self.completed = False
        self.traffic_s = 0.0
        self.started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        cpus = sorted(os.sched_getaffinity(0))
        pin = a.port is None and a.workers == 1 and len(cpus) >= 2
        self.daemon_cpus = {cpus[0]} if pin else None
        self.client_cpus = set(cpus[1:]) if pin else None

    # -- the daemon

    def stats(self) -> dict[str, Any] | None:
        if not self.stats_path:
            return None
        try:
            return read_stats(self.stats_path, timeout_s=2.0)
        except StatsError as exc:
            self.stats_errors += 1
            self.log(f"soak: {exc}")
            return None

    def start_daemon(self) -> None:
        exe = Path(sys.executable).parent / "line-echo"
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "reactor.service.cli.line_echo"]
        self.stats_path = str(self.workdir / "stats.sock")
        self.daemon_stderr = self.workdir / "line-echo.stderr"
        argv = [*base, "--port", "0", "--stats-socket", self.stats_path, "--log-level", "warning",
                "--workers", str(self.a.workers), "--max-line", str(self.a.max_line),
                "--heartbeat", str(self.a.heartbeat)]
        with open(self.daemon_stderr, "wb") as err:
            self.daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                           stdin=subprocess.DEVNULL, cwd=ROOT,
                                           preexec_fn=_child_setup(self.daemon_cpus))
        assert self.daemon.stdout is not None
        fd = self.daemon.stdout.fileno()
        line = b""
        deadline = time.monotonic() + 15
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(fd, 1)
                if not chunk:
                    break
                line += chunk
        text = line.decode(errors="replace").strip()
        if not text.startswith("listening on "):
            raise SoakError(f"line-echo did not start: {text!r} {self.daemon_tail()}")
        self.port = int(text.rsplit(":", 1)[1])

    def daemon_tail(self, n: int = 600) -> str:
        try:
            return self.daemon_stderr.read_text(errors="replace")[-n:].strip()  # type: ignore[union-attr]
        except (OSError, AttributeError):
            return ""

    def daemon_warnings(self) -> list[str]:
        lines = self.daemon_tail(1 << 20).splitlines()
        return [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]

    def daemon_alive(self) -> bool:
        return self.daemon is None or self.daemon.poll() is None

    def stop_daemon(self) -> None:
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                self.failures.append("line-echo did not exit within 20 s of SIGTERM")
                self.daemon.kill()
                self.daemon.wait()
        if self.daemon.stdout:
            self.daemon.stdout.close()

    def warm(self) -> None:
        """One line, then FIN, read to EOF: the daemon answers, and its lazy allocations happen
        before the baseline."""
        sent = b"soak warm-up\n"
        try:
            with socket.create_connection((HOST, self.port), timeout=10) as s:
                s.sendall(sent)
                s.shutdown(socket.SHUT_WR)
                got = b"".join(iter(lambda: s.recv(4096), b""))
        except OSError as exc:
            raise SoakError(f"cannot talk to line-echo on {HOST}:{self.port}: {exc}") from None
        if got != sent:
            raise SoakError(f"the warm-up exchange came back as {got!r}")

    def find_pids(self, doc: dict[str, Any] | None) -> list[int]:
        if doc is None:
            return [self.daemon.pid] if self.daemon else []
        return [doc["pid"], *(w["pid"] for w in doc.get("workers", []) if w.get("pid"))]

    def daemon_connections(self) -> int | None:
        doc = self.stats()
        return None if doc is None else doc.get("connections")

    def settled_fds(self) -> int | None:
        """The daemon's fd count once it stops changing (a stats reader's fd closes just after)."""
        last = _proc_fds(self.pids)
        deadline = time.monotonic() + 5
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = _proc_fds(self.pids)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= 0.3:
                break
        return last

    # -- phases

    def baseline(self) -> None:
        self.warm()
        _wait_until(lambda: self.daemon_connections() in (0, None), 10)
        doc = self.stats()
        self.docs["baseline"] = doc
        self.pids = self.find_pids(doc)
        self.fds["baseline"] = self.settled_fds()
        self.rss["baseline"] = _proc_rss(self.pids)

    def spawn_clients(self, max_seconds: float) -> None:
        a = self.a
        per = [a.conns // a.procs + (i < a.conns % a.procs) for i in range(a.procs)]
        budget = max(1 << 20, INFLIGHT_BYTES // a.procs)
        for i, n in enumerate(per):
            sources = [f"127.0.0.{2 + i * a.src_addrs + j}" for j in range(a.src_addrs)]
            cfg = {"index": i, "port": self.port, "conns": n, "max_line": a.max_line,
                   "seed": a.seed * 1000 + i, "sources": sources, "inflight": budget,
                   "max_seconds": max_seconds}
            self.clients.append(_ClientProc(i, cfg, self.client_cpus))

    def pump(self, timeout: float) -> None:
        """Read what the clients said, waiting at most ``timeout``; a client that dies fails the run."""
        fds = {c.fd: c for c in self.clients if not c.eof}
        if not fds:
            time.sleep(timeout)
            return
        for fd in select.select(list(fds), [], [], max(0.0, timeout))[0]:
            fds[fd].read()
        for c in self.clients:
            if c.eof and c.done is None:
                raise SoakError(f"client {c.index} exited ({c.proc.wait()}) before it finished")

    def ramp(self, timeout: float) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not all(c.ready for c in self.clients):
            if time.monotonic() > deadline:
                held = sum(c.last["held"] for c in self.clients)
                raise SoakError(f"only {held} of {self.a.conns} connections established "
                                f"within {timeout:.0f} s")
            self.pump(0.2)
        if self.stats_path:
            got = _wait_until(lambda: (self.daemon_connections() or 0) >= self.a.conns,
                              SETTLE_S, 0.2)
            if not got:
                raise SoakError(f"the daemon holds {self.daemon_connections()} of "
                                f"{self.a.conns} connections after {SETTLE_S:.0f} s")
        self.log(f"soak: {self.a.conns} connections held after {time.monotonic() - t0:.1f} s")
        self.docs["start"] = self.stats()
        self.fds["start"] = _proc_fds(self.pids)
        self.rss["start"] = _proc_rss(self.pids)

    def traffic(self) -> None:
        for c in self.clients:
            c.tell("go")
        t0 = self.t_go = time.monotonic()
        end = t0 + self.a.duration
        next_sample = t0 + 1.0
        next_log = t0 + 10.0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            self.pump(min(next_sample, end) - now)
            if not self.daemon_alive():
                raise SoakError(f"line-echo exited ({self.daemon.returncode}) during the run: "  # type: ignore[union-attr]
                                f"{self.daemon_tail()}")
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + 1.0
                self.sample()
            if now >= next_log:
                next_log = now + 10.0
                self.log(self.progress_line(now - t0))
        self.traffic_s = time.monotonic() - t0
        self.docs["end_of_traffic"] = self.stats()

    def sample(self) -> None:
        held = sum(c.last["held"] for c in self.clients)
        self.held_samples.append(held)
        doc = self.stats()
        if doc is not None:
            self.daemon_samples.append(doc["connections"])
            self.lag_samples.append(doc["lag"]["p99_s"])
        self.timeline.append([round(time.monotonic() - self.t_go, 1), held,
                              doc and doc["connections"], doc and doc["lag"]["p99_s"],
                              _proc_rss(self.pids), _proc_fds(self.pids)])

    def progress_line(self, elapsed: float) -> str:
        t = self.client_totals()
        n, f = t["counters"], t["faults"]
        return (f"soak: {elapsed:.0f}/{self.a.duration:g} s  held {t['held']}  "
                f"verified {_size(n.get('bytes_verified', 0))}  "
                f"rst {f.get('rst', 0)} half_close {f.get('half_close', 0)} "
                f"reconnect {f.get('reconnect', 0)}  lost {n.get('bytes_lost', 0)} "
                f"corrupted {n.get('bytes_corrupted', 0)}")

    def drain(self) -> None:
        for c in self.clients:
            c.tell(f"stop {DRAIN_S}")
        deadline = time.monotonic() + DRAIN_S + 15
        while not all(c.done for c in self.clients):
            if time.monotonic() > deadline:
                raise SoakError("the clients did not finish their final half-closes in time")
            self.pump(0.2)
        for c in self.clients:
            try:
                c.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def back_to_baseline(self) -> None:
        if self.stats_path:
            if not _wait_until(lambda: self.daemon_connections() == 0, SETTLE_S, 0.1):
                left = self.daemon_connections()
                self.failures.append(
                    f"the daemon still holds {left} connections {SETTLE_S:.0f} s after the "
                    "clients left" if left is not None else "the stats socket stopped answering")
        base = self.fds["baseline"]
        if base is not None:
            _wait_until(lambda: (_proc_fds(self.pids) or 0) <= base, SETTLE_S)
        self.docs["end"] = self.stats()
        self.fds["end"] = self.settled_fds() if base is not None else None
        self.rss["end"] = _proc_rss(self.pids)

    def run(self, ramp_s: float, max_seconds: float) -> None:
        try:
            if self.port is None:
                self.start_daemon()
            self.baseline()
            self.log(f"soak: line-echo on {HOST}:{self.port} (pids {self.pids}); opening "
                     f"{self.a.conns} connections from {self.a.procs} client processes")
            self.spawn_clients(max_seconds)
            self.ramp(ramp_s)
            self.traffic()
            self.drain()
            self.back_to_baseline()
            self.completed = True
        except SoakError as exc:
            self.failures.append(str(exc))
        except _Timeout:
            self.failures.append(f"the whole run exceeded its bound of {max_seconds:.0f} s")
        except KeyboardInterrupt:
            self.failures.append("interrupted")
        finally:
            for c in self.clients:
                if c.done is None and not c.eof:
                    try:
                        c.read()
                    except (OSError, ValueError):
                        pass
                c.kill()
            if not self.daemon_alive():
                self.completed = False
                self.failures.append(f"line-echo exited ({self.daemon.returncode}) before "  # type: ignore[union-attr]
                                     f"the end: {self.daemon_tail()}")
            self.stop_daemon()

    # -- the result

    def client_totals(self) -> dict[str, Any]:
        counters: collections.Counter[str] = collections.Counter()
        faults: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        samples: list[Any] = []
        held = 0
        for c in self.clients:
            msg = c.done or c.last
            counters.update(msg.get("counters", {}))
            faults.update(msg.get("faults", {}))
            errors.update(msg.get("connect_errors", {}))
            samples += msg.get("mismatch_samples", [])
            held += msg.get("held", 0)
        return {"held": held, "counters": dict(counters), "faults": dict(faults),
                "connect_errors": dict(errors), "mismatch_samples": samples}

    def result(self, argv: list[str]) -> dict[str, Any]:
        a = self.a
        t = self.client_totals()
        n, f = t["counters"], t["faults"]
        lost = n.get("bytes_lost", 0)
        corrupted = n.get("bytes_corrupted", 0)
        base_fd, end_fd = self.fds["baseline"], self.fds["end"]
        fd_back = None if base_fd is None or end_fd is None else end_fd <= base_fd
        failures = list(self.failures)
        if lost:
            failures.append(f"{lost} bytes lost")
        if corrupted:
            failures.append(f"{corrupted} bytes corrupted")
        discarded, abandoned = n.get("bytes_discarded_by_rst", 0), n.get("bytes_abandoned", 0)
        accounted = n.get("bytes_sent", 0) == (n.get("bytes_verified", 0) + lost + discarded
                                              + abandoned)
        if self.completed and not accounted:
            failures.append("bytes sent != verified + lost + discarded by RSTs + abandoned "
                            "(a bookkeeping bug in the soak)")
        if self.completed and fd_back is False:
            failures.append(f"the daemon's fds did not come back to baseline ({end_fd} > {base_fd})")
        first, last = self.docs["start"], self.docs["end_of_traffic"]
        timers_fired = (last["timers"]["expired"] - first["timers"]["expired"]
                        if first and last else None)
        end_doc = self.docs["end"] or last
        base_doc = self.docs["baseline"]
        closed = None
        if end_doc and base_doc:
            closed = {k: v - base_doc["closed"].get(k, 0) for k, v in end_doc["closed"].items()
                      if v - base_doc["closed"].get(k, 0)}

        def stat(xs: list[Any], fn: Callable[[list[Any]], Any]) -> Any:
            return fn(xs) if xs else None

        return {
            "tool": "soak", "version": 1, "argv": argv,
            "date": self.started,
            "config": {"conns": a.conns, "duration_s": a.duration, "procs": a.procs,
                       "seed": a.seed, "workers": a.workers, "max_line": a.max_line,
                       "heartbeat_s": a.heartbeat if self.daemon is not None else None,
                       "src_addrs": a.src_addrs, "port": self.port,
                       "own_daemon": self.daemon is not None,
                       "daemon_cpus": sorted(self.daemon_cpus or []),
                       "client_cpus": sorted(self.client_cpus or [])},
            "completed": self.completed, "passed": not failures, "failures": failures,
            "traffic_s": round(self.traffic_s, 1),
            "connections": {
                "target": a.conns,
                "held_min": stat(self.held_samples, min),
                "held_avg": stat(self.held_samples, lambda x: round(statistics.fmean(x), 1)),
                "daemon_min": stat(self.daemon_samples, min),
                "daemon_avg": stat(self.daemon_samples, lambda x: round(statistics.fmean(x), 1)),
                "samples": len(self.held_samples),
                "opened_total": n.get("opened", 0),
                "connect_failed": n.get("connect_failed", 0),
                "connect_errors": t["connect_errors"],
            },
            "bytes": {"sent": n.get("bytes_sent", 0), "verified": n.get("bytes_verified", 0),
                      "lost": lost, "corrupted": corrupted, "discarded_by_rst": discarded,
                      "abandoned_after_mismatch": abandoned, "accounted": accounted,
                      "trailing_partial": n.get("trailing_partial_bytes", 0)},
            "faults": {k: f.get(k, 0) for k in (*FAULTS, "half_close_partial")},
            "unexpected": {k: n.get(k, 0) for k in (
                "server_closed", "server_reset", "send_error", "recv_error", "mismatches",
                "err_lines", "short_at_eof", "drain_timeouts")},
            "pings": n.get("pings", 0),
            "closed_at_end": n.get("closed_at_end", 0),
            "mismatch_samples": t["mismatch_samples"],
            "daemon": {
                "pids": self.pids, "fds": self.fds,
                "rss_bytes": {**self.rss, "max_during_traffic": stat(
                    [x[4] for x in self.timeline if x[4] is not None], max)},
                "fd_back_to_baseline": fd_back,
                "lag_p99_s": {"max": stat(self.lag_samples, max),
                              "median": stat(self.lag_samples, statistics.median),
                              "end_of_traffic": last["lag"]["p99_s"] if last else None,
                              "samples": len(self.lag_samples)},
                "timers_fired_during_traffic": timers_fired,
                "closed_by_reason": closed,
                "pool": end_doc["chunks"] if end_doc else None,
                "stats_errors": self.stats_errors,
                "warnings": self.daemon_warnings()[:10],
            },
            "timeline": {"columns": ["s", "held", "daemon_connections", "lag_p99_s", "rss_bytes",
                                     "fds"], "rows": self.timeline},
        }
