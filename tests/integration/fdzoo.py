"""fd zoo: a helper process that holds a known set of fds and sockets, for test_procview.

It builds the zoo, then prints one JSON line saying what it made (fd kinds, TCP states, listeners,
ownerless entries to expect) without looking at /proc, so the test checks procview against the
zoo's own bookkeeping. Then it obeys stdin lines, answering each with ``ok``: ``alloc BYTES``,
``spin CPU_SECONDS``, ``open N``, ``churn``; ``exit`` or EOF resets its TCP sockets and exits.
Run as ``python fdzoo.py [--pairs N] [--raise-nofile]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3, help="established TCP pairs inside the zoo")
    parser.add_argument("--raise-nofile", action="store_true", help="raise the soft fd limit to hard")
    args = parser.parse_args(argv)
    if args.raise_nofile:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Count what we inherited before making anything (minus the fd listdir itself opens).
    inherited = len(os.listdir("/proc/self/fd")) - 1
    zoo = Zoo()
    zoo.build(args.pairs)
    report = {"inherited_fds": inherited, **zoo.report()}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    zoo.serve(sys.stdin, sys.stdout)
    zoo.abort_tcp()
    return 0


class Zoo:
    """Every object made is kept in ``self.keep`` so nothing is closed by the garbage collector."""

    def __init__(self) -> None:
        self.keep: list[object] = []
        self.fds: Counter = Counter()
        self.states: Counter = Counter()
        self.listening: list[str] = []
        self.unowned: Counter = Counter()
        self.tmp = tempfile.mkdtemp(prefix="fdzoo-")
        self.port4 = 0
        self.port6: int | None = None

    def build(self, pairs: int) -> None:
        self._tcp4(pairs)
        self._tcp6()
        self._udp()
        self._unix()
        self._pipes_and_files()
        self._others()

    def _hold(self, obj: object, kind: str, state: str | None = None) -> None:
        self.keep.append(obj)
        self.fds[kind] += 1
        if state:
            self.states[state] += 1

    def _tcp4(self, pairs: int) -> None:
        # No SO_REUSEADDR: bind(0) then avoids ports with leftover TIME_WAITs, and connect() never
        # picks this port as an ephemeral one, so every ownerless entry on it is ours.
        lis = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lis.bind(("127.0.0.1", 0))
        lis.listen(64)
        self.port4 = lis.getsockname()[1]
        self._hold(lis, "tcp", "LISTEN")
        self.listening.append(f"127.0.0.1:{self.port4}")
        for _ in range(pairs):
            client, server = _pair(lis, ("127.0.0.1", self.port4))
            self._hold(client, "tcp", "ESTABLISHED")
            self._hold(server, "tcp", "ESTABLISHED")
        # TIME_WAIT: the zoo's accepted side closes first, so the TIME_WAIT sits on 127.0.0.1:port4
        # with no owner. Its peer closes after reading EOF and leaves nothing behind (LAST_ACK->CLOSE).
        client, server = _pair(lis, ("127.0.0.1", self.port4))
        server.close()
        client.settimeout(10)
        assert client.recv(1) == b""
        client.close()
        self.unowned["TIME_WAIT"] += 1
        # CLOSE_WAIT: the peer closes, the zoo does not. The closed peer is an orphan in FIN_WAIT2
        # on an ephemeral local port the zoo does not hold, so it must NOT count as unowned.
        client, server = _pair(lis, ("127.0.0.1", self.port4))
        client.close()
        server.settimeout(10)
        assert server.recv(1) == b""
        self._hold(server, "tcp", "CLOSE_WAIT")
        # Neither bound nor connected: in no /proc table; the kernel holds it in CLOSE.
        self._hold(socket.socket(socket.AF_INET, socket.SOCK_STREAM), "tcp", "CLOSE")

    def _tcp6(self) -> None:
        try:
            lis = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            lis.bind(("::1", 0))
        except OSError:
            return                                   # no IPv6 loopback here
        lis.listen(8)
        self.port6 = lis.getsockname()[1]
        self._hold(lis, "tcp6", "LISTEN")
        self.listening.append(f"[::1]:{self.port6}")
        client, server = _pair(lis, ("::1", self.port6))
        self._hold(client, "tcp6", "ESTABLISHED")
        self._hold(server, "tcp6", "ESTABLISHED")
        udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp6.bind(("::1", 0))
        self._hold(udp6, "udp6")

    def _udp(self) -> None:
        for _ in range(2):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            self._hold(udp, "udp")
        self._hold(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), "udp")   # unbound: in no table

    def _unix(self) -> None:
        path = os.path.join(self.tmp, "zoo.sock")
        lis = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lis.bind(path)
        lis.listen(4)
        self._hold(lis, "unix")
        self.listening.append(f"unix:{path}")
        abstract = f"fdzoo-{os.getpid()}"
        lis_abs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lis_abs.bind("\0" + abstract)
        lis_abs.listen(4)
        self._hold(lis_abs, "unix")
        self.listening.append(f"unix:@{abstract}")
        for sock in socket.socketpair():
            self._hold(sock, "unix")

    def _pipes_and_files(self) -> None:
        for _ in range(2):
            for fd in os.pipe():
                self._hold(fd, "pipe")
        fifo = os.path.join(self.tmp, "fifo")
        os.mkfifo(fifo)
        self._hold(os.open(fifo, os.O_RDWR | os.O_NONBLOCK), "pipe")          # a named pipe is a pipe
        for i in range(3):
            self._hold(open(os.path.join(self.tmp, f"file{i}"), "wb"), "file")
        os.unlink(os.path.join(self.tmp, "file2"))                           # "(deleted)" is still a file

    def _others(self) -> None:
        self._hold(open(os.devnull, "rb"), "other")
        self._hold(select.epoll(), "other")
        self._hold(os.eventfd(0), "other")
        self._hold(os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY), "other")
        self._hold(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0), "other")

    def report(self) -> dict:
        return {
            "pid": os.getpid(), "port4": self.port4, "port6": self.port6,
            "fds": dict(self.fds), "tcp_states": dict(self.states),
            "listening": sorted(self.listening), "unowned": dict(self.unowned),
        }

    def serve(self, stdin, stdout) -> None:
        for line in stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "exit":
                return
            if cmd == "alloc":
                blob = bytearray(int(arg))
                blob[::4096] = b"\1" * len(range(0, len(blob), 4096))        # make every page resident
                self.keep.append(blob)
            elif cmd == "spin":
                until = time.process_time() + float(arg)
                while time.process_time() < until:
                    pass
            elif cmd == "churn":
                threading.Thread(target=_churn, daemon=True).start()
            elif cmd == "open":
                for _ in range(int(arg)):
                    self._hold(open(os.devnull, "rb"), "other")
            else:
                stdout.write(f"unknown command {cmd!r}\n")
                stdout.flush()
                continue
            stdout.write("ok\n")
            stdout.flush()

    def abort_tcp(self) -> None:
        """Reset every held TCP socket, so exiting leaves no TIME_WAIT behind for other tests to see."""
        for obj in self.keep:
            if isinstance(obj, socket.socket) and obj.type == socket.SOCK_STREAM \
                    and obj.family in (socket.AF_INET, socket.AF_INET6):
                obj.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                obj.close()


def _churn() -> None:
    """Open and close fds and sockets forever, so a sampler sees fds vanish under it."""
    while True:
        with open(os.devnull, "rb"):
            pass
        a, b = socket.socketpair()
        a.close()
        b.close()
        r, w = os.pipe()
        os.close(r)
        os.close(w)


def _pair(lis: socket.socket, address: tuple) -> tuple[socket.socket, socket.socket]:
    client = socket.create_connection(address, timeout=10)
    server, _ = lis.accept()
    return client, server


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
