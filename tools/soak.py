#!/usr/bin/env python3
"""Soak line-echo: hold N connections with random pipelined traffic, RSTs, half-closes and
reconnects for a given time, check every echoed byte, and report what was lost or corrupted.

    .venv/bin/python tools/soak.py                            # 10,000 connections, 600 s
    .venv/bin/python tools/soak.py --conns 2000 --duration 60 --json soak.json
    .venv/bin/python tools/soak.py --port 9000 --stats-socket /tmp/echo.sock  # a running daemon

Without ``--port`` it starts its own line-echo (the console script of this venv, ``--port 0``,
a stats socket in a temporary directory), pinned to the first CPU, with the clients on the
others. ``--procs`` client processes (epoll, non-blocking sockets) each hold their share of
the connections; every connection runs a random script (pipelined lines of 1 byte to ~60 KB,
random bytes with NUL and invalid UTF-8, written in random-sized chunks that split lines)
and ends in one fault chosen at random: an RST in the middle of its pipeline, a half-close
(possibly after a trailing partial line) read to EOF, or a plain close after every echo came
back. A new connection replaces each one that ends, from source addresses spread over
127.0.0.2 and up so that TIME_WAIT does not exhaust the ephemeral ports.

Received bytes must always be a prefix of the bytes sent (checked as they arrive; only the
bytes not yet echoed are kept). A connection that ends gracefully must get everything back:
whatever is missing is *lost*. An RST discards by definition, so there only wrong bytes
(*corrupted*) count. When the time is up every connection half-closes and is read to EOF.

Exit status 0 only if nothing was lost or corrupted, the run completed (the N connections
were held, every client finished, the daemon stayed up) and the daemon's fd count came back
to its baseline; 1 otherwise; 2 for bad arguments. Everything stays on 127.0.0.0/8 and is
bounded in time: SIGALRM here, deadlines and PR_SET_PDEATHSIG in the children.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soaklib.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
