"""flood client: N connections that write ``ping\\n`` as fast as the kernel takes it, for test_flood.

A helper process in the manner of tcpkali's firehose: no window of unanswered bytes. Each
connection writes whole blocks of ``ping\\n`` whenever its socket is writable and reads
whatever comes back, except the first ``--never-read`` connections, which never read (slow
consumers). What comes back must be the same stream: a reader's received bytes are checked
against the ``ping\\n`` pattern at their offset (``mismatches`` counts reads that were not).
Connections are opened at up to ``--rate`` per second and never reopened: ``initiated`` is
every connect() made. Runs for ``--seconds`` after the last connect (or until ``--stop-file`` exists), then prints one JSON
object: initiated, established, connect_failures, closed_by_server (readers and never-readers
apart), bytes_sent, bytes_received, mismatches.
Run as ``python -m tests.integration.flood_client --port P --conns N``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import socket
import time

LINE = b"ping\n"
BLOCK = LINE * 3277  # ~16 KiB of whole lines
READ = 1 << 17
PATTERN = LINE * (READ // len(LINE) + 2)  # every read must be a slice of this, at its phase


class Flow:
    __slots__ = ("sock", "reads", "up", "sent", "got", "closed")

    def __init__(self, sock: socket.socket, reads: bool) -> None:
        self.sock = sock
        self.reads = reads
        self.up = False
        self.sent = 0  # bytes of the block already written (offset into the stream mod BLOCK)
        self.got = 0
        self.closed = False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, required=True)
    ap.add_argument("--never-read", type=int, default=0)
    ap.add_argument("--rate", type=float, default=10000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--stop-file", help="stop early, as at --seconds, once this file exists")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ep = select.epoll()
    flows: dict[int, Flow] = {}
    out = {"initiated": 0, "established": 0, "connect_failures": 0, "closed_by_server": 0,
           "never_readers_closed": 0, "bytes_sent": 0, "bytes_received": 0, "mismatches": 0}
    start = time.monotonic()
    stop_at = None
    buf = bytearray(READ)
    mv = memoryview(buf)

    def gone(f: Flow, fd: int) -> None:
        if f.closed:
            return
        f.closed = True
        if f.up:
            out["closed_by_server" if f.reads else "never_readers_closed"] += 1
        else:
            out["connect_failures"] += 1
        ep.unregister(fd)
        f.sock.close()

    while True:
        now = time.monotonic()
        due = min(args.conns, int((now - start) * args.rate) + 1)
        while out["initiated"] < due:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            reads = out["initiated"] >= args.never_read
            if not reads:  # a small window, so the server's side backs up in seconds
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            err = s.connect_ex((args.host, args.port))
            out["initiated"] += 1
            f = Flow(s, reads)
            if err not in (0, errno.EINPROGRESS):
                out["connect_failures"] += 1
                s.close()
                continue
            flows[s.fileno()] = f
            mask = select.EPOLLOUT | select.EPOLLET | (select.EPOLLIN if f.reads else 0)
            ep.register(s.fileno(), mask)
        if stop_at is None and out["initiated"] == args.conns:
            stop_at = now + args.seconds
        if stop_at is not None and now >= stop_at:
            break
        if args.stop_file and os.path.exists(args.stop_file):
            break
        for fd, ev in ep.poll(0.05):
            f = flows[fd]
            if f.closed:
                continue
            if not f.up:
                if f.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    gone(f, fd)
                    continue
                f.up = True
                out["established"] += 1
            if ev & select.EPOLLIN:
                while True:
                    try:
                        n = f.sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except OSError:
                        gone(f, fd)
                        break
                    if not n:
                        gone(f, fd)
                        break
                    phase = f.got % len(LINE)
                    if not PATTERN.startswith(mv[:n], phase):
                        out["mismatches"] += 1
                    f.got += n
                    out["bytes_received"] += n
                    if n < len(buf):
                        break
            if f.closed:
                continue
            if ev & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR):
                while True:  # ET: write until the kernel says no
                    try:
                        n = f.sock.send(BLOCK[f.sent:] if f.sent else BLOCK)
                    except BlockingIOError:
                        break
                    except OSError:
                        gone(f, fd)
                        break
                    out["bytes_sent"] += n
                    f.sent = (f.sent + n) % len(BLOCK)
    for f in flows.values():
        if not f.closed:
            f.sock.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
