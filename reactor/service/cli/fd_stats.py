"""fd-stats: argparse -> Watcher -> render/JSON, once or every --watch seconds.

Exit status: 0 after the samples asked for; 1 with one line on stderr for an
unknown PID, no permission, a stats socket that is missing, stale or speaks
garbage, or a process that exits while watched; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from reactor.service.cli._args import OneLineParser, number, parse

PROG = "fd-stats"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Show what a process's file descriptors, sockets and "
                                       "(for this reactor) event loop are doing.")
    p.add_argument("pid", type=number(int, 0, strict=True, what="integer"), metavar="PID")
    p.add_argument("--json", action="store_true", help="one JSON object per sample")
    p.add_argument("--watch", type=number(float, 0, strict=True, what="number of seconds"), metavar="SEC",
                   help="sample every SEC seconds, refreshing in place")
    p.add_argument("--count", type=number(int, 0, strict=True, what="integer"), metavar="N",
                   help="stop after N samples (without --watch: one a second)")
    p.add_argument("--stats-socket", metavar="PATH",
                   help="the reactor's stats socket (default: the one the process advertises)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    from reactor.service.fdstats import NoPermission, ProcessGone, StatsError, Watcher, render
    from reactor.service.procview import CPU_INTERVAL_S

    interval = args.watch if args.watch is not None else (1.0 if args.count else None)
    count = args.count if args.count is not None else (None if args.watch else 1)
    in_place = args.watch is not None and not args.json and sys.stdout.isatty()
    taken = 0
    try:
        # cpu_percent is over the interval since the previous sample, and the first sample's over
        # CPU_INTERVAL_S from here (it waits that long); a faster --watch sets a shorter one.
        watcher = Watcher(args.pid, args.stats_socket,
                          min(CPU_INTERVAL_S, interval) if interval else CPU_INTERVAL_S)
        next_at = time.monotonic()
        while count is None or taken < count:
            try:
                sample = watcher.sample()
            except ProcessGone:
                if taken:
                    print(f"{PROG}: process {args.pid} exited", file=sys.stderr)
                    return 1
                raise
            taken += 1
            if args.json:
                print(json.dumps(sample, separators=(",", ":")), flush=True)
            else:
                text = render(sample)
                if in_place:
                    text = "\x1b[H\x1b[J" + text
                elif taken > 1:
                    text = "\n" + text
                print(text, flush=True)
            if watcher.note:
                print(f"{PROG}: {watcher.note}", file=sys.stderr)
            if count is not None and taken >= count:
                break
            assert interval is not None
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    except (ProcessGone, NoPermission, StatsError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
