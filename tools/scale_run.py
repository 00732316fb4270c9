#!/usr/bin/env python3
"""A whole scale run, server and client: ``tools/scale_run.py --help``; the code is in
``tools/scalelib/scenario.py``, the reproduction in docs/scale.md.

    .venv/bin/python tools/scale_run.py --conns 100000 --workers 7
    .venv/bin/python tools/scale_run.py --conns 1000000 --workers 58 --hold 30
    .venv/bin/python tools/scale_run.py --conns 100000 --workers 6 --restart

One JSON object is the last stdout line; exit 0 iff the run passed (every connection
verified, or with --restart exactly the killed worker's connections lost).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from reactor.service.cli._args import OneLineParser, number, parse  # noqa: E402
from scalelib import netns  # noqa: E402
from scalelib.scenario import Scenario  # noqa: E402


def main() -> int:
    p = OneLineParser(prog="scale_run.py", description="line-echo --workers W with heartbeats "
                      "and idle timers, tools/scale.py against it, fd-stats watching.")
    p.add_argument("--conns", type=number(int, 1, what="integer"), required=True, metavar="N")
    p.add_argument("--workers", type=number(int, 1, what="integer"), required=True, metavar="W")
    p.add_argument("--port", type=number(int, 1, maximum=65535, what="port"), default=9400)
    p.add_argument("--hold", type=number(float, 0, what="number of seconds"), default=30.0,
                   metavar="S", help="seconds every connection is held (default 30)")
    p.add_argument("--rate", type=number(float, 0, what="rate"), default=10_000.0,
                   metavar="R", help="connects per second, 0 = unpaced (default 10,000)")
    p.add_argument("--heartbeat", type=number(float, 0, what="number of seconds"),
                   default=20.0, metavar="S", help="line-echo --heartbeat (default 20)")
    p.add_argument("--idle-timeout", type=number(float, 0, what="number of seconds"),
                   default=300.0, metavar="S", help="line-echo --idle-timeout (default 300)")
    p.add_argument("--backlog", type=number(int, 1, what="integer"), default=4096,
                   metavar="N", help="line-echo --backlog (default 4096, somaxconn here)")
    p.add_argument("--sample-every", type=number(float, 0, strict=True, what="number of seconds"),
                   default=2.0, metavar="S", help="fd-stats every S seconds (default 2)")
    p.add_argument("--defer-pings", action="store_true",
                   help="scale.py --defer-pings: held connections are not read until the "
                        "second line, so the clients leave the cores to the workers")
    p.add_argument("--client-nice", type=number(int, 0, maximum=19, what="niceness"), default=0,
                   metavar="N", help="run scale.py and its client processes at nice N (default 0): "
                        "on one machine they stand for remote hosts, and at 10 they yield "
                        "the cores to the workers whose loop lag is measured")
    p.add_argument("--netns", action="store_true",
                   help="run in a network namespace of its own whose established-connection "
                        "hash has room for every socket (root, Linux 6.1+)")
    p.add_argument("--restart", action="store_true",
                   help="SIGKILL worker 0 during the hold and time its restart")
    p.add_argument("--restart-after", type=number(float, 0, what="number of seconds"),
                   default=4.0, metavar="S", help="seconds into the hold (default 4)")
    args = parse(p, sys.argv[1:])
    if isinstance(args, int):
        return args
    if args.restart and args.restart_after >= args.hold:
        print("scale_run.py: error: --restart-after must be shorter than --hold", file=sys.stderr)
        return 2
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.netns and not os.environ.get(netns.INSIDE_ENV):
        return netns.run_inside([sys.executable, *sys.argv], args.conns, log)
    result = Scenario(args, log).run()
    print(f"scale_run: {'PASS' if result['ok'] else 'FAIL'}: {result['why']}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
