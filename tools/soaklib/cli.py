"""The soak's command line (tools/soak.py is its entry point)."""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from childproc import raise_nofile

from .common import DRAIN_S, SETTLE_S
from .client import client_main
from .run import Soak, _Timeout
from .report import report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=10000, help="connections held (default 10000)")
    p.add_argument("--duration", type=float, default=600.0,
                   help="seconds of traffic once they are held (default 600)")
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="line-echo --workers for the daemon started here (default 1)")
    p.add_argument("--max-line", type=int, default=65536,
                   help="the daemon's --max-line; lines stay under it (default 65536)")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="SEC",
                   help="line-echo --heartbeat for the daemon started here: its timers are what "
                        "the loop lag is measured on; 0 = off (default 1)")
    p.add_argument("--port", type=int,
                   help="soak a line-echo already running on 127.0.0.1:PORT instead")
    p.add_argument("--stats-socket", metavar="PATH",
                   help="with --port: its stats socket (daemon pid, fds, RSS, loop lag)")
    p.add_argument("--src-addrs", type=int, default=8,
                   help="source addresses per client process, from 127.0.0.2 up (default 8)")
    p.add_argument("--json", metavar="PATH", help="write the result as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if a.conns < 1 or a.procs < 1 or a.procs > a.conns:
        p.error("--conns and --procs must be at least 1, with --procs <= --conns")
    if math.ceil(a.conns / a.procs) > hard - 64:
        p.error(f"{math.ceil(a.conns / a.procs)} connections per client process exceed the fd "
                f"limit {hard}: use more --procs")
    if not 0 < a.duration < 86400 or a.workers < 1 or a.max_line < 2 or a.heartbeat < 0:
        p.error("--duration must be in (0, 86400), --workers >= 1, --max-line >= 2, "
                "--heartbeat >= 0")
    if a.src_addrs < 1 or a.procs * a.src_addrs > 250:
        p.error("--src-addrs must be >= 1 and --procs x --src-addrs <= 250 (127.0.0.2-251)")
    if a.port is not None and not 0 < a.port < 65536:
        p.error("--port must be in 1..65535")
    if a.stats_socket and a.port is None:
        p.error("--stats-socket goes with --port (a daemon started here has its own)")
    return a


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--client":
        return client_main(json.loads(sys.argv[2]))
    a = parse_args(argv)
    raise_nofile()
    log = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    ramp_s = 30.0 + a.conns / 200
    max_seconds = 60 + ramp_s + SETTLE_S + a.duration + DRAIN_S + 15 + SETTLE_S + 30

    def timed_out(*_: Any) -> None:
        raise _Timeout()

    signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(int(max_seconds))
    soak: Soak | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            soak = Soak(a, Path(tmp), log)
            if soak.client_cpus:
                os.sched_setaffinity(0, soak.client_cpus)
            soak.run(ramp_s, max_seconds)
            result = soak.result(sys.argv[1:] if argv is None else list(argv))
    finally:
        signal.alarm(0)
    print(report(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["passed"] else 1
