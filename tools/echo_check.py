#!/usr/bin/env python3
"""Open N connections to a line-echo server, send M lines on each, verify every echoed byte.

    .venv/bin/python tools/echo_check.py --port 9000 --conns 1000 --lines 10

Exit 0 if every connection got exactly its lines back in order, 1 otherwise. Bounded in time
(--timeout) and meant for loopback only.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--lines", type=int, default=10)
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args(argv)
    sel = selectors.DefaultSelector()
    want: dict[socket.socket, bytes] = {}
    got: dict[socket.socket, bytearray] = {}
    start = time.monotonic()
    for i in range(a.conns):
        s = socket.create_connection((a.host, a.port), timeout=a.timeout)
        payload = b"".join(b"conn %d line %d\n" % (i, n) for n in range(a.lines))
        s.sendall(payload)
        s.setblocking(False)
        want[s], got[s] = payload, bytearray()
        sel.register(s, selectors.EVENT_READ)
    pending = set(want)
    deadline = time.monotonic() + a.timeout
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            data = s.recv(65536)
            got[s].extend(data)
            if not data or len(got[s]) >= len(want[s]):
                pending.discard(s)
                sel.unregister(s)
    bad = sum(bytes(got[s]) != want[s] for s in want)
    for s in want:
        s.close()
    elapsed = time.monotonic() - start
    print(f"{a.conns - bad}/{a.conns} connections echoed {a.lines} lines each correctly "
          f"in {elapsed:.2f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
