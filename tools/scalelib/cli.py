"""The command line: argparse -> Plan and Options -> Run -> one JSON line and the exit status."""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import sys
from typing import Any, Sequence

from reactor.service.cli._args import OneLineParser, number, parse

from . import plan as planning
from .fleet import Options, Run, exit_code

PROG = "scale.py"
DEFAULT_HOLD_S = 5.0
DEFAULT_RATE = 10_000.0
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_ECHO_TIMEOUT_S = 30.0
# Connects in progress or awaiting their first echo, per client process: 70 processes x 512
# stay well inside 58 workers' accept queues (1,024 each), so SYNs are not dropped and retried.
DEFAULT_MAX_PENDING = 512

_positive_int = number(int, 1, what="integer")
_seconds = number(float, 0, what="number of seconds")
_timeout = number(float, 0, strict=True, what="number of seconds")
_rate = number(float, 0, what="rate")
_port = number(int, 1, maximum=65535, what="port")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Open N verified connections to a line echo "
                      "server, hold them, verify them again; one JSON line on stdout.")
    p.add_argument("--port", type=_port, required=True, help="the server's TCP port")
    p.add_argument("--conns", type=_positive_int, required=True, metavar="N",
                   help="connections to open and hold")
    p.add_argument("--host", default="127.0.0.1", help="the server's address (default "
                   "127.0.0.1; source addresses are spread only for 127.x)")
    p.add_argument("--procs", type=_positive_int, metavar="K",
                   help="client processes (default: enough for the fd limit, "
                        f"{planning.PER_PROC_MAX:,} connections each at most)")
    p.add_argument("--hold", type=_seconds, default=DEFAULT_HOLD_S, metavar="S",
                   help=f"seconds all are held before the second line (default "
                        f"{DEFAULT_HOLD_S:g})")
    p.add_argument("--rate", type=_rate, default=DEFAULT_RATE, metavar="R",
                   help=f"connects per second over all processes, 0 = as fast as possible "
                        f"(default {DEFAULT_RATE:,.0f})")
    p.add_argument("--pid", type=_positive_int, metavar="SERVER_PID",
                   help="the server's pid: its RSS and its descendants' (workers) is measured")
    p.add_argument("--timeout", type=_timeout, metavar="S",
                   help="the whole run's deadline (default: from N, the rate and the hold)")
    p.add_argument("--connect-timeout", type=_timeout, default=DEFAULT_CONNECT_TIMEOUT_S,
                   metavar="S", help=f"a connect not done by then is connect_timeout (default "
                                     f"{DEFAULT_CONNECT_TIMEOUT_S:g})")
    p.add_argument("--echo-timeout", type=_timeout, default=DEFAULT_ECHO_TIMEOUT_S,
                   metavar="S", help=f"an echo not back by then is timeout (default "
                                     f"{DEFAULT_ECHO_TIMEOUT_S:g})")
    p.add_argument("--per-source", type=_positive_int, metavar="N",
                   help="connections per source address (default: 1/4 of the ephemeral "
                        f"port range, {planning.PER_SOURCE_MAX:,} at most)")
    p.add_argument("--max-pending", type=_positive_int, default=DEFAULT_MAX_PENDING,
                   metavar="N", help="connections per process connecting or awaiting their "
                                     f"first echo at once (default {DEFAULT_MAX_PENDING})")
    p.add_argument("--defer-pings", action="store_true",
                   help="during the hold, leave heartbeat PINGs in the kernel's receive buffer "
                        "and read them with the second echo (a connection the server closes "
                        "or resets still fails): the client then takes no CPU during the hold")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _usage(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    procs = args.procs or planning.default_procs(args.conns, hard)
    if procs > args.conns:
        return _usage(f"--procs {procs} is more than --conns {args.conns}")
    per_proc = math.ceil(args.conns / procs)
    if per_proc > hard - planning.FD_MARGIN:
        return _usage(f"{per_proc} connections per client process exceed the fd limit {hard} "
                      f"less {planning.FD_MARGIN}: use more --procs")
    try:
        host_ip = socket.gethostbyname(args.host)
    except OSError as exc:
        return _usage(f"--host {args.host!r} does not resolve: {exc}")
    if args.pid is not None and not os.path.exists(f"/proc/{args.pid}"):
        return _usage(f"--pid {args.pid}: no such process")
    port_range = planning.read_port_range()
    loopback = planning.is_loopback(host_ip)
    per_source = args.per_source or planning.per_source_default(port_range)
    try:
        the_plan = planning.plan(args.conns, procs, per_source, loopback, port_range,
                                 skip=(host_ip,) if loopback else ())
    except ValueError as exc:
        return _usage(str(exc))
    deadline = args.timeout or planning.deadline_s(
        args.conns, procs, args.rate, args.hold, args.connect_timeout, args.echo_timeout)
    opts = Options(host=args.host, host_ip=host_ip, port=args.port, hold_s=args.hold,
                   rate=args.rate, connect_timeout_s=args.connect_timeout,
                   echo_timeout_s=args.echo_timeout, max_pending=args.max_pending,
                   deadline_s=deadline, pid=args.pid, defer_pings=args.defer_pings)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    for w in the_plan.warnings:
        log(f"scale: warning: {w}")
    src = the_plan.sources
    where = (f"{len(src)} source address{'es' if len(src) > 1 else ''} ({src[0]}"
             f"{' - ' + src[-1] if len(src) > 1 else ''}, {the_plan.per_source:,} each at most)"
             if src[0] else "the wildcard source address")
    log(f"scale: {args.conns:,} connections to {host_ip}:{args.port} from {procs} client "
        f"process{'es' if procs > 1 else ''} and {where}, "
        f"{'unpaced' if not args.rate else f'{args.rate:,.0f}/s'}, hold {args.hold:g} s, "
        f"deadline {deadline:.0f} s")
    result = Run(the_plan, opts, log).run()
    log(summary(result))
    print(json.dumps(result))
    return exit_code(result)


def summary(r: dict[str, Any]) -> str:
    failed = {k: v for k, v in r["failures"].items() if v}
    rss = ""
    if r.get("rss_per_conn_bytes") is not None:
        rss = (f"; server RSS {r['server_rss_bytes'] / 2**20:,.1f} MiB over "
               f"{r['server_procs']} process(es), {r['rss_per_conn_bytes']:,} B per connection"
               + (f" ({r['rss_per_conn_delta_bytes']:,} B above the baseline)"
                  if r.get("rss_per_conn_delta_bytes") is not None else ""))
    return (f"scale: {'PASS' if r['verified'] == r['conns'] else 'FAIL'}: verified "
            f"{r['verified']:,} of {r['conns']:,} (established {r['established']:,} in "
            f"{r['t_establish_s']} s, final {r['t_final_s']} s, pings {r['pings']:,})"
            f"{'; failures ' + json.dumps(failed) if failed else ''}{rss}")
