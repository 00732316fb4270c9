"""The parent: starts the client processes, paces the phases, sums their reports, reads the
server's memory from /proc and builds the result.

Phases: every client is ``up`` (started, nothing opened) -> the server's baseline RSS ->
``start`` (t0) -> every client's round one settled (``t_establish_s``) -> the hold, the
server's RSS sampled about once a second -> ``go`` -> every client ``done``
(``t_final_s``). At the run's deadline every client is told ``stop``: what has no verdict
then is a ``timeout``; a client that dies without a report leaves ``client_lost``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from childproc import raise_nofile, tcp_sockstat, tree_rss_bytes

from .plan import Plan, Share
from .verify import Failure

SCRIPT = Path(__file__).resolve().parent.parent / "scale.py"
UP_S = 30.0          # how long the clients may take to start, plus UP_PER_PROC_S each
UP_PER_PROC_S = 0.5
STOP_GRACE_S = 10.0  # after ``stop``: how long the clients may take to report
MAX_SAMPLES = 5


@dataclass(frozen=True)
class Options:
    host: str                 # as given
    host_ip: str              # resolved, what the clients connect to
    port: int
    hold_s: float
    rate: float               # connects per second over all clients; 0 = unpaced
    connect_timeout_s: float
    echo_timeout_s: float
    max_pending: int          # per client: connecting or awaiting the first echo
    deadline_s: float         # the whole run, start-up included
    pid: int | None = None    # the server's, for its RSS
    defer_pings: bool = False  # held connections are not read until the second line


# The server, from /proc: process_tree, tree_rss_bytes, tcp_sockstat (tools/childproc.py).

# ------------------------------------------------------------------ the clients

class Reports:
    """What one client process has said: JSON lines (``up``, ``progress``, ``established``,
    ``done``), fed as they come off its pipe, in pieces of any size."""

    def __init__(self) -> None:
        self.buf = b""
        self.up = self.eof = False
        self.established: dict[str, Any] | None = None  # round one settled
        self.done: dict[str, Any] | None = None
        self.last: dict[str, Any] = {"established": 0, "verified": 0, "pings": 0,
                                     "failures": {}}

    def feed(self, data: bytes) -> None:
        """Take the next bytes; ``b""`` is EOF: it has exited."""
        self.eof = not data
        *lines, self.buf = (self.buf + data).split(b"\n")
        for raw in lines:
            try:
                msg = json.loads(raw)
                event = msg.pop("event")
            except (ValueError, AttributeError, KeyError):
                continue  # not a report: nothing but reports are written there
            
            if event == "up":
                self.up = True
                continue
            self.last = msg
            if event == "established":
                self.established = msg
            elif event == "done":
                self.done = msg

    @property
    def settled(self) -> bool:
        return self.established is not None or self.done is not None or self.eof

    @property
    def finished(self) -> bool:
        return self.done is not None or self.eof


class _Client(Reports):
    """One client process as the parent sees it: its pipes and what it has said."""

    def __init__(self, share: Share, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.share = share
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--child", json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()  # read by Run.wait once poll says so

    def tell(self, word: str) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):  # it is gone: EOF tells us
            self.proc.stdin.write(word.encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.__exit__(None, None, None)  # closes the pipes (a broken one too), waits


def child_config(share: Share, opts: Options, procs: int) -> dict[str, Any]:
    return {"index": share.index, "first": share.first, "count": share.count,
            "sources": [list(s) for s in share.sources], "host": opts.host_ip,
            "port": opts.port, "rate": opts.rate / procs, "max_pending": opts.max_pending,
            "connect_timeout_s": opts.connect_timeout_s, "echo_timeout_s": opts.echo_timeout_s,
            "max_seconds": opts.deadline_s, "defer_pings": opts.defer_pings}


class Run:
    """One run over ``plan``; ``run()`` returns the result (see ``result``)."""

    def __init__(self, plan: Plan, opts: Options, log: Callable[[str], None]) -> None:
        self.plan, self.opts, self.log = plan, opts, log
        self.clients: list[_Client] = []
        self.t0 = 0.0
        self.t_establish: float | None = None
        self.timed_out = self.interrupted = False
        self.rss_baseline: int | None = None
        self.rss_hold: list[int] = []
        self.server_procs: int | None = None
        self.sockstat: dict[str, int] | None = None

    def rss(self) -> int | None:
        if self.opts.pid is None:
            return None
        got = tree_rss_bytes(self.opts.pid)
        if got is None:
            return None
        self.server_procs = got[1]
        return got[0]

    def wait(self, until: Callable[[], bool], deadline: float, tick: Callable[[], None]) -> bool:
        """Read the clients until ``until()`` or the deadline; False at the deadline."""
        while not until():
            now = time.monotonic()
            if now >= deadline:
                return False
            live = {c.fd: c for c in self.clients if not c.eof}
            if live:
                poller = select.poll()
                for fd in live:
                    poller.register(fd, select.POLLIN)
                for fd, _ in poller.poll(1000 * min(0.2, deadline - now)):
                    live[fd].feed(os.read(fd, 1 << 16))  # readable, or EOF: no wait
            else:
                time.sleep(min(0.2, deadline - now))
            tick()
        return True

    def progress(self) -> Callable[[], None]:
        state = {"next": time.monotonic() + 1.0, "established": 0}

        def tick() -> None:
            now = time.monotonic()
            if now < state["next"]:
                return
            established, verified, failed, pings = self.totals()
            rate = established - state["established"]
            state.update(next=now + 1.0, established=established)
            self.log(f"scale {now - self.t0:7.1f} s  established {established:,}/"
                     f"{self.plan.conns:,} (+{rate:,}/s)  verified {verified:,}  failed "
                     f"{failed:,}  pings {pings:,}")

        return tick

    def totals(self) -> tuple[int, int, int, int]:
        last = [c.last for c in self.clients]
        return (sum(x["established"] for x in last), sum(x["verified"] for x in last),
                sum(sum(x["failures"].values()) for x in last), sum(x["pings"] for x in last))

    def run(self) -> dict[str, Any]:
        """Start the clients, run the phases, stop what is left at the deadline (or at
        Ctrl-C), and return the result."""
        deadline = time.monotonic() + self.opts.deadline_s
        raise_nofile()  # the pipes of many clients
        try:
            try:
                self.phases(deadline)
            except KeyboardInterrupt:
                self.interrupted = True
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # one is enough: stop cleanly
            if not all(c.finished for c in self.clients):
                self.timed_out = not self.interrupted
                self.log("scale: " + ("interrupted" if self.interrupted else
                                      f"the run's deadline ({self.opts.deadline_s:.0f} s) "
                                      f"passed") + ": stopping the clients")
                for c in self.clients:
                    c.tell("stop")
                self.wait(lambda: all(c.finished for c in self.clients),
                          time.monotonic() + STOP_GRACE_S, lambda: None)
        finally:
            for c in self.clients:
                c.close()
        return self.result()

    def phases(self, deadline: float) -> None:
        opts, plan = self.opts, self.plan
        for share in plan.shares:
            self.clients.append(_Client(share, child_config(share, opts, plan.procs)))
        up_by = min(deadline, time.monotonic() + UP_S + UP_PER_PROC_S * plan.procs)
        self.wait(lambda: all(c.up or c.eof for c in self.clients), up_by, lambda: None)
        self.rss_baseline = self.rss()
        self.t0 = time.monotonic()
        for c in self.clients:
            c.tell("start")
        tick = self.progress()
        if not self.wait(lambda: all(c.settled for c in self.clients), deadline, tick):
            self.t_establish = time.monotonic() - self.t0  # gave up
            return
        ends = [c.established["t"] for c in self.clients if c.established]
        self.t_establish = (max(ends) if ends else time.monotonic()) - self.t0
        established = self.totals()[0]
        self.log(f"scale: {established:,} of {plan.conns:,} established in "
                 f"{self.t_establish:.1f} s; "
                 + (f"holding {opts.hold_s:g} s" if established else "nothing to hold"))
        if established:
            self.hold(deadline, tick)
        for c in self.clients:
            c.tell("go")
        self.wait(lambda: all(c.finished for c in self.clients), deadline, tick)

    def hold(self, deadline: float, tick: Callable[[], None]) -> None:
        """The hold: every connection that made it is open now; sample the server's RSS."""
        end = min(deadline, time.monotonic() + self.opts.hold_s)
        self.sockstat = tcp_sockstat()
        while True:
            rss = self.rss()
            if rss is not None:
                self.rss_hold.append(rss)
            if time.monotonic() >= end:
                return
            self.wait(lambda: False, min(end, time.monotonic() + 1.0), tick)

    def result(self) -> dict[str, Any]:
        plan, opts = self.plan, self.opts
        failures = {k.value: 0 for k in Failure}
        errnos: dict[str, int] = {}
        samples: list[dict[str, Any]] = []
        sources: set[str] = set()
        established = verified = pings = lost_procs = 0
        t_done = [c.done["t_done"] for c in self.clients if c.done]
        for c in self.clients:
            r = c.done or c.last
            established += r["established"]
            verified += r["verified"]
            pings += r["pings"]
            for k, v in r["failures"].items():
                failures[k] += v
            if c.done is None:
                lost_procs += 1
                failures[Failure.CLIENT_LOST.value] += (c.share.count - r["verified"]
                                                  - sum(r["failures"].values()))
                sources.update(a for a, _ in c.share.sources)
                continue
            sources.update(c.done["sources_used"])
            for k, v in c.done["errnos"].items():
                errnos[k] = errnos.get(k, 0) + v
            samples.extend(c.done["samples"])
        rss = max(self.rss_hold) if self.rss_hold else None

        def per_conn(x: int | None) -> int | None:
            return round(x / established) if x is not None and established else None

        out: dict[str, Any] = {
            "tool": "scale", "host": opts.host, "port": opts.port,
            "conns": plan.conns, "established": established, "verified": verified,
            "failures": failures, "errnos": errnos, "pings": pings,
            "t_establish_s": None if self.t_establish is None else round(self.t_establish, 3),
            "t_final_s": round(max(t_done) - self.t0, 3) if t_done and self.t0 else None,
            "established_per_s": (round(established / self.t_establish)
                                  if self.t_establish else None),
            "hold_s": opts.hold_s, "rate": opts.rate, "procs": plan.procs,
            "procs_lost": lost_procs, "source_addresses": len(sources),
            "nice": os.nice(0),  # the clients' niceness (scale_run.py --client-nice)
            "per_source": plan.per_source, "timed_out": self.timed_out,
            "interrupted": self.interrupted,
            "deadline_s": round(opts.deadline_s, 1), "mismatch_samples": samples[:MAX_SAMPLES],
            "kernel": self.sockstat,
        }
        if opts.pid is not None:
            out.update({
                "server_pid": opts.pid, "server_procs": self.server_procs,
                "server_rss_baseline_bytes": self.rss_baseline, "server_rss_bytes": rss,
                "rss_per_conn_bytes": per_conn(rss),
                "rss_per_conn_delta_bytes": per_conn(
                    rss - self.rss_baseline if rss is not None and self.rss_baseline is not None
                    else None),
            })
        return out


def exit_code(result: dict[str, Any]) -> int:
    """0 iff every connection passed both rounds."""
    return 0 if result["verified"] == result["conns"] else 1
