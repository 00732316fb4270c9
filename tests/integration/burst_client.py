"""burst client: N connects at once to line-echo, one line on each, for test_hostile.

A helper process (its N sockets are its own: it raises its soft RLIMIT_NOFILE to the hard
limit). It starts N non-blocking connects in one go, then watches them all on epoll. Each
connection that the kernel reports established sends one line (``burst I\\n``) after a random
delay of up to ``--jitter`` seconds, and ends as exactly one of:

- ``served``: its line came back byte for byte;
- ``refused``: ``ERR server full\\n`` came, then EOF (or a reset after the whole message);
- ``refused_at_connect``: the connect failed (ECONNREFUSED and the like), or a reset came
  before any byte;
- ``wrong``: anything else came back (the first few are kept in ``samples``);
- ``pending``: still unresolved at ``--deadline`` (a hang).

Served connections stay open until every connection has ended, so the daemon holds them all
at once. Prints one JSON object with the counts, ``elapsed_s`` and ``slowest_s``.
Run as ``python -m tests.integration.burst_client --port P --conns N``.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import random
import resource
import select
import socket
import sys
import time

REFUSAL = b"ERR server full\n"
# States of one connection.
CONNECTING, WAITING, SENT, DONE = range(4)


class Conn:
    __slots__ = ("sock", "line", "state", "got", "sent")

    def __init__(self, sock: socket.socket, line: bytes) -> None:
        self.sock = sock
        self.line = line
        self.state = CONNECTING
        self.got = bytearray()
        self.sent = False


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=5000)
    p.add_argument("--jitter", type=float, default=0.5, help="seconds; spread of the first sends")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds for all to resolve")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rng = random.Random(args.seed)
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    counts = dict.fromkeys(("served", "refused", "refused_at_connect", "wrong"), 0)
    samples: list[str] = []
    start = time.monotonic()
    for i in range(args.conns):  # all at once: nothing is waited for between them
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((args.host, args.port))
        if err not in (0, errno.EINPROGRESS):
            counts["refused_at_connect"] += 1
            s.close()
            continue
        conns[s.fileno()] = Conn(s, b"burst %d\n" % i)
        ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT)
    pending = len(conns)
    sends: list[tuple[float, int]] = []  # (when, fd): first lines not yet due
    slowest = 0.0

    def end(fd: int, c: Conn, outcome: str) -> None:
        nonlocal pending, slowest
        counts[outcome] += 1
        if outcome == "wrong" and len(samples) < 5:
            samples.append(f"{c.line!r} got {bytes(c.got[:100])!r}")
        c.state = DONE
        pending -= 1
        slowest = max(slowest, time.monotonic() - start)
        ep.unregister(fd)
        if outcome != "served":
            c.sock.close()

    def on_readable(fd: int, c: Conn) -> None:
        try:
            data = c.sock.recv(4096)
        except BlockingIOError:
            return
        except ConnectionResetError:
            if not c.got:
                end(fd, c, "refused_at_connect")
            else:
                end(fd, c, "refused" if c.got == REFUSAL else "wrong")
            return
        if not data:
            end(fd, c, "refused" if c.got == REFUSAL else "wrong")
            return
        c.got += data
        if REFUSAL.startswith(c.got):
            return  # the refusal so far (no echo starts with "E"): wait for the EOF
        if not c.sent or not c.line.startswith(c.got):
            end(fd, c, "wrong")
        elif c.got == c.line:
            end(fd, c, "served")

    deadline = start + args.deadline
    while pending and time.monotonic() < deadline:
        now = time.monotonic()
        while sends and sends[0][0] <= now:
            _, fd = heapq.heappop(sends)
            c = conns[fd]
            if c.state == WAITING:
                c.sock.send(c.line)  # a few bytes into an empty send buffer: never short
                c.sent = True
                c.state = SENT
        timeout = min(deadline, sends[0][0] if sends else deadline) - now
        for fd, ev in ep.poll(max(0.0, timeout)):
            c = conns[fd]
            if c.state == CONNECTING:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    end(fd, c, "refused_at_connect")
                    continue
                c.state = WAITING
                ep.modify(fd, select.EPOLLIN)
                heapq.heappush(sends, (time.monotonic() + rng.uniform(0, args.jitter), fd))
            if c.state in (WAITING, SENT) and ev & (select.EPOLLIN | select.EPOLLERR
                                                    | select.EPOLLHUP):
                on_readable(fd, c)
    elapsed = time.monotonic() - start
    for c in conns.values():
        c.sock.close()
    print(json.dumps({**counts, "pending": pending, "elapsed_s": round(elapsed, 3),
                      "slowest_s": round(slowest, 3), "samples": samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
